//! The L402 headers: the `WWW-Authenticate` challenge we send and the credentials clients send back.
//!
//! Credentials come as `Authorization: L402|LSAT <base64 macaroon>[,<macaroon>…]:<hex preimage>`
//! (scheme in any case), or gRPC-style as `Grpc-Metadata-macaroon` / `Macaroon: <hex macaroon>` whose
//! `preimage=<hex>` caveat carries the preimage. Every parse is bounded by the header's length.

use super::caveats::{self, PREIMAGE};
use super::encoding::{base64_decode, base64_encode, hex_decode, hex_decode_array};
use super::macaroon::{Macaroon, MAX_MACAROON_BYTES};
use super::token::{Credential, VerifyError};

/// Longest credential header read at all: a few maximal macaroons in base64 or one in hex.
pub const MAX_CREDENTIAL_HEADER: usize = 2 * MAX_MACAROON_BYTES + 128;
/// go-macaroon refuses discharge macaroons that no caveat asks for; we mint no third-party caveat,
/// so a credential carries exactly one macaroon. A few more are parsed to give a precise reason.
const MAX_MACAROONS: usize = 4;

const PREIMAGE_HEX_LEN: usize = 64;
const MAX_BASE64_MACAROON: usize = MAX_MACAROON_BYTES.div_ceil(3) * 4;

/// Whether the `Authorization` value uses an L402 scheme at all (any other scheme is no credential).
pub fn is_l402_authorization(value: &str) -> bool {
    scheme_rest(value).is_some()
}

fn scheme_rest(value: &str) -> Option<&str> {
    let (scheme, rest) = value.trim_start().split_once(' ')?;
    (scheme.eq_ignore_ascii_case("L402") || scheme.eq_ignore_ascii_case("LSAT")).then_some(rest)
}

/// Parses `Authorization: L402 <macaroons>:<preimage>`.
pub fn parse_authorization(value: &str) -> Result<Credential, VerifyError> {
    if value.len() > MAX_CREDENTIAL_HEADER {
        return Err(VerifyError::Malformed("credential header too long"));
    }
    let rest = scheme_rest(value).ok_or(VerifyError::Malformed("not an L402 or LSAT credential"))?;
    let (macaroons, preimage) =
        rest.trim().rsplit_once(':').ok_or(VerifyError::Malformed("expected <macaroon>:<preimage>"))?;
    if preimage.len() != PREIMAGE_HEX_LEN {
        return Err(VerifyError::Malformed("preimage must be 32 bytes of hex"));
    }
    let preimage =
        hex_decode_array::<32>(preimage).ok_or(VerifyError::Malformed("preimage must be 32 bytes of hex"))?;

    let mut parts = macaroons.split(',').map(str::trim);
    let first = parts.next().filter(|p| !p.is_empty()).ok_or(VerifyError::Malformed("no macaroon"))?;
    let macaroon = decode_base64_macaroon(first)?;
    let mut discharges = 0usize;
    for part in parts {
        discharges = discharges.saturating_add(1);
        if discharges >= MAX_MACAROONS {
            return Err(VerifyError::Malformed("too many macaroons"));
        }
        decode_base64_macaroon(part)?;
    }
    if discharges > 0 {
        return Err(VerifyError::Malformed("discharge macaroons are not used by this gateway"));
    }
    Ok(Credential { macaroon, preimage })
}

fn decode_base64_macaroon(text: &str) -> Result<Macaroon, VerifyError> {
    // Four base64 characters carry three bytes: refuse before decoding anything oversized.
    if text.len() > MAX_BASE64_MACAROON {
        return Err(VerifyError::Malformed("macaroon too large"));
    }
    let bytes = base64_decode(text).ok_or(VerifyError::Malformed("macaroon is not base64"))?;
    Ok(Macaroon::decode(&bytes)?)
}

/// Parses `Authorization: L402 <macaroon>` presented without a preimage, for wallets that do not
/// reveal preimages (accepted only where the node confirms the payment).
pub fn parse_macaroon_only(value: &str) -> Result<Macaroon, VerifyError> {
    if value.len() > MAX_CREDENTIAL_HEADER {
        return Err(VerifyError::Malformed("credential header too long"));
    }
    let rest = scheme_rest(value).ok_or(VerifyError::Malformed("not an L402 or LSAT credential"))?;
    let rest = rest.trim();
    if rest.contains([':', ',']) {
        return Err(VerifyError::Malformed("expected a single macaroon"));
    }
    decode_base64_macaroon(rest)
}

/// Parses the gRPC-style `Grpc-Metadata-macaroon` / `Macaroon` header: a hex macaroon holding exactly
/// one `preimage=<hex>` caveat.
pub fn parse_macaroon_header(value: &str) -> Result<Credential, VerifyError> {
    let value = value.trim();
    if value.len() > 2 * MAX_MACAROON_BYTES {
        return Err(VerifyError::Malformed("macaroon too large"));
    }
    let bytes = hex_decode(value).ok_or(VerifyError::Malformed("macaroon is not hex"))?;
    let macaroon = Macaroon::decode(&bytes)?;
    let mut preimages = macaroon
        .caveats()
        .iter()
        .filter_map(|c| caveats::split(c))
        .filter(|(key, _)| *key == PREIMAGE)
        .map(|(_, value)| value);
    let preimage = preimages.next().ok_or(VerifyError::Malformed("macaroon carries no preimage caveat"))?;
    if preimages.next().is_some() {
        return Err(VerifyError::Malformed("macaroon carries more than one preimage caveat"));
    }
    let preimage =
        hex_decode_array::<32>(preimage).ok_or(VerifyError::Malformed("preimage must be 32 bytes of hex"))?;
    Ok(Credential { macaroon, preimage })
}

