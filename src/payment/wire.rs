//! The Payment scheme's encodings: unpadded base64url (decoded strictly, so one payload has one
//! spelling), RFC 9110 quoted-strings, and RFC 3339 UTC timestamps.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

pub fn base64url_encode(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Decodes base64url, padded or not. Nothing else passes: no other alphabet, no whitespace, no
/// padding that does not complete a quantum, no stray bits in the last character. A lenient
/// decoder gives one payload several spellings, and the spellings are compared and hashed as text.
pub fn base64url_decode(text: &str) -> Option<Vec<u8>> {
    let unpadded = text.trim_end_matches('=');
    let padding = text.len().saturating_sub(unpadded.len());
    if padding > 2 || (padding > 0 && text.len() % 4 != 0) {
        return None;
    }
    // The engine refuses other characters, internal padding and non-zero trailing bits.
    URL_SAFE_NO_PAD.decode(unpadded).ok()
}

/// `value` as an RFC 9110 quoted-string: `"` and `\` become quoted-pairs; control characters other
/// than tab cannot be carried at all and are dropped, so no value can split a header.
pub fn quoted(value: &str) -> String {
    let mut out = String::with_capacity(value.len().saturating_add(2));
    out.push('"');
    for c in value.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            '\t' => out.push(c),
            c if c.is_ascii_control() => {}
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Whether a value survives [`quoted`] unchanged on the way back (no control character but tab).
pub fn is_quotable(value: &str) -> bool {
    value.chars().all(|c| c == '\t' || !c.is_ascii_control())
}

const SECONDS_PER_DAY: u64 = 86_400;

/// Unix seconds as `YYYY-MM-DDTHH:MM:SSZ`.
#[allow(clippy::arithmetic_side_effects)] // divisions and remainders by non-zero constants
pub fn rfc3339(unix: u64) -> String {
    let days = unix / SECONDS_PER_DAY;
    let rest = unix % SECONDS_PER_DAY;
    let (year, month, day) = civil_from_days(days);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rest / 3600, rest % 3600 / 60, rest % 60)
}

/// Reads the timestamps [`rfc3339`] writes (UTC, `Z`, whole seconds); `None` for anything else.
#[allow(clippy::arithmetic_side_effects)] // fields bounded by the checks below
pub fn parse_rfc3339(text: &str) -> Option<u64> {
    let b = text.as_bytes();
    let shape_ok = b.len() == 20
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T',
            13 | 16 => *c == b':',
            19 => *c == b'Z',
            _ => c.is_ascii_digit(),
        });
    if !shape_ok {
        return None;
    }
    let number = |range: std::ops::Range<usize>| text.get(range).and_then(|s| s.parse::<u64>().ok());
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    let (hour, minute, second) = (number(11..13)?, number(14..16)?, number(17..19)?);
    if !(1970..=9999).contains(&year) || !(1..=12).contains(&month) || hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let days = days_from_civil(year, month, day)?;
    // Round trip: refuses 2026-02-30 and the like.
    (civil_from_days(days) == (year, month, day)).then(|| days * SECONDS_PER_DAY + hour * 3600 + minute * 60 + second)
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
/// Every operand stays far inside u64 for days below 2^64 / 86400.
#[allow(clippy::arithmetic_side_effects)]
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// The inverse of [`civil_from_days`], for years 1970-9999 and days 1-31.
#[allow(clippy::arithmetic_side_effects)]
fn days_from_civil(year: u64, month: u64, day: u64) -> Option<u64> {
    if !(1..=31).contains(&day) {
        return None;
    }
    let year = if month <= 2 { year - 1 } else { year };
    let era = year / 400;
    let yoe = year % 400;
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    (era * 146_097 + doe).checked_sub(719_468)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url_is_strict_but_takes_padding() {
        assert_eq!(base64url_encode(&[0xff, 0xfe]), "__4");
        assert_eq!(base64url_decode("aGVsbG8=").as_deref(), Some(&b"hello"[..]));
        assert_eq!(base64url_decode("").as_deref(), Some(&b""[..]));
        for bad in ["AB", "aGVs\nbG8", "a+b/", "aGV=bG8", "aGVsbG8===", "aGVsbG=", "aGVsb", "!!!"] {
            assert_eq!(base64url_decode(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn quoted_strings_escape_and_never_split_a_header() {
        assert_eq!(quoted(r#"a "b" \c"#), r#""a \"b\" \\c""#);
        assert_eq!(quoted("x\r\ny\tz"), "\"xy\tz\"");
        assert!(!is_quotable("a\nb"));
        assert!(is_quotable("café\t"));
    }

    #[test]
    fn timestamps_round_trip() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_773_576_300), "2026-03-15T12:05:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        for t in [0, 951_782_400, 1_773_576_300, 4_102_444_799, 253_402_300_799] {
            assert_eq!(parse_rfc3339(&rfc3339(t)), Some(t));
        }
        for bad in
            ["2026-02-30T00:00:00Z", "2026-03-15T12:05:00+00:00", "2026-03-15T24:00:00Z", "2026-3-15T12:05:00Z", ""]
        {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }
}
