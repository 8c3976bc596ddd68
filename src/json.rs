//! JSON as the filter reads and writes it: its configuration, the answers of the node, the pricer
//! and etcd, Payment credentials, and the bodies it sends.
//!
//! Stricter than RFC 8259 requires in two ways that only refuse: an object naming a member twice
//! (two readers of it could disagree on which one counts), and nesting deeper than [`MAX_DEPTH`].
//! Numbers keep the text they were written with: the filter reads whole numbers only, and no
//! floating-point code is linked for the rest.

use std::fmt;

/// Deepest nesting read; the filter's own documents are five levels deep at most.
pub const MAX_DEPTH: usize = 64;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Json {
    #[default]
    Null,
    Bool(bool),
    /// The number's text, as written (RFC 8259's grammar).
    Number(String),
    String(String),
    Array(Vec<Json>),
    Object(Object),
}

/// An object's members, in the order written; names are unique.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Object(Vec<(String, Json)>);

/// Where and why a text is not JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonError {
    pub at: usize,
    pub what: &'static str,
}

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "not JSON: {} at byte {}", self.what, self.at)
    }
}

impl Json {
    pub fn parse(text: &[u8]) -> Result<Json, JsonError> {
        let text =
            std::str::from_utf8(text).map_err(|e| JsonError { at: e.valid_up_to(), what: "invalid UTF-8" })?.as_bytes();
        let mut parser = Parser { text, at: 0, depth: 0 };
        let value = parser.value()?;
        parser.space();
        match parser.at < text.len() {
            true => Err(parser.error("trailing characters")),
            false => Ok(value),
        }
    }

    /// A member of an object.
    pub fn get(&self, name: &str) -> Option<&Json> {
        self.as_object()?.get(name)
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Json::String(text) => Some(text),
            _ => None,
        }
    }

    /// A whole number from 0 to `u64::MAX` written without fraction or exponent.
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Json::Number(text) if text.bytes().all(|b| b.is_ascii_digit()) => text.parse().ok(),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Json::Bool(flag) => Some(*flag),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Json]> {
        match self {
            Json::Array(items) => Some(items),
            _ => None,
        }
    }

    pub fn as_object(&self) -> Option<&Object> {
        match self {
            Json::Object(object) => Some(object),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self, Json::Null)
    }

    /// The compact text: no whitespace, members in their order.
    pub fn text(&self) -> String {
        let mut out = String::new();
        self.write(&mut out);
        out
    }

    fn write(&self, out: &mut String) {
        match self {
            Json::Null => out.push_str("null"),
            Json::Bool(flag) => out.push_str(if *flag { "true" } else { "false" }),
            Json::Number(text) => out.push_str(text),
            Json::String(text) => write_string(out, text),
            Json::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    item.write(out);
                }
                out.push(']');
            }
            Json::Object(object) => {
                out.push('{');
                for (i, (name, member)) in object.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write_string(out, name);
                    out.push(':');
                    member.write(out);
                }
                out.push('}');
            }
        }
    }
}

impl Object {
    pub fn new() -> Object {
        Object(Vec::new())
    }

    /// This object with `name` set to `value` (replaced if it was there).
    pub fn with(mut self, name: &str, value: impl Into<Json>) -> Object {
        self.insert(name, value);
        self
    }

    pub fn insert(&mut self, name: &str, value: impl Into<Json>) {
        let value = value.into();
        match self.0.iter_mut().find(|(existing, _)| existing == name) {
            Some((_, slot)) => *slot = value,
            None => self.0.push((name.to_owned(), value)),
        }
    }

    pub fn get(&self, name: &str) -> Option<&Json> {
        self.0.iter().find(|(existing, _)| existing == name).map(|(_, value)| value)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Json)> {
        self.0.iter().map(|(name, value)| (name.as_str(), value))
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(name, _)| name.as_str())
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<&str> for Json {
    fn from(text: &str) -> Json {
        Json::String(text.to_owned())
    }
}

impl From<String> for Json {
    fn from(text: String) -> Json {
        Json::String(text)
    }
}

impl From<&String> for Json {
    fn from(text: &String) -> Json {
        Json::String(text.clone())
    }
}

impl From<u64> for Json {
    fn from(number: u64) -> Json {
        Json::Number(number.to_string())
    }
}

impl From<u32> for Json {
    fn from(number: u32) -> Json {
        Json::Number(number.to_string())
    }
}

impl From<bool> for Json {
    fn from(flag: bool) -> Json {
        Json::Bool(flag)
    }
}

impl From<Object> for Json {
    fn from(object: Object) -> Json {
        Json::Object(object)
    }
}

impl<T: Into<Json>> From<Vec<T>> for Json {
    fn from(items: Vec<T>) -> Json {
        Json::Array(items.into_iter().map(Into::into).collect())
    }
}

/// A JSON string as ECMAScript's `JSON.stringify` writes it: `"`, `\` and control characters
/// escaped, the latter by their short form where there is one; everything else as it is.
fn write_string(out: &mut String, text: &str) {
    out.push('"');
    let mut rest = text;
    // Runs that need no escape are copied whole.
    while let Some(at) = rest.find(|c: char| c == '"' || c == '\\' || c < ' ') {
        let (plain, tail) = rest.split_at(at);
        out.push_str(plain);
        let mut chars = tail.chars();
        match chars.next() {
            Some('"') => out.push_str("\\\""),
            Some('\\') => out.push_str("\\\\"),
            Some('\u{8}') => out.push_str("\\b"),
            Some('\u{c}') => out.push_str("\\f"),
            Some('\n') => out.push_str("\\n"),
            Some('\r') => out.push_str("\\r"),
            Some('\t') => out.push_str("\\t"),
            Some(c) => {
                out.push_str("\\u00");
                let code = u32::from(c);
                out.push(hex_digit(code >> 4));
                out.push(hex_digit(code & 0xf));
            }
            None => {}
        }
        rest = chars.as_str();
    }
    out.push_str(rest);
    out.push('"');
}

fn hex_digit(nibble: u32) -> char {
    char::from_digit(nibble, 16).unwrap_or('0')
}

struct Parser<'a> {
    text: &'a [u8],
    at: usize,
    depth: usize,
}

