//! HTTP calls the filter makes (to the Lightning node, to the pricing service), as plain data.

use crate::lightning::NodeError;

/// An HTTP request, without the host-specific pseudo-headers for authority and scheme.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Callout {
    pub method: &'static str,
    pub path: String,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

pub(crate) fn json_body(value: &serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

pub(crate) fn parse_json<'a, T: serde::Deserialize<'a>>(body: &'a [u8]) -> Result<T, NodeError> {
    serde_json::from_slice(body).map_err(|_| NodeError::BadResponse("not the expected JSON"))
}
