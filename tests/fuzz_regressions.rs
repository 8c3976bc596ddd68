//! Inputs found by the fuzz targets in fuzz/, replayed through the public API.

use l402::config::Config;
use l402::gate::{decide, RequestView, VerifiedCache};
use l402::l402::encoding::{base64_encode, hex_encode};
use l402::l402::{mint, Grant};
use sha2::{Digest, Sha256};

const CONFIG: &str = r#"{
  "secrets": ["1111111111111111111111111111111111111111111111111111111111111111"],
  "node": { "kind": "lnbits", "upstream": "lnbits", "authority": "lnbits:5000", "credential": "key" },
  "routes": [ { "match": { "path_prefix": "/v1/" }, "service": "weather", "price_sat": 10 } ]
}"#;

/// fuzz target `gate`: the verified-credential cache is keyed by the header text alone, not by the
/// header it came in. An `Authorization`-format credential (`L402 <base64>:<hex>`) sent in the
/// `Macaroon` header is refused on a cold cache ("macaroon is not hex"), but let through once the
/// same text was accepted as `Authorization`: the decision depends on what the worker saw before.
#[test]
fn credential_cache_does_not_carry_over_between_header_forms() {
    let config = Config::parse(CONFIG.as_bytes(), &|_| None).unwrap();
    let preimage = [9u8; 32];
    let grant = Grant {
        payment_hash: Sha256::digest(preimage).into(),
        token_id: [4; 32],
        service: "weather",
        capabilities: &[],
        valid_until: None,
        constraints: &[],
    };
    let header = format!("L402 {}:{}", base64_encode(&mint(&config.secrets, &grant).encode()), hex_encode(&preimage));
    let as_authorization = RequestView {
        method: "GET",
        path: "/v1/x",
        authority: "api",
        authorization: Some(&header),
        macaroon: None,
        now: 0,
    };
    let as_macaroon = RequestView { authorization: None, macaroon: Some(&header), ..as_authorization };

    let cold = decide(&config, &mut VerifiedCache::new(8), &as_macaroon);
    let mut cache = VerifiedCache::new(8);
    let _ = decide(&config, &mut cache, &as_authorization);
    let warm = decide(&config, &mut cache, &as_macaroon);
    assert_eq!(warm, cold, "same request, different decision after the cache saw the text as Authorization");
}
