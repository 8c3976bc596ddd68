//! Lightning node APIs as plain data: each node kind turns "an invoice of N msat" into the HTTP
//! request that creates it, and the node's answer into an [`Invoice`]. No I/O here.

pub mod cln;
pub mod lnbits;
pub mod lnd;

use crate::callout::check_answer;
pub use crate::callout::{Callout, MAX_RESPONSE_BYTES};
use crate::config::NodeKind;
use core::fmt;

/// Longest BOLT11 string accepted from a node (the description is capped at 639 bytes).
const MAX_BOLT11_LEN: usize = 4096;

/// What to invoice.
#[derive(Debug, Clone, Copy)]
pub struct InvoiceOrder<'a> {
    pub amount_msat: u64,
    pub memo: &'a str,
    pub expiry_s: u32,
    /// Unique per invoice (the token id in hex); Core Lightning requires a unique label.
    pub label: &'a str,
}

/// A created invoice, as the node reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invoice {
    pub payment_hash: [u8; 32],
    pub bolt11: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeError {
    /// The callout failed: refused, reset, timed out, or the host could not dispatch it.
    Unreachable,
    /// The node answered with a non-success status.
    Status(u32),
    /// The answer was too large, not JSON, or lacked a valid field.
    BadResponse(&'static str),
}

impl NodeError {
    pub fn code(&self) -> &'static str {
        match self {
            NodeError::Unreachable => "node_unreachable",
            NodeError::Status(_) => "node_error_status",
            NodeError::BadResponse(_) => "node_bad_response",
        }
    }
}

impl fmt::Display for NodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NodeError::Unreachable => write!(f, "the Lightning node could not be reached"),
            NodeError::Status(status) => write!(f, "the Lightning node answered HTTP {status}"),
            NodeError::BadResponse(what) => write!(f, "the Lightning node's answer was not usable: {what}"),
        }
    }
}

/// The amount to invoice: LNbits takes whole satoshis, so its amounts round up.
pub fn invoiceable_msat(kind: NodeKind, msat: u64) -> u64 {
    match kind {
        NodeKind::Lnbits => msat.div_ceil(1000).saturating_mul(1000),
        NodeKind::Lnd | NodeKind::Cln => msat,
    }
}

pub fn invoice_request(kind: NodeKind, credential: &str, order: &InvoiceOrder<'_>) -> Callout {
    match kind {
        NodeKind::Lnd => lnd::create_invoice(credential, order),
        NodeKind::Cln => cln::create_invoice(credential, order),
        NodeKind::Lnbits => lnbits::create_invoice(credential, order),
    }
}

/// The request asking whether the invoice with this payment hash is settled.
pub fn settlement_request(kind: NodeKind, credential: &str, payment_hash: &[u8; 32]) -> Callout {
    let hash = crate::l402::encoding::hex_encode(payment_hash);
    match kind {
        NodeKind::Lnd => lnd::lookup_invoice(credential, &hash),
        NodeKind::Cln => cln::list_invoices(credential, &hash),
        NodeKind::Lnbits => lnbits::payment_status(credential, &hash),
    }
}

/// Reads the answer to [`settlement_request`]: whether the invoice is paid. An invoice the node
/// does not know is not paid.
pub fn parse_settlement(kind: NodeKind, status: Option<u32>, body: &[u8]) -> Result<bool, NodeError> {
    if status == Some(404) {
        return Ok(false);
    }
    check_answer(status, body)?;
    match kind {
        NodeKind::Lnd => lnd::parse_settled(body),
        NodeKind::Cln => cln::parse_settled(body),
        NodeKind::Lnbits => lnbits::parse_settled(body),
    }
}

/// Reads the node's answer to [`invoice_request`]; `status` is `None` when the host saw no response.
pub fn parse_invoice(kind: NodeKind, status: Option<u32>, body: &[u8]) -> Result<Invoice, NodeError> {
    check_answer(status, body)?;
    let invoice = match kind {
        NodeKind::Lnd => lnd::parse_created(body),
        NodeKind::Cln => cln::parse_created(body),
        NodeKind::Lnbits => lnbits::parse_created(body),
    }?;
    check_bolt11(&invoice.bolt11)?;
    Ok(invoice)
}

/// The invoice goes into a response header: only a plausible bech32 BOLT11 string may pass.
fn check_bolt11(bolt11: &str) -> Result<(), NodeError> {
    let plausible = bolt11.len() <= MAX_BOLT11_LEN
        && bolt11.get(..2).is_some_and(|p| p.eq_ignore_ascii_case("ln"))
        && bolt11.bytes().all(|b| b.is_ascii_alphanumeric());
    if plausible {
        Ok(())
    } else {
        Err(NodeError::BadResponse("invoice is not a BOLT11 string"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_success_and_missing_responses_are_errors() {
        assert_eq!(parse_invoice(NodeKind::Lnd, None, b""), Err(NodeError::Unreachable));
        assert_eq!(parse_invoice(NodeKind::Lnd, Some(500), b"{}"), Err(NodeError::Status(500)));
        for gateway_status in [502, 503, 504] {
            assert_eq!(parse_invoice(NodeKind::Lnd, Some(gateway_status), b""), Err(NodeError::Unreachable));
        }
        assert_eq!(
            parse_invoice(NodeKind::Lnbits, Some(200), b"<html>"),
            Err(NodeError::BadResponse("not the expected JSON"))
        );
        let huge = vec![b' '; MAX_RESPONSE_BYTES + 1];
        assert_eq!(parse_invoice(NodeKind::Cln, Some(200), &huge), Err(NodeError::BadResponse("response too large")));
    }

    #[test]
    fn header_unsafe_invoices_are_refused() {
        for bad in ["lnbc1\"x", "lnbc1\r\nx", "", "bc1qxyz", "lnbc 1"] {
            assert!(check_bolt11(bad).is_err(), "{bad:?}");
        }
        assert!(check_bolt11("lnbcrt10u1pjexample").is_ok());
    }
}
