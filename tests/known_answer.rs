//! Known-answer test: the Aperture-format token in tests/interop/vectors/aperture_v0.json was
//! produced by pymacaroons (see tests/interop/vector.py); our mint must produce exactly its bytes,
//! and our decoder and verifier must accept them.

use l402::l402::encoding::{base64_decode, base64_encode, hex_decode, hex_encode};
use l402::l402::header::parse_authorization;
use l402::l402::{mint, verify, Credential, Grant, Identifier, Macaroon, Requirement, SecretRing, VerifyError};
use serde_json::Value;
use sha2::{Digest, Sha256};

fn vector() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/vectors/aperture_v0.json");
    let text = std::fs::read_to_string(path).expect("read the vector");
    serde_json::from_str(&text).expect("vector is JSON")
}

fn text<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or_else(|| panic!("{key} is a string"))
}

fn bytes(v: &Value, key: &str) -> Vec<u8> {
    hex_decode(text(v, key)).unwrap_or_else(|| panic!("{key} is hex"))
}

fn array32(v: &Value, key: &str) -> [u8; 32] {
    bytes(v, key).try_into().unwrap_or_else(|_| panic!("{key} is 32 bytes"))
}

fn strings(v: &Value, key: &str) -> Vec<String> {
    v[key].as_array().expect("array").iter().map(|s| s.as_str().expect("string").to_owned()).collect()
}

#[test]
fn vector_was_produced_by_pymacaroons() {
    assert!(text(&vector(), "produced_by").starts_with("pymacaroons 0.13.0"));
}

#[test]
fn mint_produces_the_vector_bytes() {
    let v = vector();
    let ring = SecretRing::new(vec![bytes(&v, "secret_hex")]).expect("secret");
    let payment_hash: [u8; 32] = Sha256::digest(array32(&v, "preimage_hex")).into();
    assert_eq!(payment_hash, array32(&v, "payment_hash_hex"));
    let capabilities = strings(&v, "capabilities");
    let grant = Grant {
        payment_hash,
        token_id: array32(&v, "token_id_hex"),
        service: text(&v, "service"),
        capabilities: &capabilities,
        valid_until: v["valid_until"].as_u64(),
        constraints: &[],
    };
    let mac = mint(&ring, &grant);
    assert_eq!(hex_encode(&mac.encode()), text(&v, "macaroon_v2_hex"));
    assert_eq!(base64_encode(&mac.encode()), text(&v, "macaroon_base64"));
    assert_eq!(hex_encode(mac.signature()), text(&v, "signature_hex"));
    assert_eq!(hex_encode(mac.identifier()), text(&v, "identifier_hex"));
    assert_eq!(mac.location(), Some(text(&v, "location").as_bytes()));
    assert_eq!(mac.caveats(), strings(&v, "caveats").as_slice());
    assert_eq!(ring.minting_root_key(mac.identifier()).to_vec(), bytes(&v, "root_key_hex"));
}

#[test]
fn vector_decodes_and_verifies() {
    let v = vector();
    let raw = bytes(&v, "macaroon_v2_hex");
    let mac = Macaroon::decode(&raw).expect("decodes");
    assert_eq!(mac.encode(), raw, "re-encodes to the same bytes");
    assert_eq!(base64_decode(text(&v, "macaroon_base64url")), Some(raw.clone()));
    let id = Identifier::decode(mac.identifier()).expect("identifier");
    assert_eq!(id.payment_hash, array32(&v, "payment_hash_hex"));
    assert_eq!(id.token_id, array32(&v, "token_id_hex"));

    let ring = SecretRing::new(vec![bytes(&v, "secret_hex")]).expect("secret");
    let capabilities = strings(&v, "capabilities");
    let until = v["valid_until"].as_u64().expect("valid_until");
    let need = Requirement { service: "weather", capabilities: &capabilities, now: until, method: "GET", path: "/" };

    let credential = parse_authorization(text(&v, "authorization")).expect("authorization parses");
    assert_eq!(credential.macaroon, mac);
    let token = verify(&ring, credential.clone(), &need).expect("valid with the preimage");
    assert_eq!(token.identifier, id);

    assert_eq!(
        verify(&ring, credential.clone(), &Requirement { now: until + 1, ..need }).err(),
        Some(VerifyError::Expired)
    );
    let wrong = Credential { preimage: array32(&v, "payment_hash_hex"), ..credential.clone() };
    assert_eq!(verify(&ring, wrong, &need).err(), Some(VerifyError::PreimageMismatch));
    let other = SecretRing::new(vec![vec![0x55; 32]]).expect("secret");
    assert_eq!(verify(&other, credential, &need).err(), Some(VerifyError::BadSignature));
}

