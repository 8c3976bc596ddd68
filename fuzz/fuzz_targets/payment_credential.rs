//! Payment credentials (`Authorization: Payment <base64url JSON>`). Any bytes as the header value:
//! `payment::decode` and `payment::verify` never panic, and a credential that verifies is decoded,
//! re-encoded and verified again to the same charge. An input that is a `common::ChargeSpec` (`!`
//! and one field a line) is also issued and paid with the fuzz secret: that credential verifies to
//! exactly the charge issued, under a ring holding its key, and is refused at its expiry, under
//! other keys and with another preimage; and any single character of its token changed is refused
//! or decodes to the same charge (the same challenge id and covered parameters, the same preimage):
//! no other credential verifies.
#![no_main]

#[path = "../common/mod.rs"]
mod common;

use common::{ChargeSpec, PAYMENT_NOW};
use l402::l402::encoding::{hex_decode_array, hex_encode};
use l402::payment::credential::MAX_CREDENTIAL_HEADER;
use l402::payment::{decode, is_payment_authorization, verify, IdKeys, PaymentError, Route};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

struct Keys {
    ours: IdKeys,
    other: IdKeys,
    /// The other secret first, ours second: a ring after a rotation.
    rotated: IdKeys,
}

static KEYS: OnceLock<Keys> = OnceLock::new();

fn keys() -> &'static Keys {
    KEYS.get_or_init(|| {
        let rotated = l402::l402::SecretRing::new(vec![vec![0x22; 32], vec![0x11; 32]]).expect("secrets");
        Keys { ours: common::payment_keys(), other: common::other_payment_keys(), rotated: IdKeys::derive(&rotated) }
    })
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let keys = keys();
    arbitrary_header(keys, &text);
    if let Some(spec) = ChargeSpec::parse(&text) {
        issued_and_paid(keys, &spec);
    }
});

fn arbitrary_header(keys: &Keys, text: &str) {
    let is_payment = is_payment_authorization(text);
    let decoded = decode(text);
    assert!(decoded.is_err() || is_payment, "decoded without the Payment scheme: {text:?}");
    for now in [0, PAYMENT_NOW, u64::MAX] {
        let Ok(charge) = verify(&keys.ours, text, now) else { continue };
        let presented = decoded.as_ref().expect("a verified credential decodes");
        assert_eq!(charge.challenge_id, presented.challenge.id);
        assert!(keys.rotated.verify(&presented.challenge), "verified, but not under a ring holding the key");
        assert!(!keys.other.verify(&presented.challenge), "verified under another secret");
        // Written again as we write credentials, it is the same charge.
        let again = common::payment_header(&presented.challenge, &presented.preimage);
        assert_eq!(verify(&keys.ours, &again, now).as_ref(), Ok(&charge), "re-encoded: {again}");
        for quoted in [false, true] {
            let route = Route { service: "weather", price_msat: Some(10_000), quoted, method: "GET" };
            let _ = charge.issued_for(&route, ["/v1/x", "/v1/%78"].into_iter());
        }
    }
}

fn issued_and_paid(keys: &Keys, spec: &ChargeSpec<'_>) {
    let challenge = spec.challenge(&keys.ours);
    let preimage = hex_encode(&spec.preimage);
    let header = common::payment_header(&challenge, &preimage);
    let expected = spec.charge(&challenge);
    if header.len() > MAX_CREDENTIAL_HEADER {
        assert_eq!(decode(&header).err(), Some(PaymentError::Malformed("credential header too long")));
        return;
    }

    let presented = decode(&header).expect("an issued credential decodes");
    assert_eq!(presented.challenge, challenge);
    assert_eq!(presented.preimage, preimage);
    assert_eq!(verify(&keys.ours, &header, PAYMENT_NOW).as_ref(), Ok(&expected), "{header}");
    assert_eq!(verify(&keys.rotated, &header, PAYMENT_NOW).as_ref(), Ok(&expected), "rotated ring");
    assert_eq!(verify(&keys.ours, &header, spec.expires()), Err(PaymentError::Expired));
    assert_eq!(verify(&keys.other, &header, PAYMENT_NOW), Err(PaymentError::InvalidChallenge));
    let mut wrong = spec.preimage;
    wrong[0] ^= 1;
    let unpaid = common::payment_header(&challenge, &hex_encode(&wrong));
    assert_eq!(verify(&keys.ours, &unpaid, PAYMENT_NOW), Err(PaymentError::PreimageMismatch));

    // One character of the token changed (to any byte, as a Latin-1 character): refused, or
    // the very same charge, e.g. a changed description (not covered by the id), a member name
    // made unknown (ignored) where its value was empty, or the preimage's hex in another case.
    let scheme = "Payment ".len();
    let token_len = header.len() - scheme;
    for &(at, byte) in &spec.changes {
        let at = scheme + at % token_len;
        let replacement = char::from(byte);
        if header[at..].starts_with(replacement) {
            continue;
        }
        let mut changed = String::with_capacity(header.len() + 1);
        changed.push_str(&header[..at]);
        changed.push(replacement);
        changed.push_str(&header[at + 1..]);
        let Ok(charge) = verify(&keys.ours, &changed, PAYMENT_NOW) else { continue };
        assert_eq!(charge, expected, "{changed} verifies to another charge");
        let other = decode(&changed).expect("a verified credential decodes");
        assert_eq!(other.challenge.id, challenge.id);
        assert_eq!(other.challenge.id_input(), challenge.id_input(), "{changed}");
        assert_eq!(hex_decode_array::<32>(&other.preimage), Some(spec.preimage), "{changed}");
    }
}
