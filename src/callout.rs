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

impl Callout {
    /// A POST of a JSON body, with `auth` (the credential header, if any) and the content type.
    pub fn post_json(path: impl Into<String>, auth: Option<(&'static str, &str)>, body: &serde_json::Value) -> Callout {
        let mut headers: Vec<(&'static str, String)> =
            auth.map(|(name, value)| (name, value.to_owned())).into_iter().collect();
        headers.push(("content-type", "application/json".to_owned()));
        Callout { method: "POST", path: path.into(), headers, body: serde_json::to_vec(body).unwrap_or_default() }
    }

    /// A GET with the credential header.
    pub fn get(path: impl Into<String>, auth: (&'static str, &str)) -> Callout {
        Callout { method: "GET", path: path.into(), headers: vec![(auth.0, auth.1.to_owned())], body: Vec::new() }
    }
}

pub(crate) fn parse_json<'a, T: serde::Deserialize<'a>>(body: &'a [u8]) -> Result<T, NodeError> {
    serde_json::from_slice(body).map_err(|_| NodeError::BadResponse("not the expected JSON"))
}