// ---------------------------------------------------------------------------------------------
// The Payment scheme against Aperture's cross-implementation vectors (tests/interop/vectors/
// mpp_vectors.json, copied unchanged; provenance in tests/interop/vectors/README.md). Each group
// our code has a counterpart for is checked case by case; a case we intentionally do not support
// (session intents, receipts of other shapes) is skipped by name with the reason beside it, and a
// test fails if the file gains a case it does not know how to treat. Not checked: `challengeLists`
// and the `parsed` side of `challengeHeaders`, which test a client's parser of `WWW-Authenticate`;
// the gateway writes challenges and never reads one.

mod mpp {
    use l402::json::Json;
    use l402::l402::encoding::{hex_decode, hex_encode};
    use l402::payment::receipt::receipt;
    use l402::payment::wire::{base64url_decode, base64url_encode, parse_rfc3339};
    use l402::payment::{decode, jcs, verify, IdKeys, Params, PaymentError};
    use serde_json::Value;

    fn vectors() -> Value {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/vectors/mpp_vectors.json");
        let text = std::fs::read_to_string(path).expect("read the vectors");
        serde_json::from_str(&text).expect("vectors are JSON")
    }

    /// The cases of `group`, each with its name; the file's format version is the one read here.
    fn group(name: &str) -> Vec<(String, Value)> {
        let v = vectors();
        assert_eq!(v["version"], 1, "a new vector format: read its changes before updating this test");
        let cases = v[name].as_array().unwrap_or_else(|| panic!("group {name}")).clone();
        assert!(!cases.is_empty(), "group {name} is empty");
        cases.into_iter().map(|c| (c["name"].as_str().expect("a case name").to_owned(), c)).collect()
    }

