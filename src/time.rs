//! Event time: RFC 3339 parsing and the contract's output format.
//!
//! Times are Unix epoch milliseconds (`Millis`) everywhere inside pretext.

use chrono::{DateTime, Datelike, Timelike};

use crate::event::Millis;

/// Parses an RFC 3339 time with a mandatory offset (`Z` or `±hh:mm`);
/// fractional seconds below the millisecond are truncated toward the past.
pub fn parse_rfc3339(s: &str) -> Option<Millis> {
    let t = DateTime::parse_from_rfc3339(s).ok()?;
    let secs = t.timestamp();
    let millis = i64::from(t.timestamp_subsec_millis());
    secs.checked_mul(1000)?.checked_add(millis)
}

/// Formats as RFC 3339 in UTC with `Z`, with milliseconds only when they
/// are not zero: `2026-11-22T10:15:00Z`, `2026-11-22T10:15:00.250Z`.
pub fn format_ts(ms: Millis) -> String {
    let Some(t) = DateTime::from_timestamp_millis(ms) else {
        // Outside chrono's range (about ±262,000 years): no event gets here,
        // since parsing has the same range.
        return ms.to_string();
    };
    let (y, mo, d) = (t.year(), t.month(), t.day());
    let (h, mi, s) = (t.hour(), t.minute(), t.second());
    let frac = ms.rem_euclid(1000);
    if frac == 0 {
        format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
    } else {
        format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{frac:03}Z")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_name_the_same_instant() {
        let z = parse_rfc3339("2026-11-22T10:15:00Z").unwrap();
        assert_eq!(parse_rfc3339("2026-11-22T11:15:00+01:00"), Some(z));
        assert_eq!(parse_rfc3339("2026-11-22T05:15:00-05:00"), Some(z));
        assert_eq!(z, 1_795_342_500_000);
    }

    #[test]
    fn a_time_without_offset_or_junk_is_rejected() {
        for bad in [
            "2026-11-22T10:15:00",
            "2026-11-22",
            "yesterday",
            "",
            "2026-13-01T00:00:00Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn fractions_truncate_to_milliseconds() {
        let base = parse_rfc3339("2026-11-22T10:15:00Z").unwrap();
        assert_eq!(parse_rfc3339("2026-11-22T10:15:00.2509Z"), Some(base + 250));
        assert_eq!(parse_rfc3339("2026-11-22T10:15:00.5Z"), Some(base + 500));
    }

    #[test]
    fn formatting_shows_milliseconds_only_when_not_zero() {
        assert_eq!(format_ts(1_795_342_500_000), "2026-11-22T10:15:00Z");
        assert_eq!(format_ts(1_795_342_500_250), "2026-11-22T10:15:00.250Z");
        assert_eq!(format_ts(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_ts(-1), "1969-12-31T23:59:59.999Z");
    }

    #[test]
    fn formatting_round_trips() {
        for ms in [0, 1, 999, 1_795_342_500_250, -86_400_001] {
            assert_eq!(parse_rfc3339(&format_ts(ms)), Some(ms));
        }
    }
}
