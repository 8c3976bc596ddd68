//! An HTTP filter that lets every request through untouched: what any proxy-wasm filter costs in
//! Envoy before it does any work (VM entry per callback, context creation and teardown).
//!
//! Its configuration is empty for the baseline. For diagnosis it may name request headers, comma-
//! separated (e.g. `:method,:path,authorization`): each request then reads those headers from the
//! host and does nothing with them, which prices the host calls alone. `*` reads the whole header
//! map in one call instead, the alternative to reading headers one by one.

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

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let config = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX).ok().flatten().unwrap_or_default();
        let text = String::from_utf8_lossy(&config);
        self.headers = Rc::new(text.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect());
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
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
