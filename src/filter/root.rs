//! The root context: parses the configuration once per plugin load and hands each request the
//! shared config and credential cache.

use super::host;
use super::http::Http;
use crate::config::Config;
use crate::gate::VerifiedCache;
use crate::metrics::{Counter, Pending, CALLOUT_LATENCY_MS};
use crate::pricing::QuoteCache;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{ContextType, LogLevel, MetricType};
use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

/// Recently verified credentials kept per worker.
const CACHE_ENTRIES: usize = 4096;
/// How often counts are published to the host.
const PUBLISH_PERIOD: Duration = Duration::from_secs(1);

pub struct Shared {
    pub config: Config,
    pub cache: RefCell<VerifiedCache>,
    pub counts: Pending,
    pub quotes: RefCell<QuoteCache>,
    /// The callout latency histogram, if the host could define it.
    pub latency_metric: Option<u32>,
}

impl Shared {
    pub fn count(&self, counter: Counter) {
        self.counts.bump(counter);
    }
}

#[derive(Default)]
pub struct Root {
    shared: Option<Rc<Shared>>,
    /// Host metric ids, in the order of `Counter::ALL`.
    counter_ids: Vec<Option<u32>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = host::plugin_configuration().unwrap_or_default();
        match Config::parse(&bytes, &|name| std::env::var(name).ok()) {
            Ok(config) => {
                self.counter_ids = Counter::ALL.iter().map(|c| host::define_metric(MetricType::Counter, c.name())).collect();
                self.shared = Some(Rc::new(Shared {
                    config,
                    cache: RefCell::new(VerifiedCache::new(CACHE_ENTRIES)),
                    counts: Pending::default(),
                    quotes: RefCell::new(QuoteCache::default()),
                    latency_metric: host::define_metric(MetricType::Histogram, CALLOUT_LATENCY_MS),
                }));
                host::set_tick_period(PUBLISH_PERIOD);
                true
            }
            Err(error) => {
                host::log(LogLevel::Error, &error.to_string());
                false
            }
        }
    }

    fn on_tick(&mut self) {
        let Some(shared) = &self.shared else { return };
        for (counter, count) in shared.counts.drain() {
            if let Some(Some(id)) = self.counter_ids.get(counter as usize) {
                host::increment_metric(*id, count);
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
