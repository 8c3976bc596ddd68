//! Dry run: the gate decides and counts as if it enforced, but the request goes upstream, with the
//! would-be decision in `x-l402-dry-run`. Nothing that needs the node, the pricer or the shared
//! store happens: no invoice, no settlement check, no use counted, no freebie or challenge-limit
//! token taken, and the credential goes upstream as it came.

use super::host;
use super::http::Http;
use super::root::Shared;
use crate::config::Service;
use crate::gate::{Decision, Refusal};
use crate::metrics::Counter;
use crate::outcome::{Outcome, Record};
use proxy_wasm::types::Action;
use std::rc::Rc;

/// The header the upstream reads the would-be decision from.
pub const HEADER: &str = "x-l402-dry-run";

impl Http {
    /// Lets a request through with the decision it would have had, where dry run applies: the
    /// route's setting for a paid route, the top-level one otherwise. `None`: the decision is enforced.
    pub(super) fn dry_run(&mut self, decision: &Decision<'_>) -> Option<Action> {
        let shared = Rc::clone(&self.shared);
        let config = &shared.config;
        let applies = match decision {
            Decision::Paid { service, .. } | Decision::Challenge { service, .. } => service.dry_run,
            Decision::Free | Decision::NoRoute | Decision::AmbiguousPath(_) => config.dry_run,
        };
        if !applies {
            // Wherever dry run is configured the header is the filter's: a client's copy never
            // passes (blanked on nginx, as a credential is).
            self.remove_credential_header(HEADER);
            return None;
        }
        let refusal;
        let record = match decision {
            Decision::Free => {
                shared.count(Counter::Free);
                Record::new(Outcome::Free)
            }
            Decision::NoRoute => {
                shared.count(Counter::NoRoute);
                Record::new(Outcome::NoRoute)
            }
            Decision::AmbiguousPath(_) => {
                shared.count(Counter::AmbiguousPath);
                Record::new(Outcome::AmbiguousPath)
            }
            Decision::Paid { identifier, service, .. } if shared.is_revoked_in_fleet(&identifier.token_id) => {
                refusal = Some(Refusal::Revoked);
                would_challenge(&shared, service, refusal.as_ref())
            }
            Decision::Paid { identifier, preimage_proven, service, price_msat, .. } => {
                shared.count(Counter::Paid);
                shared.service_counts.paid(&service.name, *price_msat);
                let record = Record::new(Outcome::Paid).service(&service.name, *price_msat).token(&identifier.token_id);
                // Only the node could tell that this token's invoice is paid.
                if config.node.strict || !preimage_proven {
                    record.reason("settlement_unchecked")
                } else {
                    record
                }
            }
            Decision::Challenge { service, refusal } => would_challenge(&shared, service, refusal.as_ref()),
        };
        host::set_request_header(HEADER, &record.header_value());
        self.remove_metering_headers();
        self.decided(&Record { dry_run: true, ..record });
        shared.count(Counter::DryRunPasses);
        Some(Action::Continue)
    }
}

/// A challenge that would have been issued, counted as one; its price where it is static.
fn would_challenge<'a>(shared: &Shared, service: &'a Service, refusal: Option<&'a Refusal>) -> Record<'a> {
    shared.count(Counter::for_refusal(refusal));
    shared.count(Counter::ChallengesIssued);
    let price = if service.dynamic_price { None } else { service.price_msat };
    Record::challenge(refusal.map(Refusal::code)).service(&service.name, price)
}
