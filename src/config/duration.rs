//! Human-friendly durations in the config file ("30s", "5m", "2h").

use serde::{Deserialize, Deserializer};
use std::time::Duration;

/// Longer durations are refused: they would overflow date arithmetic.
const MAX: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// A `std::time::Duration` that deserializes from a humantime string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let dur = humantime::parse_duration(&text)
            .map_err(|e| serde::de::Error::custom(format!("invalid duration `{text}`: {e}")))?;
        if dur > MAX {
            return Err(serde::de::Error::custom(format!(
                "duration `{text}` is too long (at most 100 years)"
            )));
        }
        Ok(HumanDuration(dur))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct T {
        d: HumanDuration,
    }

    #[test]
    fn parses_humantime() {
        let t: T = toml::from_str("d = \"2m\"").unwrap();
        assert_eq!(t.d.0, Duration::from_secs(120));
        assert!(toml::from_str::<T>("d = \"soon\"").is_err());
        assert!(toml::from_str::<T>("d = \"300000y\"").is_err());
    }
}
