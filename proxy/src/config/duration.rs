//! Human-written durations and sizes ("250ms", "5s", "32MiB") as they appear in the config file.
//!
//! They parse during deserialisation so that a bad value is reported by the TOML parser with its key and line.

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::time::Duration;

/// A duration written as a number and a unit (`ms`, `s`, `m`, `h`), e.g. `"250ms"` or `"1.5s"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct HumanDuration(pub Duration);

/// Parses "250ms", "5s", "1.5s", "2m", "1h"; a bare number is refused because its unit would be a guess.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("duration {text:?} has no unit (use ms, s, m or h)"))?;
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().map_err(|_| format!("duration {text:?} does not start with a number"))?;
    let seconds = match unit.trim() {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        other => return Err(format!("duration {text:?} has unknown unit {other:?} (use ms, s, m or h)")),
    };
    if !seconds.is_finite() || !(0.0..=1e9).contains(&seconds) {
        return Err(format!("duration {text:?} is out of range"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// Formats a duration the way the config file writes it, so `GET /config` round-trips.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse_duration(&text).map(HumanDuration).map_err(de::Error::custom)
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format_duration(self.0))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_duration(self.0))
    }
}

/// A byte size written as a number and a unit (`B`, `KiB`, `MiB`, `GiB`), e.g. `"32MiB"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ByteSize(pub u64);

/// Parses "64KiB", "32MiB", "1GiB", "512B" (and the SI forms kB/MB/GB).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: u64 = match number.parse() {
        Ok(value) => value,
        Err(_) if number.is_empty() => return Err(format!("size {text:?} does not start with a whole number")),
        Err(_) => return Err(format!("size {text:?} is too large")),
    };
    // Units as nginx (k, m, g: binary) and as the SI and IEC prefixes are written, in any case.
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "kb" => 1000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        _ => {
            return Err(format!(
                "size {text:?} has unknown unit {:?} (use B, KiB, MiB, GiB, or k, m, g as nginx does)",
                unit.trim()
            ))
        }
    };
    value.checked_mul(factor).ok_or_else(|| format!("size {text:?} is too large"))
}

/// A size as written: a string with a unit, or a bare number of bytes (`max_request_body = 1048576`, as nginx
/// takes `client_max_body_size 1048576`).
#[derive(Deserialize)]
#[serde(untagged)]
enum SizeText {
    Bytes(u64),
    Text(String),
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match SizeText::deserialize(deserializer) {
            Ok(SizeText::Bytes(n)) => Ok(ByteSize(n)),
            Ok(SizeText::Text(text)) => parse_size(&text).map(ByteSize).map_err(de::Error::custom),
            Err(_) => Err(de::Error::custom("expected a size: a number of bytes or a string such as \"64KiB\"")),
        }
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format!("{}B", self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("ms").is_err());
    }

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_size("32MiB"), Ok(32 << 20));
        assert_eq!(parse_size("512"), Ok(512));
        assert!(parse_size("12 furlongs").is_err());
        assert_eq!(parse_size("1m"), Ok(1 << 20), "nginx's units");
        assert_eq!(parse_size("1mb"), Ok(1_000_000));
        assert_eq!(parse_size("10KiB"), parse_size("10kib"));
        assert!(parse_size("99999999999999999999").is_err_and(|e| e.contains("too large")));
        assert!(parse_size("99999999999999GiB").is_err());
    }
}