/// The `WWW-Authenticate` value for a challenge. The L402 form adds the 2026 revision's `version` and
/// `token` parameters after the `macaroon` and `invoice` every client reads; the legacy LSAT form
/// carries only those two, as old clients expect.
pub fn challenge(scheme: Scheme, macaroon: &Macaroon, invoice: &str) -> String {
    challenge_from_base64(scheme, &base64_encode(&macaroon.encode()), invoice)
}

pub fn challenge_from_base64(scheme: Scheme, macaroon_b64: &str, invoice: &str) -> String {
    match scheme {
        Scheme::L402 => {
            format!("L402 macaroon=\"{macaroon_b64}\", invoice=\"{invoice}\", version=\"0\", token=\"{macaroon_b64}\"")
        }
        Scheme::Lsat => format!("LSAT macaroon=\"{macaroon_b64}\", invoice=\"{invoice}\""),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    L402,
    Lsat,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::l402::encoding::hex_encode;

    fn mac() -> Macaroon {
        let mut m = Macaroon::new(b"key", vec![0; 66], Some("lsat"));
        m.add_caveat("services=weather:0");
        m
    }

    #[test]
    fn parses_authorization_in_any_case_and_encoding() {
        let bytes = mac().encode();
        let std = base64_encode(&bytes);
        let url = std.replace('+', "-").replace('/', "_").trim_end_matches('=').to_string();
        let pre = "AB".repeat(32);
        for header in [
            format!("L402 {std}:{pre}"),
            format!("lsat {url}:{}", pre.to_lowercase()),
            format!("l402 {std}:{}", pre.to_lowercase()),
        ] {
            let cred = parse_authorization(&header).unwrap();
            assert_eq!(cred.macaroon, mac());
            assert_eq!(cred.preimage, [0xab; 32]);
        }
    }

    #[test]
    fn refuses_malformed_authorization() {
        let std = base64_encode(&mac().encode());
        let pre = "ab".repeat(32);
        let cases = [
            format!("Bearer {std}:{pre}"),
            format!("L402 {std}"),
            format!("L402 {std}:{}", &pre[..62]),
            format!("L402 {std}:{}zz", &pre[..62]),
            format!("L402 :{pre}"),
            format!("L402 !!!:{pre}"),
            format!("L402 {std},{std}:{pre}"),
            format!("L402 {}:{pre}", base64_encode(b"\x02garbage")),
            "L402".to_string(),
            String::new(),
        ];
        for header in cases {
            assert!(matches!(parse_authorization(&header), Err(VerifyError::Malformed(_))), "{header}");
        }
    }

    #[test]
    fn parses_a_macaroon_without_preimage() {
        let std = base64_encode(&mac().encode());
        assert_eq!(parse_macaroon_only(&format!("L402 {std}")), Ok(mac()));
        assert!(parse_macaroon_only(&format!("L402 {std}:{}", "ab".repeat(32))).is_err());
        assert!(parse_macaroon_only(&format!("L402 {std},{std}")).is_err());
        assert!(parse_macaroon_only("Bearer x").is_err());
    }

    #[test]
    fn oversized_header_is_refused_before_decoding() {
        let garbage = format!("L402 {}:{}", "A".repeat(64 * 1024), "ab".repeat(32));
        assert_eq!(parse_authorization(&garbage), Err(VerifyError::Malformed("credential header too long")));
        assert!(parse_macaroon_header(&"a".repeat(64 * 1024)).is_err());
    }

    #[test]
    fn parses_grpc_macaroon_with_preimage_caveat() {
        let mut m = mac();
        m.add_caveat(&format!("preimage={}", "CD".repeat(32)));
        let cred = parse_macaroon_header(&hex_encode(&m.encode())).unwrap();
        assert_eq!(cred.preimage, [0xcd; 32]);
        assert!(parse_macaroon_header(&hex_encode(&mac().encode())).is_err(), "no preimage caveat");
        m.add_caveat(&format!("preimage={}", "CD".repeat(32)));
        assert!(parse_macaroon_header(&hex_encode(&m.encode())).is_err(), "two preimage caveats");
    }

    #[test]
    fn challenge_carries_macaroon_first() {
        let c = challenge_from_base64(Scheme::L402, "TUFD", "lnbc1");
        assert_eq!(c, "L402 macaroon=\"TUFD\", invoice=\"lnbc1\", version=\"0\", token=\"TUFD\"");
        assert_eq!(challenge_from_base64(Scheme::Lsat, "TUFD", "lnbc1"), "LSAT macaroon=\"TUFD\", invoice=\"lnbc1\"");
        assert!(is_l402_authorization("LsAt x"));
        assert!(!is_l402_authorization("Basic x"));
    }
}
