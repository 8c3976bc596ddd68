//! RFC 8785 JSON Canonicalization Scheme: the one spelling of a JSON value that the Payment scheme's
//! `request` and `opaque` parameters are made of, so that every implementation derives the same
//! bytes (and the same challenge id) from the same value.

use serde_json::Value;
use std::fmt::Write;

/// The canonical form of `value`: members sorted by their UTF-16 code units, no whitespace,
/// strings escaped as ECMAScript's `JSON.stringify` does and numbers written as its
/// `Number.prototype.toString` does.
pub fn canonical(value: &Value) -> String {
    let mut out = String::new();
    write_value(&mut out, value);
    out
}

fn write_value(out: &mut String, value: &Value) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        // Every JSON number is an IEEE double here, as in ECMAScript: big integers round.
        Value::Number(n) => write_number(out, n.as_f64().unwrap_or_default()),
        Value::String(s) => write_string(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(out, item);
            }
            out.push(']');
        }
        Value::Object(members) => {
            // The map iterates in code point order, which UTF-16's differs from only where names mix
            // supplementary characters with U+E000..U+FFFF: placing each member by binary search
            // keeps that case right without linking a sort, for objects of the gateway's own making.
            let mut sorted: Vec<(&String, &Value)> = Vec::with_capacity(members.len());
            for member in members {
                let at = sorted.partition_point(|(name, _)| name.encode_utf16().lt(member.0.encode_utf16()));
                sorted.insert(at, member);
            }
            out.push('{');
            for (i, (name, member)) in sorted.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(out, name);
                out.push(':');
                write_value(out, member);
            }
            out.push('}');
        }
    }
}

/// A JSON string as ECMAScript's `JSON.stringify` writes it.
pub(super) fn write_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// ECMAScript's Number-to-String: the shortest digits that read back as the same double, in
/// positional notation for decimal exponents in (-6, 21] and exponential notation otherwise.
fn write_number(out: &mut String, value: f64) {
    if value == 0.0 || !value.is_finite() {
        out.push('0');
        return;
    }
    if value < 0.0 {
        out.push('-');
    }
    // Rust's `{:e}` gives the shortest round-tripping digits: `d[.ddd]e<exponent>`.
    let scientific = format!("{:e}", value.abs());
    let (mantissa, exponent) = scientific.split_once('e').unwrap_or((scientific.as_str(), "0"));
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let k = i64::try_from(digits.len()).unwrap_or(i64::MAX);
    // The decimal point sits after `n` digits.
    let n = exponent.parse::<i64>().unwrap_or(0).saturating_add(1);
    let zeros = |count: i64| "0".repeat(usize::try_from(count).unwrap_or(0));
    if k <= n && n <= 21 {
        out.push_str(&digits);
        out.push_str(&zeros(n.saturating_sub(k)));
    } else if 0 < n && n <= 21 {
        let (whole, fraction) = digits.split_at(usize::try_from(n).unwrap_or(0).min(digits.len()));
        let _ = write!(out, "{whole}.{fraction}");
    } else if -6 < n && n <= 0 {
        let _ = write!(out, "0.{}{digits}", zeros(n.saturating_neg()));
    } else {
        let (first, rest) = digits.split_at(1.min(digits.len()));
        out.push_str(first);
        if !rest.is_empty() {
            let _ = write!(out, ".{rest}");
        }
        let e = n.saturating_sub(1);
        let _ = write!(out, "e{}{}", if e < 0 { '-' } else { '+' }, e.unsigned_abs());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn canon(text: &str) -> String {
        canonical(&serde_json::from_str(text).unwrap())
    }

    #[test]
    fn members_sort_by_utf16_code_units() {
        assert_eq!(
            canon(r#"{"b":1,"a":{"d":[2,{"z":0,"y":1}],"c":null}}"#),
            r#"{"a":{"c":null,"d":[2,{"y":1,"z":0}]},"b":1}"#
        );
        // U+10000 is a surrogate pair from U+D800: before U+E000, unlike its UTF-8 bytes.
        assert_eq!(canon("{\"\\ue000\":1,\"\\ud800\\udc00\":2}"), "{\"\u{10000}\":2,\"\u{e000}\":1}");
    }

    #[test]
    fn strings_escape_as_json_stringify() {
        assert_eq!(
            canonical(&json!("a\"b\\c\n\u{1}\u{7f}\u{2028}/<&>")),
            "\"a\\\"b\\\\c\\n\\u0001\u{7f}\u{2028}/<&>\""
        );
    }

    #[test]
    fn numbers_as_ecmascript_writes_them() {
        for (input, expected) in [
            ("0", "0"),
            ("-0.0", "0"),
            ("1.0", "1"),
            ("1e21", "1e+21"),
            ("1e20", "100000000000000000000"),
            ("1e-6", "0.000001"),
            ("1e-7", "1e-7"),
            ("-4.35", "-4.35"),
            ("123.456", "123.456"),
            ("9007199254740993", "9007199254740992"),
            ("1234567890123456789", "1234567890123456800"),
            ("5e-324", "5e-324"),
            ("1.7976931348623157e308", "1.7976931348623157e+308"),
        ] {
            assert_eq!(canon(input), expected, "{input}");
        }
    }
}
