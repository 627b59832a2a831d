//! Event time: RFC 3339 parsing and the contract's output format.
//!
//! Times are Unix epoch milliseconds (`Millis`) everywhere inside pretext.
//! Both directions are written by hand on the proleptic Gregorian calendar
//! (Howard Hinnant's `days_from_civil` and `civil_from_days`, see
//! <https://howardhinnant.github.io/date_algorithms.html>): parsing runs once
//! per event with a string `ts` and formatting once per trigger time, and a
//! general date library's parser also accepts forms RFC 3339 does not (a
//! space separator, a Unicode minus sign in the offset).

use std::fmt::Write as _;

use crate::event::Millis;

/// The earliest time an input may carry: `0000-01-01T00:00:00Z`, the first
/// instant with a four-digit year, as RFC 3339 requires.
pub const MIN_MILLIS: Millis = -62_167_219_200_000;

/// The latest time an input may carry: `9999-12-31T23:59:59.999Z`.
pub const MAX_MILLIS: Millis = 253_402_300_799_999;

const MS_PER_DAY: i64 = 86_400_000;

/// Parses an RFC 3339 date-time with a mandatory offset (`Z`, `z` or
/// `±hh:mm`): `2026-11-22T10:15:00Z`, `2026-11-22t11:15:00.25+01:00`.
///
/// Fractional seconds may have any number of digits; those below the
/// millisecond are truncated toward the past. A leap second (`:60`) is read
/// as the first second of the next minute. Anything else (no offset, a space
/// instead of `T`, an impossible date, surrounding blanks) is `None`.
pub fn parse_rfc3339(s: &str) -> Option<Millis> {
    let b = s.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let year = digits(&b[0..4])?;
    let month = digits(&b[5..7])?;
    let day = digits(&b[8..10])?;
    let hour = digits(&b[11..13])?;
    let minute = digits(&b[14..16])?;
    let second = digits(&b[17..19])?;
    if !(1..=12).contains(&month)
        || day == 0
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut rest = &b[19..];
    let mut millis = 0;
    if let [b'.', fraction @ ..] = rest {
        let n = fraction.iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 {
            return None;
        }
        // The first three digits, padded with zeros: `.5` is 500 ms.
        for i in 0..3 {
            let digit = fraction[..n].get(i).map_or(0, |c| i64::from(c - b'0'));
            millis = millis * 10 + digit;
        }
        rest = &fraction[n..];
    }
    let offset = match rest {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let hours = digits(&[*h1, *h2])?;
            let minutes = digits(&[*m1, *m2])?;
            if hours > 23 || minutes > 59 {
                return None;
            }
            let offset = hours * 3600 + minutes * 60;
            if *sign == b'-' {
                -offset
            } else {
                offset
            }
        }
        _ => return None,
    };
    let secs =
        days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second - offset;
    Some(secs * 1000 + millis)
}

/// Formats as RFC 3339 in UTC with `Z`, with milliseconds only when they
/// are not zero: `2026-11-22T10:15:00Z`, `2026-11-22T10:15:00.250Z`.
///
/// Every `Millis` formats; a year outside 0000–9999 (never one of an
/// accepted input, see `MIN_MILLIS`) is written with its sign, as ISO 8601's
/// expanded years are.
pub fn format_ts(ms: Millis) -> String {
    let (year, month, day) = civil_from_days(ms.div_euclid(MS_PER_DAY));
    let in_day = ms.rem_euclid(MS_PER_DAY);
    let secs = in_day / 1000;
    let frac = in_day % 1000;
    let mut out = String::with_capacity(24);
    if (0..=9999).contains(&year) {
        push_digits(&mut out, year, 4);
    } else {
        // Writing to a String cannot fail.
        let _ = write!(out, "{year:+05}");
    }
    out.push('-');
    push_digits(&mut out, month, 2);
    out.push('-');
    push_digits(&mut out, day, 2);
    out.push('T');
    push_digits(&mut out, secs / 3600, 2);
    out.push(':');
    push_digits(&mut out, secs / 60 % 60, 2);
    out.push(':');
    push_digits(&mut out, secs % 60, 2);
    if frac != 0 {
        out.push('.');
        push_digits(&mut out, frac, 3);
    }
    out.push('Z');
    out
}

