//! The readings an upstream may make of a request path, and the paths refused because no single
//! reading can be trusted.
//!
//! The filter decides on the path as sent, the upstream serves the path as it reads it, and
//! upstreams read differently: nginx and most servers percent-decode, merge `//` and resolve dot
//! segments; IIS and some frameworks take `\` for `/`; Tomcat, Jetty and Spring drop `;params`; a
//! chain of proxies may decode more than once; APIs with ids like `group%2Fproject` keep an encoded
//! slash as data. [`readings`] lists these readings so that the gate can require one rule for all
//! of them. Each decoded reading is rendered in one form: decoded, with `%`, `?`, `#`, a slash kept
//! as data and bytes that are not UTF-8 encoded again (`%XX`), so that it stays one path string.

use crate::config::EncodedSlashes;
use core::fmt;
use std::borrow::Cow;

/// Decoding rounds of an upstream chain; a path still percent-encoded after them is refused.
const MAX_DECODE_ROUNDS: usize = 3;

/// Why a path is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ambiguity {
    /// A `.` or `..` segment, plain or encoded: clients resolve them before sending (RFC 3986), so
    /// only a request aimed past a rule has one.
    DotSegment,
    /// `%2F`, `%5C` or `\` (also encoded twice) under `paths.encoded_slashes: reject`.
    EncodedSlash,
    /// Still percent-encoded after [`MAX_DECODE_ROUNDS`] rounds of decoding.
    DeeplyEncoded,
    /// The readings of the path fall under different route rules.
    DifferentRules,
}

impl fmt::Display for Ambiguity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Ambiguity::DotSegment => "the path has a . or .. segment",
            Ambiguity::EncodedSlash => "the path has an encoded slash or a backslash",
            Ambiguity::DeeplyEncoded => "the path is percent-encoded too many times over",
            Ambiguity::DifferentRules => "readings of the path fall under different route rules",
        })
    }
}

/// The readings of one path: the raw form as sent, the canonical one (what a decoding upstream
/// such as nginx serves) and the others upstreams may make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readings<'a> {
    raw: &'a str,
    canonical: Cow<'a, str>,
    /// Decoded readings other than the canonical one, without repeats.
    others: Vec<String>,
}

impl<'a> Readings<'a> {
    /// The path a decoding upstream serves: route rules, caveats, prices and minted paths use it.
    pub fn canonical(&self) -> &str {
        &self.canonical
    }

    pub fn into_canonical(self) -> Cow<'a, str> {
        self.canonical
    }

    /// Every decoded reading, the canonical one first. Caveat paths are minted and checked in this
    /// decoded form, so the raw form (`a%20b` for `a b`) is not among them.
    pub fn decoded(&self) -> impl Iterator<Item = &str> {
        core::iter::once(self.canonical()).chain(self.others.iter().map(String::as_str))
    }

    /// Every reading, the raw form included: an upstream that routes before decoding sees that one.
    pub fn all(&self) -> impl Iterator<Item = &str> {
        let raw = (!self.decoded().any(|path| path == self.raw)).then_some(self.raw);
        self.decoded().chain(raw)
    }
}

/// The readings of `path` (without its query string), or why it is refused. A path without `%`,
/// `\`, `;`, `//` and dot segments has one reading, itself, found in one scan without allocating.
pub fn readings(path: &str, slashes: EncodedSlashes) -> Result<Readings<'_>, Ambiguity> {
    if is_plain(path.as_bytes()) {
        return Ok(Readings { raw: path, canonical: Cow::Borrowed(path), others: Vec::new() });
    }
    let raw = path.as_bytes();
    let reject = slashes == EncodedSlashes::Reject;
    // rounds[k] is the path decoded k + 1 times; none when nothing is encoded.
    let mut rounds: Vec<Vec<u8>> = Vec::new();
    let mut last = raw;
    loop {
        if reject && has_encoded_slash(last) {
            return Err(Ambiguity::EncodedSlash);
        }
        if !has_escape(last) {
            break;
        }
        if rounds.len() == MAX_DECODE_ROUNDS {
            return Err(Ambiguity::DeeplyEncoded);
        }
        rounds.push(decode(last));
        last = rounds.last().map_or(raw, Vec::as_slice);
    }
    let decodings: Vec<&[u8]> = if rounds.is_empty() { vec![raw] } else { rounds.iter().map(Vec::as_slice).collect() };

    let mut found: Vec<String> = Vec::new();
    for decoded in &decodings {
        // A decoding upstream: every slash, encoded or not, separates segments.
        let separated: Vec<&[u8]> = decoded.split(|b| matches!(b, b'/' | b'\\')).collect();
        add_readings(&mut found, &separated)?;
    }
    if !reject && (has_encoded_slash(raw) || rounds.iter().any(|round| has_encoded_slash(round))) {
        // An upstream that keeps encoded slashes (and backslashes) as data: only a literal `/`
        // separates, and each segment is decoded as often as the path is.
        for times in 1..=rounds.len().max(1) {
            let kept: Vec<Vec<u8>> = raw.split(|b| *b == b'/').map(|s| decode_times(s, times)).collect();
            let kept: Vec<&[u8]> = kept.iter().map(Vec::as_slice).collect();
            add_readings(&mut found, &kept)?;
        }
    }
    let mut found = found.into_iter();
    let canonical = found.next().unwrap_or_default();
    let mut others: Vec<String> = Vec::new();
    for reading in found {
        if reading != canonical && !others.contains(&reading) {
            others.push(reading);
        }
    }
    Ok(Readings { raw: path, canonical: Cow::Owned(canonical), others })
}

