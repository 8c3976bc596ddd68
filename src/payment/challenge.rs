//! The Payment challenge for a Lightning charge: its parameters, the `request` that carries the
//! invoice, the `opaque` that binds it to a service, and the challenge id that makes all of it
//! tamper-evident under the operator's secret.

use super::jcs::canonical;
use super::wire::{base64url_decode, base64url_encode, quoted};
use crate::json::{Json, Object};
use crate::l402::encoding::hex_encode;
use crate::l402::macaroon::HmacSha256;
use crate::l402::SecretRing;
use core::fmt;
use hmac::Mac;
use subtle::ConstantTimeEq;

pub const SCHEME: &str = "Payment";
pub const METHOD_LIGHTNING: &str = "lightning";
pub const INTENT_CHARGE: &str = "charge";

/// The auth-params of a challenge; a credential echoes them back unchanged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params {
    pub id: String,
    pub realm: String,
    pub method: String,
    pub intent: String,
    /// base64url of the canonical JSON of the charge request.
    pub request: String,
    /// RFC 3339; optional in the draft, always set by us.
    pub expires: String,
    pub digest: String,
    /// Not covered by the challenge id: informative only.
    pub description: String,
    /// base64url of canonical JSON: what the challenge was issued for (see [`Binding`]).
    pub opaque: String,
}

impl Params {
    /// A Lightning charge challenge, its id still to be set by [`IdKeys::sign`].
    pub fn charge(realm: String, request: String, expires: String, binding: &Binding) -> Params {
        Params {
            realm,
            method: METHOD_LIGHTNING.to_owned(),
            intent: INTENT_CHARGE.to_owned(),
            request,
            expires,
            opaque: binding.encode(),
            ..Params::default()
        }
    }

    /// The parameters as a credential echoes them: an object of strings, the optional ones
    /// absent or empty. Other members (a session intent's) are ignored.
    pub fn from_json(value: &Json) -> Option<Params> {
        let object = value.as_object()?;
        let text = |name: &str| object.get(name)?.as_str().map(str::to_owned);
        let optional = |name: &str| object.get(name).map_or(Some(String::new()), |v| v.as_str().map(str::to_owned));
        Some(Params {
            id: text("id")?,
            realm: text("realm")?,
            method: text("method")?,
            intent: text("intent")?,
            request: text("request")?,
            expires: optional("expires")?,
            digest: optional("digest")?,
            description: optional("description")?,
            opaque: optional("opaque")?,
        })
    }

    /// The parameters as a client echoes them: the optional ones left out when empty.
    pub fn to_json(&self) -> Json {
        let mut members = Object::new();
        let required = [
            ("id", &self.id),
            ("realm", &self.realm),
            ("method", &self.method),
            ("intent", &self.intent),
            ("request", &self.request),
        ];
        let optional = [
            ("expires", &self.expires),
            ("digest", &self.digest),
            ("description", &self.description),
            ("opaque", &self.opaque),
        ];
        for (name, value) in required.into_iter().chain(optional.into_iter().filter(|(_, value)| !value.is_empty())) {
            members.insert(name, value);
        }
        Json::Object(members)
    }

    /// The input of the challenge id: seven positional slots joined by `|`, empty when absent
    /// (draft-httpauth-payment §5.1.2.1.1, as Aperture computes it).
    pub fn id_input(&self) -> String {
        [&self.realm, &self.method, &self.intent, &self.request, &self.expires, &self.digest, &self.opaque]
            .map(String::as_str)
            .join("|")
    }

    /// The `WWW-Authenticate` value: required parameters first, then the optional ones present.
    pub fn header_value(&self) -> String {
        let mut value = format!(
            "{SCHEME} id={}, realm={}, method={}, intent={}, request={}",
            quoted(&self.id),
            quoted(&self.realm),
            quoted(&self.method),
            quoted(&self.intent),
            quoted(&self.request)
        );
        for (name, param) in [
            ("expires", &self.expires),
            ("digest", &self.digest),
            ("description", &self.description),
            ("opaque", &self.opaque),
        ] {
            if !param.is_empty() {
                value.push_str(&format!(", {name}={}", quoted(param)));
            }
        }
        value
    }
}

