//! `fhir-bridge dlq list|redrive|purge`: the dead-letter queue, without SQL.

use super::fmt_ms;
use crate::state::DeadLetter;
use std::fmt::Write;

pub fn render_list(items: &[DeadLetter]) -> String {
    if items.is_empty() {
        return "The dead-letter queue is empty.\n".into();
    }
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{:>8}  {:<20} {:<32} {:<8} {:>8}  {:<20}  {:<36}  LAST ERROR",
        "ID", "HOOK", "RESOURCE", "EVENT", "ATTEMPTS", "DEAD SINCE", "MESSAGE ID"
    );
    for d in items {
        let res = match &d.version_id {
            Some(v) => format!("{}/{} v{}", d.resource_type, d.resource_id, v),
            None => format!("{}/{}", d.resource_type, d.resource_id),
        };
        let _ = writeln!(
            o,
            "{:>8}  {:<20} {:<32} {:<8} {:>8}  {:<20}  {:<36}  {}",
            d.id,
            d.hook,
            res,
            d.event,
            d.attempts,
            d.dead_at_ms.map(fmt_ms).unwrap_or_default(),
            d.message_id,
            d.last_error.as_deref().unwrap_or("")
        );
    }
    let _ = writeln!(o, "{} dead letter(s)", items.len());
    o
}
