//! LNbits: `POST /api/v1/payments` with `"out": false`, authenticated by the wallet's invoice key.

use super::{Callout, Invoice, InvoiceOrder, NodeError};
use crate::callout::{parse_json, Answer};
use crate::json::Object;
use crate::l402::encoding::hex_decode_array;

pub fn create_invoice(invoice_key: &str, order: &InvoiceOrder<'_>) -> Callout {
    // `out` defaults to true (a payment) in LNbits: always send it. Amounts are whole satoshis,
    // which the config guarantees for LNbits routes.
    let body = Object::new()
        .with("out", false)
        .with("amount", order.amount_msat / 1000)
        .with("memo", order.memo)
        .with("expiry", order.expiry_s);
    Callout::post_json("/api/v1/payments", Some(("x-api-key", invoice_key)), body)
}

pub fn parse_created(body: &[u8]) -> Result<Invoice, NodeError> {
    let json = parse_json(body)?;
    let answer = Answer::of(&json)?;
    let payment_hash = hex_decode_array::<32>(answer.text("payment_hash")?)
        .ok_or(NodeError::BadResponse("payment_hash is not 32 bytes of hex"))?;
    // `payment_request`: the name older LNbits versions used.
    let (bolt11, payment_request) = (answer.opt_text("bolt11")?, answer.opt_text("payment_request")?);
    let bolt11 = bolt11.or(payment_request).ok_or(NodeError::BadResponse("no bolt11 in the answer"))?;
    Ok(Invoice { payment_hash, bolt11: bolt11.to_owned() })
}

pub fn payment_status(invoice_key: &str, payment_hash_hex: &str) -> Callout {
    Callout::get(format!("/api/v1/payments/{payment_hash_hex}"), ("x-api-key", invoice_key))
}

/// Trusts `paid`, never `preimage` (LNbits on some funding sources reports all-zero preimages).
pub fn parse_settled(body: &[u8]) -> Result<bool, NodeError> {
    let json = parse_json(body)?;
    Answer::of(&json)?.flag("paid")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn builds_incoming_payment_request() {
        let order = InvoiceOrder { amount_msat: 21_000, memo: "m", expiry_s: 600, label: "x" };
        let req = create_invoice("inkey", &order);
        assert_eq!(req.path, "/api/v1/payments");
        assert!(req.headers.contains(&("x-api-key", "inkey".to_owned())));
        let body: serde_json::Value = serde_json::from_slice(&req.body).unwrap();
        assert_eq!(body, json!({"out": false, "amount": 21, "memo": "m", "expiry": 600}));
    }

    #[test]
    fn reads_paid_not_the_preimage() {
        assert_eq!(payment_status("k", "ab").path, "/api/v1/payments/ab");
        assert_eq!(parse_settled(br#"{"paid":true,"preimage":"00"}"#), Ok(true));
        assert_eq!(parse_settled(br#"{"paid":false,"preimage":"ff"}"#), Ok(false));
        assert!(parse_settled(br#"{"status":"pending"}"#).is_err());
    }

    #[test]
    fn reads_bolt11_or_the_older_payment_request() {
        let hash = "03".repeat(32);
        let new = format!(r#"{{"payment_hash":"{hash}","bolt11":"lnbc1new","checking_id":"c"}}"#);
        let old = format!(r#"{{"payment_hash":"{hash}","payment_request":"lnbc1old"}}"#);
        assert_eq!(parse_created(new.as_bytes()).unwrap().bolt11, "lnbc1new");
        assert_eq!(parse_created(old.as_bytes()).unwrap().bolt11, "lnbc1old");
        assert!(parse_created(format!(r#"{{"payment_hash":"{hash}"}}"#).as_bytes()).is_err());
    }
}
