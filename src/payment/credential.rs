//! The Payment credential for a Lightning charge: `Authorization: Payment <base64url JSON>` echoing
//! the challenge and carrying the preimage. Verified with no storage and no call to the node: the
//! challenge id proves we issued the echoed challenge, and the preimage proves its invoice was paid.

use super::challenge::{Binding, IdKeys, Params, INTENT_CHARGE, METHOD_LIGHTNING, SCHEME};
use super::wire::{base64url_decode, parse_rfc3339};
use crate::json::Json;
use crate::l402::encoding::hex_decode_array;
use core::fmt;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Longest `Authorization: Payment` value read: the echoed challenge holds a BOLT11 invoice twice
/// encoded, a few kilobytes at most.
pub const MAX_CREDENTIAL_HEADER: usize = 8192;

/// Why a Payment credential does not open the route. `code()` is stable: it appears in responses
/// and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PaymentError {
    Malformed(&'static str),
    /// Another payment method or intent than a Lightning charge.
    MethodUnsupported,
    /// The challenge id does not bind the echoed parameters under any of our secrets.
    InvalidChallenge,
    Expired,
    PreimageMismatch,
    /// Issued for another service.
    WrongService,
    /// Issued at another price than the route asks.
    WrongPrice,
    /// A quoted price bought another method or path.
    Restricted,
    /// The charge was already spent: charge credentials are single-use.
    Replayed,
}

impl PaymentError {
    pub fn code(&self) -> &'static str {
        match self {
            PaymentError::Malformed(_) => "malformed",
            PaymentError::MethodUnsupported => "method_unsupported",
            PaymentError::InvalidChallenge => "invalid_challenge",
            PaymentError::Expired => "expired",
            PaymentError::PreimageMismatch => "preimage_mismatch",
            PaymentError::WrongService => "wrong_service",
            PaymentError::WrongPrice => "wrong_price",
            PaymentError::Restricted => "restricted",
            PaymentError::Replayed => "replayed",
        }
    }
}

impl fmt::Display for PaymentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PaymentError::Malformed(why) => write!(f, "malformed Payment credential: {why}"),
            PaymentError::MethodUnsupported => write!(f, "only the lightning method's charge intent is accepted"),
            PaymentError::InvalidChallenge => write!(f, "the echoed challenge was not issued by this gateway"),
            PaymentError::Expired => write!(f, "the challenge has expired"),
            PaymentError::PreimageMismatch => write!(f, "the preimage does not match the invoice's payment hash"),
            PaymentError::WrongService => write!(f, "the challenge was issued for another service"),
            PaymentError::WrongPrice => write!(f, "the challenge was issued at another price"),
            PaymentError::Restricted => write!(f, "the challenge was issued for another method or path"),
            PaymentError::Replayed => write!(f, "the charge was already used: a charge credential buys one request"),
        }
    }
}

/// A verified charge: the echoed challenge was ours, is unexpired, and its invoice was paid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Charge {
    pub challenge_id: String,
    pub payment_hash: [u8; 32],
    /// The purchase's token id (see [`Binding`]).
    pub token_id: [u8; 32],
    pub amount_sat: u64,
    pub binding: Binding,
}

/// What a route asks of a charge: its service, its static price (a quoted price is bound to the
/// method and path it was quoted for instead), and the request's method.
pub struct Route<'a> {
    pub service: &'a str,
    pub price_msat: Option<u64>,
    pub quoted: bool,
    pub method: &'a str,
}

impl Charge {
    /// Whether the charge was issued for `route`; `paths` are every reading of the request's path,
    /// each of which a quote's path must be.
    pub fn issued_for<'p>(
        &self,
        route: &Route<'_>,
        mut paths: impl Iterator<Item = &'p str>,
    ) -> Result<(), PaymentError> {
        let binding = &self.binding;
        if binding.service != route.service {
            return Err(PaymentError::WrongService);
        }
        if route.quoted {
            let same_path = binding.path.as_deref().is_some_and(|quoted| paths.all(|path| path == quoted));
            if binding.method.as_deref() != Some(route.method) || !same_path {
                return Err(PaymentError::Restricted);
            }
        } else if route.price_msat.is_some_and(|price| self.amount_sat.saturating_mul(1000) < price) {
            return Err(PaymentError::WrongPrice);
        }
        Ok(())
    }
}