    fn text<'a>(v: &'a Value, key: &str) -> &'a str {
        v[key].as_str().unwrap_or_else(|| panic!("{key} is a string in {v}"))
    }

    fn is_error(case: &Value) -> bool {
        case["error"].as_bool().unwrap_or(false)
    }

    fn params(case: &Value) -> Params {
        Params::from_json(&ours(&case["params"])).expect("the vector's params")
    }

    /// A vector's JSON as the filter's JSON.
    fn ours(value: &Value) -> Json {
        Json::parse(value.to_string().as_bytes()).expect("serde_json writes JSON")
    }

    fn vector_keys() -> IdKeys {
        let secret = hex_decode(text(&vectors(), "hmacSecretHex")).expect("hex");
        // 22 bytes, shorter than the 32 our secrets must have: IdKeys::new takes raw HMAC keys
        // (the secret ring derives them), so the vector's key is used as it is.
        assert_eq!(secret.len(), 22);
        IdKeys::new([secret.as_slice()])
    }

    /// Cases whose numbers are not integers ECMAScript holds exactly: `jcs` refuses them (the
    /// gateway canonicalizes only its own values, which carry amounts as strings).
    const INEXACT_NUMBERS: [&str; 6] = [
        "integers above the exactly representable range",
        "magnitudes beyond the int64 range",
        "notation boundaries",
        "signed zero",
        "number literals are re-rendered",
        "opaque correlation data",
    ];

    #[test]
    fn canonicalization() {
        for (name, case) in group("canonicalization") {
            let parsed = Json::parse(text(&case, "input").as_bytes());
            if is_error(&case) {
                // Malformed JSON never reaches jcs::canonical: the parser refuses it.
                assert!(parsed.is_err(), "{name}: malformed input parsed");
                continue;
            }
            let parsed = parsed.unwrap_or_else(|e| panic!("{name}: the input is refused: {e}"));
            let expected = (!INEXACT_NUMBERS.contains(&name.as_str())).then(|| text(&case, "canonical").to_owned());
            assert_eq!(jcs::canonical(&parsed), expected, "{name}");
        }
    }

    #[test]
    fn base64url() {
        for (name, case) in group("base64url") {
            let encoded = text(&case, "encoded");
            let decoded = base64url_decode(encoded);
            if is_error(&case) {
                assert_eq!(decoded, None, "{name}: {encoded:?} accepted");
                continue;
            }
            let expected = hex_decode(case["decodedHex"].as_str().unwrap_or("")).expect("hex");
            assert_eq!(decoded.as_deref(), Some(expected.as_slice()), "{name}");
            if case["canonical"].as_bool().expect("canonical is a bool") {
                assert_eq!(base64url_encode(&expected), encoded, "{name}");
            } else {
                // Accepted on the way in (padding), but never what we write.
                assert_ne!(base64url_encode(&expected), encoded, "{name}");
                assert_eq!(base64url_encode(&expected), encoded.trim_end_matches('='), "{name}");
            }
        }
    }

    #[test]
    fn challenge_headers() {
        for (name, case) in group("challengeHeaders") {
            // Session challenges included: the header is written the same for any intent.
            assert_eq!(params(&case).header_value(), text(&case, "header"), "{name}");
        }
    }

    #[test]
    fn challenge_ids() {
        let keys = vector_keys();
        for (name, case) in group("challengeIds") {
            let p = params(&case);
            assert_eq!(p.id_input(), text(&case, "hmacInput"), "{name}");
            assert_eq!(keys.id(&p), p.id, "{name}");
            assert!(keys.verify(&p), "{name}");
            // The description is outside the id.
            let described = Params { description: "anything else".into(), ..p.clone() };
            assert!(keys.verify(&described), "{name}");
        }
    }

    #[test]
    fn credentials() {
        let keys = vector_keys();
        for (name, case) in group("credentials") {
            let header = text(&case, "header");
            let presented = decode(header);
            if is_error(&case) {
                assert!(presented.is_err(), "{name}: {header:?} decoded");
                continue;
            }
            let presented = presented.unwrap_or_else(|e| panic!("{name}: {e}"));
            let credential: Value = serde_json::from_str(text(&case, "credentialJson")).expect("JSON");
            // Every echoed parameter, none more and none less (empty optional ones are absent).
            let echoed: Value = serde_json::from_str(&presented.challenge.to_json().text()).expect("JSON");
            assert_eq!(echoed, credential["challenge"], "{name}");
            assert_eq!(presented.preimage, text(&credential["payload"], "preimage"), "{name}");
            let outcome = verify(&keys, header, 0).err();
            if presented.challenge.intent == "charge" {
                // The vector's id is not an HMAC (22 characters, not 32 bytes), so not ours.
                assert_eq!(outcome, Some(PaymentError::InvalidChallenge), "{name}");
            } else {
                // Session credentials decode (their extra fields are ignored), but we only
                // accept the Lightning charge intent.
                assert_eq!(outcome, Some(PaymentError::MethodUnsupported), "{name}");
            }
        }
    }

    /// "reject missing challenge.id" also has an empty payload (no preimage): the id alone must
    /// be enough for the refusal, so the same credential with a preimage is refused too.
    #[test]
    fn a_credential_without_challenge_id_is_refused_for_that_alone() {
        let (_, case) = group("credentials").into_iter().find(|(n, _)| n == "reject missing challenge.id").unwrap();
        let token = text(&case, "header").strip_prefix("Payment ").unwrap();
        let mut json: Value = serde_json::from_slice(&base64url_decode(token).unwrap()).unwrap();
        assert!(json["challenge"].get("id").is_none());
        json["payload"]["preimage"] = "a3f1e2d4b5c6a7e8".into();
        assert!(decode(&format!("Payment {}", base64url_encode(json.to_string().as_bytes()))).is_err());
        json["challenge"]["id"] = "i".into();
        assert!(decode(&format!("Payment {}", base64url_encode(json.to_string().as_bytes()))).is_ok());
    }

    #[test]
    fn receipts() {
        for (name, case) in group("receipts") {
            let json = text(&case, "receiptJson");
            // The header is the unpadded base64url of the JSON: our encoder writes the same.
            assert_eq!(base64url_encode(json.as_bytes()), text(&case, "header"), "{name}");
            match name.as_str() {
                "charge receipt" => {
                    // Our receipt() takes the invoice's 32-byte payment hash as its reference; this
                    // vector's reference is 12 bytes, which we cannot produce. So the vector's JSON
                    // with a 32-byte reference in its place must be exactly what we write: the same
                    // fields, in the same order, the same spelling, the same timestamp format.
                    let value: Value = serde_json::from_str(json).unwrap();
                    let reference = text(&value, "reference");
                    assert_eq!(hex_decode(reference).map(|r| r.len()), Some(12));
                    let hash = [0xbc; 32];
                    let now = parse_rfc3339(text(&value, "timestamp")).expect("an RFC 3339 timestamp");
                    let ours = receipt(text(&value, "challengeId"), &hash, now);
                    let expected = json.replace(reference, &hex_encode(&hash));
                    assert_eq!(String::from_utf8(base64url_decode(&ours).unwrap()).unwrap(), expected);
                    assert_eq!(ours, base64url_encode(expected.as_bytes()));
                }
                // We send a receipt only for a verified charge, which always has a challenge id;
                // there is no receipt without one to compare.
                "receipt without a challenge id" => {}
                // Session receipts (close, refunds, top-up events): we have no session intent.
                "session close with a refund"
                | "session close with nothing to refund"
                | "refund beyond the exactly representable range"
                | "largest refund an int64 can hold"
                | "need top-up event"
                | "need top-up beyond the safe integer range" => {}
                other => panic!("a receipt vector this test does not know: {other}"),
            }
        }
    }
}
