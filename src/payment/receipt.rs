//! `Payment-Receipt`: base64url JSON telling the client which challenge its payment settled.

use super::challenge::METHOD_LIGHTNING;
use super::wire::{base64url_encode, rfc3339};
use crate::l402::encoding::hex_encode;
use serde::Serialize;

pub const HEADER: &str = "payment-receipt";

#[derive(Serialize)]
struct Receipt<'a> {
    status: &'a str,
    method: &'a str,
    timestamp: String,
    /// The invoice's payment hash.
    reference: String,
    #[serde(rename = "challengeId")]
    challenge_id: &'a str,
}

pub fn receipt(challenge_id: &str, payment_hash: &[u8; 32], now: u64) -> String {
    let receipt = Receipt {
        status: "success",
        method: METHOD_LIGHTNING,
        timestamp: rfc3339(now),
        reference: hex_encode(payment_hash),
        challenge_id,
    };
    base64url_encode(serde_json::to_string(&receipt).unwrap_or_default().as_bytes())
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
