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
