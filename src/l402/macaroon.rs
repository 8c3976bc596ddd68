//! Macaroons in the V2 binary format of go-macaroon and libmacaroons, with first-party caveats only.
//!
//! A small codec on `hmac` + `sha2` rather than a macaroon crate: the `macaroon` crate needs libsodium
//! (a C toolchain for wasm) and `libmacaroon` brings serialization formats we never accept. The whole
//! format is a handful of tagged fields, and owning it lets every bound be explicit.
//!
//! Layout: `0x02`, [location], identifier, EOS, then per caveat: [location], identifier, [vid], EOS,
//! then EOS, then the signature field. A field is a tag byte, a varint length and the bytes.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::sync::OnceLock;
use subtle::ConstantTimeEq;

pub(crate) type HmacSha256 = Hmac<Sha256>;

/// Largest serialized macaroon accepted. Aperture's tokens are under 300 bytes; this leaves room for
/// clients that add their own caveats while keeping the work per request bounded.
pub const MAX_MACAROON_BYTES: usize = 4096;
/// Most caveats accepted in one macaroon.
pub const MAX_CAVEATS: usize = 32;

const VERSION_2: u8 = 2;
const TAG_EOS: u8 = 0;
const TAG_LOCATION: u8 = 1;
const TAG_IDENTIFIER: u8 = 2;
const TAG_VID: u8 = 4;
const TAG_SIGNATURE: u8 = 6;
const SIGNATURE_LEN: usize = 32;
/// go-macaroon derives the signing key from the root key with this fixed HMAC key.
const KEY_GENERATOR: &[u8] = b"macaroons-key-generator";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    Empty,
    TooLarge,
    NotVersion2,
    Truncated,
    FieldTooLong,
    UnexpectedField,
    MissingIdentifier,
    ThirdPartyCaveat,
    TooManyCaveats,
    BadSignatureLength,
    TrailingBytes,
    NotUtf8Caveat,
}

/// A decoded macaroon. Caveats are kept as text: first-party caveats are `key=value` strings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Macaroon {
    location: Option<Vec<u8>>,
    identifier: Vec<u8>,
    caveats: Vec<String>,
    signature: [u8; SIGNATURE_LEN],
}

impl Macaroon {
    /// A macaroon with no caveats, signed under `root_key`.
    pub fn new(root_key: &[u8], identifier: Vec<u8>, location: Option<&str>) -> Macaroon {
        let signature = hmac(&signing_key(root_key), &identifier);
        Macaroon { location: location.map(|l| l.as_bytes().to_vec()), identifier, caveats: Vec::new(), signature }
    }

    /// Appends a first-party caveat, extending the signature chain as any holder of the macaroon can.
    pub fn add_caveat(&mut self, caveat: &str) {
        self.signature = hmac(&self.signature, caveat.as_bytes());
        self.caveats.push(caveat.to_owned());
    }

    pub fn identifier(&self) -> &[u8] {
        &self.identifier
    }

    pub fn location(&self) -> Option<&[u8]> {
        self.location.as_deref()
    }

    pub fn caveats(&self) -> &[String] {
        &self.caveats
    }

    pub fn signature(&self) -> &[u8; SIGNATURE_LEN] {
        &self.signature
    }

    /// Recomputes the signature chain from `root_key` and compares it in constant time.
    pub fn signature_matches(&self, root_key: &[u8]) -> bool {
        let mut expected = hmac(&signing_key(root_key), &self.identifier);
        for caveat in &self.caveats {
            expected = hmac(&expected, caveat.as_bytes());
        }
        bool::from(expected.ct_eq(&self.signature))
    }

