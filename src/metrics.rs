//! The filter's counters. Requests only bump plain in-VM counters; the root context publishes the
//! deltas to the host once a second, so the paid path spends no host call on metrics.

use crate::config::{Access, Config};
use crate::gate::Refusal;
use crate::l402::VerifyError;
use crate::lightning::NodeError;
use crate::payment::PaymentError;
use core::cell::Cell;

macro_rules! counters {
    ($($variant:ident => $name:literal,)*) => {
        /// A counter, published under its name (Envoy: `wasmcustom.<name>` in /stats, `<name>` in
        /// /stats/prometheus; Kong: `pw:l402:<name>`).
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Counter { $($variant,)* }

        impl Counter {
            pub const ALL: &'static [Counter] = &[$(Counter::$variant,)*];

            pub fn name(self) -> &'static str {
                match self { $(Counter::$variant => $name,)* }
            }
        }
    };
}

counters! {
    Paid => "l402_paid_requests",
    Free => "l402_free_requests",
    NoRoute => "l402_no_route_requests",
    ChallengesIssued => "l402_challenges_issued",
    Unauthenticated => "l402_refused_no_credential",
    Malformed => "l402_refused_malformed",
    UnknownVersion => "l402_refused_unknown_version",
    BadSignature => "l402_refused_bad_signature",
    PreimageMismatch => "l402_refused_preimage_mismatch",
    Expired => "l402_refused_expired",
    WrongService => "l402_refused_wrong_service",
    CapabilityMissing => "l402_refused_capability_missing",
    CaveatWidened => "l402_refused_caveat_widened",
    Restricted => "l402_refused_restricted",
    Revoked => "l402_refused_revoked",
    UsedUp => "l402_refused_used_up",
    Unsettled => "l402_refused_unsettled",
    MethodUnsupported => "l402_refused_method_unsupported",
    InvalidChallenge => "l402_refused_invalid_challenge",
    WrongPrice => "l402_refused_wrong_price",
    Replayed => "l402_refused_replayed",
    AmbiguousPath => "l402_refused_ambiguous_path",
    Freebies => "l402_freebies_granted",
    ChallengesLimited => "l402_challenges_rate_limited",
    StoreErrors => "l402_store_errors",
    PricingErrors => "l402_pricing_errors",
    NodeUnreachable => "l402_node_errors_unreachable",
    NodeErrorStatus => "l402_node_errors_status",
    NodeBadResponse => "l402_node_errors_bad_response",
    GatewayErrors => "l402_gateway_errors",
    ReservedHeader => "l402_refused_reserved_header",
    UnadmittedResponses => "l402_unadmitted_responses_withheld",
    DryRunPasses => "l402_dry_run_passes",
    CookiesIssued => "l402_browser_cookies_issued",
    CrossSiteRedemption => "l402_refused_cross_site",
    InsecureOriginRedemption => "l402_refused_insecure_origin",
    BalanceExhausted => "l402_refused_balance_exhausted",
}

/// Name of the callout latency histogram, in milliseconds.
pub const CALLOUT_LATENCY_MS: &str = "l402_node_callout_ms";

impl Counter {
    pub fn for_refusal(refusal: Option<&Refusal>) -> Counter {
        let token_error = match refusal {
            None => return Counter::Unauthenticated,
            Some(Refusal::Revoked) => return Counter::Revoked,
            Some(Refusal::UsedUp) => return Counter::UsedUp,
            Some(Refusal::Unsettled) => return Counter::Unsettled,
            Some(Refusal::Payment(e)) => return Counter::for_payment_error(e),
            Some(Refusal::BalanceExhausted { .. }) => return Counter::BalanceExhausted,
            Some(Refusal::Token(e)) => e,
        };
        match token_error {
            VerifyError::Malformed(_) => Counter::Malformed,
            VerifyError::UnknownVersion(_) => Counter::UnknownVersion,
            VerifyError::BadSignature => Counter::BadSignature,
            VerifyError::PreimageMismatch => Counter::PreimageMismatch,
            VerifyError::Expired => Counter::Expired,
            VerifyError::WrongService => Counter::WrongService,
            VerifyError::CapabilityMissing => Counter::CapabilityMissing,
            VerifyError::CaveatWidened(_) => Counter::CaveatWidened,
            VerifyError::Restricted => Counter::Restricted,
        }
    }

    fn for_payment_error(error: &PaymentError) -> Counter {
        match error {
            PaymentError::Malformed(_) => Counter::Malformed,
            PaymentError::MethodUnsupported => Counter::MethodUnsupported,
            PaymentError::InvalidChallenge => Counter::InvalidChallenge,
            PaymentError::Expired => Counter::Expired,
            PaymentError::PreimageMismatch => Counter::PreimageMismatch,
            PaymentError::WrongService => Counter::WrongService,
            PaymentError::WrongPrice => Counter::WrongPrice,
            PaymentError::Restricted => Counter::Restricted,
            PaymentError::Replayed => Counter::Replayed,
        }
    }

