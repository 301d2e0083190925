//! `fhir-bridge demo`: the zero-setup first run. A sandbox EHR writing synthetic
//! data, a receiver that prints what it gets, and the real pipeline between
//! them, all on 127.0.0.1.

use super::out::print;
use crate::config::Config;
use crate::sandbox::{FhirSandbox, Receiver, generator};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const TEMPLATE: &str = include_str!("demo.toml");

pub struct DemoOptions {
    pub duration: Option<Duration>,
    pub rate: f64,
}

/// Runs until `cancel` fires or the duration passes. Returns webhooks received.
pub async fn run(opts: DemoOptions, cancel: CancellationToken) -> anyhow::Result<usize> {
    let sandbox = FhirSandbox::start(0).await?;
    let (tap_tx, mut tap_rx) = mpsc::unbounded_channel();
    let receiver = Receiver::start(0, Some(tap_tx)).await?;

    let dir = std::env::temp_dir().join(format!("fhir-bridge-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let text = TEMPLATE
        .replace("{fhir}", &sandbox.base_url())
        .replace("{receiver}", receiver.url("").trim_end_matches('/'))
        .replace(
            "{state}",
            &dir.join("state").display().to_string().replace('\\', "/"),
        );
    let config_path = dir.join("demo.toml");
    std::fs::write(&config_path, &text)?;
    let config = Config::load(&config_path)?;

    let banner = print(&format!(
        "fhir-bridge demo\n  sandbox EHR  {}  (writing ~{} synthetic resources/s)\n  \
         receiver     {}\n  config       {}\n  \
         hooks        critical-labs (Observations flagged HH/LL), encounters (id-only)\n\
         Webhooks appear below as they arrive. Ctrl-C to stop.\n\n",
        sandbox.base_url(),
        opts.rate,
        receiver.url("hooks/"),
        config_path.display()
    ));
    if let Err(e) = banner {
        let _ = std::fs::remove_dir_all(&dir);
        return Err(e.into());
    }

    let stop = cancel.child_token();
    let gen_task = tokio::spawn(generator::run(
        sandbox.store.clone(),
        opts.rate,
        42,
        stop.clone(),
    ));
    let daemon = tokio::spawn(crate::daemon::run(config, stop.clone()));
    let started = Instant::now();
    let deadline = opts.duration.map(|d| tokio::time::Instant::now() + d);

    let mut per_hook: BTreeMap<String, usize> = BTreeMap::new();
    // A failed write (a closed pipe, a full disk) stops the demo cleanly.
    let mut output = Ok(());
    while output.is_ok() {
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            Some(rec) = tap_rx.recv() => {
                let hook = rec.path.rsplit('/').next().unwrap_or("").to_string();
                let detail = rec.body.pointer("/resource/interpretation/0/coding/0/code")
                    .and_then(|v| v.as_str())
                    .map(|c| format!("  interpretation {c}"))
                    .unwrap_or_default();
                output = print(&format!(
                    "{:>7.1}s  -> {:<14} {:<7} {:<22} v{:<3} message_id {}{}\n",
                    started.elapsed().as_secs_f64(), hook, rec.event, rec.resource_id,
                    rec.version_id.as_deref().unwrap_or("-"), rec.message_id, detail
                ));
                *per_hook.entry(hook).or_default() += 1;
            }
            _ = sleep => break,
            _ = cancel.cancelled() => break,
        }
    }
    stop.cancel();
    let _ = gen_task.await;
    match daemon.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e.into()),
        Err(e) => return Err(anyhow::anyhow!("pipeline task failed: {e}")),
    }
    let _ = std::fs::remove_dir_all(&dir);
    output?;
    let total: usize = per_hook.values().sum();
    let mut summary = format!(
        "\n{total} webhook(s) in {:.1}s:\n",
        started.elapsed().as_secs_f64()
    );
    for (hook, n) in &per_hook {
        summary.push_str(&format!("  {hook:<14} {n}\n"));
    }
    print(&summary)?;
    Ok(total)
}