    pub fn encode(&self) -> Vec<u8> {
        let caveat_bytes = self.caveats.iter().fold(0usize, |n, c| n.saturating_add(c.len()).saturating_add(8));
        let mut out = Vec::with_capacity(self.identifier.len().saturating_add(caveat_bytes).saturating_add(64));
        out.push(VERSION_2);
        if let Some(location) = &self.location {
            put_field(&mut out, TAG_LOCATION, location);
        }
        put_field(&mut out, TAG_IDENTIFIER, &self.identifier);
        out.push(TAG_EOS);
        for caveat in &self.caveats {
            put_field(&mut out, TAG_IDENTIFIER, caveat.as_bytes());
            out.push(TAG_EOS);
        }
        out.push(TAG_EOS);
        put_field(&mut out, TAG_SIGNATURE, &self.signature);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Macaroon, DecodeError> {
        if bytes.len() > MAX_MACAROON_BYTES {
            return Err(DecodeError::TooLarge);
        }
        let mut reader = Reader { rest: bytes };
        match reader.byte() {
            None => return Err(DecodeError::Empty),
            Some(VERSION_2) => {}
            Some(_) => return Err(DecodeError::NotVersion2),
        }
        let header = reader.section()?;
        if header.vid.is_some() {
            return Err(DecodeError::UnexpectedField);
        }
        let identifier = header.identifier.ok_or(DecodeError::MissingIdentifier)?.to_vec();
        let location = header.location.map(<[u8]>::to_vec);

        let mut caveats = Vec::new();
        loop {
            let section = reader.section()?;
            let Some(caveat_id) = section.identifier else {
                if section.location.is_some() || section.vid.is_some() {
                    return Err(DecodeError::MissingIdentifier);
                }
                break; // the empty section that ends the caveats
            };
            if section.location.is_some() || section.vid.is_some() {
                return Err(DecodeError::ThirdPartyCaveat);
            }
            if caveats.len() >= MAX_CAVEATS {
                return Err(DecodeError::TooManyCaveats);
            }
            let text = core::str::from_utf8(caveat_id).map_err(|_| DecodeError::NotUtf8Caveat)?;
            caveats.push(text.to_owned());
        }

        let (tag, value) = reader.field()?;
        if tag != TAG_SIGNATURE {
            return Err(DecodeError::UnexpectedField);
        }
        let signature: [u8; SIGNATURE_LEN] = value.try_into().map_err(|_| DecodeError::BadSignatureLength)?;
        if !reader.rest.is_empty() {
            return Err(DecodeError::TrailingBytes);
        }
        Ok(Macaroon { location, identifier, caveats, signature })
    }
}

fn signing_key(root_key: &[u8]) -> [u8; 32] {
    // The key generator is a constant: its keyed HMAC state is computed once per VM.
    static KEYED: OnceLock<Option<HmacSha256>> = OnceLock::new();
    match KEYED.get_or_init(|| HmacSha256::new_from_slice(KEY_GENERATOR).ok()) {
        Some(keyed) => {
            let mut mac = keyed.clone();
            mac.update(root_key);
            mac.finalize().into_bytes().into()
        }
        None => hmac(KEY_GENERATOR, root_key),
    }
}

pub(crate) fn hmac(key: &[u8], message: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length, so construction cannot fail.
    let mut mac = match HmacSha256::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => return [0; 32],
    };
    mac.update(message);
    mac.finalize().into_bytes().into()
}

fn put_field(out: &mut Vec<u8>, tag: u8, value: &[u8]) {
    out.push(tag);
    let mut len = value.len();
    while len >= 0x80 {
        out.push((len as u8) | 0x80);
        len >>= 7;
    }
    out.push(len as u8);
    out.extend_from_slice(value);
}

#[derive(Default)]
struct Section<'a> {
    location: Option<&'a [u8]>,
    identifier: Option<&'a [u8]>,
    vid: Option<&'a [u8]>,
}

struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Option<u8> {
        let (&first, rest) = self.rest.split_first()?;
        self.rest = rest;
        Some(first)
    }

    /// Unsigned LEB128, as Go's `binary.Uvarint`; lengths beyond the macaroon bound are refused early.
    fn length(&mut self) -> Result<usize, DecodeError> {
        let mut value: usize = 0;
        for shift in [0u32, 7, 14] {
            let byte = self.byte().ok_or(DecodeError::Truncated)?;
            value |= usize::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(DecodeError::FieldTooLong)
    }

    fn field(&mut self) -> Result<(u8, &'a [u8]), DecodeError> {
        let tag = self.byte().ok_or(DecodeError::Truncated)?;
        if tag == TAG_EOS {
            return Ok((TAG_EOS, &[]));
        }
        let len = self.length()?;
        if len > self.rest.len() {
            return Err(DecodeError::Truncated);
        }
        let (value, rest) = self.rest.split_at(len);
        self.rest = rest;
        Ok((tag, value))
    }

    /// Reads fields up to an EOS; tags must come in ascending order, each at most once.
    fn section(&mut self) -> Result<Section<'a>, DecodeError> {
        let mut section = Section::default();
        let mut last_tag = TAG_EOS;
        loop {
            let (tag, value) = self.field()?;
            if tag == TAG_EOS {
                return Ok(section);
            }
            if tag <= last_tag {
                return Err(DecodeError::UnexpectedField);
            }
            last_tag = tag;
            let slot = match tag {
                TAG_LOCATION => &mut section.location,
                TAG_IDENTIFIER => &mut section.identifier,
                TAG_VID => &mut section.vid,
                _ => return Err(DecodeError::UnexpectedField),
            };
            *slot = Some(value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Macaroon {
        let mut mac = Macaroon::new(b"root key", b"an identifier".to_vec(), Some("lsat"));
        mac.add_caveat("services=weather:0");
        mac.add_caveat("weather_valid_until=1700000000");
        mac
    }

    #[test]
    fn encode_decode_round_trip() {
        let mac = sample();
        let bytes = mac.encode();
        assert_eq!(bytes.first(), Some(&2));
        assert_eq!(Macaroon::decode(&bytes), Ok(mac));
    }

    #[test]
    fn signature_chain_detects_changes() {
        let mac = sample();
        assert!(mac.signature_matches(b"root key"));
        assert!(!mac.signature_matches(b"other key"));
        let mut widened = mac.clone();
        widened.caveats.pop();
        assert!(!widened.signature_matches(b"root key"));
    }

    #[test]
    fn rejects_malformed_bytes() {
        let bytes = sample().encode();
        assert_eq!(Macaroon::decode(&[]), Err(DecodeError::Empty));
        assert_eq!(Macaroon::decode(&[1, 2, 3]), Err(DecodeError::NotVersion2));
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert_eq!(Macaroon::decode(&trailing), Err(DecodeError::TrailingBytes));
        for cut in 1..bytes.len() {
            assert!(Macaroon::decode(&bytes[..cut]).is_err(), "truncated at {cut}");
        }
        assert_eq!(Macaroon::decode(&vec![2; MAX_MACAROON_BYTES + 1]), Err(DecodeError::TooLarge));
    }

    #[test]
    fn rejects_over_long_length_and_out_of_order_fields() {
        // identifier field claiming 2^21 bytes
        assert_eq!(Macaroon::decode(&[2, 2, 0x80, 0x80, 0x80, 0x01]), Err(DecodeError::FieldTooLong));
        assert_eq!(Macaroon::decode(&[2, 2, 0xff, 0x01, b'a']), Err(DecodeError::Truncated));
        // identifier before location
        assert_eq!(Macaroon::decode(&[2, 2, 1, b'i', 1, 1, b'l', 0]), Err(DecodeError::UnexpectedField));
    }

    #[test]
    fn rejects_third_party_caveats_and_too_many_caveats() {
        let mut bytes = vec![2, 2, 1, b'i', 0, 2, 1, b'c', 4, 1, b'v', 0, 0];
        put_field(&mut bytes, TAG_SIGNATURE, &[0; 32]);
        assert_eq!(Macaroon::decode(&bytes), Err(DecodeError::ThirdPartyCaveat));

        let mut many = Macaroon::new(b"k", b"id".to_vec(), None);
        for i in 0..=MAX_CAVEATS {
            many.add_caveat(&format!("k{i}=v"));
        }
        assert_eq!(Macaroon::decode(&many.encode()), Err(DecodeError::TooManyCaveats));
    }
}
