//! Writes the hand-made seeds of every fuzz target into fuzz/corpus/<target>/seed-*:
//! credentials minted with the fuzz ring, node answers in the shapes of PROTOCOL.md §4, configs.
//! Run: `cargo run --manifest-path fuzz/seedgen/Cargo.toml --target-dir fuzz/target/seedgen`.

#[path = "../../common/mod.rs"]
mod common;

use common::{ChargeSpec, MintSpec, GATE_CONFIG, PREIMAGE};
use l402::l402::encoding::{base64_encode, hex_encode};
use l402::payment::wire::{base64url_encode, rfc3339};
use std::fs;
use std::path::Path;

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../corpus").join(target);
    fs::create_dir_all(&dir).expect("corpus dir");
    fs::write(dir.join(format!("seed-{name}")), bytes).expect("seed written");
}

fn main() {
    let weather = MintSpec::parse("!weather||1000||").unwrap();
    let admin = MintSpec::parse("!admin|admin,read|||").unwrap();
    let narrowed = MintSpec::parse("!weather|read|1000|weather_valid_until=900;services=weather:0;tier=gold|u").unwrap();

    // credential_header: both header forms, and the macaroon alone for the decoder.
    for (name, spec) in [("weather", &weather), ("admin", &admin), ("narrowed", &narrowed)] {
        write("credential_header", &format!("auth-{name}"), spec.authorization().as_bytes());
        write("credential_header", &format!("grpc-{name}"), spec.macaroon_header().as_bytes());
        write("macaroon_decode", name, &spec.macaroon().encode());
    }
    write("credential_header", "lsat-lower", MintSpec::parse("!weather|||| ls").unwrap().authorization().as_bytes());
    let two = format!("L402 {m},{m}:{p}", m = base64_encode(&weather.macaroon().encode()), p = hex_encode(&PREIMAGE));
    write("credential_header", "discharge", two.as_bytes());
    let mut grpc = weather.macaroon();
    grpc.add_caveat(&format!("preimage={}", hex_encode(&PREIMAGE)));
    write("macaroon_decode", "grpc", &grpc.encode());

    // config_parse: the gate config, one per node kind, env sources and every optional section.
    write("config_parse", "gate", GATE_CONFIG.as_bytes());
    write("config_parse", "lnd-env", br#"{"secrets":{"env":"L402_SECRETS"},"node":{"kind":"lnd","upstream":"lnd","authority":"lnd:8080","tls":true,"credential":{"env":"NODE_CREDENTIAL"},"timeout_ms":5000},"invoice":{"expiry_s":300,"memo":"{service} via l402"},"routes":[{"match":{"path":"/v1/a","methods":["get","post"]},"service":"a.b-c","price_msat":1500,"capabilities":["r","w"]},{"match":{},"free":true}],"unmatched":"free","challenge":{"lsat_header":false}}"#);
    write("config_parse", "globs", br#"{"secrets":["1111111111111111111111111111111111111111111111111111111111111111"],"node":{"kind":"lnbits","upstream":"lnbits","authority":"lnbits:5000","credential":"k"},"routes":[{"match":{"path_glob":"/v1/*/x*y/**","host":"*.example.com"},"service":"g","price_sat":2,"restrict":{"path_prefix":"/v1/","methods":["GET"]}},{"match":{"path_glob":"/**/z","host":"api.local"},"free":true}]}"#);
    write("config_parse", "payment", br#"{"secrets":["1111111111111111111111111111111111111111111111111111111111111111"],"node":{"kind":"lnbits","upstream":"lnbits","authority":"lnbits:5000","credential":"k"},"schemes":["l402","payment"],"payment":{"realm":"api.example.com"},"routes":[{"match":{"path_prefix":"/v1/"},"service":"weather","price_sat":10},{"match":{"path_prefix":"/pay/"},"service":"quotes","price_msat":5000,"schemes":["payment"]}]}"#);
    write("config_parse", "cln", br#"{"secrets":["1111111111111111111111111111111111111111111111111111111111111111"],"node":{"kind":"cln","upstream":"cln","authority":"cln:3010","credential":"rune"},"routes":[{"match":{"path_prefix":"/"},"service":"all","price_sat":1}]}"#);

    // node_response: first byte 100 → status 200; bodies in each node's answer shape.
    let hash = [0xab; 32];
    let lnd = format!(
        r#"{{"r_hash":"{}","payment_request":"lnbcrt100n1pjexample","add_index":"3","payment_addr":"{}"}}"#,
        base64_encode(&hash),
        base64_encode(&[1; 32])
    );
    let cln = format!(
        r#"{{"bolt11":"lnbcrt10u1pjexample","payment_hash":"{}","payment_secret":"{}","expires_at":1700000600}}"#,
        hex_encode(&hash),
        hex_encode(&[2; 32])
    );
    let lnbits = format!(r#"{{"payment_hash":"{}","bolt11":"lnbc10n1pjexample","checking_id":"{}"}}"#, hex_encode(&hash), hex_encode(&hash));
    let lnbits_old = format!(r#"{{"payment_hash":"{}","payment_request":"lntb1pjexample"}}"#, hex_encode(&hash));
    for (name, body) in [("lnd", &lnd), ("cln", &cln), ("lnbits", &lnbits), ("lnbits-old", &lnbits_old)] {
        write("node_response", name, &[&[100u8][..], body.as_bytes()].concat());
    }
    write("node_response", "lnbits-201", &[&[101u8][..], lnbits.as_bytes()].concat());
    write("node_response", "error-500", &[&[205u8][..], br#"{"detail":"wallet not found"}"#].concat());

    // JSON: every kind of value, escapes and a surrogate pair, a node's answer, deep nesting.
    write("json", "mixed", br#"{"a":[1,-2.5e3,true,null,{"b":"\u00e9\ud83d\ude00"}],"c":"x\ny"}"#);
    write("json", "lnd", br#"{"r_hash":"q83vEjRWeJq83vEjRWeJq83vEjRWeJq83vEjRWeJq80=","payment_request":"lnbcrt100n1p"}"#);
    write("json", "nested", &[b"[".repeat(64), b"]".repeat(64)].concat());

    // gate: readable request records; `!` lines are minted by the target itself.
    let gate: &[(&str, String)] = &[
        ("paid", "GET\n/v1/forecast\napi.example.com\n500\n!weather||1000||".to_owned()),
        ("paid-literal", format!("GET\n/v1/forecast?x=1\napi.example.com\n500\n{}", weather.authorization())),
        ("paid-grpc", format!("GET\n/v1/exact\napi.example.com:443\n10\n-\n{}", weather.macaroon_header())),
        ("expired", "GET\n/v1/forecast\napi.example.com\n1001\n!weather||1000||".to_owned()),
        ("admin", "POST\n/admin/users\nADMIN.local:8080\n0\n!admin|admin,read|||l\n\nPOST\n/admin/users\nadmin.local\n0\n!admin|read|||".to_owned()),
        ("narrowed", "GET\n/v1/x\na\n899\n!weather|read|1000|weather_valid_until=900;services=weather:0|s\n\nGET\n/v1/x\na\n901\n!weather|read|1000|weather_valid_until=900;services=weather:0|s".to_owned()),
        ("restricted", "GET\n/v2/eu/forecast/today?d=1\nmaps.example.com\n0\n!geo|||geo_path_prefix=/v2/;geo_methods=GET,HEAD;geo_path_prefix=/v2/eu|\n\nhead\n/v2/us/forecast\nX.EXAMPLE.COM:1\n0\n!geo|||geo_path_prefix=/v2/eu;geo_methods=get|u\n\nPOST\n/v2/eu/forecast\na.example.com\n0\n!geo|||geo_methods=GET|".to_owned()),
        ("globs", "GET\n/v3/aXbYc/x\nh\n0\n\nGET\n/v3/abc/x\nh\n0\n\nGET\n/v3/acb/x\nh\n0\n\nGET\n/v2//forecast\n.example.com\n0\n\nGET\n/v2/a/forecast\n[b.example.com]:80\n0".to_owned()),
        ("refusals", "GET\n/v1/x\nh\n0\n!weather||||w\n\nGET\n/v1/x\nh\n0\n!weather||||x\n\nGET\n/v1/x\nh\n0\nBearer abc\n!weather||||\n\nGET\n/health\nh\n0\n\nPUT\n/nowhere\nh\n0".to_owned()),
        ("paths", "GET\n/health/..%2fv1/forecast\nh\n0\n!weather||||\n\nGET\n/v1/caf%C3%A9\nh\n0\n!weather||||\n\nGET\n//v1/x\nh\n0\n\nGET\n/v1;a/exact\nh\n0\n\nGET\n/v2/a;b/forecast/x\nA.example.com.:8\n0\n!geo|||geo_path_prefix=/v2/a;|\n\nGET\n/%76%31/exact\nh\n0\n!weather||||".to_owned()),
        ("cache", "GET\n/v1/a\nh\n1\n!weather||||\n\nGET\n/v1/b\nh\n2\n!weather||||\n\nGET\n/admin/x\nadmin.local\n3\n!weather||||\n\nGET\n/v1/c\nh\n4\n!admin||||\n\nGET\n/v1/d\nh\n5\n!weather||||".to_owned()),
    ];
    for (name, text) in gate {
        write("gate", name, text.as_bytes());
    }

    // payment_credential: charges issued and paid as specs (the target builds the credential and
    // changes single characters of its token), and credentials as sent: a valid one, the scheme in
    // lower case, a padded token, and near misses.
    let specs: &[(&str, &str)] = &[
        ("spec", "!weather\n\n10\nlnbcrt100n1pexample\nweather\n\ntoken\n300\npreimage\n0:65 10:48 100:97 200:61 300:95 400:45 500:43"),
        ("spec-quoted", "!api \"quoted\" | realm\ncaf\u{e9} \\ Q&A\n21\nlnbc210n1pexample\ngeo\nGET /v2/eu/forecast\nid\n5\nx\n7:0 77:126 177:47 277:61 377:32"),
        ("spec-empty", "!\n\n\n\n\n\n\n\n\n"),
    ];
    for (name, text) in specs {
        write("payment_credential", name, text.as_bytes());
    }
    let spec = ChargeSpec::parse(specs[0].1).unwrap();
    let keys = common::payment_keys();
    let challenge = spec.challenge(&keys);
    let preimage = hex_encode(&spec.preimage);
    let valid = common::payment_header(&challenge, &preimage);
    let token = valid.strip_prefix("Payment ").unwrap();
    let padded = format!("{valid}{}", "=".repeat((4 - token.len() % 4) % 4));
    let expired = {
        let mut c = challenge.clone();
        c.expires = rfc3339(common::PAYMENT_NOW);
        keys.sign(&mut c);
        common::payment_header(&c, &preimage)
    };
    let tampered = {
        let mut c = challenge.clone();
        c.opaque = base64url_encode(br#"{"service":"admin","token_id":"00"}"#);
        common::payment_header(&c, &preimage)
    };
    let session = {
        let mut c = challenge.clone();
        c.intent = "session".to_owned();
        keys.sign(&mut c);
        common::payment_header(&c, &preimage)
    };
    let no_payload = format!(r#"{{"challenge":{}}}"#, challenge.to_json().text());
    let near_misses: &[(&str, String)] = &[
        ("valid", valid.clone()),
        ("valid-lower", valid.replacen("Payment", "payment", 1)),
        ("valid-padded", padded),
        ("expired", expired),
        ("other-key", common::payment_header(&spec.challenge(&common::other_payment_keys()), &preimage)),
        ("wrong-preimage", common::payment_header(&challenge, &"00".repeat(32))),
        ("short-preimage", common::payment_header(&challenge, "a3f1e2d4b5c6a7e8")),
        ("tampered-opaque", tampered),
        ("session", session),
        ("no-payload", format!("Payment {}", base64url_encode(no_payload.as_bytes()))),
        ("not-json", "Payment e29vcHN9".to_owned()),
        ("trailing-bits", "Payment AB".to_owned()),
    ];
    for (name, text) in near_misses {
        write("payment_credential", name, text.as_bytes());
    }
}
