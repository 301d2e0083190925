//! The names of the gauges whose truth lives in the state (outbox and
//! dead-letter depth, oldest pending age, a hook disabled, watermark lag; the
//! collector that sets them is `admin::gauges`), and the process' build info
//! and start time.

use chrono::Utc;
use metrics::gauge;

pub const OUTBOX_PENDING: &str = "fhir_bridge_outbox_pending";
pub const DEAD_LETTERS: &str = "fhir_bridge_dead_letters";
pub const OLDEST_PENDING_AGE: &str = "fhir_bridge_oldest_pending_age_seconds";
pub const HOOK_DISABLED: &str = "fhir_bridge_hook_disabled";
pub const WATERMARK_LAG: &str = "fhir_bridge_watermark_lag_seconds";
pub const BUILD_INFO: &str = "fhir_bridge_build_info";
pub const START_TIME: &str = "fhir_bridge_start_time_seconds";

pub(super) fn set_process_info() {
    gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    gauge!(START_TIME).set(Utc::now().timestamp_millis() as f64 / 1000.0);
}
