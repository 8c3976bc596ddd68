//! Minting and verifying L402 tokens: a macaroon whose identifier binds an invoice's payment hash,
//! redeemed with the invoice's preimage.

use super::caveats::{self, CaveatError, Requirement};
use super::identifier::{Identifier, IdentifierError};
use super::keys::SecretRing;
use super::macaroon::{DecodeError, Macaroon};
use core::fmt;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The location Aperture writes into its macaroons.
pub const LOCATION: &str = "lsat";

/// Why a credential was refused. `code()` is stable: it appears in responses and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifyError {
    Malformed(&'static str),
    UnknownVersion(u16),
    BadSignature,
    PreimageMismatch,
    Expired,
    WrongService,
    CapabilityMissing,
    CaveatWidened(&'static str),
    Restricted,
}

impl VerifyError {
    pub fn code(&self) -> &'static str {
        match self {
            VerifyError::Malformed(_) => "malformed",
            VerifyError::UnknownVersion(_) => "unknown_version",
            VerifyError::BadSignature => "bad_signature",
            VerifyError::PreimageMismatch => "preimage_mismatch",
            VerifyError::Expired => "expired",
            VerifyError::WrongService => "wrong_service",
            VerifyError::CapabilityMissing => "capability_missing",
            VerifyError::CaveatWidened(_) => "caveat_widened",
            VerifyError::Restricted => "restricted",
        }
    }
}

impl fmt::Display for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VerifyError::Malformed(what) => write!(f, "malformed credential: {what}"),
            VerifyError::UnknownVersion(v) => write!(f, "unknown token identifier version {v}"),
            VerifyError::BadSignature => write!(f, "macaroon signature is not valid"),
            VerifyError::PreimageMismatch => write!(f, "preimage does not match the token's payment hash"),
            VerifyError::Expired => write!(f, "token has expired"),
            VerifyError::WrongService => write!(f, "token was not issued for this service"),
            VerifyError::CapabilityMissing => write!(f, "token lacks a capability this route requires"),
            VerifyError::CaveatWidened(key) => write!(f, "a later {key} caveat widens an earlier one"),
            VerifyError::Restricted => write!(f, "token is restricted to other paths or methods"),
        }
    }
}

impl From<DecodeError> for VerifyError {
    fn from(e: DecodeError) -> VerifyError {
        VerifyError::Malformed(match e {
            DecodeError::Empty => "empty macaroon",
            DecodeError::TooLarge => "macaroon too large",
            DecodeError::NotVersion2 => "macaroon is not in the V2 binary format",
            DecodeError::Truncated => "macaroon is truncated",
            DecodeError::FieldTooLong => "macaroon field length out of bounds",
            DecodeError::UnexpectedField => "unexpected macaroon field",
            DecodeError::MissingIdentifier => "macaroon has no identifier",
            DecodeError::ThirdPartyCaveat => "third-party caveats are not supported",
            DecodeError::TooManyCaveats => "too many caveats",
            DecodeError::BadSignatureLength => "macaroon signature has the wrong length",
            DecodeError::TrailingBytes => "bytes after the macaroon",
            DecodeError::NotUtf8Caveat => "caveat is not UTF-8",
        })
    }
}

impl From<IdentifierError> for VerifyError {
    fn from(e: IdentifierError) -> VerifyError {
        match e {
            IdentifierError::UnknownVersion(v) => VerifyError::UnknownVersion(v),
            IdentifierError::WrongLength(_) => VerifyError::Malformed("token identifier has the wrong length"),
        }
    }
}

impl From<CaveatError> for VerifyError {
    fn from(e: CaveatError) -> VerifyError {
        match e {
            CaveatError::Malformed => VerifyError::Malformed("caveat is not a valid key=value"),
            CaveatError::NoServices | CaveatError::WrongService => VerifyError::WrongService,
            CaveatError::CapabilityMissing => VerifyError::CapabilityMissing,
            CaveatError::Expired => VerifyError::Expired,
            CaveatError::Widened(key) => VerifyError::CaveatWidened(key),
            CaveatError::Restricted => VerifyError::Restricted,
        }
    }
}

