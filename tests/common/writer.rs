//! The writer: creates and updates Observations on a FHIR server at a set rate
//! and logs every write, so the checker knows exactly what should arrive.

use super::FhirServer;
use super::fhir::str_at;
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// One write as the server acknowledged it.
#[derive(Debug, Clone)]
pub struct Write {
    /// "Observation/12"
    pub resource_id: String,
    pub version_id: String,
    pub last_updated: String,
    pub critical: bool,
}

pub struct Writer {
    log: Arc<Mutex<Vec<Write>>>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

pub fn lab(critical: bool, n: u64) -> Value {
    json!({
        "resourceType": "Observation",
        "status": if n.is_multiple_of(2) { "preliminary" } else { "final" },
        "code": {"coding": [{"system": "http://loinc.org", "code": "2823-3"}]},
        "valueQuantity": {"value": (n % 90) as f64 / 10.0, "unit": "mmol/L"},
        "interpretation": [{"coding": [{"code": if critical { "HH" } else { "N" }}]}]
    })
}

impl Writer {
    /// Writes about `per_second` times a second; a third of writes update an
    /// existing resource. About one in four results is critical.
    pub fn start(fhir: Arc<FhirServer>, per_second: f64, seed: u64) -> Writer {
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let (l, s) = (log.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(seed);
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / per_second));
            let mut ids: Vec<String> = vec![];
            let mut n = 0u64;
            while !s.is_cancelled() {
                tick.tick().await;
                n += 1;
                let critical = rng.u8(..4) == 0;
                let id = (!ids.is_empty() && rng.u8(..3) == 0)
                    .then(|| ids[rng.usize(..ids.len())].clone());
                let stored = fhir.write(id.as_deref(), lab(critical, n)).await;
                let id = str_at(&stored, "/id");
                if !ids.contains(&id) {
                    ids.push(id.clone());
                }
                l.lock().unwrap().push(Write {
                    resource_id: format!("Observation/{id}"),
                    version_id: str_at(&stored, "/meta/versionId"),
                    last_updated: str_at(&stored, "/meta/lastUpdated"),
                    critical,
                });
            }
        });
        Writer { log, stop, task }
    }

    pub fn count(&self) -> usize {
        self.log.lock().unwrap().len()
    }

    /// Stops writing; returns the log.
    pub async fn stop(self) -> Vec<Write> {
        self.stop.cancel();
        let _ = self.task.await;
        self.log.lock().unwrap().clone()
    }
}
