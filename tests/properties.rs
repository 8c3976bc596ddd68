//! Property tests: whatever a holder or an attacker changes in a token, verification refuses it;
//! what we mint always verifies.

use l402::l402::encoding::{base64_encode, hex_encode};
use l402::l402::header::parse_authorization;
use l402::l402::{mint, verify, Credential, Grant, Macaroon, Requirement, SecretRing, VerifyError};
use proptest::prelude::*;
use sha2::{Digest, Sha256};

fn ring() -> SecretRing {
    SecretRing::new(vec![vec![0x5a; 32]]).unwrap()
}

fn minted(preimage: [u8; 32], token_id: [u8; 32], capabilities: &[String], valid_until: u64) -> Macaroon {
    let grant = Grant {
        payment_hash: Sha256::digest(preimage).into(),
        token_id,
        service: "weather",
        capabilities,
        valid_until: Some(valid_until),
        constraints: &[],
    };
    mint(&ring(), &grant)
}

fn capabilities() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec("[a-z]{1,8}", 0..4)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn minted_tokens_verify(preimage: [u8; 32], token_id: [u8; 32], caps in capabilities(), until in 1u64..u64::MAX / 2) {
        let mac = minted(preimage, token_id, &caps, until);
        let header = format!("L402 {}:{}", base64_encode(&mac.encode()), hex_encode(&preimage));
        let credential = parse_authorization(&header).unwrap();
        let need = Requirement { service: "weather", capabilities: &caps, now: until, method: "GET", path: "/" };
        let token = verify(&ring(), credential, &need).unwrap();
        prop_assert_eq!(token.identifier.token_id, token_id);
    }

    #[test]
    fn any_single_bit_flip_is_refused(preimage: [u8; 32], caps in capabilities(), bit in any::<prop::sample::Index>()) {
        let mac = minted(preimage, [1; 32], &caps, 1000);
        let mut bytes = mac.encode();
        let position = bit.index(bytes.len() * 8);
        bytes[position / 8] ^= 1 << (position % 8);
        let need = Requirement { service: "weather", capabilities: &[], now: 0, method: "GET", path: "/" };
        let outcome = Macaroon::decode(&bytes)
            .map_err(VerifyError::from)
            .and_then(|macaroon| verify(&ring(), Credential { macaroon, preimage }, &need));
        prop_assert!(outcome.is_err(), "flipped bit {} was accepted", position);
    }

    #[test]
    fn any_other_preimage_is_refused(preimage: [u8; 32], other: [u8; 32]) {
        prop_assume!(preimage != other);
        let mac = minted(preimage, [1; 32], &[], 1000);
        let need = Requirement { service: "weather", capabilities: &[], now: 0, method: "GET", path: "/" };
        let outcome = verify(&ring(), Credential { macaroon: mac, preimage: other }, &need);
        prop_assert_eq!(outcome.err(), Some(VerifyError::PreimageMismatch));
    }

    #[test]
    fn widened_caveats_are_refused(preimage: [u8; 32], extra_service in "[a-z]{1,8}", extra_cap in "[a-z]{1,8}", later in 1u64..1000) {
        let caps = vec!["read".to_string()];
        let need = Requirement { service: "weather", capabilities: &caps, now: 0, method: "GET", path: "/" };
        let widenings = [
            format!("services=weather:0,{extra_service}x:0"),
            format!("weather_capabilities=read,{extra_cap}x"),
            format!("weather_valid_until={}", 1000 + later),
        ];
        for caveat in widenings {
            // The holder may append caveats (the chain stays valid) but never widen one.
            let mut mac = minted(preimage, [1; 32], &caps, 1000);
            mac.add_caveat(&caveat);
            let outcome = verify(&ring(), Credential { macaroon: mac, preimage }, &need);
            prop_assert!(matches!(outcome, Err(VerifyError::CaveatWidened(_))), "{} gave {:?}", caveat, outcome);
        }
    }

    #[test]
    fn caveats_cannot_be_rewritten_without_the_key(preimage: [u8; 32], until in 0u64..1000) {
        let mac = minted(preimage, [1; 32], &[], until);
        let mut caveats = mac.caveats().to_vec();
        caveats.pop();
        caveats.push(format!("weather_valid_until={}", until + 1_000_000));
        // Rebuild the same bytes with the edited caveat and the old signature.
        let mut forged = Macaroon::new(b"unknown root key", mac.identifier().to_vec(), Some("lsat"));
        for c in &caveats {
            forged.add_caveat(c);
        }
        let need = Requirement { service: "weather", capabilities: &[], now: until + 1, method: "GET", path: "/" };
        let outcome = verify(&ring(), Credential { macaroon: forged, preimage }, &need);
        prop_assert_eq!(outcome.err(), Some(VerifyError::BadSignature));
    }

    #[test]
    fn arbitrary_headers_never_panic(header in ".{0,600}") {
        let _ = parse_authorization(&header);
        let _ = l402::l402::parse_macaroon_header(&header);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let _ = Macaroon::decode(&bytes);
    }
}