/// What a minted token grants.
#[derive(Debug, Clone)]
pub struct Grant<'a> {
    pub payment_hash: [u8; 32],
    pub token_id: [u8; 32],
    pub service: &'a str,
    pub capabilities: &'a [String],
    /// Unix seconds; `None` mints a token that does not expire.
    pub valid_until: Option<u64>,
    /// Extra `key=value` caveats, minted between the capabilities and the expiry as Aperture does.
    pub constraints: &'a [(String, String)],
}

/// Mints a token in Aperture's caveat order, signed with the root key of the first secret.
pub fn mint(ring: &SecretRing, grant: &Grant<'_>) -> Macaroon {
    let identifier = Identifier { payment_hash: grant.payment_hash, token_id: grant.token_id }.encode();
    let root_key = ring.minting_root_key(&identifier);
    let mut mac = Macaroon::new(&root_key, identifier.to_vec(), Some(LOCATION));
    mac.add_caveat(&format!("{}={}:0", caveats::SERVICES, grant.service));
    if !grant.capabilities.is_empty() {
        mac.add_caveat(&format!("{}{}={}", grant.service, caveats::CAPABILITIES_SUFFIX, grant.capabilities.join(",")));
    }
    for (key, value) in grant.constraints {
        mac.add_caveat(&format!("{key}={value}"));
    }
    if let Some(until) = grant.valid_until {
        mac.add_caveat(&format!("{}{}={until}", grant.service, caveats::VALID_UNTIL_SUFFIX));
    }
    mac
}

/// A credential as presented: the token and the preimage that proves its invoice was paid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    pub macaroon: Macaroon,
    pub preimage: [u8; 32],
}

/// A token whose signature (and, with a preimage, payment) is proven; its caveats still have to be
/// checked per request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub identifier: Identifier,
    /// Whether a preimage proved the payment; otherwise only the node can tell.
    pub preimage_proven: bool,
    caveats: Vec<String>,
}

impl Token {
    /// Checks the token's caveats against a request; returns its expiry, if any.
    pub fn authorize(&self, need: &Requirement<'_>) -> Result<Option<u64>, VerifyError> {
        Ok(caveats::check(&self.caveats, need)?)
    }

    pub fn caveats(&self) -> &[String] {
        &self.caveats
    }
}

/// Proves the credential in Aperture's order: identifier, preimage, then the signature under each
/// secret of the ring. Hashes and signatures compare in constant time.
pub fn authenticate(ring: &SecretRing, credential: Credential) -> Result<Token, VerifyError> {
    prove(ring, credential.macaroon, Some(credential.preimage))
}

/// Proves only the signature of a macaroon presented without a preimage (wallets that do not reveal
/// preimages); the payment must then be confirmed with the node.
pub fn authenticate_without_preimage(ring: &SecretRing, macaroon: Macaroon) -> Result<Token, VerifyError> {
    prove(ring, macaroon, None)
}

fn prove(ring: &SecretRing, mac: Macaroon, preimage: Option<[u8; 32]>) -> Result<Token, VerifyError> {
    // The location is outside the signature chain; accepting only Aperture's keeps every byte of
    // a token meaningful.
    if mac.location().is_some_and(|l| l != LOCATION.as_bytes()) {
        return Err(VerifyError::Malformed("macaroon location is not lsat"));
    }
    let identifier = Identifier::decode(mac.identifier())?;
    if let Some(preimage) = preimage {
        let hash: [u8; 32] = Sha256::digest(preimage).into();
        if !bool::from(hash.ct_eq(&identifier.payment_hash)) {
            return Err(VerifyError::PreimageMismatch);
        }
    }
    // Every secret is tried, so timing does not tell which one signed.
    let mut valid = false;
    for root_key in ring.verifying_root_keys(mac.identifier()) {
        valid |= mac.signature_matches(&root_key);
    }
    if !valid {
        return Err(VerifyError::BadSignature);
    }
    Ok(Token { identifier, preimage_proven: preimage.is_some(), caveats: mac.caveats().to_vec() })
}