/// The reading of `segments`, and with `;params` dropped from each segment if any has one.
fn add_readings(found: &mut Vec<String>, segments: &[&[u8]]) -> Result<(), Ambiguity> {
    found.push(render(segments.iter().copied())?);
    if segments.iter().any(|s| s.contains(&b';')) {
        found.push(render(segments.iter().map(|s| s.split(|b| *b == b';').next().unwrap_or(s)))?);
    }
    Ok(())
}

/// Joins segments into a path, merging empty ones (`//`) except a trailing one, refusing dot
/// segments, and encoding what would otherwise read as structure.
fn render<'s>(segments: impl Iterator<Item = &'s [u8]>) -> Result<String, Ambiguity> {
    let mut out = String::new();
    let mut segments = segments.peekable();
    let mut first = true;
    while let Some(segment) = segments.next() {
        if segment == b"." || segment == b".." {
            return Err(Ambiguity::DotSegment);
        }
        let last = segments.peek().is_none();
        if !first {
            if segment.is_empty() && !last {
                continue;
            }
            out.push('/');
        }
        first = false;
        for chunk in segment.utf8_chunks() {
            for c in chunk.valid().chars() {
                match c {
                    '%' | '/' | '\\' | '?' | '#' => push_escape(&mut out, c as u8),
                    c => out.push(c),
                }
            }
            chunk.invalid().iter().for_each(|b| push_escape(&mut out, *b));
        }
    }
    Ok(out)
}

fn push_escape(out: &mut String, byte: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    for nibble in [byte >> 4, byte & 0x0f] {
        out.push(HEX.get(usize::from(nibble)).map_or('0', |h| char::from(*h)));
    }
}

/// Whether the path is its only reading: no `%`, `\`, `;`, empty segment inside or dot segment.
fn is_plain(path: &[u8]) -> bool {
    let mut start = 0;
    for (i, b) in path.iter().enumerate() {
        match b {
            b'%' | b'\\' | b';' => return false,
            b'/' => {
                let segment = path.get(start..i).unwrap_or_default();
                if (segment.is_empty() && i > 0) || is_dot_segment(segment) {
                    return false;
                }
                start = i.saturating_add(1);
            }
            _ => {}
        }
    }
    !is_dot_segment(path.get(start..).unwrap_or_default())
}

fn is_dot_segment(segment: &[u8]) -> bool {
    segment == b"." || segment == b".."
}

fn hex_value(byte: u8) -> Option<u8> {
    char::from(byte).to_digit(16).and_then(|d| u8::try_from(d).ok())
}

/// A `%` followed by two hex digits.
fn has_escape(path: &[u8]) -> bool {
    path.windows(3).any(|w| matches!(w, [b'%', h, l] if hex_value(*h).is_some() && hex_value(*l).is_some()))
}

/// `%2F`, `%5C` in either case, or `\`.
fn has_encoded_slash(path: &[u8]) -> bool {
    path.contains(&b'\\') || path.windows(3).any(|w| matches!(w, [b'%', b'2', b'f' | b'F'] | [b'%', b'5', b'c' | b'C']))
}

/// One round of percent-decoding; a `%` not followed by two hex digits stays as it is.
fn decode(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut rest = input;
    while let Some((&byte, tail)) = rest.split_first() {
        if byte == b'%' {
            if let [h, l, after @ ..] = tail {
                if let (Some(h), Some(l)) = (hex_value(*h), hex_value(*l)) {
                    out.push(h.wrapping_mul(16) | l);
                    rest = after;
                    continue;
                }
            }
        }
        out.push(byte);
        rest = tail;
    }
    out
}