/// What the challenge id is keyed with, per operator secret. Derived like a macaroon root key
/// (`HMAC-SHA256(secret, label)`), so a secret never keys two schemes and any gateway holding it
/// verifies the ids of any other.
#[derive(Clone)]
pub struct IdKeys {
    keyed: Vec<HmacSha256>,
}

const ID_KEY_LABEL: &[u8] = b"l402-wasm payment challenge id v1";

impl IdKeys {
    pub fn derive(ring: &SecretRing) -> IdKeys {
        IdKeys::new(ring.verifying_root_keys(ID_KEY_LABEL).collect::<Vec<_>>().iter().map(|k| k.as_slice()))
    }

    /// Keys used as they are: the first mints, all verify.
    pub fn new<'a>(keys: impl IntoIterator<Item = &'a [u8]>) -> IdKeys {
        IdKeys { keyed: keys.into_iter().filter_map(|k| HmacSha256::new_from_slice(k).ok()).collect() }
    }

    fn mac(keyed: &HmacSha256, params: &Params) -> [u8; 32] {
        let mut mac = keyed.clone();
        mac.update(params.id_input().as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// Sets the challenge's id, binding every other parameter but the description.
    pub fn sign(&self, params: &mut Params) {
        params.id = self.id(params);
    }

    /// The id for `params` under the minting key: base64url of the HMAC.
    pub fn id(&self, params: &Params) -> String {
        self.keyed.first().map(|k| base64url_encode(&IdKeys::mac(k, params))).unwrap_or_default()
    }

    /// Whether `params.id` is the id of `params` under any key. Every key is tried, and compared
    /// in constant time, so timing tells neither the id nor the key.
    pub fn verify(&self, params: &Params) -> bool {
        let Some(presented) = base64url_decode(&params.id).filter(|id| id.len() == 32) else { return false };
        self.keyed.iter().fold(false, |found, k| found | bool::from(IdKeys::mac(k, params).ct_eq(&presented)))
    }
}

impl fmt::Debug for IdKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IdKeys({} keys)", self.keyed.len())
    }
}

/// The Lightning network an invoice is for, from its prefix, in the draft's names.
fn network(invoice: &str) -> Option<&'static str> {
    let lower = invoice.get(..6).unwrap_or(invoice).to_ascii_lowercase();
    if lower.starts_with("lnbcrt") {
        Some("regtest")
    } else if lower.starts_with("lntbs") {
        Some("signet")
    } else if lower.starts_with("lnbc") {
        Some("mainnet")
    } else {
        None
    }
}

/// The charge request: amount in satoshis (a decimal string), the invoice and its payment hash, so
/// that the hash is bound by the challenge id and no BOLT11 decoding is needed to verify.
pub fn charge_request(amount_sat: u64, description: &str, invoice: &str, payment_hash: &[u8; 32]) -> String {
    let mut details = Object::new().with("invoice", invoice).with("paymentHash", hex_encode(payment_hash));
    if let Some(net) = network(invoice) {
        details.insert("network", net);
    }
    let mut request =
        Object::new().with("amount", amount_sat.to_string()).with("currency", "sat").with("methodDetails", details);
    if !description.is_empty() {
        request.insert("description", description);
    }
    encode_canonical(&request.into())
}

/// What a challenge was issued for, carried in `opaque`: the service; the token id of the purchase,
/// shared with the L402 token minted for the same invoice, so that both dialects draw on one use
/// count; and for a quoted price the method and path the quote was for (a cheap path's charge
/// cannot buy an expensive one).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Binding {
    pub service: String,
    /// Hex.
    pub token_id: String,
    pub method: Option<String>,
    pub path: Option<String>,
}

