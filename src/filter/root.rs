//! The root context: parses the configuration once per plugin load and hands each request the
//! shared config and credential cache.

use super::host::{self, Host};
use super::http::{Http, Misconfigured};
use super::settlements::{Ledgers, Settlements};
use crate::config::Config;
use crate::discovery::Manifest;
use crate::fleet;
use crate::gate::VerifiedCache;
use crate::lightning::MAX_RESPONSE_BYTES;
use crate::metrics::{Counter, Pending, ServiceCounts, CALLOUT_LATENCY_MS, SERVICE_PAID_MSAT, SERVICE_PAID_REQUESTS};
use crate::pricing::QuoteCache;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{ContextType, LogLevel, MetricType};
use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::rc::Rc;
use std::time::Duration;

/// Recently verified credentials kept per worker.
const CACHE_ENTRIES: usize = 4096;
/// Largest revocation list read from the fleet store.
const MAX_REVOCATION_LIST_BYTES: usize = 16 * 1024 * 1024;
/// How often the root context wakes: metered charges for the fleet store go out within a tick.
const TICK: Duration = Duration::from_millis(100);
/// Counts are published to the host (and the revocation poll considered) every second.
const TICKS_PER_PUBLISH: u32 = 10;

pub struct Shared {
    pub config: Config,
    /// Token ids revoked through the fleet store, as of the last poll.
    pub fleet_revoked: RefCell<HashSet<[u8; 32]>>,
    pub cache: RefCell<VerifiedCache>,
    pub counts: Pending,
    pub service_counts: ServiceCounts,
    pub quotes: RefCell<QuoteCache>,
    /// The callout latency histogram, if the host could define it.
    pub latency_metric: Option<u32>,
    /// Learnt from the first request.
    pub host: Cell<Option<Host>>,
    /// The discovery manifest, rendered once, if enabled.
    pub manifest: Option<Manifest>,
    /// Metered charges for the fleet store, handed to the root context, and balances last seen.
    pub ledgers: Ledgers,
}

impl Shared {
    pub fn count(&self, counter: Counter) {
        self.counts.bump(counter);
    }

    pub fn is_revoked_in_fleet(&self, token_id: &[u8; 32]) -> bool {
        self.fleet_revoked.borrow().contains(token_id)
    }
}

#[derive(Default)]
pub struct Root {
    shared: Option<Rc<Shared>>,
    /// The configuration was refused on a host that cannot refuse it: every request answers 500.
    misconfigured: bool,
    /// Host metric ids, in the order of `Counter::ALL`.
    counter_ids: Vec<Option<u32>>,
    /// Host metric ids of each service's (requests, msat), in the order of `ServiceCounts::names`.
    service_ids: Vec<(Option<u32>, Option<u32>)>,
    /// When the fleet's revocation list is next read (unix seconds), and whether a read is under way.
    next_revocation_poll: u64,
    polling: bool,
    /// Metered charges on their way to the fleet store.
    settlements: Settlements,
    /// Ticks until the counts are next published.
    ticks_to_publish: u32,
}

impl Root {
    /// Reads the fleet's revocation list every `revocation_poll_s`, one read at a time.
    fn poll_revocations(&mut self, shared: &Shared) {
        let Some(fleet) = &shared.config.fleet else { return };
        let now = host::now_unix();
        if self.polling || now < self.next_revocation_poll {
            return;
        }
        self.next_revocation_poll = now.saturating_add(fleet.revocation_poll_s);
        self.polling = host::dispatch(&fleet.endpoint, &fleet::list_revoked(&fleet.prefix)).is_ok();
        if !self.polling {
            shared.count(Counter::StoreErrors);
        }
    }

    fn send_settlements(&mut self, shared: &Shared) {
        let Some(fleet) = &shared.config.fleet else { return };
        let failures = self.settlements.send(fleet, &shared.ledgers);
        report(shared, &failures);
    }
}

/// Failed steps of metered charges: counted as store errors, and logged.
fn report(shared: &Shared, failures: &[String]) {
    for failure in failures {
        shared.count(Counter::StoreErrors);
        host::log(LogLevel::Warn, &format!("fleet store: {failure}"));
    }
}