    pub fn for_node_error(error: &NodeError) -> Counter {
        match error {
            NodeError::Unreachable => Counter::NodeUnreachable,
            NodeError::Status(_) => Counter::NodeErrorStatus,
            NodeError::BadResponse(_) => Counter::NodeBadResponse,
        }
    }
}

/// Counts not yet published, one cell per counter.
#[derive(Debug)]
pub struct Pending {
    cells: [Cell<u64>; COUNTERS],
}

// `Default` is derived for arrays of at most 32 elements.
impl Default for Pending {
    fn default() -> Pending {
        Pending { cells: std::array::from_fn(|_| Cell::new(0)) }
    }
}

const COUNTERS: usize = Counter::ALL.len();

impl Pending {
    pub fn bump(&self, counter: Counter) {
        if let Some(cell) = self.cells.get(counter as usize) {
            cell.set(cell.get().saturating_add(1));
        }
    }

    /// Takes every non-zero count, leaving zero behind.
    pub fn drain(&self) -> impl Iterator<Item = (Counter, u64)> + '_ {
        Counter::ALL.iter().zip(&self.cells).filter_map(|(counter, cell)| {
            let count = cell.take();
            (count > 0).then_some((*counter, count))
        })
    }
}

/// The per-service counters, each published as `<name>.<service>` (Envoy's `stats_tags` can make
/// the service a label: see envoy/lnd-tls.yaml).
pub const SERVICE_PAID_REQUESTS: &str = "l402_service_paid_requests";
/// The sum of the prices of a service's paid requests, at the price each token was bought at.
pub const SERVICE_PAID_MSAT: &str = "l402_service_paid_msat";

/// Paid requests and their prices per service, not yet published.
#[derive(Debug, Default)]
pub struct ServiceCounts {
    names: Vec<String>,
    /// (requests, msat), in the order of `names`.
    cells: Vec<(Cell<u64>, Cell<u64>)>,
}

impl ServiceCounts {
    /// One pair of counters per paid service of the configuration, in route order.
    pub fn new(config: &Config) -> ServiceCounts {
        let mut names: Vec<String> = Vec::new();
        for route in &config.routes {
            if let Access::Paid(service) = &route.access {
                if !names.contains(&service.name) {
                    names.push(service.name.clone());
                }
            }
        }
        let cells = names.iter().map(|_| Default::default()).collect();
        ServiceCounts { names, cells }
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// A paid request; a few services, so a scan beats hashing the name.
    pub fn paid(&self, service: &str, price_msat: Option<u64>) {
        self.add(service, 1, price_msat.unwrap_or(0));
    }

    /// What a metered request was charged, once the upstream reported it.
    pub fn charged(&self, service: &str, msat: u64) {
        self.add(service, 0, msat);
    }

    fn add(&self, service: &str, requests_by: u64, msat_by: u64) {
        let Some(at) = self.names.iter().position(|name| name == service) else { return };
        if let Some((requests, msat)) = self.cells.get(at) {
            requests.set(requests.get().saturating_add(requests_by));
            msat.set(msat.get().saturating_add(msat_by));
        }
    }

    /// Takes every non-zero pair as (service index, requests, msat), leaving zero behind.
    pub fn drain(&self) -> impl Iterator<Item = (usize, u64, u64)> + '_ {
        self.cells.iter().enumerate().filter_map(|(at, (requests, msat))| {
            let (requests, msat) = (requests.take(), msat.take());
            (requests > 0 || msat > 0).then_some((at, requests, msat))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_counts_sum_requests_and_prices() {
        let config = crate::testing::config_with_routes(serde_json::json!([
            { "match": { "path_prefix": "/a/" }, "service": "weather", "price_sat": 10 },
            { "match": { "path_prefix": "/free/" }, "free": true },
            { "match": { "path_prefix": "/b/" }, "service": "files", "price_msat": 1500 },
            { "match": { "path_prefix": "/c/" }, "service": "weather", "price_sat": 10 }
        ]));
        let counts = ServiceCounts::new(&config);
        assert_eq!(counts.names(), ["weather", "files"]);
        counts.paid("files", Some(1500));
        counts.paid("files", None);
        counts.paid("weather", Some(10_000));
        counts.paid("nobody", Some(1));
        assert_eq!(counts.drain().collect::<Vec<_>>(), [(0, 1, 10_000), (1, 2, 1500)]);
        assert_eq!(counts.drain().count(), 0);
    }

    #[test]
    fn counts_are_drained_once() {
        let pending = Pending::default();
        pending.bump(Counter::Paid);
        pending.bump(Counter::Paid);
        pending.bump(Counter::for_refusal(Some(&Refusal::Token(VerifyError::Expired))));
        let drained: Vec<_> = pending.drain().collect();
        assert_eq!(drained, [(Counter::Paid, 2), (Counter::Expired, 1)]);
        assert_eq!(pending.drain().count(), 0);
    }

    #[test]
    fn names_are_unique_and_prefixed() {
        let mut names: Vec<_> = Counter::ALL.iter().map(|c| c.name()).collect();
        assert!(names.iter().all(|n| n.starts_with("l402_")));
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Counter::ALL.len());
    }
}
