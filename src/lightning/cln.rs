//! Core Lightning's clnrest: `POST /v1/invoice` with JSON params, authenticated by a `Rune` header.

use super::{Callout, Invoice, InvoiceOrder, NodeError};
use crate::callout::{parse_json, Answer};
use crate::json::Object;
use crate::l402::encoding::hex_decode_array;

pub fn create_invoice(rune: &str, order: &InvoiceOrder<'_>) -> Callout {
    let body = Object::new()
        .with("amount_msat", order.amount_msat)
        .with("label", order.label)
        .with("description", order.memo)
        .with("expiry", order.expiry_s);
    Callout::post_json("/v1/invoice", Some(("rune", rune)), body)
}

pub fn parse_created(body: &[u8]) -> Result<Invoice, NodeError> {
    let json = parse_json(body)?;
    let answer = Answer::of(&json)?;
    let (bolt11, payment_hash) = (answer.text("bolt11")?, answer.text("payment_hash")?);
    let payment_hash =
        hex_decode_array::<32>(payment_hash).ok_or(NodeError::BadResponse("payment_hash is not 32 bytes of hex"))?;
    Ok(Invoice { payment_hash, bolt11: bolt11.to_owned() })
}

pub fn list_invoices(rune: &str, payment_hash_hex: &str) -> Callout {
    Callout::post_json("/v1/listinvoices", Some(("rune", rune)), Object::new().with("payment_hash", payment_hash_hex))
}

pub fn parse_settled(body: &[u8]) -> Result<bool, NodeError> {
    let json = parse_json(body)?;
    let statuses = Answer::of(&json)?.objects("invoices")?.into_iter().map(|invoice| invoice.text("status"));
    statuses.collect::<Result<Vec<_>, _>>().map(|statuses| statuses.contains(&"paid"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn builds_request_with_unique_label() {
        let order = InvoiceOrder { amount_msat: 1500, memo: "m", expiry_s: 60, label: "ab12" };
        let req = create_invoice("rune-text", &order);
        assert_eq!(req.path, "/v1/invoice");
        assert!(req.headers.contains(&("rune", "rune-text".to_owned())));
        let body: serde_json::Value = serde_json::from_slice(&req.body).unwrap();
        assert_eq!(body, json!({"amount_msat": 1500, "label": "ab12", "description": "m", "expiry": 60}));
    }

    #[test]
    fn reads_the_invoice_status() {
        let req = list_invoices("r", "ab");
        assert_eq!(serde_json::from_slice::<serde_json::Value>(&req.body).unwrap(), json!({"payment_hash": "ab"}));
        assert_eq!(parse_settled(br#"{"invoices":[{"status":"paid","label":"x"}]}"#), Ok(true));
        assert_eq!(parse_settled(br#"{"invoices":[{"status":"unpaid"}]}"#), Ok(false));
        assert_eq!(parse_settled(br#"{"invoices":[{"status":"expired"}]}"#), Ok(false));
        assert_eq!(parse_settled(br#"{"invoices":[]}"#), Ok(false));
        assert!(parse_settled(b"[]").is_err());
    }

    #[test]
    fn parses_hex_payment_hash() {
        let body = format!(
            r#"{{"bolt11":"lnbcrt1y","payment_hash":"{}","payment_secret":"00","expires_at":1}}"#,
            "02".repeat(32)
        );
        assert_eq!(parse_created(body.as_bytes()).unwrap().payment_hash, [2; 32]);
        assert!(parse_created(br#"{"bolt11":"lnbc1","payment_hash":"02"}"#).is_err());
    }
}
