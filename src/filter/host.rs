//! Host calls through the SDK's `Result`-returning functions: the trait helpers unwrap, and a panic
//! would take down the VM for every request on the worker. Every failure here becomes a value.

use crate::callout::{answer_status, Callout};
use crate::config::Endpoint;
use crate::response::grpc;
use crate::store::{SharedStore, StoreError};
use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, GrpcStatusCode, LogLevel, MapType, MetricType, Status};
use std::time::{Duration, UNIX_EPOCH};

/// The proxy running the filter, as it reports itself: Kong's engine (nginx with ngx_wasm_module)
/// answers `ngx.*` properties (nginx variables), Envoy knows none of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Host {
    Envoy,
    /// nginx cannot remove a request header (its proxy module forwards a removed one), keeps only
    /// the last of repeated headers in a local response, and hands over `:path` already decoded.
    Nginx,
}

/// The request target as the client sent it, on nginx (`$request_uri`); `None` on Envoy, whose
/// `:path` is that target already.
pub fn nginx_request_uri() -> Option<String> {
    let bytes = hostcalls::get_property(vec!["ngx", "request_uri"]).ok()??;
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

/// Which host runs the filter, asked outside any request (from `on_configure`): nginx refuses
/// `ngx.*` properties there, Envoy does not know them.
pub fn host_outside_request() -> Host {
    match hostcalls::get_property(vec!["ngx", "request_uri"]) {
        Ok(None) => Host::Envoy,
        Ok(Some(_)) | Err(_) => Host::Nginx,
    }
}

/// A request header as text; `Err` with its lossy reading when it is present but not valid UTF-8.
pub fn request_header(name: &str) -> Result<Option<String>, String> {
    match hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, name) {
        Ok(Some(bytes)) => {
            String::from_utf8(bytes).map(Some).map_err(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
        }
        Ok(None) | Err(_) => Ok(None),
    }
}

fn call_response_header(name: &str) -> Option<String> {
    let bytes = hostcalls::get_map_value_bytes(MapType::HttpCallResponseHeaders, name).ok()??;
    String::from_utf8(bytes).ok()
}

/// The status of the callout's answer; `None` when the call failed (see `callout::answer_status`).
pub fn call_response_status() -> Option<u32> {
    answer_status(call_response_header(":status").as_deref(), call_response_header(":dispatch_status").as_deref())
}

/// Whether a failed callout surely failed before its request was sent (nginx's `:dispatch_status`:
/// the TLS handshake or the name resolution). Only then does a local response sent from the
/// callback keep its body on nginx: once the request went out (a timeout, a reset) the call's
/// buffer takes the body with it, and a refused connection is reported as a reset is ("broken
/// connection").
pub fn call_failed_before_sending() -> bool {
    matches!(call_response_header(":dispatch_status").as_deref(), Some("tls handshake failure" | "resolver failure"))
}

pub fn call_response_body(size: usize) -> Vec<u8> {
    match hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, size) {
        Ok(Some(bytes)) => bytes,
        Ok(None) | Err(_) => Vec::new(),
    }
}

pub fn plugin_configuration() -> Option<Vec<u8>> {
    hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX).ok().flatten()
}

/// Time since the Unix epoch from the host's clock (zero if the host cannot tell, which expires
/// every token).
pub fn now() -> Duration {
    hostcalls::get_current_time().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).unwrap_or_default()
}

pub fn now_unix() -> u64 {
    now().as_secs()
}

pub fn define_metric(kind: MetricType, name: &str) -> Option<u32> {
    hostcalls::define_metric(kind, name).ok()
}

pub fn increment_metric(id: u32, by: u64) {
    let _ = hostcalls::increment_metric(id, i64::try_from(by).unwrap_or(i64::MAX));
}

pub fn record_metric(id: u32, value: u64) {
    let _ = hostcalls::record_metric(id, value);
}

pub fn set_tick_period(period: Duration) {
    let _ = hostcalls::set_tick_period(period);
}

/// Dispatches a callout to an endpoint; its answer arrives in `on_http_call_response`.
pub fn dispatch(endpoint: &Endpoint, request: &Callout) -> Result<u32, ()> {
    let content_length = request.body.len().to_string();
    let headers = request.headers(endpoint, &content_length);
    let timeout = Duration::from_millis(u64::from(endpoint.timeout_ms));
    hostcalls::dispatch_http_call(&endpoint.upstream, headers, Some(&request.body), Vec::new(), timeout).map_err(drop)
}

pub fn send_response(status: u32, headers: Vec<(&str, &str)>, body: &[u8]) {
    // A failure leaves nothing to do but log: the request stays paused and the host times it out.
    if hostcalls::send_http_response(status, headers, Some(body)).is_err() {
        log(LogLevel::Error, "could not send the local response");
    }
}

