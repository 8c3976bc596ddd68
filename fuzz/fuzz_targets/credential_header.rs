//! Arbitrary credential header text: parsing must never panic; a parsed credential is authenticated
//! and verified against a fixed ring, and an `Authorization` credential re-encodes to one that
//! parses back to the same credential.
#![no_main]

#[path = "../common/mod.rs"]
mod common;

use l402::l402::encoding::{base64_encode, hex_encode};
use l402::l402::header::{is_l402_authorization, parse_authorization, parse_macaroon_header};
use l402::l402::{authenticate, verify, Requirement};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let ring = common::ring();
    let caps = ["admin".to_owned()];
    let needs = [
        Requirement { service: "weather", capabilities: &[], now: 0, method: "GET", path: "/v1/x" },
        Requirement { service: "admin", capabilities: &caps, now: u64::MAX, method: "post", path: "" },
    ];
    let _ = is_l402_authorization(&text);

    if let Ok(credential) = parse_authorization(&text) {
        let again =
            format!("L402 {}:{}", base64_encode(&credential.macaroon.encode()), hex_encode(&credential.preimage));
        assert_eq!(parse_authorization(&again).as_ref(), Ok(&credential), "re-encoded credential: {again}");
        if let Ok(token) = authenticate(&ring, credential.clone()) {
            for need in &needs {
                let _ = token.authorize(need);
                assert_eq!(verify(&ring, credential.clone(), need).is_ok(), token.authorize(need).is_ok());
            }
        }
    }
    if let Ok(credential) = parse_macaroon_header(&text) {
        let again = hex_encode(&credential.macaroon.encode());
        assert_eq!(parse_macaroon_header(&again).as_ref(), Ok(&credential), "re-encoded macaroon: {again}");
        if let Ok(token) = authenticate(&ring, credential.clone()) {
            for need in &needs {
                assert_eq!(verify(&ring, credential.clone(), need).is_ok(), token.authorize(need).is_ok());
            }
        }
    }
});