/// Whether an `Authorization` value uses the Payment scheme (in any case).
pub fn is_payment_authorization(value: &str) -> bool {
    token(value).is_some()
}

fn token(value: &str) -> Option<&str> {
    let (scheme, rest) = value.trim_start().split_once(' ')?;
    scheme.eq_ignore_ascii_case(SCHEME).then(|| rest.trim())
}

/// A Payment credential as sent: the echoed challenge and the preimage, decoded, not verified.
pub struct Presented {
    pub challenge: Params,
    pub preimage: String,
}

pub fn decode(value: &str) -> Result<Presented, PaymentError> {
    if value.len() > MAX_CREDENTIAL_HEADER {
        return Err(PaymentError::Malformed("credential header too long"));
    }
    let token = token(value).filter(|t| !t.is_empty()).ok_or(PaymentError::Malformed("no credential"))?;
    let json = base64url_decode(token).ok_or(PaymentError::Malformed("credential is not base64url"))?;
    let credential: Option<(Params, String)> = Json::parse(&json).ok().and_then(|credential| {
        let preimage = credential.get("payload")?.get("preimage")?.as_str()?.to_owned();
        Some((Params::from_json(credential.get("challenge")?)?, preimage))
    });
    let (challenge, preimage) = credential.ok_or(PaymentError::Malformed("credential is not the expected JSON"))?;
    Ok(Presented { challenge, preimage })
}

/// Parses and verifies a Payment credential at `now` (Unix seconds). The route's own checks (its
/// service, price, method and path) are the caller's: [`Charge::issued_for`].
pub fn verify(keys: &IdKeys, value: &str, now: u64) -> Result<Charge, PaymentError> {
    let Presented { challenge, preimage } = decode(value)?;
    if challenge.method != METHOD_LIGHTNING || challenge.intent != INTENT_CHARGE {
        return Err(PaymentError::MethodUnsupported);
    }
    if !keys.verify(&challenge) {
        return Err(PaymentError::InvalidChallenge);
    }
    // Every challenge we issue expires; one without expiry was never ours.
    let expires = parse_rfc3339(&challenge.expires).ok_or(PaymentError::Malformed("expires"))?;
    if now >= expires {
        return Err(PaymentError::Expired);
    }
    let request = base64url_decode(&challenge.request).and_then(|json| Json::parse(&json).ok());
    let text = |path: &[&str]| path.iter().try_fold(request.as_ref()?, |value, name| value.get(name))?.as_str();
    let (Some(amount), Some(currency), Some(payment_hash)) =
        (text(&["amount"]), text(&["currency"]), text(&["methodDetails", "paymentHash"]))
    else {
        return Err(PaymentError::Malformed("request"));
    };
    let binding = Binding::decode(&challenge.opaque).ok_or(PaymentError::Malformed("opaque"))?;
    let payment_hash =
        hex_decode_array::<32>(payment_hash).ok_or(PaymentError::Malformed("methodDetails.paymentHash"))?;
    let token_id = hex_decode_array::<32>(&binding.token_id).ok_or(PaymentError::Malformed("opaque token_id"))?;
    let amount_sat = Some(amount)
        .filter(|a| currency == "sat" && !a.starts_with('0') && a.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|a| a.parse::<u64>().ok())
        .ok_or(PaymentError::Malformed("amount"))?;
    let preimage =
        hex_decode_array::<32>(&preimage).ok_or(PaymentError::Malformed("payload.preimage must be 32 bytes of hex"))?;
    let hashed: [u8; 32] = Sha256::digest(preimage).into();
    if !bool::from(hashed.ct_eq(&payment_hash)) {
        return Err(PaymentError::PreimageMismatch);
    }
    Ok(Charge { challenge_id: challenge.id, payment_hash, token_id, amount_sat, binding })
}

