//! A paid request on its way in: the settlement check and the use count where configured, then the
//! hand-off to the upstream.

use super::host::{self, Host, HostStore};
use super::http::{key, Http, Waiting};
use super::metering::Meter;
use crate::config::Service;
use crate::fleet::{self, Swapped};
use crate::gate::Refusal;
use crate::l402::encoding::hex_encode;
use crate::l402::Identifier;
use crate::lightning::{settlement_request, NodeError};
use crate::metrics::Counter;
use crate::outcome::{Outcome, Record};
use crate::payment::receipt::receipt;
use crate::payment::PaymentError;
use crate::store::{self, Draw};
use proxy_wasm::types::Action;
use std::rc::Rc;

/// A paid request on its way in; `credential_headers` are those the credential came in.
#[derive(Clone)]
pub(super) struct Admission {
    pub(super) identifier: Identifier,
    pub(super) service: Service,
    /// The price the token was bought at, for the metering header.
    pub(super) price_msat: Option<u64>,
    pub(super) credential_headers: &'static [&'static str],
    /// The challenge id of a Payment-scheme charge, which buys one request.
    pub(super) charge: Option<String>,
}

impl Admission {
    /// How many requests the purchase is good for, if limited. One invoice buys one purchase,
    /// whichever dialect presents it: a charge takes all of it at once (it is single-use, and
    /// spends the L402 token of the same invoice), a token one use at a time.
    fn limit(&self) -> Option<u64> {
        match self.charge {
            Some(_) => Some(self.service.uses.unwrap_or(1)),
            None => self.service.uses,
        }
    }

    /// How the credential draws on its purchase's use count.
    fn draw(&self) -> Draw {
        match self.charge {
            Some(_) => Draw::All,
            None => Draw::One,
        }
    }

    /// Why the credential is refused once its purchase is spent.
    fn exhausted(&self) -> Refusal {
        match self.charge {
            Some(_) => Refusal::Payment(PaymentError::Replayed),
            None => Refusal::UsedUp,
        }
    }
}

/// Compare-and-swap rounds on a fleet counter or balance before the store counts as failing.
pub(super) const FLEET_CAS_ATTEMPTS: u8 = 16;

impl Http {
    /// A paid request: confirm settlement where required, then count the use and hand it on.
    pub(super) fn admit(&mut self, admission: Admission, preimage_proven: bool) -> Action {
        let config = &self.shared.config;
        if preimage_proven && !config.node.strict {
            return self.count_use_and_hand_off(&admission);
        }
        match store::flag(&HostStore, &key("settled", &admission.identifier.payment_hash)) {
            Ok(true) => self.count_use_and_hand_off(&admission),
            Ok(false) => {
                let node = &config.node;
                let request = settlement_request(node.kind, &node.credential.0, &admission.identifier.payment_hash);
                self.call_node(&request, Waiting::Settlement(admission))
            }
            Err(e) => self.store_failure(&e, None),
        }
    }

    pub(super) fn count_use_and_hand_off(&mut self, admission: &Admission) -> Action {
        if let Some(terms) = &admission.service.metered {
            return self.reserve_and_hand_off(admission, terms);
        }
        let Some(limit) = admission.limit() else { return self.pass(admission) };
        let shared = Rc::clone(&self.shared);
        let token_id = &admission.identifier.token_id;
        if let Some(fleet) = &shared.config.fleet {
            // The first draw, where the counter does not exist yet.
            let Some(first) = admission.draw().next(0, limit) else {
                return self.challenge(admission.service.clone(), Some(admission.exhausted()));
            };
            let request = fleet::count_use(&fleet::uses_key(&fleet.prefix, token_id), None, first);
            let waiting = Waiting::Usage { admission: admission.clone(), limit, attempt: 1 };
            return self.call(&fleet.endpoint, &request, waiting);
        }
        match store::draw(&HostStore, &key("uses", token_id), admission.draw(), limit) {
            Ok(true) => self.pass(admission),
            Ok(false) => self.challenge(admission.service.clone(), Some(admission.exhausted())),
            Err(e) => self.store_failure(&e, Some(admission)),
        }
    }