impl Parser<'_> {
    fn error(&self, what: &'static str) -> JsonError {
        JsonError { at: self.at, what }
    }

    fn peek(&self) -> Option<u8> {
        self.text.get(self.at).copied()
    }

    fn bump(&mut self) {
        self.at = self.at.saturating_add(1);
    }

    fn space(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.bump();
        }
    }

    fn eat(&mut self, byte: u8) -> bool {
        let found = self.peek() == Some(byte);
        if found {
            self.bump();
        }
        found
    }

    fn value(&mut self) -> Result<Json, JsonError> {
        self.space();
        match self.peek() {
            Some(b'{') => self.nested(Parser::object),
            Some(b'[') => self.nested(Parser::array),
            Some(b'"') => self.string().map(Json::String),
            Some(b't') => self.word("true", Json::Bool(true)),
            Some(b'f') => self.word("false", Json::Bool(false)),
            Some(b'n') => self.word("null", Json::Null),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(_) => Err(self.error("expected a value")),
            None => Err(self.error("unexpected end")),
        }
    }

    fn nested(&mut self, read: fn(&mut Self) -> Result<Json, JsonError>) -> Result<Json, JsonError> {
        if self.depth >= MAX_DEPTH {
            return Err(self.error("nested too deep"));
        }
        self.depth = self.depth.saturating_add(1);
        self.bump();
        let value = read(self);
        self.depth = self.depth.saturating_sub(1);
        value
    }

    fn word(&mut self, word: &'static str, value: Json) -> Result<Json, JsonError> {
        let end = self.at.saturating_add(word.len());
        if self.text.get(self.at..end) != Some(word.as_bytes()) {
            return Err(self.error("expected a value"));
        }
        self.at = end;
        Ok(value)
    }

    fn array(&mut self) -> Result<Json, JsonError> {
        let mut items = Vec::new();
        self.space();
        if self.eat(b']') {
            return Ok(Json::Array(items));
        }
        loop {
            items.push(self.value()?);
            self.space();
            if self.eat(b']') {
                return Ok(Json::Array(items));
            }
            if !self.eat(b',') {
                return Err(self.error("expected , or ]"));
            }
        }
    }

    fn object(&mut self) -> Result<Json, JsonError> {
        let mut members: Vec<(String, Json)> = Vec::new();
        self.space();
        if self.eat(b'}') {
            return Ok(Json::Object(Object(members)));
        }
        loop {
            self.space();
            if self.peek() != Some(b'"') {
                return Err(self.error("expected a member name"));
            }
            let start = self.at;
            let name = self.string()?;
            if members.iter().any(|(existing, _)| *existing == name) {
                return Err(JsonError { at: start, what: "a member named twice" });
            }
            self.space();
            if !self.eat(b':') {
                return Err(self.error("expected :"));
            }
            let value = self.value()?;
            members.push((name, value));
            self.space();
            if self.eat(b'}') {
                return Ok(Json::Object(Object(members)));
            }
            if !self.eat(b',') {
                return Err(self.error("expected , or }"));
            }
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.at;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.bump();
        }
        self.at.saturating_sub(start)
    }

    fn number(&mut self) -> Result<Json, JsonError> {
        let start = self.at;
        self.eat(b'-');
        let leading_zero = self.peek() == Some(b'0');
        let whole = self.digits();
        if whole == 0 || (leading_zero && whole > 1) {
            return Err(self.error("malformed number"));
        }
        if self.eat(b'.') && self.digits() == 0 {
            return Err(self.error("malformed number"));
        }
        if self.eat(b'e') || self.eat(b'E') {
            if !self.eat(b'+') {
                self.eat(b'-');
            }
            if self.digits() == 0 {
                return Err(self.error("malformed number"));
            }
        }
        let text = self.text.get(start..self.at).unwrap_or_default();
        Ok(Json::Number(String::from_utf8_lossy(text).into_owned()))
    }

    fn hex4(&mut self) -> Result<u32, JsonError> {
        let end = self.at.saturating_add(4);
        let digits = self.text.get(self.at..end).ok_or_else(|| self.error("short \\u escape"))?;
        let code = std::str::from_utf8(digits)
            .ok()
            .filter(|d| d.bytes().all(|b| b.is_ascii_hexdigit()))
            .and_then(|d| u32::from_str_radix(d, 16).ok())
            .ok_or_else(|| self.error("malformed \\u escape"))?;
        self.at = end;
        Ok(code)
    }

    /// A string; the opening quote is next.
    fn string(&mut self) -> Result<String, JsonError> {
        self.bump();
        let mut out = Vec::new();
        loop {
            // Runs of plain characters are copied whole.
            let start = self.at;
            while matches!(self.peek(), Some(byte) if byte != b'"' && byte != b'\\' && byte >= 0x20) {
                self.bump();
            }
            out.extend_from_slice(self.text.get(start..self.at).unwrap_or_default());
            let Some(byte) = self.peek() else { return Err(self.error("unterminated string")) };
            self.bump();
            match byte {
                b'"' => break,
                b'\\' => {
                    let Some(escape) = self.peek() else { return Err(self.error("unterminated string")) };
                    self.bump();
                    let c = match escape {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => self.unicode_escape()?,
                        _ => return Err(self.error("unknown escape")),
                    };
                    let mut buffer = [0; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buffer).as_bytes());
                }
                _ => return Err(self.error("control character in a string")),
            }
        }
        // The text is UTF-8 and escapes were written as UTF-8: this cannot fail.
        String::from_utf8(out).map_err(|_| self.error("invalid UTF-8"))
    }

    /// After `\u`: one code point, from a surrogate pair if it takes two escapes.
    fn unicode_escape(&mut self) -> Result<char, JsonError> {
        let first = self.hex4()?;
        let code = match first {
            0xd800..=0xdbff => {
                if !(self.eat(b'\\') && self.eat(b'u')) {
                    return Err(self.error("lone surrogate"));
                }
                let second = self.hex4()?;
                if !(0xdc00..=0xdfff).contains(&second) {
                    return Err(self.error("lone surrogate"));
                }
                0x10000u32.saturating_add((first.saturating_sub(0xd800) << 10) | second.saturating_sub(0xdc00))
            }
            0xdc00..=0xdfff => return Err(self.error("lone surrogate")),
            code => code,
        };
        char::from_u32(code).ok_or_else(|| self.error("malformed \\u escape"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Json, JsonError> {
        Json::parse(text.as_bytes())
    }

    #[test]
    fn reads_what_serde_json_reads() {
        for text in [
            r#"{"a":[1,-2,3.5e-7,0,{"b":null}],"c":true,"d":"x\"\\\/\b\f\n\r\t\u00e9\ud83d\ude00"}"#,
            " [ ] ",
            "{}",
            "\"\"",
            "-0.0E+1",
            "[[[[]]]]",
        ] {
            let ours = parse(text).unwrap();
            let theirs: serde_json::Value = serde_json::from_str(text).unwrap();
            let reread: serde_json::Value = serde_json::from_str(&ours.text()).unwrap();
            assert_eq!(reread, theirs, "{text}");
        }
    }

    #[test]
    fn refuses_what_is_not_json_or_is_ambiguous() {
        for text in [
            "",
            "{",
            "[1,]",
            "{\"a\":1,}",
            "01",
            "1.",
            ".5",
            "1e",
            "+1",
            "tru",
            "nul",
            "\"\\x\"",
            "\"a",
            "\"\u{1}\"",
            "\"\\ud800\"",
            "\"\\udc00\"",
            "\"\\ud800\\u0041\"",
            "{\"a\":1}x",
            "{a:1}",
            "[1 2]",
            "NaN",
            "{\"a\":1,\"a\":2}",
        ] {
            assert!(parse(text).is_err(), "{text:?} accepted");
        }
        assert!(Json::parse(b"\"\xff\"").is_err());
        let deep = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        assert_eq!(parse(&deep).err().map(|e| e.what), Some("nested too deep"));
        let deepest = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert!(parse(&deepest).is_ok());
    }

    #[test]
    fn whole_numbers_only() {
        assert_eq!(parse("18446744073709551615").unwrap().as_u64(), Some(u64::MAX));
        for text in ["18446744073709551616", "-1", "1.0", "1e3", "-0"] {
            assert_eq!(parse(text).unwrap().as_u64(), None, "{text}");
        }
    }

    #[test]
    fn writes_members_in_order_and_escapes_as_json_stringify() {
        let object = Object::new().with("z", 1u64).with("a", "\"\u{1}\u{7f}\u{2028}").with("z", vec![true]);
        assert_eq!(Json::from(object).text(), "{\"z\":[true],\"a\":\"\\\"\\u0001\u{7f}\u{2028}\"}");
    }
}
