//! The root context: parses the configuration once per plugin load and hands each request the
//! shared config and credential cache.

use super::host;
use super::http::Http;
use crate::config::Config;
use crate::gate::VerifiedCache;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{ContextType, LogLevel};
use std::cell::RefCell;
use std::rc::Rc;

/// Recently verified credentials kept per worker.
const CACHE_ENTRIES: usize = 4096;

pub struct Shared {
    pub config: Config,
    pub cache: RefCell<VerifiedCache>,
}

#[derive(Default)]
pub struct Root {
    shared: Option<Rc<Shared>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = host::plugin_configuration().unwrap_or_default();
        match Config::parse(&bytes, &|name| std::env::var(name).ok()) {
            Ok(config) => {
                self.shared = Some(Rc::new(Shared { config, cache: RefCell::new(VerifiedCache::new(CACHE_ENTRIES)) }));
                true
            }
            Err(error) => {
                host::log(LogLevel::Error, &error.to_string());
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let shared = self.shared.clone()?;
        Some(Box::new(Http::new(shared)))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
