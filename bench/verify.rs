//! Native cost of the paid path: parsing and verifying an L402 credential, the gate's decision
//! with the credential already in the verified cache, and verifying a Payment-scheme charge (never
//! cached: each is single-use). And the filter's own work on the 402 path: the invoice request, the
//! node's answer read, the macaroon minted and the 402 built.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use l402::config::Config;
use l402::gate::{decide, Decision, RequestView, VerifiedCache};
use l402::l402::encoding::{base64_encode, hex_encode};
use l402::l402::header::parse_authorization;
use l402::l402::{mint, verify, Grant, Requirement, SecretRing};
use l402::payment::wire::{base64url_encode, rfc3339};
use l402::payment::{self, charge_request, Binding, IdKeys, Params};
use sha2::{Digest, Sha256};

const SECRET: &str = "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a";
const PREIMAGE: [u8; 32] = [7; 32];

/// A credential with `caveats` caveats: services, capabilities, expiry, then constraints.
fn credential(ring: &SecretRing, caveats: usize) -> String {
    let capabilities = vec!["read".to_string()];
    let constraints: Vec<(String, String)> =
        (3..caveats).map(|i| (format!("constraint{i}"), "value".to_string())).collect();
    let grant = Grant {
        payment_hash: Sha256::digest(PREIMAGE).into(),
        token_id: [1; 32],
        service: "weather",
        capabilities: if caveats >= 2 { &capabilities } else { &[] },
        valid_until: (caveats >= 3).then_some(u64::MAX / 2),
        constraints: &constraints,
    };
    let macaroon = mint(ring, &grant);
    assert_eq!(macaroon.caveats().len(), caveats);
    format!("L402 {}:{}", base64_encode(&macaroon.encode()), hex_encode(&PREIMAGE))
}

fn benches(c: &mut Criterion) {
    let ring = SecretRing::new(vec![vec![0x5a; 32]]).unwrap_or_else(|e| panic!("{e}"));
    let capabilities = vec!["read".to_string()];
    for caveats in [1usize, 4, 8] {
        let header = credential(&ring, caveats);
        let required: &[String] = if caveats >= 2 { &capabilities } else { &[] };
        let need = Requirement { service: "weather", capabilities: required, now: 1, method: "GET", path: "/" };
        c.bench_function(&format!("parse+verify {caveats} caveats"), |b| {
            b.iter(|| {
                let credential = parse_authorization(black_box(&header)).unwrap_or_else(|e| panic!("{e}"));
                verify(&ring, credential, &need).unwrap_or_else(|e| panic!("{e}"))
            })
        });
    }

    let config_json = format!(
        r#"{{"secrets":["{SECRET}"],"node":{{"kind":"lnd","upstream":"lnd","authority":"lnd:8080","credential":"00"}},
            "routes":[{{"match":{{"path_prefix":"/v1/"}},"service":"weather","price_sat":10,"capabilities":["read"]}}]}}"#
    );
    let config = Config::parse(config_json.as_bytes(), &|_| None).unwrap_or_else(|e| panic!("{e}"));
    let header = credential(&config.secrets, 4);
    let mut cache = VerifiedCache::new(1024);
    let view = RequestView {
        method: "GET",
        path: "/v1/forecast",
        authority: "api",
        authorization: Some(&header),
        macaroon: None,
        now: 1,
    };
    c.bench_function("gate decision, 4 caveats, cached", |b| {
        b.iter(|| {
            let decision = decide(&config, &mut cache, black_box(&view));
            assert!(matches!(decision, Decision::Paid { .. }));
        })
    });
}

/// A paid charge as the gateway issues it, for a realistic invoice length.
fn charge(keys: &IdKeys) -> String {
    let invoice = format!("lnbcrt100n1{}", "q".repeat(330));
    let binding = Binding { service: "weather".into(), token_id: hex_encode(&[1; 32]), ..Binding::default() };
    let request = charge_request(10, "weather access", &invoice, &Sha256::digest(PREIMAGE).into());
    let mut params = Params::charge("weather".into(), request, rfc3339(4_000_000_000), &binding);
    keys.sign(&mut params);
    let credential = l402::json::Object::new()
        .with("challenge", params.to_json())
        .with("payload", l402::json::Object::new().with("preimage", hex_encode(&PREIMAGE)));
    format!("Payment {}", base64url_encode(l402::json::Json::from(credential).text().as_bytes()))
}

fn charge_benches(c: &mut Criterion) {
    let keys = IdKeys::derive(&SecretRing::new(vec![vec![0x5a; 32]]).unwrap_or_else(|e| panic!("{e}")));
    let header = charge(&keys);
    c.bench_function(&format!("payment charge verify ({} bytes)", header.len()), |b| {
        b.iter(|| payment::verify(&keys, black_box(&header), 1).unwrap_or_else(|e| panic!("{e}")))
    });
}

/// The 402 path's work in the filter, stage by stage, as `filter/challenge.rs` runs it for LND.
fn challenge_benches(c: &mut Criterion) {
    use l402::lightning::{invoice_request, parse_invoice, InvoiceOrder};
    use l402::response::{payment_required, Offer};
    let config_json = format!(
        r#"{{"secrets":["{SECRET}"],"node":{{"kind":"lnd","upstream":"lnd","authority":"lnd:8080","credential":"00"}},
            "routes":[{{"match":{{"path_prefix":"/v1/"}},"service":"weather","price_sat":10,"capabilities":["read"],"lifetime_s":3600}}]}}"#
    );
    let config = Config::parse(config_json.as_bytes(), &|_| None).unwrap_or_else(|e| panic!("{e}"));
    let label = hex_encode(&[1; 32]);
    let order = InvoiceOrder { amount_msat: 10_000, memo: "weather access", expiry_s: 600, label: &label };
    c.bench_function("402: invoice request", |b| {
        b.iter(|| invoice_request(config.node.kind, &config.node.credential.0, black_box(&order)))
    });
    let answer = format!(
        r#"{{"r_hash":"{}","payment_request":"lnbcrt100n1{}","add_index":"1","payment_addr":"{}"}}"#,
        base64_encode(&[3; 32]),
        "q".repeat(330),
        base64_encode(&[4; 32])
    );
    c.bench_function("402: node answer read", |b| {
        b.iter(|| {
            parse_invoice(config.node.kind, Some(200), black_box(answer.as_bytes())).unwrap_or_else(|e| panic!("{e}"))
        })
    });
    let capabilities = vec!["read".to_string()];
    let grant = Grant {
        payment_hash: [3; 32],
        token_id: [1; 32],
        service: "weather",
        capabilities: &capabilities,
        valid_until: Some(4_000_000_000),
        constraints: &[],
    };
    c.bench_function("402: macaroon minted and encoded", |b| {
        b.iter(|| base64_encode(&mint(&config.secrets, black_box(&grant)).encode()))
    });
    let macaroon = base64_encode(&mint(&config.secrets, &grant).encode());
    let invoice = format!("lnbcrt100n1{}", "q".repeat(330));
    let offer = Offer {
        service: "weather",
        price_msat: 10_000,
        macaroon_b64: Some(&macaroon),
        payment: None,
        invoice: &invoice,
        expiry_s: 600,
    };
    c.bench_function("402: response built", |b| b.iter(|| payment_required(&config, black_box(&offer), None)));
}

criterion_group!(verify_benches, benches, charge_benches, challenge_benches);
criterion_main!(verify_benches);