    /// The fleet store answered a use-count step: counted, used up, or try again.
    pub(super) fn counted(
        &mut self,
        admission: Admission,
        limit: u64,
        attempt: u8,
        answer: Result<Swapped<fleet::Seen>, NodeError>,
    ) -> Action {
        let shared = Rc::clone(&self.shared);
        let Some(fleet) = &shared.config.fleet else { return Action::Pause };
        match answer {
            Ok(Swapped::Written { .. }) => self.pass(&admission),
            Ok(Swapped::Changed(seen)) => match admission.draw().next(seen.count, limit) {
                None => {
                    let refusal = admission.exhausted();
                    self.challenge(admission.service, Some(refusal))
                }
                Some(next) if attempt < FLEET_CAS_ATTEMPTS => {
                    let key = fleet::uses_key(&fleet.prefix, &admission.identifier.token_id);
                    let request = fleet::count_use(&key, Some(&seen), next);
                    let waiting = Waiting::Usage { admission, limit, attempt: attempt.saturating_add(1) };
                    self.call(&fleet.endpoint, &request, waiting)
                }
                Some(_) => self.store_failure(&"use counter kept changing", Some(&admission)),
            },
            Err(error) => self.store_failure(&error, Some(&admission)),
        }
    }

    pub(super) fn pass(&mut self, admission: &Admission) -> Action {
        self.shared.count(Counter::Paid);
        // A metered request's value is what it is charged, counted once the upstream answered.
        let value = if self.meter.is_some() { None } else { admission.price_msat };
        self.shared.service_counts.paid(&admission.service.name, value);
        let paid = Record::new(Outcome::Paid).service(&admission.service.name, admission.price_msat);
        self.decided(&paid.token(&admission.identifier.token_id));
        self.hand_off(admission);
        if let Some(challenge_id) = &admission.charge {
            self.receipt = Some(receipt(challenge_id, &admission.identifier.payment_hash, self.now));
        }
        Action::Continue
    }

    /// The upstream gets the request without the credential (unless configured otherwise) and with
    /// the metering headers, which replace any copy the client sent.
    pub(super) fn hand_off(&self, admission: &Admission) {
        let headers = &self.shared.config.upstream_headers;
        if headers.strip_credential {
            admission.credential_headers.iter().for_each(|name| self.remove_credential_header(name));
            self.strip_cookie();
        }
        if let Some(name) = &headers.token_id {
            host::set_request_header(name, &hex_encode(&admission.identifier.token_id));
        }
        if let Some(name) = &headers.service {
            host::set_request_header(name, &admission.service.name);
        }
        let meter = self.meter.as_ref();
        for (name, value) in [
            (&headers.price_msat, admission.price_msat),
            (&headers.reserved_msat, meter.map(Meter::reserved)),
            (&headers.balance_msat, meter.map(|m| m.balance_msat)),
        ] {
            match (name, value) {
                (Some(name), Some(value)) => host::set_request_header(name, &value.to_string()),
                (Some(name), None) => self.remove_client_copy(name),
                (None, _) => {}
            }
        }
        if let Some(terms) = &admission.service.metered {
            // An upstream that echoes request headers must never hand a client's cost back as its own.
            self.remove_credential_header(&terms.cost_header);
        }
    }

    /// nginx's proxy module forwards a removed request header all the same: there the credential
    /// is blanked instead, and forwarded as an empty header.
    pub(super) fn remove_credential_header(&self, name: &str) {
        match self.host {
            Host::Envoy => host::remove_request_header(name),
            Host::Nginx => host::set_request_header(name, ""),
        }
    }

    /// Client copies of the metering headers never reach the upstream. nginx cannot remove them, so
    /// there a request that carries one was refused before any decision (`reserved_header`).
    pub(super) fn remove_client_copy(&self, name: &str) {
        if self.host == Host::Envoy {
            host::remove_request_header(name);
        }
    }

    pub(super) fn remove_metering_headers(&self) {
        self.shared.config.upstream_headers.names().for_each(|name| self.remove_client_copy(name));
    }
}
