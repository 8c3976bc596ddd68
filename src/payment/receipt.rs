//! `Payment-Receipt`: base64url JSON telling the client which challenge its payment settled.

use super::challenge::METHOD_LIGHTNING;
use super::jcs::write_string;
use super::wire::{base64url_encode, rfc3339};
use crate::l402::encoding::hex_encode;

pub const HEADER: &str = "payment-receipt";

pub fn receipt(challenge_id: &str, payment_hash: &[u8; 32], now: u64) -> String {
    // Written member by member: the order is the draft's (status, method, timestamp, reference
    // as the invoice's payment hash, challengeId), which a map would sort.
    let mut json = String::new();
    let members = [
        ("status", "success"),
        ("method", METHOD_LIGHTNING),
        ("timestamp", &rfc3339(now)),
        ("reference", &hex_encode(payment_hash)),
        ("challengeId", challenge_id),
    ];
    for (i, (name, value)) in members.into_iter().enumerate() {
        json.push(if i == 0 { '{' } else { ',' });
        write_string(&mut json, name);
        json.push(':');
        write_string(&mut json, value);
    }
    json.push('}');
    base64url_encode(json.as_bytes())
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
