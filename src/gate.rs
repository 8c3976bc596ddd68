//! The decision for one request, as a pure function of the config, the request's few relevant
//! headers and the time: let it through, ask for payment, or refuse it.

use crate::config::{Access, Config, Service, Unmatched};
use crate::l402::caveats;
use crate::l402::header::{is_l402_authorization, parse_authorization, parse_macaroon_header, parse_macaroon_only};
use crate::l402::{
    authenticate, authenticate_without_preimage, Identifier, Requirement, SecretRing, Token, VerifyError,
};
use crate::payment::{self, is_payment_authorization, PaymentError};
use crate::policy;
use crate::policy::path::{Ambiguity, Readings};
use core::fmt;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// The parts of a request the gate reads.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    pub method: &'a str,
    pub path: &'a str,
    /// `:authority`; read only when a route matches on the host.
    pub authority: &'a str,
    pub authorization: Option<&'a str>,
    /// `Grpc-Metadata-macaroon` or `Macaroon`, read only when there is no `Authorization`.
    pub macaroon: Option<&'a str>,
    /// Unix seconds.
    pub now: u64,
}

/// Why a credential does not open the route. `code()` is stable: it appears in responses and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Token(VerifyError),
    /// The token id is on the deny-list.
    Revoked,
    /// The token has been used as often as its route allows.
    UsedUp,
    /// The node does not report the token's invoice as settled.
    Unsettled,
    /// A Payment-scheme credential that does not open the route.
    Payment(PaymentError),
    /// A metered token's balance cannot cover the route's reservation.
    BalanceExhausted {
        balance_msat: u64,
        reserve_msat: u64,
    },
    /// This gateway keeps no balance for the metered token (sold elsewhere, or before a restart).
    BalanceUnknown,
}

impl Refusal {
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::Token(e) => e.code(),
            Refusal::Revoked => "revoked",
            Refusal::UsedUp => "used_up",
            Refusal::Unsettled => "unsettled",
            Refusal::Payment(e) => e.code(),
            Refusal::BalanceExhausted { .. } => "balance_exhausted",
            Refusal::BalanceUnknown => "balance_unknown",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Token(e) => e.fmt(f),
            Refusal::Revoked => write!(f, "token has been revoked"),
            Refusal::UsedUp => write!(f, "token has been used as many times as it allows"),
            Refusal::Unsettled => write!(f, "the token's invoice is not paid"),
            Refusal::Payment(e) => e.fmt(f),
            Refusal::BalanceExhausted { balance_msat, reserve_msat } => write!(
                f,
                "the token's balance of {balance_msat} msat cannot cover the {reserve_msat} msat held per request: buy a new bundle"
            ),
            Refusal::BalanceUnknown => write!(
                f,
                "this gateway keeps no balance for the token (sold by another gateway, or before a restart): buy a new bundle"
            ),
        }
    }
}

