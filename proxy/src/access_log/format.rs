//! How a line reads: one JSON object, or nginx's and Apache's `combined` format.

use super::Entry;
use crate::forward::headers::protocol_name as version_text;
use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

fn unix_ms(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// One JSON object a line, every field, in the order a reader looks for them. Written directly rather than
/// through `serde_json::Value` (a map and a string for each of eighteen fields, on a thread that shares two
/// cores with the workers).
pub(super) fn json_line(e: &Entry, listener: &str, out: &mut String) {
    out.push_str("{\"time\":\"");
    out.push_str(&portico_anomaly::time::rfc3339(unix_ms(e.time)));
    out.push_str("\",\"listener\":");
    json_str(out, listener);
    let _ = write!(out, ",\"client\":\"{}\",\"method\":", e.client);
    json_str(out, &e.method);
    out.push_str(",\"target\":");
    json_str(out, &e.target);
    let _ = write!(out, ",\"protocol\":\"{}\",\"host\":", version_text(e.version));
    json_opt(out, e.host.as_deref());
    let _ = write!(
        out,
        ",\"status\":{},\"bytes_sent\":{},\"complete\":{},\"duration_ms\":{:.3},\"upstream\":",
        e.status,
        e.bytes,
        e.complete,
        e.duration_us as f64 / 1000.0
    );
    json_opt(out, e.upstream.as_deref());
    out.push_str(",\"endpoint\":");
    json_opt(out, e.endpoint.as_deref());
    out.push_str(",\"upstream_response_ms\":");
    match e.upstream_time_us {
        Some(us) => {
            let _ = write!(out, "{:.3}", us as f64 / 1000.0);
        }
        None => out.push_str("null"),
    }
    out.push_str(",\"user_agent\":");
    json_opt(out, e.user_agent.as_deref());
    out.push_str(",\"referer\":");
    json_opt(out, e.referer.as_deref());
    out.push_str(",\"request_id\":");
    json_str(out, &e.request_id);
    out.push_str(",\"trace_id\":");
    json_str(out, &e.trace_id);
    out.push_str("}\n");
}

fn json_opt(out: &mut String, text: Option<&str>) {
    match text {
        Some(text) => json_str(out, text),
        None => out.push_str("null"),
    }
}

/// A JSON string: `"`, `\` and control characters escaped (RFC 8259 §7), the rest as it is.
fn json_str(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c < ' ' || c == '\u{7f}' => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// nginx's and Apache's `combined` format, which log analysers read as it is:
/// `client - - [time] "request" status bytes "referer" "user agent"`.
pub(super) fn combined_line(e: &Entry, out: &mut String) {
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let secs = unix_ms(e.time).div_euclid(1000);
    let (y, m, d) = portico_anomaly::time::civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    let month = MONTHS[(m as usize).saturating_sub(1) % 12];
    let _ = write!(
        out,
        "{} - - [{d:02}/{month}/{y:04}:{:02}:{:02}:{:02} +0000] \"",
        e.client.ip(),
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    );
    quoted(out, &e.method);
    out.push(' ');
    quoted(out, &e.target);
    out.push(' ');
    out.push_str(version_text(e.version));
    let _ = write!(out, "\" {} {} \"", e.status, e.bytes);
    quoted(out, e.referer.as_deref().unwrap_or("-"));
    out.push_str("\" \"");
    quoted(out, e.user_agent.as_deref().unwrap_or("-"));
    out.push_str("\"\n");
}

/// Writes `text` for a double-quoted field, escaped as nginx escapes it: `"`, `\` and bytes outside printable
/// ASCII as `\xHH`, so a client cannot forge a line or a field.
fn quoted(out: &mut String, text: &str) {
    for b in text.bytes() {
        match b {
            b'"' | b'\\' | 0..=0x1f | 0x7f.. => {
                let _ = write!(out, "\\x{b:02X}");
            }
            _ => out.push(b as char),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn entry() -> Entry {
        Entry {
            time: UNIX_EPOCH + Duration::from_millis(1_764_936_000_123),
            started: Instant::now(),
            client: "127.0.0.1:5000".parse().expect("address"),
            method: "GET".into(),
            target: "/a?b=\"c\"".into(),
            version: http::Version::HTTP_11,
            host: Some("example.test".into()),
            user_agent: Some("curl/8\n\u{e9}".into()),
            referer: None,
            request_id: "r1".into(),
            trace_id: "t1".into(),
            status: 200,
            bytes: 12,
            complete: true,
            duration_us: 1500,
            upstream: Some("app".into()),
            endpoint: Some("127.0.0.1:8081".into()),
            upstream_time_us: Some(1000),
        }
    }

    #[test]
    fn combined_lines_escape_what_a_client_sent() {
        let mut line = String::new();
        combined_line(&entry(), &mut line);
        assert_eq!(
            line,
            "127.0.0.1 - - [05/Dec/2025:12:00:00 +0000] \"GET /a?b=\\x22c\\x22 HTTP/1.1\" 200 12 \"-\" \"curl/8\\x0A\\xC3\\xA9\"\n"
        );
    }

    #[test]
    fn json_lines_are_one_object_each() {
        let mut line = String::new();
        json_line(&entry(), "web", &mut line);
        assert!(line.ends_with('\n') && !line[..line.len() - 1].contains('\n'), "{line}");
        let value: serde_json::Value = serde_json::from_str(&line).expect("json");
        assert_eq!(value["time"], "2025-12-05T12:00:00.123Z");
        assert_eq!(value["status"], 200);
        assert_eq!(value["duration_ms"], 1.5);
        assert_eq!(value["endpoint"], "127.0.0.1:8081");
        assert_eq!(value["user_agent"], "curl/8\n\u{e9}");
        assert_eq!(value["target"], "/a?b=\"c\"");
        assert_eq!(value["referer"], serde_json::Value::Null);
        assert!(line.starts_with("{\"time\":"), "{line}");
        // Every control character survives the round trip.
        let mut odd = entry();
        odd.target = (0u8..0x20).map(char::from).chain("\u{7f}\\\"".chars()).collect();
        let mut line = String::new();
        json_line(&odd, "web", &mut line);
        let value: serde_json::Value = serde_json::from_str(&line).expect("json");
        assert_eq!(value["target"].as_str(), Some(odd.target.as_str()));
    }
}