/// The value of ASCII decimal digits, or `None` if one is not a digit.
fn digits(b: &[u8]) -> Option<i64> {
    b.iter().try_fold(0, |acc, &c| {
        c.is_ascii_digit().then(|| acc * 10 + i64::from(c - b'0'))
    })
}

/// Appends the `width` lowest decimal digits of a non-negative `v`.
fn push_digits(out: &mut String, v: i64, width: u32) {
    for i in (0..width).rev() {
        let digit = (v / 10_i64.pow(i) % 10) as u8;
        out.push(char::from(b'0' + digit));
    }
}

fn is_leap(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12; // March is 0: the leap day ends the year
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The proleptic Gregorian date `days` after 1970-01-01; exact for every
/// day count an `i64` of milliseconds can reach.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Millis = 1_795_342_500_000; // 2026-11-22T10:15:00Z

    #[test]
    fn offsets_name_the_same_instant() {
        assert_eq!(parse_rfc3339("2026-11-22T10:15:00Z"), Some(T));
        assert_eq!(parse_rfc3339("2026-11-22T10:15:00z"), Some(T));
        assert_eq!(parse_rfc3339("2026-11-22t10:15:00Z"), Some(T));
        assert_eq!(parse_rfc3339("2026-11-22T10:15:00+00:00"), Some(T));
        assert_eq!(parse_rfc3339("2026-11-22T10:15:00-00:00"), Some(T));
        assert_eq!(parse_rfc3339("2026-11-22T11:15:00+01:00"), Some(T));
        assert_eq!(parse_rfc3339("2026-11-22T05:15:00-05:00"), Some(T));
        assert_eq!(parse_rfc3339("2026-11-22T15:45:00+05:30"), Some(T));
        assert_eq!(parse_rfc3339("2026-11-23T10:14:00+23:59"), Some(T));
        // Across a day, a month and a year boundary.
        assert_eq!(
            parse_rfc3339("2026-12-31T23:30:00-01:00"),
            parse_rfc3339("2027-01-01T00:30:00Z")
        );
    }

    #[test]
    fn a_time_without_offset_or_junk_is_rejected() {
        for bad in [
            "2026-11-22T10:15:00",
            "2026-11-22T10:15:00.250",
            "2026-11-22",
            "2026-11-22T10:15Z",
            "2026-11-22 10:15:00Z",
            "2026-11-22T10:15:00 Z",
            " 2026-11-22T10:15:00Z",
            "2026-11-22T10:15:00Z ",
            "2026-11-22T10:15:00ZZ",
            "2026-11-22T10:15:00.Z",
            "2026-11-22T10:15:00,5Z",
            "2026-11-22T10:15:00+01",
            "2026-11-22T10:15:00+0100",
            "2026-11-22T10:15:00+01:0",
            "2026-11-22T10:15:00+24:00",
            "2026-11-22T10:15:00+01:60",
            "2026-11-22T10:15:00\u{2212}01:00",
            "2026-11-22T10:15:00UTC",
            "+2026-11-22T10:15:00Z",
            "20261-11-22T10:15:00Z",
            "2026-1-22T10:15:00Z",
            "2026-13-01T00:00:00Z",
            "2026-00-01T00:00:00Z",
            "2026-11-00T00:00:00Z",
            "2026-11-31T00:00:00Z",
            "2026-02-29T00:00:00Z",
            "1900-02-29T00:00:00Z",
            "2026-11-22T24:00:00Z",
            "2026-11-22T10:60:00Z",
            "2026-11-22T10:15:61Z",
            "2026-11-22T1a:15:00Z",
            "２026-11-22T10:15:00Z",
            "yesterday",
            "",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn calendar_edges_are_accepted() {
        assert!(parse_rfc3339("2024-02-29T00:00:00Z").is_some());
        assert!(parse_rfc3339("2000-02-29T00:00:00Z").is_some());
        assert_eq!(parse_rfc3339("0000-01-01T00:00:00Z"), Some(MIN_MILLIS));
        assert_eq!(parse_rfc3339("9999-12-31T23:59:59.999Z"), Some(MAX_MILLIS));
        // A leap second is the first second of the next minute.
        assert_eq!(
            parse_rfc3339("2016-12-31T23:59:60.5Z"),
            parse_rfc3339("2017-01-01T00:00:00.5Z")
        );
    }

    #[test]
    fn fractions_truncate_to_milliseconds() {
        assert_eq!(parse_rfc3339("2026-11-22T10:15:00.2509Z"), Some(T + 250));
        assert_eq!(parse_rfc3339("2026-11-22T10:15:00.5Z"), Some(T + 500));
        assert_eq!(parse_rfc3339("2026-11-22T10:15:00.05Z"), Some(T + 50));
        assert_eq!(parse_rfc3339("2026-11-22T10:15:00.000Z"), Some(T));
        assert_eq!(
            parse_rfc3339("2026-11-22T10:15:00.999999999999999Z"),
            Some(T + 999)
        );
        assert_eq!(parse_rfc3339("2026-11-22T11:15:00.001+01:00"), Some(T + 1));
        // Truncation is toward the past before 1970 too.
        assert_eq!(parse_rfc3339("1969-12-31T23:59:59.9999Z"), Some(-1));
        assert_eq!(parse_rfc3339("1969-12-31T23:59:59.0001Z"), Some(-1000));
    }

    #[test]
    fn times_before_1970_parse() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("1969-12-31T23:59:59Z"), Some(-1000));
        assert_eq!(parse_rfc3339("1970-01-01T00:30:00+01:00"), Some(-1_800_000));
        assert_eq!(
            parse_rfc3339("1900-01-01T00:00:00Z"),
            Some(-2_208_988_800_000)
        );
    }

    #[test]
    fn formatting_shows_milliseconds_only_when_not_zero() {
        assert_eq!(format_ts(T), "2026-11-22T10:15:00Z");
        assert_eq!(format_ts(T + 250), "2026-11-22T10:15:00.250Z");
        assert_eq!(format_ts(T + 1), "2026-11-22T10:15:00.001Z");
        assert_eq!(format_ts(T + 10), "2026-11-22T10:15:00.010Z");
        assert_eq!(format_ts(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_ts(-1), "1969-12-31T23:59:59.999Z");
        assert_eq!(format_ts(-1000), "1969-12-31T23:59:59Z");
        assert_eq!(format_ts(-2_208_988_800_000), "1900-01-01T00:00:00Z");
        assert_eq!(format_ts(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(format_ts(MIN_MILLIS), "0000-01-01T00:00:00Z");
        assert_eq!(format_ts(MAX_MILLIS), "9999-12-31T23:59:59.999Z");
    }

    #[test]
    fn formatting_never_fails_outside_four_digit_years() {
        assert_eq!(format_ts(MAX_MILLIS + 1), "+10000-01-01T00:00:00Z");
        assert_eq!(format_ts(MIN_MILLIS - 1), "-0001-12-31T23:59:59.999Z");
        assert!(format_ts(i64::MAX).ends_with('Z'));
        assert!(format_ts(i64::MIN).ends_with('Z'));
    }

    #[test]
    fn formatting_round_trips() {
        for ms in [
            0,
            1,
            999,
            T,
            T + 250,
            -1,
            -86_400_001,
            -62_135_596_800_000,
            MIN_MILLIS,
            MAX_MILLIS,
        ] {
            assert_eq!(parse_rfc3339(&format_ts(ms)), Some(ms), "{ms}");
        }
        // A walk over the whole range, in steps that hit every field.
        let mut ms = MIN_MILLIS;
        while ms <= MAX_MILLIS {
            assert_eq!(parse_rfc3339(&format_ts(ms)), Some(ms), "{ms}");
            ms += 1_234_567_890_123;
        }
    }

    #[test]
    fn agrees_with_chrono() {
        use chrono::{DateTime, SecondsFormat};
        let mut ms = MIN_MILLIS;
        while ms <= MAX_MILLIS {
            let Some(t) = DateTime::from_timestamp_millis(ms) else {
                panic!("{ms}")
            };
            let mut theirs = t.to_rfc3339_opts(SecondsFormat::Millis, true);
            if ms.rem_euclid(1000) == 0 {
                theirs = theirs.replace(".000Z", "Z");
            }
            assert_eq!(format_ts(ms), theirs);
            let offset = t.fixed_offset().with_timezone(
                &chrono::FixedOffset::east_opt(-(ms.rem_euclid(86_400) as i32 / 60 * 60))
                    .unwrap_or_else(|| panic!("{ms}")),
            );
            let text = offset.to_rfc3339_opts(SecondsFormat::Nanos, false);
            if text.len() == 35 {
                // Four-digit year after the offset is applied.
                assert_eq!(parse_rfc3339(&text), Some(ms), "{text}");
            }
            ms += 987_654_321_987;
        }
    }
}