impl Context for Root {
    fn on_http_call_response(&mut self, call: u32, _num_headers: usize, body_size: usize, _num_trailers: usize) {
        let Some(shared) = self.shared.clone() else { return };
        if self.settlements.owns(call) {
            let body = host::call_response_body(body_size.min(MAX_RESPONSE_BYTES));
            let answer = fleet::parse_ledger(host::call_response_status(), &body);
            // What is to be sent again goes with the next tick: a dispatch from a root context's
            // call answer can crash a worker of Kong's engine.
            let failures = self.settlements.answered(call, answer, &shared.ledgers);
            return report(&shared, &failures);
        }
        self.polling = false;
        let Some(fleet) = &shared.config.fleet else { return };
        let body = host::call_response_body(body_size.min(MAX_REVOCATION_LIST_BYTES));
        match fleet::parse_revoked(&fleet.prefix, host::call_response_status(), &body) {
            Ok(revoked) => *shared.fleet_revoked.borrow_mut() = revoked,
            Err(error) => {
                // The last list read stays in force.
                shared.count(Counter::StoreErrors);
                host::log(LogLevel::Warn, &format!("reading the fleet's revocation list failed: {error}"));
            }
        }
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = host::plugin_configuration().unwrap_or_default();
        match Config::parse(&bytes, &|name| std::env::var(name).ok()) {
            Ok(config) => {
                let dry_run = config.dry_run_fields();
                if !dry_run.is_empty() {
                    let message =
                        format!("dry run is on ({}): requests it covers pass upstream unpaid", dry_run.join(", "));
                    host::log(LogLevel::Warn, &message);
                }
                self.counter_ids =
                    Counter::ALL.iter().map(|c| host::define_metric(MetricType::Counter, c.name())).collect();
                let service_counts = ServiceCounts::new(&config);
                let define = |prefix: &str, service: &str| {
                    host::define_metric(MetricType::Counter, &format!("{prefix}.{service}"))
                };
                self.service_ids = service_counts
                    .names()
                    .iter()
                    .map(|name| (define(SERVICE_PAID_REQUESTS, name), define(SERVICE_PAID_MSAT, name)))
                    .collect();
                self.shared = Some(Rc::new(Shared {
                    manifest: Manifest::new(&config),
                    config,
                    cache: RefCell::new(VerifiedCache::new(CACHE_ENTRIES)),
                    fleet_revoked: RefCell::new(HashSet::new()),
                    counts: Pending::default(),
                    service_counts,
                    quotes: RefCell::new(QuoteCache::default()),
                    latency_metric: host::define_metric(MetricType::Histogram, CALLOUT_LATENCY_MS),
                    host: Cell::new(None),
                    ledgers: Ledgers::default(),
                }));
                host::set_tick_period(TICK);
                true
            }
            Err(error) => {
                host::log(LogLevel::Error, &error.to_string());
                // Envoy refuses the configuration, which keeps the previous one serving. nginx stops
                // the worker and cannot start another: there every request of the route gets a 500.
                self.misconfigured = host::host_outside_request() == Host::Nginx;
                self.misconfigured
            }
        }
    }

    fn on_tick(&mut self) {
        let Some(shared) = self.shared.clone() else { return };
        self.send_settlements(&shared);
        self.ticks_to_publish = self.ticks_to_publish.saturating_sub(1);
        if self.ticks_to_publish > 0 {
            return;
        }
        self.ticks_to_publish = TICKS_PER_PUBLISH;
        self.poll_revocations(&shared);
        for (counter, count) in shared.counts.drain() {
            if let Some(Some(id)) = self.counter_ids.get(counter as usize) {
                host::increment_metric(*id, count);
            }
        }
        for (at, requests, msat) in shared.service_counts.drain() {
            let Some((requests_id, msat_id)) = self.service_ids.get(at) else { continue };
            requests_id.iter().for_each(|id| host::increment_metric(*id, requests));
            msat_id.iter().for_each(|id| host::increment_metric(*id, msat));
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        match self.shared.clone() {
            Some(shared) => Some(Box::new(Http::new(shared))),
            None if self.misconfigured => Some(Box::new(Misconfigured)),
            None => None,
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
