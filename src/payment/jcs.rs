//! RFC 8785 JSON Canonicalization Scheme: the one spelling of a JSON value that the Payment scheme's
//! `request` and `opaque` parameters are made of, so that every implementation derives the same
//! bytes (and the same challenge id) from the same value.
//!
//! Numbers are canonical here only as integers ECMAScript holds exactly (|n| <= 2^53), written as
//! they are: the gateway canonicalizes its own values, which carry amounts as strings, and
//! re-rendering other numbers as ECMAScript does would link floating-point formatting for nothing.

use crate::json::{Json, Object};

/// Largest integer an IEEE double holds exactly, and so ECMAScript writes digit for digit.
const MAX_EXACT: u64 = 1 << 53;

/// The canonical form of `value`: members sorted by their UTF-16 code units, no whitespace,
/// strings escaped as ECMAScript's `JSON.stringify` does (as `Json` writes them); `None` if it
/// holds a number other than an exact integer in canonical form.
pub fn canonical(value: &Json) -> Option<String> {
    Some(in_canonical_order(value)?.text())
}

/// `value` with every object's members in UTF-16 order and every number as ECMAScript writes it.
fn in_canonical_order(value: &Json) -> Option<Json> {
    Some(match value {
        Json::Number(text) => Json::Number(exact_integer(text)?.to_owned()),
        Json::Array(items) => Json::Array(items.iter().map(in_canonical_order).collect::<Option<_>>()?),
        Json::Object(members) => {
            // Names in code point order differ from UTF-16's only where they mix supplementary
            // characters with U+E000..U+FFFF: placing each member by binary search keeps that case
            // right without linking a sort, for objects of the gateway's own making.
            let mut sorted: Vec<(&str, Json)> = Vec::with_capacity(members.len());
            for (name, member) in members.iter() {
                let at = sorted.partition_point(|(placed, _)| placed.encode_utf16().lt(name.encode_utf16()));
                sorted.insert(at, (name, in_canonical_order(member)?));
            }
            Json::Object(sorted.into_iter().fold(Object::new(), |object, (name, member)| object.with(name, member)))
        }
        other => other.clone(),
    })
}

/// `0` or an integer without leading zeros whose magnitude is at most 2^53: what ECMAScript writes
/// back the same. `-0` is written `0`.
fn exact_integer(text: &str) -> Option<&str> {
    let digits = text.strip_prefix('-').unwrap_or(text);
    let canonical = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'))
        && digits.parse::<u64>().is_ok_and(|n| n <= MAX_EXACT);
    match (canonical, digits) {
        (true, "0") => Some("0"),
        (true, _) => Some(text),
        (false, _) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(text: &str) -> Option<String> {
        canonical(&Json::parse(text.as_bytes()).unwrap())
    }

    #[test]
    fn members_sort_by_utf16_code_units() {
        assert_eq!(
            canon(r#"{"b":1,"a":{"d":[2,{"z":0,"y":1}],"c":null}}"#).as_deref(),
            Some(r#"{"a":{"c":null,"d":[2,{"y":1,"z":0}]},"b":1}"#)
        );
        // U+10000 is a surrogate pair from U+D800: before U+E000, unlike its UTF-8 bytes.
        assert_eq!(canon("{\"\\ue000\":1,\"\\ud800\\udc00\":2}").as_deref(), Some("{\"\u{10000}\":2,\"\u{e000}\":1}"));
    }

    #[test]
    fn strings_escape_as_json_stringify() {
        assert_eq!(
            canonical(&Json::from("a\"b\\c\n\u{1}\u{7f}\u{2028}/<&>")).as_deref(),
            Some("\"a\\\"b\\\\c\\n\\u0001\u{7f}\u{2028}/<&>\"")
        );
    }

    #[test]
    fn exact_integers_only() {
        for (input, expected) in [("0", "0"), ("-0", "0"), ("-12", "-12"), ("9007199254740992", "9007199254740992")] {
            assert_eq!(canon(input).as_deref(), Some(expected), "{input}");
        }
        for input in ["9007199254740993", "1.0", "1e3", "-0.0", "0.5", "18446744073709551616"] {
            assert_eq!(canon(input), None, "{input}");
            assert_eq!(canon(&format!("{{\"a\":[{input}]}}")), None, "{input} nested");
        }
    }
}
