//! HTTP calls the filter makes (to the Lightning node, the pricing service, the fleet store), as
//! plain data, and how their answers are read, for either host.

use crate::config::Endpoint;
use crate::json::{Json, Object};
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
    pub fn post_json(path: impl Into<String>, auth: Option<(&'static str, &str)>, body: Object) -> Callout {
        let mut headers: Vec<(&'static str, String)> =
            auth.map(|(name, value)| (name, value.to_owned())).into_iter().collect();
        headers.push(("content-type", "application/json".to_owned()));
        Callout { method: "POST", path: path.into(), headers, body: Json::from(body).text().into_bytes() }
    }

    /// A GET with the credential header.
    pub fn get(path: impl Into<String>, auth: (&'static str, &str)) -> Callout {
        Callout { method: "GET", path: path.into(), headers: vec![(auth.0, auth.1.to_owned())], body: Vec::new() }
    }
}

impl Callout {
    /// The headers to dispatch: pseudo-headers first. Envoy routes the call by cluster name and takes
    /// TLS from the cluster; Kong dials `upstream` (`host:port`), speaks TLS when `:scheme` is
    /// `https` and uses `:authority` as the SNI name, so both are always sent.
    pub fn headers<'a>(&'a self, endpoint: &'a Endpoint, content_length: &'a str) -> Vec<(&'a str, &'a str)> {
        let mut headers: Vec<(&str, &str)> = vec![
            (":method", self.method),
            (":path", &self.path),
            (":authority", &endpoint.authority),
            (":scheme", if endpoint.tls { "https" } else { "http" }),
            ("content-length", content_length),
        ];
        headers.extend(self.headers.iter().map(|(k, v)| (*k, v.as_str())));
        headers
    }
}

/// The HTTP status of a callout's answer, or `None` when the host reports that the call itself
/// failed: Envoy leaves `:status` out, Kong (ngx_wasm_module) sets `:dispatch_status` to something
/// other than `ok` (e.g. `timeout`, `broken connection`).
pub fn answer_status(status: Option<&str>, dispatch_status: Option<&str>) -> Option<u32> {
    if dispatch_status.is_some_and(|s| s != "ok") {
        return None;
    }
    status?.parse().ok()
}

/// Largest answer body read from any callout; every answer we expect is a few hundred bytes.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// Whether a callout was answered with success. Envoy answers a failed callout itself (connection
/// refused or reset, TLS failure: 503; timeout: 504), as a reverse proxy in front of the service
/// would: the gateway statuses mean unreachable.
pub(crate) fn check_status(status: Option<u32>) -> Result<(), NodeError> {
    match status {
        None | Some(502..=504) => Err(NodeError::Unreachable),
        Some(200..=299) => Ok(()),
        Some(other) => Err(NodeError::Status(other)),
    }
}

/// [`check_status`], and a body within [`MAX_RESPONSE_BYTES`].
pub(crate) fn check_answer(status: Option<u32>, body: &[u8]) -> Result<(), NodeError> {
    check_status(status)?;
    if body.len() > MAX_RESPONSE_BYTES {
        return Err(NodeError::BadResponse("response too large"));
    }
    Ok(())
}

const UNEXPECTED: NodeError = NodeError::BadResponse("not the expected JSON");

/// A service's answer as JSON.
pub(crate) fn parse_json(body: &[u8]) -> Result<Json, NodeError> {
    Json::parse(body).map_err(|_| UNEXPECTED)
}

/// One object of a service's answer, read field by field: `null` reads as absent, and a field of
/// another type than asked makes the whole answer unexpected. Fields nobody asks for are ignored.
#[derive(Clone, Copy)]
pub(crate) struct Answer<'a>(&'a Object);