/// A trailers-only gRPC answer: HTTP 200 with `grpc-status` and `grpc-message`.
pub fn send_grpc_response(grpc_status: u32, message: &str, headers: Vec<(&str, &[u8])>) {
    let code = match grpc_status {
        grpc::PERMISSION_DENIED => GrpcStatusCode::PermissionDenied,
        grpc::RESOURCE_EXHAUSTED => GrpcStatusCode::ResourceExhausted,
        grpc::INTERNAL => GrpcStatusCode::Internal,
        _ => GrpcStatusCode::Unavailable,
    };
    if hostcalls::send_grpc_response(code, Some(message), headers).is_err() {
        log(LogLevel::Error, "could not send the local gRPC response");
    }
}

pub fn remove_request_header(name: &str) {
    let _ = hostcalls::remove_map_value(MapType::HttpRequestHeaders, name);
}

pub fn has_request_header(name: &str) -> bool {
    matches!(hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, name), Ok(Some(_)))
}

pub fn response_header(name: &str) -> Option<String> {
    let bytes = hostcalls::get_map_value_bytes(MapType::HttpResponseHeaders, name).ok()??;
    String::from_utf8(bytes).ok()
}

pub fn set_response_header(name: &str, value: Option<&str>) {
    let _ = hostcalls::set_map_value(MapType::HttpResponseHeaders, name, value);
}

pub fn response_trailer(name: &str) -> Option<String> {
    let bytes = hostcalls::get_map_value_bytes(MapType::HttpResponseTrailers, name).ok()??;
    String::from_utf8(bytes).ok()
}

pub fn set_response_trailer(name: &str, value: Option<&str>) {
    let _ = hostcalls::set_map_value(MapType::HttpResponseTrailers, name, value);
}

/// Replaces the response at hand's status and headers by `status` and a body of `content_type` and
/// `content_length`. The framing headers are overwritten rather than removed: Kong 3.8's engine
/// crashes its worker removing one of them.
pub fn replace_response_headers(status: u32, content_type: &str, content_length: usize) {
    const FRAMING: [&str; 5] = ["content-type", "content-length", "connection", "date", "server"];
    let headers = hostcalls::get_map(MapType::HttpResponseHeaders).unwrap_or_default();
    for (name, _) in &headers {
        if !name.starts_with(':') && !FRAMING.iter().any(|kept| name.eq_ignore_ascii_case(kept)) {
            let _ = hostcalls::remove_map_value(MapType::HttpResponseHeaders, name);
        }
    }
    set_response_header(":status", Some(&status.to_string()));
    set_response_header("content-type", Some(content_type));
    set_response_header("content-length", Some(&content_length.to_string()));
}

/// Replaces the response body chunk at hand.
pub fn set_response_body(body: &[u8], chunk_size: usize) {
    let _ = hostcalls::set_buffer(BufferType::HttpResponseBody, 0, chunk_size, body);
}

/// Sets a request header, replacing any value the client sent.
pub fn set_request_header(name: &str, value: &str) {
    let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, Some(value));
}

pub fn log(level: LogLevel, message: &str) {
    let _ = hostcalls::log(level, message);
}

pub fn random_token_id() -> Option<[u8; 32]> {
    let mut id = [0u8; 32];
    getrandom::getrandom(&mut id).ok()?;
    Some(id)
}

/// The host's shared data, seen by every worker of this gateway.
pub struct HostStore;

impl SharedStore for HostStore {
    fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), StoreError> {
        hostcalls::get_shared_data(key).map_err(|_| StoreError::Unavailable)
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
        hostcalls::set_shared_data(key, Some(value), cas).map_err(|status| match status {
            Status::CasMismatch => StoreError::CasMismatch,
            _ => StoreError::Unavailable,
        })
    }
}

/// The downstream client's address (`ip:port`), as the host reports it.
pub fn client_address() -> Option<String> {
    let bytes = hostcalls::get_property(vec!["source", "address"]).ok()??;
    String::from_utf8(bytes).ok()
}

/// Sets a property of the request for the host to read (Envoy: filter state `wasm.<path>`; nginx:
/// a declared variable at `ngx.<name>`). The SDK's `set_property` panics on any status but Ok, and
/// nginx answers NotFound for a variable its configuration does not declare.
pub fn set_property(path: &[&str], value: &str) -> bool {
    let path = path.join("\0");
    // SAFETY: both buffers outlive the call, which only reads them.
    let status = unsafe { proxy_set_property(path.as_ptr(), path.len(), value.as_ptr(), value.len()) };
    status == 0
}

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_set_property(path_data: *const u8, path_size: usize, value_data: *const u8, value_size: usize) -> u32;
}

pub fn resume_request() {
    if hostcalls::resume_http_request().is_err() {
        log(LogLevel::Error, "could not resume the request");
    }
}