impl From<VerifyError> for Refusal {
    fn from(e: VerifyError) -> Refusal {
        Refusal::Token(e)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision<'c> {
    /// A free route, or no route and `unmatched: free`.
    Free,
    /// A valid credential for the route. Use limits and settlement checks (strict mode, or a
    /// credential without preimage) still apply before the request may pass. A Payment-scheme
    /// charge carries the token id of its purchase and its challenge id, and buys one request.
    Paid {
        identifier: Identifier,
        preimage_proven: bool,
        service: &'c Service,
        price_msat: Option<u64>,
        charge: Option<String>,
        /// The token's expiry (unix seconds), if it has one.
        valid_until: Option<u64>,
    },
    /// Payment is needed; `refusal` says what was wrong with the credential presented, if any.
    Challenge { service: &'c Service, refusal: Option<Refusal> },
    /// No route matches and `unmatched: deny`.
    NoRoute,
    /// The path may be read as more than one path, so no rule can be trusted with it.
    AmbiguousPath(Ambiguity),
}

/// The forms a credential comes in; the same text means different things in each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    /// `Authorization: L402 <macaroon>:<preimage>`
    WithPreimage,
    /// `Authorization: L402 <macaroon>`, where the node vouches for the payment.
    MacaroonOnly,
    /// `Grpc-Metadata-macaroon` / `Macaroon: <hex>` with a `preimage=` caveat.
    Grpc,
}

const FORMS: usize = 3;

impl Form {
    fn authenticate(self, ring: &SecretRing, header: &str) -> Result<Token, VerifyError> {
        match self {
            Form::WithPreimage => authenticate(ring, parse_authorization(header)?),
            Form::MacaroonOnly => authenticate_without_preimage(ring, parse_macaroon_only(header)?),
            Form::Grpc => authenticate(ring, parse_macaroon_header(header)?),
        }
    }
}

/// Hashes a credential by its length and last 64 bytes (the preimage, or the signature in the hex
/// form: random per token) with FNV-1a, instead of SipHash over the whole header. Its weakness to
/// chosen collisions costs nothing here: only authenticated credentials are ever inserted, and a
/// lookup still compares the full text.
struct TailHasher(u64);

impl Default for TailHasher {
    fn default() -> TailHasher {
        TailHasher(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for TailHasher {
    fn write(&mut self, bytes: &[u8]) {
        let tail = bytes.get(bytes.len().saturating_sub(64)..).unwrap_or(bytes);
        for byte in tail.iter().chain(&(bytes.len() as u64).to_le_bytes()) {
            self.0 = (self.0 ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type CredentialMap = HashMap<Box<str>, Token, BuildHasherDefault<TailHasher>>;

/// Credentials verified recently, keyed by their form and exact header text: a hit proves these
/// bytes were authenticated in this form, so only the cheap caveat check runs again, with the
/// current time and route. Bounded: when full it starts over, which keeps memory flat.
pub struct VerifiedCache {
    entries: [CredentialMap; FORMS],
    capacity: usize,
}

impl VerifiedCache {
    pub fn new(capacity: usize) -> VerifiedCache {
        VerifiedCache { entries: Default::default(), capacity }
    }

    pub fn len(&self) -> usize {
        self.entries.iter().map(CredentialMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.iter().all(CredentialMap::is_empty)
    }

    fn authenticate(&mut self, config: &Config, header: &str, form: Form) -> Result<&Token, VerifyError> {
        let cached = self.entries.get(form as usize).is_some_and(|entries| entries.contains_key(header));
        if !cached {
            let token = form.authenticate(&config.secrets, header)?;
            if self.len() >= self.capacity {
                self.entries.iter_mut().for_each(CredentialMap::clear);
            }
            if let Some(entries) = self.entries.get_mut(form as usize) {
                entries.insert(header.into(), token);
            }
        }
        self.entries
            .get(form as usize)
            .and_then(|entries| entries.get(header))
            .ok_or(VerifyError::Malformed("credential cache"))
    }
}

/// How an `Authorization` value is read: with a preimage, or without where the node may vouch.
fn authorization_form(config: &Config, header: &str) -> Form {
    if config.node.macaroon_only && !header.contains(':') {
        Form::MacaroonOnly
    } else {
        Form::WithPreimage
    }
}

/// Where a request stands before any credential is read: most of them are decided by the path and
/// the route alone, so the credential headers and the clock are read only for a paid route.
pub enum Routing<'c, 'p> {
    Decided(Decision<'c>),
    Paid(PaidRoute<'c, 'p>),
}

/// A request on a paid route, with the readings of its path.
pub struct PaidRoute<'c, 'p> {
    pub service: &'c Service,
    readings: Readings<'p>,
}

impl PaidRoute<'_, '_> {
    /// The path a decoding upstream serves: prices are quoted and tokens minted for it.
    pub fn canonical_path(&self) -> &str {
        self.readings.canonical()
    }
}

/// The credential headers and the clock, as the paid route needs them.
#[derive(Debug, Clone, Copy)]
pub struct Presented<'a> {
    pub authorization: Option<&'a str>,
    /// `Grpc-Metadata-macaroon` or `Macaroon`, read only when there is no `Authorization`.
    pub macaroon: Option<&'a str>,
    /// Unix seconds.
    pub now: u64,
}

pub fn route<'c, 'p>(config: &'c Config, method: &str, path: &'p str, authority: &str) -> Routing<'c, 'p> {
    let readings = match policy::path::readings(policy::path_only(path), config.paths.encoded_slashes) {
        Ok(readings) => readings,
        Err(why) => return Routing::Decided(Decision::AmbiguousPath(why)),
    };
    let route = match policy::select(config, method, &readings, authority) {
        Ok(Some(route)) => route,
        Ok(None) => {
            return Routing::Decided(match config.unmatched {
                Unmatched::Free => Decision::Free,
                Unmatched::Deny => Decision::NoRoute,
            })
        }
        Err(why) => return Routing::Decided(Decision::AmbiguousPath(why)),
    };
    match &route.access {
        Access::Free => Routing::Decided(Decision::Free),
        Access::Paid(service) => Routing::Paid(PaidRoute { service, readings }),
    }
}

/// The decision on a paid route from the credential presented.
pub fn decide_paid<'c>(
    config: &'c Config,
    cache: &mut VerifiedCache,
    route: &PaidRoute<'c, '_>,
    method: &str,
    presented: &Presented<'_>,
) -> Decision<'c> {
    let PaidRoute { service, readings } = route;
    let service = *service;
    let need = Requirement {
        service: &service.name,
        capabilities: &service.capabilities,
        now: presented.now,
        method,
        path: readings.canonical(),
    };
    let verified = match (presented.authorization, presented.macaroon) {
        (Some(header), _) if service.schemes.payment && is_payment_authorization(header) => {
            return decide_charge(config, route, method, header, presented.now);
        }
        // A route reads only the credentials of the dialects it offers.
        _ if !service.schemes.l402 => return Decision::Challenge { service, refusal: None },
        (Some(header), _) if is_l402_authorization(header) => {
            cache.authenticate(config, header, authorization_form(config, header))
        }
        (Some(_), Some(header)) | (None, Some(header)) => cache.authenticate(config, header, Form::Grpc),
        // Another scheme (Basic, Bearer) is no L402 credential at all.
        (Some(_), None) | (None, None) => return Decision::Challenge { service, refusal: None },
    };
    // Path caveats must hold for every reading, or the upstream could serve one they exclude.
    let authorized =
        |token: &Token| readings.decoded().try_fold(None, |_, path| token.authorize(&Requirement { path, ..need }));
    let (token, valid_until) = match verified.and_then(|token| authorized(token).map(|expiry| (token, expiry))) {
        Ok(authorized) => authorized,
        Err(refusal) => return Decision::Challenge { service, refusal: Some(refusal.into()) },
    };
    if config.revoked.contains(&token.identifier.token_id) {
        return Decision::Challenge { service, refusal: Some(Refusal::Revoked) };
    }
    // A dynamically priced token carries the price it was bought at. A metered token carries its
    // bundle, and holders can only add caveats: the least of them and the route's price stands, so
    // neither a caveat appended nor a later price change buys more than was paid.
    let price_msat = if service.dynamic_price {
        caveats::first_value(token.caveats(), &service.name, caveats::PRICE_SUFFIX).and_then(|v| v.parse().ok())
    } else if service.metered.is_some() {
        let minted = caveats::values(token.caveats(), &service.name, caveats::PRICE_SUFFIX);
        minted.map(|v| v.parse::<u64>().unwrap_or(0)).chain(service.price_msat).min()
    } else {
        service.price_msat
    };
    Decision::Paid {
        identifier: token.identifier,
        preimage_proven: token.preimage_proven,
        service,
        price_msat,
        charge: None,
        valid_until,
    }
}

/// The decision on a Payment-scheme credential: a charge we issued, paid, and issued for this
/// route's service, price, and (for a quoted price) method and path.
fn decide_charge<'c>(
    config: &'c Config,
    route: &PaidRoute<'c, '_>,
    method: &str,
    header: &str,
    now: u64,
) -> Decision<'c> {
    let service = route.service;
    let asks = payment::Route {
        service: &service.name,
        price_msat: service.price_msat,
        quoted: service.dynamic_price,
        method,
    };
    let charge = match payment::verify(&config.payment_keys, header, now)
        .and_then(|charge| charge.issued_for(&asks, route.readings.decoded()).map(|()| charge))
    {
        Ok(charge) => charge,
        Err(e) => return Decision::Challenge { service, refusal: Some(Refusal::Payment(e)) },
    };
    if config.revoked.contains(&charge.token_id) {
        return Decision::Challenge { service, refusal: Some(Refusal::Revoked) };
    }
    Decision::Paid {
        identifier: Identifier { payment_hash: charge.payment_hash, token_id: charge.token_id },
        preimage_proven: true,
        service,
        price_msat: Some(charge.amount_sat.saturating_mul(1000)),
        charge: Some(charge.challenge_id),
        valid_until: None,
    }
}

/// [`route`] and [`decide_paid`] in one, for a request whose headers are all at hand.
pub fn decide<'c>(config: &'c Config, cache: &mut VerifiedCache, request: &RequestView<'_>) -> Decision<'c> {
    match route(config, request.method, request.path, request.authority) {
        Routing::Decided(decision) => decision,
        Routing::Paid(paid) => {
            let presented =
                Presented { authorization: request.authorization, macaroon: request.macaroon, now: request.now };
            decide_paid(config, cache, &paid, request.method, &presented)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::l402::encoding::{base64_encode, hex_encode};
    use crate::l402::{mint, Grant};
    use crate::testing::config_with_routes;
    use serde_json::json;
    use sha2::{Digest, Sha256};

    fn config() -> Config {
        config_with_routes(json!([
            { "match": { "path_prefix": "/health" }, "free": true },
            { "match": { "path_prefix": "/v1/" }, "service": "weather", "price_sat": 10, "lifetime_s": 100 },
            { "match": { "path_prefix": "/admin/" }, "service": "admin", "price_sat": 50, "capabilities": ["admin"] }
        ]))
    }

    const PREIMAGE: [u8; 32] = [9; 32];

    /// Token id 4, paid with PREIMAGE, no capabilities, no expiry.
    fn grant<'a>(service: &'a str, constraints: &'a [(String, String)]) -> Grant<'a> {
        Grant {
            payment_hash: Sha256::digest(PREIMAGE).into(),
            token_id: [4; 32],
            service,
            capabilities: &[],
            valid_until: None,
            constraints,
        }
    }

    fn token(config: &Config, service: &str, valid_until: Option<u64>) -> crate::l402::Macaroon {
        mint(&config.secrets, &Grant { valid_until, ..grant(service, &[]) })
    }

    fn authorization(mac: &crate::l402::Macaroon) -> String {
        format!("L402 {}:{}", base64_encode(&mac.encode()), hex_encode(&PREIMAGE))
    }

    fn view<'a>(path: &'a str, authorization: Option<&'a str>, now: u64) -> RequestView<'a> {
        RequestView { method: "GET", path, authority: "api.example.com", authorization, macaroon: None, now }
    }

    fn paid_token(d: Decision<'_>) -> Option<[u8; 32]> {
        match d {
            Decision::Paid { identifier, .. } => Some(identifier.token_id),
            _ => None,
        }
    }

    fn refusal(d: Decision<'_>) -> Option<&'static str> {
        match d {
            Decision::Challenge { refusal, .. } => refusal.map(|r| r.code()),
            other => panic!("expected a challenge, got {other:?}"),
        }
    }

    #[test]
    fn free_unmatched_and_unauthenticated_requests() {
        let config = config();
        let mut cache = VerifiedCache::new(8);
        assert_eq!(decide(&config, &mut cache, &view("/health", None, 0)), Decision::Free);
        assert_eq!(decide(&config, &mut cache, &view("/other", None, 0)), Decision::NoRoute);
        assert_eq!(refusal(decide(&config, &mut cache, &view("/v1/x", None, 0))), None);
        assert_eq!(refusal(decide(&config, &mut cache, &view("/v1/x", Some("Bearer abc"), 0))), None);
        assert_eq!(refusal(decide(&config, &mut cache, &view("/v1/x", Some("L402 garbage"), 0))), Some("malformed"));
    }

    #[test]
    fn paid_requests_pass_and_cached_credentials_are_rechecked() {
        let config = config();
        let mut cache = VerifiedCache::new(8);
        let header = authorization(&token(&config, "weather", Some(100)));
        assert_eq!(paid_token(decide(&config, &mut cache, &view("/v1/x", Some(&header), 50))), Some([4; 32]));
        assert_eq!(cache.len(), 1);
        // The cache remembers authentication, never the verdict: expiry and route still apply.
        assert_eq!(refusal(decide(&config, &mut cache, &view("/v1/x", Some(&header), 101))), Some("expired"));
        assert_eq!(refusal(decide(&config, &mut cache, &view("/admin/x", Some(&header), 50))), Some("wrong_service"));
    }

    #[test]
    fn a_paid_decision_carries_the_token_s_expiry() {
        let config = config();
        let mut cache = VerifiedCache::new(8);
        let expiry = |valid_until| {
            let header = authorization(&token(&config, "weather", valid_until));
            match decide(&config, &mut VerifiedCache::new(8), &view("/v1/x", Some(&header), 50)) {
                Decision::Paid { valid_until, .. } => valid_until,
                other => panic!("expected a paid decision, got {other:?}"),
            }
        };
        assert_eq!(expiry(Some(100)), Some(100));
        assert_eq!(expiry(None), None);
        // A holder's narrower expiry is the token's.
        let mut narrowed = token(&config, "weather", Some(100));
        narrowed.add_caveat("weather_valid_until=80");
        match decide(&config, &mut cache, &view("/v1/x", Some(&authorization(&narrowed)), 50)) {
            Decision::Paid { valid_until, .. } => assert_eq!(valid_until, Some(80)),
            other => panic!("expected a paid decision, got {other:?}"),
        }
    }

    #[test]
    fn forged_credentials_are_never_cached() {
        let config = config();
        let mut cache = VerifiedCache::new(8);
        let secrets = crate::l402::SecretRing::new(vec![vec![0x22; 32]]).unwrap();
        let header = authorization(&mint(&secrets, &Grant { token_id: [1; 32], ..grant("weather", &[]) }));
        assert_eq!(refusal(decide(&config, &mut cache, &view("/v1/x", Some(&header), 0))), Some("bad_signature"));
        assert!(cache.is_empty());
    }

    #[test]
    fn grpc_macaroon_header_is_accepted() {
        let config = config();
        let mut cache = VerifiedCache::new(8);
        let mut mac = token(&config, "weather", None);
        mac.add_caveat(&format!("preimage={}", hex_encode(&PREIMAGE)));
        let header = hex_encode(&mac.encode());
        let request = RequestView { macaroon: Some(&header), ..view("/v1/x", None, 0) };
        assert_eq!(paid_token(decide(&config, &mut cache, &request)), Some([4; 32]));
    }

    #[test]
    fn capability_routes_need_the_capability() {
        let config = config();
        let mut cache = VerifiedCache::new(8);
        let header = authorization(&token(&config, "admin", None));
        assert_eq!(
            refusal(decide(&config, &mut cache, &view("/admin/x", Some(&header), 0))),
            Some("capability_missing")
        );
    }

    #[test]
    fn revoked_tokens_are_refused() {
        let mut json = crate::testing::config_json(
            json!([{ "match": { "path_prefix": "/v1/" }, "service": "weather", "price_sat": 10 }]),
        );
        json["revoked"] = json!([hex_encode(&[4; 32])]);
        let config = Config::parse(json.to_string().as_bytes(), &|_| None).unwrap();
        let mut cache = VerifiedCache::new(8);
        let header = authorization(&token(&config, "weather", None));
        assert_eq!(refusal(decide(&config, &mut cache, &view("/v1/x", Some(&header), 0))), Some("revoked"));
    }

    #[test]
    fn a_macaroon_without_preimage_passes_only_in_macaroon_only_mode_and_unproven() {
        let routes = json!([{ "match": { "path_prefix": "/v1/" }, "service": "weather", "price_sat": 10 }]);
        let plain = config_with_routes(routes.clone());
        let header = format!("L402 {}", base64_encode(&token(&plain, "weather", None).encode()));
        let mut cache = VerifiedCache::new(8);
        assert_eq!(refusal(decide(&plain, &mut cache, &view("/v1/x", Some(&header), 0))), Some("malformed"));

        let mut json = crate::testing::config_json(routes);
        json["node"]["strict"] = json!(true);
        json["node"]["macaroon_only"] = json!(true);
        let lenient = Config::parse(json.to_string().as_bytes(), &|_| None).unwrap();
        let mut cache = VerifiedCache::new(8);
        match decide(&lenient, &mut cache, &view("/v1/x", Some(&header), 0)) {
            Decision::Paid { preimage_proven, .. } => assert!(!preimage_proven, "the node must still vouch"),
            other => panic!("expected a paid decision pending settlement, got {other:?}"),
        }
        let paid = authorization(&token(&lenient, "weather", None));
        assert!(matches!(
            decide(&lenient, &mut cache, &view("/v1/x", Some(&paid), 0)),
            Decision::Paid { preimage_proven: true, .. }
        ));
    }

    #[test]
    fn paths_read_differently_upstream_are_refused() {
        let config = config();
        let mut cache = VerifiedCache::new(8);
        let header = authorization(&token(&config, "weather", None));
        for (path, why) in [
            ("/health/..%2fv1/forecast", Ambiguity::EncodedSlash),
            ("/health/../v1/forecast", Ambiguity::DotSegment),
            ("/health/%2e%2e/v1/forecast", Ambiguity::DotSegment),
            ("//v1/forecast", Ambiguity::DifferentRules),
            ("/health;/../v1/forecast", Ambiguity::DotSegment),
        ] {
            assert_eq!(decide(&config, &mut cache, &view(path, None, 0)), Decision::AmbiguousPath(why), "{path}");
            assert_eq!(decide(&config, &mut cache, &view(path, Some(&header), 0)), Decision::AmbiguousPath(why));
        }
        // Decoded readings under one rule pass, and a plain path is unchanged.
        assert_eq!(paid_token(decide(&config, &mut cache, &view("/v1/caf%C3%A9", Some(&header), 0))), Some([4; 32]));
        assert_eq!(decide(&config, &mut cache, &view("/health%3Bx", None, 0)), Decision::Free);
    }

    #[test]
    fn path_caveats_hold_for_every_reading() {
        let config = config();
        let mut cache = VerifiedCache::new(8);
        let restricted = |path: &str| {
            let constraints = [("weather_path".to_owned(), path.to_owned())];
            authorization(&mint(&config.secrets, &grant("weather", &constraints)))
        };
        // The minted path is the decoded one, and that is what it opens, however it is spelled.
        let header = restricted("/v1/café");
        for path in ["/v1/café", "/v1/caf%C3%A9", "/v1/caf%c3%a9", "/v1//café"] {
            assert_eq!(paid_token(decide(&config, &mut cache, &view(path, Some(&header), 0))), Some([4; 32]), "{path}");
        }
        // A Tomcat upstream serves /v1/a for /v1/a;b: a token for /v1/a;b does not open it.
        let header = restricted("/v1/a;b");
        assert_eq!(refusal(decide(&config, &mut cache, &view("/v1/a;b", Some(&header), 0))), Some("restricted"));
    }

    /// A paid charge as the gateway issues it: for `service` at `amount_sat`, token id 4, paid with
    /// PREIMAGE, expiring at 1000.
    fn charge(config: &Config, service: &str, amount_sat: u64, quoted: Option<(&str, &str)>) -> String {
        use crate::payment::wire::rfc3339;
        use crate::payment::{charge_request, Binding, Params};
        let binding = Binding {
            service: service.into(),
            token_id: hex_encode(&[4; 32]),
            method: quoted.map(|(m, _)| m.into()),
            path: quoted.map(|(_, p)| p.into()),
        };
        let hash: [u8; 32] = Sha256::digest(PREIMAGE).into();
        let request = charge_request(amount_sat, "", "lnbcrt1x", &hash);
        let mut params = Params::charge(service.into(), request, rfc3339(1000), &binding);
        config.payment_keys.sign(&mut params);
        crate::testing::payment_header(&params, &hex_encode(&PREIMAGE))
    }

    #[test]
    fn charges_open_routes_that_offer_the_scheme_for_their_service_and_price() {
        let config = config_with_routes(json!([
            { "match": { "path_prefix": "/v1/" }, "service": "weather", "price_sat": 10, "schemes": ["l402", "payment"] },
            { "match": { "path_prefix": "/pay/" }, "service": "quotes", "price_sat": 5, "schemes": ["payment"] },
            { "match": { "path_prefix": "/old/" }, "service": "legacy", "price_sat": 1 }
        ]));
        let mut cache = VerifiedCache::new(8);
        let weather = charge(&config, "weather", 10, None);
        match decide(&config, &mut cache, &view("/v1/x", Some(&weather), 999)) {
            Decision::Paid { identifier, charge: Some(_), price_msat, preimage_proven: true, .. } => {
                assert_eq!(identifier.token_id, [4; 32]);
                assert_eq!(identifier.payment_hash, <[u8; 32]>::from(Sha256::digest(PREIMAGE)));
                assert_eq!(price_msat, Some(10_000));
            }
            other => panic!("expected a paid charge, got {other:?}"),
        }
        assert!(cache.is_empty(), "charges are single-use: never cached");
        assert_eq!(refusal(decide(&config, &mut cache, &view("/v1/x", Some(&weather), 1000))), Some("expired"));
        assert_eq!(refusal(decide(&config, &mut cache, &view("/pay/x", Some(&weather), 0))), Some("wrong_service"));
        let cheap = charge(&config, "weather", 9, None);
        assert_eq!(refusal(decide(&config, &mut cache, &view("/v1/x", Some(&cheap), 0))), Some("wrong_price"));
        // A route reads only the credentials of the dialects it offers.
        let legacy = charge(&config, "legacy", 1, None);
        assert_eq!(refusal(decide(&config, &mut cache, &view("/old/x", Some(&legacy), 0))), None);
        let quotes_token = authorization(&token(&config, "quotes", None));
        assert_eq!(refusal(decide(&config, &mut cache, &view("/pay/x", Some(&quotes_token), 0))), None);
        let grpc = RequestView { macaroon: Some("00"), ..view("/pay/x", None, 0) };
        assert_eq!(refusal(decide(&config, &mut cache, &grpc)), None);
        // Minted under another secret.
        let other =
            config_with_routes(json!([{ "match": {}, "service": "weather", "price_sat": 10, "schemes": ["payment"] }]));
        let mut json = crate::testing::config_json(
            json!([{ "match": {}, "service": "weather", "price_sat": 10, "schemes": ["payment"] }]),
        );
        json["secrets"] = json!(["22".repeat(32)]);
        let foreign = Config::parse(json.to_string().as_bytes(), &|_| None).unwrap();
        let forged = charge(&foreign, "weather", 10, None);
        assert_eq!(refusal(decide(&other, &mut cache, &view("/x", Some(&forged), 0))), Some("invalid_challenge"));
    }

    #[test]
    fn quoted_charges_open_only_their_method_and_path_and_revocation_applies() {
        let mut json = crate::testing::config_json(json!([
            { "match": { "path_prefix": "/v1/" }, "service": "weather", "dynamic_price": true, "schemes": ["payment"] }
        ]));
        json["pricing"] = json!({ "upstream": "pricer", "authority": "pricer:80", "path": "/price" });
        let config = Config::parse(json.to_string().as_bytes(), &|_| None).unwrap();
        let mut cache = VerifiedCache::new(8);
        let quoted = charge(&config, "weather", 3, Some(("GET", "/v1/cheap")));
        assert!(paid_token(decide(&config, &mut cache, &view("/v1/cheap", Some(&quoted), 0))).is_some());
        assert_eq!(refusal(decide(&config, &mut cache, &view("/v1/dear", Some(&quoted), 0))), Some("restricted"));
        let post = RequestView { method: "POST", ..view("/v1/cheap", Some(&quoted), 0) };
        assert_eq!(refusal(decide(&config, &mut cache, &post)), Some("restricted"));
        // Any spelling of the quoted path that every decoding upstream reads as it.
        assert!(paid_token(decide(&config, &mut cache, &view("/v1/ch%65ap", Some(&quoted), 0))).is_some());

        json["revoked"] = json!([hex_encode(&[4; 32])]);
        let revoking = Config::parse(json.to_string().as_bytes(), &|_| None).unwrap();
        let quoted = charge(&revoking, "weather", 3, Some(("GET", "/v1/cheap")));
        assert_eq!(refusal(decide(&revoking, &mut cache, &view("/v1/cheap", Some(&quoted), 0))), Some("revoked"));
    }

    #[test]
    fn cache_stays_bounded() {
        let config = config();
        let mut cache = VerifiedCache::new(2);
        for id in 0..5u8 {
            let header = authorization(&mint(&config.secrets, &Grant { token_id: [id; 32], ..grant("weather", &[]) }));
            assert_eq!(paid_token(decide(&config, &mut cache, &view("/v1/x", Some(&header), 0))), Some([id; 32]));
            assert!(cache.len() <= 2);
        }
    }
}
