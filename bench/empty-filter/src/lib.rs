//! An HTTP filter that lets every request through untouched: what any proxy-wasm filter costs in
//! Envoy before it does any work (VM entry per callback, context creation and teardown).
//!
//! Its configuration is empty for the baseline. For diagnosis it may name request headers, comma-
//! separated (e.g. `:method,:path,authorization`): each request then reads those headers from the
//! host and does nothing with them, which prices the host calls alone. `*` reads the whole header
//! map in one call instead, the alternative to reading headers one by one.
//!
//! `calls:single` and `calls:map` price two ways of making the paid path's header work, with none of
//! its logic: the three reads (method, path, credential) then the hand-off (credential removed, three
//! headers set) one header at a time, or the whole map read in one call and written back in one.
//!
//! `callout:<cluster>` makes it the floor of the 402 path instead: each request dispatches one POST
//! to the cluster and, on its answer, sends a local 402 of the size l402's carries, doing nothing
//! else. What Envoy spends on a callout and a local reply, without any of l402's work.

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType};
use std::rc::Rc;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { headers: Rc::new(Vec::new()) }) });
}}

struct Root {
    headers: Rc<Vec<String>>,
}

/// The 402's size, roughly as l402 sends it: challenge headers of a macaroon and an invoice, and a
/// JSON body with the invoice.
const CHALLENGE: &str = include_str!("challenge.txt");

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let config = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX).ok().flatten().unwrap_or_default();
        let text = String::from_utf8_lossy(&config);
        self.headers = Rc::new(text.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect());
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let first = self.headers.first().map(String::as_str).unwrap_or_default();
        if let Some(cluster) = first.strip_prefix("callout:") {
            return Some(Box::new(Callout { cluster: cluster.to_owned() }));
        }
        if let Some(way) = first.strip_prefix("calls:") {
            return Some(Box::new(HandOff { whole_map: way == "map" }));
        }
        Some(Box::new(Pass { headers: Rc::clone(&self.headers) }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Pass {
    headers: Rc<Vec<String>>,
}

impl Context for Pass {}

impl HttpContext for Pass {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        for name in self.headers.iter() {
            if name == "*" {
                let _ = std::hint::black_box(hostcalls::get_map_bytes(MapType::HttpRequestHeaders));
            } else {
                let _ = std::hint::black_box(hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, name));
            }
        }
        Action::Continue
    }
}

struct Callout {
    cluster: String,
}

impl Context for Callout {
    fn on_http_call_response(&mut self, _token: u32, _headers: usize, body_size: usize, _trailers: usize) {
        let _ = std::hint::black_box(hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size));
        let headers = vec![("www-authenticate", CHALLENGE), ("www-authenticate", CHALLENGE), ("content-type", "application/json")];
        let _ = hostcalls::send_http_response(402, headers, Some(CHALLENGE.as_bytes()));
    }
}

impl HttpContext for Callout {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let headers = vec![(":method", "POST"), (":path", "/v1/invoices"), (":authority", "lnd"), ("content-type", "application/json")];
        let body = br#"{"value_msat":"10000","memo":"weather access","expiry":"600"}"#;
        match hostcalls::dispatch_http_call(&self.cluster, headers, Some(body), vec![], std::time::Duration::from_secs(3)) {
            Ok(_) => Action::Pause,
            Err(_) => Action::Continue,
        }
    }
}

/// The paid path's header reads and hand-off, without its logic.
struct HandOff {
    whole_map: bool,
}

impl Context for HandOff {}

const HANDED: [(&str, &str); 3] = [
    ("x-l402-token-id", "0101010101010101010101010101010101010101010101010101010101010101"),
    ("x-l402-service", "weather"),
    ("x-l402-price-msat", "10000"),
];

impl HttpContext for HandOff {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let map = MapType::HttpRequestHeaders;
        if self.whole_map {
            let mut headers = hostcalls::get_map(map).unwrap_or_default();
            headers.retain(|(name, _)| name != "authorization");
            let mut pairs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            pairs.extend(HANDED);
            let _ = hostcalls::set_map(map, pairs);
        } else {
            for name in [":method", ":path", "authorization"] {
                let _ = std::hint::black_box(hostcalls::get_map_value(map, name));
            }
            let _ = hostcalls::remove_map_value(map, "authorization");
            for (name, value) in HANDED {
                let _ = hostcalls::set_map_value(map, name, Some(value));
            }
        }
        Action::Continue
    }
}
