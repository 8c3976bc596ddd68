//! LND REST: `POST /v1/invoices`, authenticated by `Grpc-Metadata-macaroon`, speaking proto3 JSON
//! (64-bit integers as strings, `bytes` as base64).

use super::{Callout, Invoice, InvoiceOrder, NodeError};
use crate::callout::{parse_json, Answer};
use crate::json::Object;
use crate::l402::encoding::base64_decode;

const MACAROON_HEADER: &str = "grpc-metadata-macaroon";

pub fn create_invoice(macaroon_hex: &str, order: &InvoiceOrder<'_>) -> Callout {
    let body = Object::new()
        .with("value_msat", order.amount_msat.to_string())
        .with("memo", order.memo)
        .with("expiry", order.expiry_s.to_string());
    Callout::post_json("/v1/invoices", Some((MACAROON_HEADER, macaroon_hex)), body)
}

pub fn parse_created(body: &[u8]) -> Result<Invoice, NodeError> {
    let json = parse_json(body)?;
    let answer = Answer::of(&json)?;
    let (r_hash, bolt11) = (answer.text("r_hash")?, answer.text("payment_request")?);
    let payment_hash = base64_decode(r_hash)
        .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
        .ok_or(NodeError::BadResponse("r_hash is not 32 bytes of base64"))?;
    Ok(Invoice { payment_hash, bolt11: bolt11.to_owned() })
}

pub fn lookup_invoice(macaroon_hex: &str, payment_hash_hex: &str) -> Callout {
    Callout::get(format!("/v1/invoice/{payment_hash_hex}"), (MACAROON_HEADER, macaroon_hex))
}

/// `SETTLED` is the only state of a paid invoice (`ACCEPTED` is a held one, not yet paid).
pub fn parse_settled(body: &[u8]) -> Result<bool, NodeError> {
    let json = parse_json(body)?;
    Ok(Answer::of(&json)?.text("state")? == "SETTLED")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn builds_proto3_json_request() {
        let order = InvoiceOrder { amount_msat: 10_000, memo: "weather \"access\"", expiry_s: 600, label: "x" };
        let req = create_invoice("0201", &order);
        assert_eq!((req.method, req.path.as_str()), ("POST", "/v1/invoices"));
        assert!(req.headers.contains(&("grpc-metadata-macaroon", "0201".to_owned())));
        let body: serde_json::Value = serde_json::from_slice(&req.body).unwrap();
        assert_eq!(body, json!({"value_msat": "10000", "memo": "weather \"access\"", "expiry": "600"}));
    }

    #[test]
    fn reads_the_invoice_state() {
        assert_eq!(lookup_invoice("0201", "ab").path, "/v1/invoice/ab");
        assert_eq!(parse_settled(br#"{"state":"SETTLED","settled":true}"#), Ok(true));
        assert_eq!(parse_settled(br#"{"state":"OPEN","r_preimage":"AAAA"}"#), Ok(false));
        assert_eq!(parse_settled(br#"{"state":"ACCEPTED"}"#), Ok(false));
        assert!(parse_settled(b"{}").is_err());
    }

    #[test]
    fn parses_base64_payment_hash() {
        let body = br#"{"r_hash":"AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=","payment_request":"lnbcrt1x","add_index":"3","payment_addr":"AA=="}"#;
        let invoice = parse_created(body).unwrap();
        assert_eq!(invoice.payment_hash, [1; 32]);
        assert_eq!(invoice.bolt11, "lnbcrt1x");
        assert!(parse_created(br#"{"r_hash":"AQE=","payment_request":"lnbc1"}"#).is_err());
        assert!(parse_created(br#"{"payment_request":"lnbc1"}"#).is_err());
    }
}