/// Authenticates and authorizes in one step.
pub fn verify(ring: &SecretRing, credential: Credential, need: &Requirement<'_>) -> Result<Token, VerifyError> {
    let token = authenticate(ring, credential)?;
    token.authorize(need)?;
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn ring() -> SecretRing {
        SecretRing::new(vec![vec![0x11; 32]]).unwrap()
    }

    fn paid(preimage: [u8; 32], capabilities: &[String]) -> Macaroon {
        let payment_hash = Sha256::digest(preimage).into();
        mint(
            &ring(),
            &Grant {
                payment_hash,
                token_id: [3; 32],
                service: "weather",
                capabilities,
                valid_until: Some(1000),
                constraints: &[],
            },
        )
    }

    #[test]
    fn mints_caveats_in_apertures_order() {
        let caps = vec!["read".to_string(), "write".to_string()];
        let constraints = vec![("tier".to_string(), "gold".to_string())];
        let mac = mint(
            &ring(),
            &Grant {
                payment_hash: [1; 32],
                token_id: [2; 32],
                service: "weather",
                capabilities: &caps,
                valid_until: Some(99),
                constraints: &constraints,
            },
        );
        assert_eq!(
            mac.caveats(),
            ["services=weather:0", "weather_capabilities=read,write", "tier=gold", "weather_valid_until=99"]
        );
        assert_eq!(mac.location(), Some(&b"lsat"[..]));
    }

    #[test]
    fn verifies_paid_token_and_reports_each_refusal() {
        let preimage = [7u8; 32];
        let read = vec!["read".to_string()];
        let mac = paid(preimage, &read);
        let ok = Requirement { service: "weather", capabilities: &read, now: 500, method: "GET", path: "/" };
        let token = verify(&ring(), Credential { macaroon: mac.clone(), preimage }, &ok).unwrap();
        assert_eq!(token.identifier.token_id, [3; 32]);

        let cred = |p| Credential { macaroon: mac.clone(), preimage: p };
        assert_eq!(verify(&ring(), cred([8; 32]), &ok), Err(VerifyError::PreimageMismatch));
        let other_ring = SecretRing::new(vec![vec![0x22; 32]]).unwrap();
        assert_eq!(verify(&other_ring, cred(preimage), &ok), Err(VerifyError::BadSignature));
        let late = Requirement { now: 1001, ..ok };
        assert_eq!(verify(&ring(), cred(preimage), &late), Err(VerifyError::Expired));
        let maps = Requirement { service: "maps", ..ok };
        assert_eq!(verify(&ring(), cred(preimage), &maps), Err(VerifyError::WrongService));
        let admin = vec!["admin".to_string()];
        let needs_admin = Requirement { capabilities: &admin, ..ok };
        assert_eq!(verify(&ring(), cred(preimage), &needs_admin), Err(VerifyError::CapabilityMissing));
    }

    #[test]
    fn any_secret_of_the_ring_verifies() {
        let preimage = [7u8; 32];
        let mac = paid(preimage, &[]);
        let rotated = SecretRing::new(vec![vec![0x22; 32], vec![0x11; 32]]).unwrap();
        let need = Requirement { service: "weather", capabilities: &[], now: 0, method: "GET", path: "/" };
        assert!(verify(&rotated, Credential { macaroon: mac, preimage }, &need).is_ok());
    }

    #[test]
    fn holder_added_caveats_are_honoured() {
        let preimage = [7u8; 32];
        let mut mac = paid(preimage, &[]);
        mac.add_caveat("weather_valid_until=600");
        let need = Requirement { service: "weather", capabilities: &[], now: 700, method: "GET", path: "/" };
        assert_eq!(verify(&ring(), Credential { macaroon: mac.clone(), preimage }, &need), Err(VerifyError::Expired));
        mac.add_caveat("weather_valid_until=2000");
        let need = Requirement { now: 0, ..need };
        assert_eq!(
            verify(&ring(), Credential { macaroon: mac, preimage }, &need),
            Err(VerifyError::CaveatWidened("valid_until"))
        );
    }

    #[test]
    fn unknown_identifier_version_is_refused() {
        let mut identifier = Identifier { payment_hash: [0; 32], token_id: [0; 32] }.encode();
        identifier[1] = 1;
        let mac = Macaroon::new(&ring().minting_root_key(&identifier), identifier.to_vec(), None);
        let need = Requirement { service: "weather", capabilities: &[], now: 0, method: "GET", path: "/" };
        assert_eq!(
            verify(&ring(), Credential { macaroon: mac, preimage: [0; 32] }, &need),
            Err(VerifyError::UnknownVersion(1))
        );
    }
}