#[cfg(test)]
mod tests {
    use super::super::challenge::charge_request;
    use super::super::wire::rfc3339;
    use super::*;

    const PREIMAGE: [u8; 32] = [7; 32];
    const NOW: u64 = 1_800_000_000;

    fn keys() -> IdKeys {
        IdKeys::new([&[1u8; 32][..]])
    }

    fn challenge(keys: &IdKeys, expires: u64) -> Params {
        let hash: [u8; 32] = Sha256::digest(PREIMAGE).into();
        let mut p = Params {
            realm: "weather".into(),
            method: METHOD_LIGHTNING.into(),
            intent: INTENT_CHARGE.into(),
            request: charge_request(10, "", "lnbcrt100n1x", &hash),
            expires: rfc3339(expires),
            opaque: binding("weather").encode(),
            ..Params::default()
        };
        p.id = keys.id(&p);
        p
    }

    fn binding(service: &str) -> Binding {
        Binding { service: service.into(), token_id: "04".repeat(32), ..Binding::default() }
    }

    fn header(challenge: &Params, preimage: &str) -> String {
        crate::testing::payment_header(challenge, preimage)
    }

    #[test]
    fn a_paid_charge_verifies() {
        let keys = keys();
        let c = challenge(&keys, NOW + 60);
        let charge = verify(&keys, &header(&c, &"07".repeat(32)), NOW).unwrap();
        assert_eq!(charge.amount_sat, 10);
        assert_eq!(charge.binding.service, "weather");
        assert_eq!(charge.token_id, [4; 32]);
        assert_eq!(charge.challenge_id, c.id);
        assert!(verify(&keys, &header(&c, &"07".repeat(32)).replacen("Payment", "payment", 1), NOW).is_ok());
    }

    /// A credential naming a member twice is refused, whichever copy a reader would take: one
    /// parser could verify the first preimage and another hand the second on.
    #[test]
    fn a_repeated_member_is_refused() {
        let keys = keys();
        let c = challenge(&keys, NOW + 60);
        let good = header(&c, &"07".repeat(32));
        let json = base64url_decode(good.strip_prefix("Payment ").unwrap()).unwrap();
        let json = String::from_utf8(json).unwrap();
        let twice = json.replacen(r#""payload":{"#, &format!(r#""payload":{{"preimage":"{}","#, "08".repeat(32)), 1);
        assert!(twice.contains(&"07".repeat(32)) && twice.contains(&"08".repeat(32)), "{twice}");
        let value = format!("Payment {}", super::super::wire::base64url_encode(twice.as_bytes()));
        assert_eq!(verify(&keys, &value, NOW).map(drop).map_err(|e| e.code()), Err("malformed"));
    }

    #[test]
    fn each_fault_has_its_reason() {
        let keys = keys();
        let good = challenge(&keys, NOW + 60);
        let pre = "07".repeat(32);
        let check = |value: String| verify(&keys, &value, NOW).map(drop).map_err(|e| e.code());
        assert_eq!(check(header(&challenge(&keys, NOW), &pre)), Err("expired"));
        assert_eq!(check(header(&good, &"08".repeat(32))), Err("preimage_mismatch"));
        assert_eq!(check(header(&good, "07")), Err("malformed"));
        assert_eq!(check(header(&challenge(&IdKeys::new([&[2u8; 32][..]]), NOW + 60), &pre)), Err("invalid_challenge"));
        let mut tampered = good.clone();
        tampered.opaque = binding("admin").encode();
        assert_eq!(check(header(&tampered, &pre)), Err("invalid_challenge"));
        let mut session = good.clone();
        session.intent = "session".into();
        assert_eq!(check(header(&session, &pre)), Err("method_unsupported"));
        for garbage in ["Payment", "Payment !!!", "Payment e30", &format!("Payment {}", "A".repeat(9000))] {
            assert_eq!(check(garbage.to_owned()), Err("malformed"), "{garbage}");
        }
        assert!(!is_payment_authorization("L402 abc:def"));
    }
}
