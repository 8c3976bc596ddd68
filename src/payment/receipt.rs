//! `Payment-Receipt`: base64url JSON telling the client which challenge its payment settled.

use super::challenge::METHOD_LIGHTNING;
use super::wire::{base64url_encode, rfc3339};
use crate::json::{Json, Object};
use crate::l402::encoding::hex_encode;

pub const HEADER: &str = "payment-receipt";

pub fn receipt(challenge_id: &str, payment_hash: &[u8; 32], now: u64) -> String {
    // The draft's members in its order; the reference is the invoice's payment hash.
    let receipt = Object::new()
        .with("status", "success")
        .with("method", METHOD_LIGHTNING)
        .with("timestamp", rfc3339(now))
        .with("reference", hex_encode(payment_hash))
        .with("challengeId", challenge_id);
    base64url_encode(Json::from(receipt).text().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::super::wire::base64url_decode;
    use super::*;

    #[test]
    fn receipt_names_the_challenge_and_the_payment_hash() {
        let json = base64url_decode(&receipt("abc", &[0xcd; 32], 0)).unwrap();
        let expected = format!(
            r#"{{"status":"success","method":"lightning","timestamp":"1970-01-01T00:00:00Z","reference":"{}","challengeId":"abc"}}"#,
            "cd".repeat(32)
        );
        assert_eq!(String::from_utf8(json).unwrap(), expected);
    }
}
