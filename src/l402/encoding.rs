//! Hex and base64 as L402 uses them: hex preimages in either case, macaroons in std or URL-safe
//! base64, padded or not. Decoders never allocate more than their bounded input implies.

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine;

const LENIENT: GeneralPurposeConfig =
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
const STD_LENIENT: GeneralPurpose = GeneralPurpose::new(&alphabet::STANDARD, LENIENT);
const URL_LENIENT: GeneralPurpose = GeneralPurpose::new(&alphabet::URL_SAFE, LENIENT);

/// Decodes base64 in the standard or the URL-safe alphabet, with or without padding.
pub fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let url_safe = text.bytes().any(|b| b == b'-' || b == b'_');
    let engine = if url_safe { &URL_LENIENT } else { &STD_LENIENT };
    engine.decode(text).ok()
}

/// Standard alphabet, padded: the form every L402 client reads.
pub fn base64_encode(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

pub fn hex_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().saturating_mul(2));
    for b in bytes {
        for nibble in [b >> 4, b & 0x0f] {
            if let Some(digit) = HEX_DIGITS.get(usize::from(nibble)) {
                out.push(char::from(*digit));
            }
        }
    }
    out
}

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c.wrapping_sub(b'0')),
        b'a'..=b'f' => Some(c.wrapping_sub(b'a' - 10)),
        b'A'..=b'F' => Some(c.wrapping_sub(b'A' - 10)),
        _ => None,
    }
}

/// Decodes hex of either case into exactly `N` bytes.
pub fn hex_decode_array<const N: usize>(text: &str) -> Option<[u8; N]> {
    let bytes = text.as_bytes();
    if bytes.len() != N.checked_mul(2)? {
        return None;
    }
    let mut out = [0u8; N];
    for (slot, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        if let [hi, lo] = pair {
            *slot = (nibble(*hi)? << 4) | nibble(*lo)?;
        }
    }
    Some(out)
}

/// Decodes hex of either case of any even length.
pub fn hex_decode(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    if bytes.len() % 2 != 0 {
        return None;
    }
    bytes
        .chunks_exact(2)
        .map(|pair| match pair {
            [hi, lo] => Some((nibble(*hi)? << 4) | nibble(*lo)?),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_accepts_both_alphabets_with_or_without_padding() {
        let bytes = [0xfbu8, 0xff, 0xfe, 0x01];
        for text in ["+//+AQ==", "+//+AQ", "-__-AQ==", "-__-AQ"] {
            assert_eq!(base64_decode(text).as_deref(), Some(&bytes[..]), "{text}");
        }
        assert_eq!(base64_encode(&bytes), "+//+AQ==");
        assert_eq!(base64_decode("+/_-AQ"), None, "mixed alphabets");
        assert_eq!(base64_decode("not base64!"), None);
    }

    #[test]
    fn hex_round_trips_in_either_case() {
        let bytes = [0xabu8, 0xcd, 0x01];
        assert_eq!(hex_encode(&bytes), "abcd01");
        assert_eq!(hex_decode_array::<3>("ABCD01"), Some(bytes));
        assert_eq!(hex_decode_array::<3>("abcd0"), None);
        assert_eq!(hex_decode_array::<3>("abcd0g"), None);
        assert_eq!(hex_decode("AbCd01"), Some(bytes.to_vec()));
        assert_eq!(hex_decode("abc"), None);
    }
}
