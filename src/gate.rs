//! The decision for one request, as a pure function of the config, the request's few relevant
//! headers and the time: let it through, ask for payment, or refuse it.

use crate::config::{Access, Config, Service, Unmatched};
use crate::l402::header::{is_l402_authorization, parse_authorization, parse_macaroon_header};
use crate::l402::{authenticate, Requirement, Token, VerifyError};
use crate::policy;
use std::collections::HashMap;

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

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision<'c> {
    /// A free route, or no route and `unmatched: free`.
    Free,
    /// A valid credential for the route.
    Paid { token_id: [u8; 32], service: &'c Service },
    /// Payment is needed; `refusal` says what was wrong with the credential presented, if any.
    Challenge { service: &'c Service, refusal: Option<VerifyError> },
    /// No route matches and `unmatched: deny`.
    NoRoute,
}

/// Credentials verified recently, keyed by the exact header text: a hit proves these bytes were
/// authenticated (signature and preimage), so only the cheap caveat check runs again, with the
/// current time and route. Bounded: when full it starts over, which keeps memory flat.
pub struct VerifiedCache {
    entries: HashMap<Box<str>, Token>,
    capacity: usize,
}

impl VerifiedCache {
    pub fn new(capacity: usize) -> VerifiedCache {
        VerifiedCache { entries: HashMap::with_capacity(capacity.min(1024)), capacity }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn authenticate(&mut self, config: &Config, header: &str, parse: fn(&str) -> Result<crate::l402::Credential, VerifyError>) -> Result<&Token, VerifyError> {
        if !self.entries.contains_key(header) {
            let token = authenticate(&config.secrets, parse(header)?)?;
            if self.entries.len() >= self.capacity {
                self.entries.clear();
            }
            self.entries.insert(header.into(), token);
        }
        self.entries.get(header).ok_or(VerifyError::Malformed("credential cache"))
    }
}

pub fn decide<'c>(config: &'c Config, cache: &mut VerifiedCache, request: &RequestView<'_>) -> Decision<'c> {
    let path = policy::path_only(request.path);
    let Some(route) = policy::select(config, request.method, path, request.authority) else {
        return match config.unmatched {
            Unmatched::Free => Decision::Free,
            Unmatched::Deny => Decision::NoRoute,
        };
    };
    let service = match &route.access {
        Access::Free => return Decision::Free,
        Access::Paid(service) => service,
    };
    let need = Requirement {
        service: &service.name,
        capabilities: &service.capabilities,
        now: request.now,
        method: request.method,
        path,
    };
    let verified = match (request.authorization, request.macaroon) {
        (Some(header), _) if is_l402_authorization(header) => cache.authenticate(config, header, parse_authorization),
        (Some(_), Some(header)) | (None, Some(header)) => cache.authenticate(config, header, parse_macaroon_header),
        // Another scheme (Basic, Bearer) is no L402 credential at all.
        (Some(_), None) | (None, None) => return Decision::Challenge { service, refusal: None },
    };
    match verified.and_then(|token| token.authorize(&need).map(|_| token.identifier.token_id)) {
        Ok(token_id) => Decision::Paid { token_id, service },
        Err(refusal) => Decision::Challenge { service, refusal: Some(refusal) },
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

    fn token(config: &Config, service: &str, valid_until: Option<u64>) -> crate::l402::Macaroon {
        let grant = Grant {
            payment_hash: Sha256::digest(PREIMAGE).into(),
            token_id: [4; 32],
            service,
            capabilities: &[],
            valid_until,
            constraints: &[],
        };
        mint(&config.secrets, &grant)
    }

    fn authorization(mac: &crate::l402::Macaroon) -> String {
        format!("L402 {}:{}", base64_encode(&mac.encode()), hex_encode(&PREIMAGE))
    }

    fn view<'a>(path: &'a str, authorization: Option<&'a str>, now: u64) -> RequestView<'a> {
        RequestView { method: "GET", path, authority: "api.example.com", authorization, macaroon: None, now }
    }

    fn paid_token(d: Decision<'_>) -> Option<[u8; 32]> {
        match d {
            Decision::Paid { token_id, .. } => Some(token_id),
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
    fn forged_credentials_are_never_cached() {
        let config = config();
        let mut cache = VerifiedCache::new(8);
        let secrets = crate::l402::SecretRing::new(vec![vec![0x22; 32]]).unwrap();
        let grant = Grant { payment_hash: Sha256::digest(PREIMAGE).into(), token_id: [1; 32], service: "weather", capabilities: &[], valid_until: None, constraints: &[] };
        let header = authorization(&mint(&secrets, &grant));
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
        assert_eq!(refusal(decide(&config, &mut cache, &view("/admin/x", Some(&header), 0))), Some("capability_missing"));
    }

    #[test]
    fn cache_stays_bounded() {
        let config = config();
        let mut cache = VerifiedCache::new(2);
        for id in 0..5u8 {
            let grant = Grant { payment_hash: Sha256::digest(PREIMAGE).into(), token_id: [id; 32], service: "weather", capabilities: &[], valid_until: None, constraints: &[] };
            let header = authorization(&mint(&config.secrets, &grant));
            assert_eq!(paid_token(decide(&config, &mut cache, &view("/v1/x", Some(&header), 0))), Some([id; 32]));
            assert!(cache.len() <= 2);
        }
    }
}