fn decode_times(input: &[u8], times: usize) -> Vec<u8> {
    (0..times).fold(input.to_vec(), |bytes, _| decode(&bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(path: &str, slashes: EncodedSlashes) -> Result<Vec<String>, Ambiguity> {
        readings(path, slashes).map(|r| r.all().map(str::to_owned).collect())
    }

    fn reject(path: &str) -> Result<Vec<String>, Ambiguity> {
        all(path, EncodedSlashes::Reject)
    }

    fn allow(path: &str) -> Result<Vec<String>, Ambiguity> {
        all(path, EncodedSlashes::Allow)
    }

    #[test]
    fn a_plain_path_is_its_only_reading_and_borrowed() {
        for path in ["/", "/v1/forecast", "/v1/forecast/", "/a.b/c..d/...", "*", ""] {
            let r = readings(path, EncodedSlashes::Reject).unwrap();
            assert!(matches!(r.canonical, Cow::Borrowed(_)), "{path}");
            assert_eq!(r.all().collect::<Vec<_>>(), [path]);
        }
    }

    #[test]
    fn dot_segments_are_refused_in_every_spelling() {
        for path in [
            "/health/../v1/forecast",
            "/v1/./forecast",
            "/v1/forecast/..",
            "/v1/forecast/.",
            "/health/%2e%2e/v1",
            "/health/%2E%2E/v1",
            "/health/.%2e/v1",
            "/v1/%2e/x",
            "/health/%252e%252e/v1",
            "/health/..;/v1/forecast",
            "/health/.;x/v1",
            "//../v1",
        ] {
            assert_eq!(reject(path), Err(Ambiguity::DotSegment), "{path}");
            assert_eq!(allow(path), Err(Ambiguity::DotSegment), "{path}");
        }
    }

    #[test]
    fn encoded_slashes_are_refused_by_default() {
        for path in [
            "/health/..%2fv1/forecast",
            "/health%2f..%2fv1/forecast",
            "/health%2F..%2Fv1%2Fforecast",
            "/health/%2e%2e%2fv1/forecast",
            "/health%5c..%5cv1",
            "/health%5C..",
            "/health\\..\\v1",
            "/health/%252f",
            "/health/%25252F",
            "/health/%255c",
        ] {
            assert_eq!(reject(path), Err(Ambiguity::EncodedSlash), "{path}");
        }
    }

    #[test]
    fn with_encoded_slashes_allowed_both_readings_are_kept() {
        assert_eq!(
            allow("/projects/group%2Fproject").unwrap(),
            ["/projects/group/project", "/projects/group%2Fproject"]
        );
        assert_eq!(allow("/a\\b").unwrap(), ["/a/b", "/a%5Cb", "/a\\b"]);
        // Traversal through an encoded slash is still a dot segment in the separator reading.
        assert_eq!(allow("/health/..%2fv1/forecast"), Err(Ambiguity::DotSegment));
        assert_eq!(allow("/health%2F..%2Fv1"), Err(Ambiguity::DotSegment));
        // Encoded twice: one round reads a literal %2F, two rounds a slash.
        assert_eq!(allow("/a%252Fb").unwrap(), ["/a%252Fb", "/a/b", "/a%2Fb"]);
    }

    #[test]
    fn decoding_merging_and_parameters_give_the_readings() {
        assert_eq!(reject("/v1/caf%C3%A9").unwrap(), ["/v1/café", "/v1/caf%C3%A9"]);
        assert_eq!(reject("/%76%31/forecast").unwrap(), ["/v1/forecast", "/%76%31/forecast"]);
        assert_eq!(reject("//v1//forecast").unwrap(), ["/v1/forecast", "//v1//forecast"]);
        assert_eq!(reject("/v1/").unwrap(), ["/v1/"]);
        assert_eq!(reject("/v1//").unwrap(), ["/v1/", "/v1//"]);
        assert_eq!(reject("/v1;jsessionid=1/forecast").unwrap(), ["/v1;jsessionid=1/forecast", "/v1/forecast"]);
        assert_eq!(reject("/v1/a%3Bb").unwrap(), ["/v1/a;b", "/v1/a", "/v1/a%3Bb"]);
        // Structure that decoding would invent stays encoded in the rendered form.
        assert_eq!(reject("/v1/a%3Fb%23c%25").unwrap(), ["/v1/a%3Fb%23c%25"]);
        assert_eq!(reject("/v1/%FF").unwrap(), ["/v1/%FF"]);
        assert_eq!(reject("/v1/100%").unwrap(), ["/v1/100%25", "/v1/100%"]);
        // Each decoding round is a reading, up to the bound.
        assert_eq!(reject("/v1/%2541").unwrap(), ["/v1/%2541", "/v1/A"]);
        assert_eq!(reject("/v1/%25252541"), Err(Ambiguity::DeeplyEncoded));
        assert_eq!(reject("/v1/%252541").unwrap(), ["/v1/%252541", "/v1/%2541", "/v1/A"]);
    }
}
