//! Arbitrary bytes as a V2 macaroon: decoding never panics, and what decodes re-encodes to bytes
//! that decode to the same macaroon (and encode identically: the encoding is canonical).
#![no_main]

#[path = "../common/mod.rs"]
mod common;

use l402::l402::Macaroon;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(macaroon) = Macaroon::decode(data) else { return };
    let encoded = macaroon.encode();
    let again = Macaroon::decode(&encoded).expect("an encoded macaroon decodes");
    assert_eq!(again, macaroon);
    assert_eq!(again.encode(), encoded);
    let _ = macaroon.signature_matches(&common::ring().minting_root_key(macaroon.identifier()));
});