impl Binding {
    pub fn encode(&self) -> String {
        let mut members = Object::new().with("service", &self.service).with("token_id", &self.token_id);
        for (name, value) in [("method", &self.method), ("path", &self.path)] {
            if let Some(value) = value {
                members.insert(name, value);
            }
        }
        encode_canonical(&members.into())
    }

    /// `opaque` as [`Binding::encode`] writes it; a method or path may be absent or `null`.
    pub fn decode(opaque: &str) -> Option<Binding> {
        let value = Json::parse(&base64url_decode(opaque)?).ok()?;
        let object = value.as_object()?;
        let text = |name: &str| object.get(name)?.as_str().map(str::to_owned);
        let optional = |name: &str| match object.get(name) {
            None | Some(Json::Null) => Some(None),
            Some(value) => value.as_str().map(|text| Some(text.to_owned())),
        };
        Some(Binding {
            service: text("service")?,
            token_id: text("token_id")?,
            method: optional("method")?,
            path: optional("path")?,
        })
    }
}

/// base64url of a value's canonical JSON. The gateway's values hold strings and objects only,
/// which always have one.
fn encode_canonical(value: &Json) -> String {
    base64url_encode(canonical(value).unwrap_or_default().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> Params {
        Params {
            realm: "api.example.com".into(),
            method: "lightning".into(),
            intent: "charge".into(),
            request: "eyJhbW91bnQiOiIxMDAifQ".into(),
            ..Params::default()
        }
    }

    #[test]
    fn ids_bind_every_covered_slot_and_verify_under_any_key() {
        let old = IdKeys::new([&b"old-key"[..]]);
        let ring = IdKeys::new([&b"new-key"[..], &b"old-key"[..]]);
        let mut p = params();
        p.expires = "2026-03-15T12:05:00Z".into();
        p.id = old.id(&p);
        assert!(ring.verify(&p), "an old key still verifies");
        assert!(!IdKeys::new([&b"other"[..]]).verify(&p));
        for tamper in [
            |p: &mut Params| p.realm.push('x'),
            |p: &mut Params| p.request.push('A'),
            |p: &mut Params| p.expires = "2099-01-01T00:00:00Z".into(),
            |p: &mut Params| p.opaque = "e30".into(),
            |p: &mut Params| p.id.push('A'),
        ] {
            let mut t = p.clone();
            tamper(&mut t);
            assert!(!ring.verify(&t), "{t:?}");
        }
        // The description is informative, outside the id.
        p.description = "anything".into();
        assert!(ring.verify(&p));
    }

    #[test]
    fn header_lists_required_then_present_optional_parameters() {
        let mut p = params();
        p.id = "abc".into();
        p.opaque = "e30".into();
        assert_eq!(
            p.header_value(),
            r#"Payment id="abc", realm="api.example.com", method="lightning", intent="charge", request="eyJhbW91bnQiOiIxMDAifQ", opaque="e30""#
        );
    }

    #[test]
    fn charge_request_is_canonical_json() {
        let request = charge_request(10, "weather access", "lnbcrt100n1xyz", &[0xab; 32]);
        let json = String::from_utf8(base64url_decode(&request).unwrap()).unwrap();
        let hash = "ab".repeat(32);
        assert_eq!(
            json,
            format!(
                r#"{{"amount":"10","currency":"sat","description":"weather access","methodDetails":{{"invoice":"lnbcrt100n1xyz","network":"regtest","paymentHash":"{hash}"}}}}"#
            )
        );
        assert_eq!(network("lnbc1"), Some("mainnet"));
        assert_eq!(network("LNTBS1"), Some("signet"));
        assert_eq!(network("lntb1"), None);
    }

    #[test]
    fn bindings_are_canonical() {
        let b = Binding {
            service: "weather".into(),
            token_id: "ab".into(),
            method: Some("GET".into()),
            path: Some("/v1/x".into()),
        };
        assert_eq!(
            base64url_decode(&b.encode()).unwrap(),
            br#"{"method":"GET","path":"/v1/x","service":"weather","token_id":"ab"}"#
        );
    }
}
