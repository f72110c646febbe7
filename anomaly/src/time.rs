//! Calendar arithmetic on unix milliseconds without a date crate: formatting timestamps for alerts and corpus
//! files, and reading the timestamp column of a CSV so a series' sampling interval (and with it the length of a
//! day in rows) is known to the scorer.

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// (year, month, day) of a day count since 1970-01-01 (Howard Hinnant's `civil_from_days`).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Unix ms as RFC 3339 UTC (`2024-01-02T03:04:05.678Z`).
pub fn rfc3339(ms: i64) -> String {
    let (date, sod, millis) = split(ms);
    format!("{date}T{:02}:{:02}:{:02}.{millis:03}Z", sod / 3600, sod % 3600 / 60, sod % 60)
}

/// Unix ms as `YYYY-MM-DD HH:MM:SS` (UTC), the timestamp form of many operations datasets.
pub fn plain_datetime(ms: i64) -> String {
    let (date, sod, _) = split(ms);
    format!("{date} {:02}:{:02}:{:02}", sod / 3600, sod % 3600 / 60, sod % 60)
}

fn split(ms: i64) -> (String, i64, i64) {
    let secs = ms.div_euclid(1000);
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    (format!("{y:04}-{m:02}-{d:02}"), secs.rem_euclid(86_400), ms.rem_euclid(1000))
}

/// Reads a timestamp as operations data writes them: `YYYY-MM-DD HH:MM:SS` or RFC 3339
/// (`T` separator, optional fraction, `Z` or a numeric offset), or a plain number of unix seconds (or
/// milliseconds when it is too large to be seconds). `None` when the text is none of these.
pub fn parse_timestamp(text: &str) -> Option<i64> {
    let s = text.trim().trim_matches('"');
    if let Ok(n) = s.parse::<f64>() {
        if !n.is_finite() {
            return None;
        }
        // 1e11 s is the year 5138; anything larger is a millisecond count.
        return Some(if n.abs() >= 1e11 { n as i64 } else { (n * 1000.0) as i64 });
    }
    let b = s.as_bytes();
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r).and_then(|t| t.parse::<u32>().ok());
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) {
        return None;
    }
    let mut ms = days_from_civil(i64::from(y), mo, d) * 86_400_000;
    if b.len() == 10 {
        return Some(ms);
    }
    if !matches!(b[10], b' ' | b'T') || b.len() < 16 || b[13] != b':' {
        return None;
    }
    let (h, mi) = (num(11..13)?, num(14..16)?);
    let mut sec = 0u32;
    let mut rest = &s[16..];
    if let Some(r) = rest.strip_prefix(':') {
        sec = r.get(0..2).and_then(|t| t.parse().ok())?;
        rest = &r[2..];
    }
    if h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    ms += i64::from(h * 3600 + mi * 60 + sec) * 1000;
    if let Some(r) = rest.strip_prefix('.') {
        let digits: String = r.chars().take_while(char::is_ascii_digit).collect();
        let frac: f64 = format!("0.{digits}").parse().ok()?;
        ms += (frac * 1000.0).round() as i64;
        rest = &r[digits.len()..];
    }
    match rest {
        "" | "Z" | "z" => Some(ms),
        offset if offset.len() == 6 && matches!(&offset[..1], "+" | "-") && &offset[3..4] == ":" => {
            let oh = offset.get(1..3)?.parse::<i64>().ok()?;
            let om = offset.get(4..6)?.parse::<i64>().ok()?;
            let sign = if offset.starts_with('-') { -1 } else { 1 };
            Some(ms - sign * (oh * 3600 + om * 60) * 1000)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_dates_both_ways() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(rfc3339(1_700_000_000_000), "2023-11-14T22:13:20.000Z");
        assert_eq!(plain_datetime(1_700_000_000_000), "2023-11-14 22:13:20");
        for ms in [0, 951_782_400_000, 1_700_000_000_000, -86_400_000] {
            assert_eq!(parse_timestamp(&plain_datetime(ms)), Some(ms));
            assert_eq!(parse_timestamp(&rfc3339(ms)), Some(ms));
        }
    }

    #[test]
    fn timestamp_forms() {
        assert_eq!(parse_timestamp("2014-04-01 00:05:00"), Some(1_396_310_700_000));
        assert_eq!(parse_timestamp("2014-04-01T00:05:00+01:00"), Some(1_396_307_100_000));
        assert_eq!(parse_timestamp("2014-04-01T00:05"), Some(1_396_310_700_000));
        assert_eq!(parse_timestamp("1396310700"), Some(1_396_310_700_000));
        assert_eq!(parse_timestamp("1396310700000"), Some(1_396_310_700_000));
        assert_eq!(parse_timestamp("\"2014-04-01\""), Some(1_396_310_400_000));
        for bad in ["", "yesterday", "2014-13-01", "2014-04-01 25:00:00", "2014-04-01 00:05:00 junk", "NaN"] {
            assert_eq!(parse_timestamp(bad), None, "{bad}");
        }
    }
}