impl<'a> Answer<'a> {
    pub(crate) fn of(value: &'a Json) -> Result<Answer<'a>, NodeError> {
        value.as_object().map(Answer).ok_or(UNEXPECTED)
    }

    fn field<T>(self, name: &str, read: impl FnOnce(&'a Json) -> Option<T>) -> Result<Option<T>, NodeError> {
        match self.0.get(name).filter(|value| !value.is_null()) {
            Some(value) => read(value).map(Some).ok_or(UNEXPECTED),
            None => Ok(None),
        }
    }

    pub(crate) fn text(self, name: &str) -> Result<&'a str, NodeError> {
        self.opt_text(name)?.ok_or(UNEXPECTED)
    }

    pub(crate) fn opt_text(self, name: &str) -> Result<Option<&'a str>, NodeError> {
        self.field(name, Json::as_str)
    }

    pub(crate) fn flag(self, name: &str) -> Result<bool, NodeError> {
        self.opt_flag(name)?.ok_or(UNEXPECTED)
    }

    pub(crate) fn opt_flag(self, name: &str) -> Result<Option<bool>, NodeError> {
        self.field(name, Json::as_bool)
    }

    pub(crate) fn opt_whole(self, name: &str) -> Result<Option<u64>, NodeError> {
        self.field(name, Json::as_u64)
    }

    pub(crate) fn opt_object(self, name: &str) -> Result<Option<Answer<'a>>, NodeError> {
        self.field(name, |value| value.as_object().map(Answer))
    }

    pub(crate) fn objects(self, name: &str) -> Result<Vec<Answer<'a>>, NodeError> {
        self.opt_objects(name)?.ok_or(UNEXPECTED)
    }

    pub(crate) fn opt_objects(self, name: &str) -> Result<Option<Vec<Answer<'a>>>, NodeError> {
        let Some(items) = self.field(name, Json::as_array)? else { return Ok(None) };
        items.iter().map(Answer::of).collect::<Result<_, _>>().map(Some)
    }

    pub(crate) fn opt_texts(self, name: &str) -> Result<Option<Vec<String>>, NodeError> {
        let read = |value: &Json| {
            value.as_array()?.iter().map(|item| item.as_str().map(str::to_owned)).collect::<Option<Vec<_>>>()
        };
        self.field(name, read)
    }

    /// Refuses an answer with a field not in `known`, for services whose mistakes must not pass
    /// unnoticed.
    pub(crate) fn only(self, known: &[&str]) -> Result<(), NodeError> {
        match self.0.names().all(|name| known.contains(&name)) {
            true => Ok(()),
            false => Err(UNEXPECTED),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kong_style_callouts_carry_scheme_and_authority() {
        let endpoint =
            Endpoint { upstream: "10.0.0.5:8080".into(), authority: "lnd.internal".into(), tls: true, timeout_ms: 500 };
        let call = Callout::post_json(
            "/v1/invoices",
            Some(("grpc-metadata-macaroon", "0201")),
            Object::new().with("memo", "m"),
        );
        let length = call.body.len().to_string();
        let headers = call.headers(&endpoint, &length);
        assert_eq!(
            headers,
            [
                (":method", "POST"),
                (":path", "/v1/invoices"),
                (":authority", "lnd.internal"),
                (":scheme", "https"),
                ("content-length", "12"),
                ("grpc-metadata-macaroon", "0201"),
                ("content-type", "application/json"),
            ]
        );
        let plain = Endpoint { tls: false, ..endpoint };
        assert!(Callout::get("/x", ("x-api-key", "k")).headers(&plain, "0").contains(&(":scheme", "http")));
    }

    #[test]
    fn failed_calls_are_told_apart_on_both_hosts() {
        assert_eq!(answer_status(Some("200"), None), Some(200), "Envoy, answered");
        assert_eq!(answer_status(None, None), None, "Envoy, failed: no :status");
        assert_eq!(answer_status(Some("201"), Some("ok")), Some(201), "Kong, answered");
        assert_eq!(answer_status(None, Some("timeout")), None, "Kong, timed out");
        assert_eq!(answer_status(Some("200"), Some("broken connection")), None, "Kong, failed mid-way");
        assert_eq!(answer_status(Some("abc"), None), None);
    }
}
