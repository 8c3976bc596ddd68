//! A metered route's request: the reservation on its token's balance before it goes upstream, and
//! the charge once the upstream answered (from a response header, or trailer, with the cost).

use super::admission::{Admission, FLEET_CAS_ATTEMPTS};
use super::host::{self, HostStore};
use super::http::{key, Http, Waiting};
use super::settlements::Charge;
use crate::fleet::{self, SeenLedger, Swapped};
use crate::gate::Refusal;
use crate::lightning::NodeError;
use crate::meter::{is_grpc_server_error, Answer, Ledger, Metered, Reported};
use crate::metrics::Counter;
use crate::response::is_grpc;
use crate::store::{self, Reservation};
use proxy_wasm::types::{Action, LogLevel};
use std::rc::Rc;

/// A request's reservation, until the upstream's answer is charged.
pub(super) struct Meter {
    terms: Metered,
    service: String,
    token_id: [u8; 32],
    /// The balance left beside the reservation, for the upstream.
    pub(super) balance_msat: u64,
    /// With `fleet`: the ledger as the reservation wrote it, where the charge starts from.
    written: Option<SeenLedger>,
    /// How the upstream answered so far.
    answer: Answer,
    /// Charged: a cost the response reports later (an unannounced trailer) is only removed.
    settled: bool,
}

/// The response's status; for gRPC, whose errors come as 200, a server error in `grpc-status`
/// (sent with the headers when the answer is only an error) reads as 500.
fn response_status() -> u32 {
    let status = host::response_header(":status").and_then(|s| s.parse().ok()).unwrap_or(0);
    match host::response_header("grpc-status").and_then(|code| code.parse().ok()) {
        Some(code) if is_grpc_server_error(code) => 500,
        _ => status,
    }
}

/// A response announces trailers: gRPC always ends in them; HTTP/1.1 names them in `Trailer`.
fn trailers_may_follow() -> bool {
    host::response_header("content-type").is_some_and(|t| is_grpc(&t)) || host::response_header("trailer").is_some()
}

impl Admission {
    /// The balance a metered token was bought with, as the gate read it (see `gate::decide_paid`).
    fn bundle(&self) -> Ledger {
        Ledger::fresh(self.price_msat.unwrap_or(0))
    }
}

impl Meter {
    /// What is held for the request: the route's reservation.
    pub(super) fn reserved(&self) -> u64 {
        self.terms.reserve_msat
    }
}

impl Http {
    /// Holds the route's reservation on the token's balance, then hands the request on; a balance
    /// that cannot cover it gets a 402 for a new bundle.
    pub(super) fn reserve_and_hand_off(&mut self, admission: &Admission, terms: &Metered) -> Action {
        let shared = Rc::clone(&self.shared);
        let token_id = &admission.identifier.token_id;
        let amount = terms.reserve_msat;
        if shared.config.fleet.is_some() {
            // The first attempt starts from the balance as this worker last saw it, or assumes it is
            // new (etcd writes it only if it is); a wrong guess costs a round trip, never a count.
            let last_seen = shared.ledgers.last_seen(token_id);
            let (guess, held) =
                match last_seen.as_ref().and_then(|seen| seen.ledger.reserve(amount).map(|held| (seen, held))) {
                    Some((seen, held)) => (Some(seen), held),
                    None => match admission.bundle().reserve(amount) {
                        Some(held) => (None, held),
                        None => return self.exhausted(admission, admission.bundle(), amount),
                    },
                };
            return self.send_reservation(admission.clone(), guess, held, 1);
        }
        match store::reserve(&HostStore, &key("balance", token_id), amount) {
            Ok(Reservation::Held(held)) => self.metered_pass(admission, terms, held, None),
            Ok(Reservation::Short(ledger)) => self.exhausted(admission, ledger, amount),
            Ok(Reservation::Unknown) => self.challenge(admission.service.clone(), Some(Refusal::BalanceUnknown)),
            Err(e) => self.store_failure(&e, Some(admission)),
        }
    }

    /// The fleet store answered a reservation step: held, exhausted, or try again.
    pub(super) fn reservation_answered(
        &mut self,
        admission: Admission,
        held: Ledger,
        attempt: u8,
        answer: Result<Swapped<Option<SeenLedger>>, NodeError>,
    ) -> Action {
        let shared = Rc::clone(&self.shared);
        let Some(terms) = &admission.service.metered else { return Action::Pause };
        let now = match answer {
            Ok(Swapped::Written { revision }) => {
                let written = SeenLedger { ledger: held, mod_revision: revision };
                shared.ledgers.remember(admission.identifier.token_id, written.clone());
                return self.metered_pass(&admission, terms, held, Some(written));
            }
            Ok(Swapped::Changed(now)) => {
                if let Some(seen) = &now {
                    shared.ledgers.remember(admission.identifier.token_id, seen.clone());
                }
                now
            }
            Err(error) => return self.store_failure(&error, Some(&admission)),
        };
        let current = now.as_ref().map_or_else(|| admission.bundle(), |seen| seen.ledger);
        let Some(held) = current.reserve(terms.reserve_msat) else {
            return self.exhausted(&admission, current, terms.reserve_msat);
        };
        if attempt >= FLEET_CAS_ATTEMPTS {
            return self.store_failure(&"balance kept changing", Some(&admission));
        }
        self.send_reservation(admission, now.as_ref(), held, attempt.saturating_add(1))
    }

    /// One compare-and-swap step of a reservation in the fleet store: write `held` if the balance is
    /// still as `seen` (absent: `None`).
    fn send_reservation(
        &mut self,
        admission: Admission,
        seen: Option<&SeenLedger>,
        held: Ledger,
        attempt: u8,
    ) -> Action {
        let shared = Rc::clone(&self.shared);
        let Some(fleet) = &shared.config.fleet else { return Action::Pause };
        let request =
            fleet::put_ledger(&fleet::balance_key(&fleet.prefix, &admission.identifier.token_id), seen, &held);
        self.call(&fleet.endpoint, &request, Waiting::Reservation { admission, held, attempt })
    }

    fn metered_pass(
        &mut self,
        admission: &Admission,
        terms: &Metered,
        held: Ledger,
        written: Option<SeenLedger>,
    ) -> Action {
        self.meter = Some(Meter {
            terms: terms.clone(),
            service: admission.service.name.clone(),
            token_id: admission.identifier.token_id,
            balance_msat: held.balance_msat(),
            written,
            answer: Answer::None,
            settled: false,
        });
        self.pass(admission)
    }

    fn exhausted(&mut self, admission: &Admission, ledger: Ledger, reserve_msat: u64) -> Action {
        let refusal = Refusal::BalanceExhausted { balance_msat: ledger.balance_msat(), reserve_msat };
        self.challenge(admission.service.clone(), Some(refusal))
    }

    /// The upstream's response headers: the cost reported there is charged now; without one, a
    /// response that may end in trailers waits for them. The status is read only where no cost
    /// came, the one case it decides.
    pub(super) fn meter_response_headers(&mut self, end_of_stream: bool) {
        let Some(meter) = self.meter.as_mut() else { return };
        let cost_header = meter.terms.cost_header.clone();
        let reported = Reported::read(host::response_header(&cost_header).as_deref());
        let balance_header = self.shared.config.upstream_headers.balance_msat.clone();
        if reported == Reported::Missing {
            meter.answer = Answer::Status(response_status());
            if !end_of_stream && trailers_may_follow() {
                // The balance the upstream may have echoed is not the client's to read yet.
                if let Some(name) = &balance_header {
                    host::set_response_header(name, None);
                }
                return;
            }
        } else {
            host::set_response_header(&cost_header, None);
        }
        let balance = self.settle(reported);
        if let (Some(name), Some(balance)) = (&balance_header, balance) {
            host::set_response_header(name, Some(&balance.to_string()));
        }
    }

    /// The response's trailers: where a streaming upstream reports the cost. A cost trailer after the
    /// answer was charged at its headers is removed all the same.
    pub(super) fn meter_response_trailers(&mut self) {
        let Some(meter) = self.meter.as_mut() else { return };
        let cost_trailer = meter.terms.cost_header.clone();
        let reported = Reported::read(host::response_trailer(&cost_trailer).as_deref());
        if reported != Reported::Missing {
            host::set_response_trailer(&cost_trailer, None);
        }
        if meter.settled {
            return;
        }
        if reported == Reported::Missing {
            // A gRPC call's outcome is in its trailers.
            let code = host::response_trailer("grpc-status").and_then(|code| code.parse().ok());
            if code.is_some_and(is_grpc_server_error) {
                meter.answer = Answer::Status(500);
            }
        }
        let balance = self.settle(reported);
        if let (Some(name), Some(balance)) = (&self.shared.config.upstream_headers.balance_msat, balance) {
            host::set_response_trailer(name, Some(&balance.to_string()));
        }
    }

    /// The request is over: a reservation never charged (no answer, or a stream that ended without
    /// its trailers) is charged by the rules for a missing cost.
    pub(super) fn meter_log(&mut self) {
        self.settle(Reported::Missing);
    }

    /// Charges the request and releases the rest of its reservation; the balance left after it,
    /// where known (with `fleet`, as of this gateway's reservation).
    fn settle(&mut self, reported: Reported) -> Option<u64> {
        let meter = self.meter.as_mut().filter(|meter| !meter.settled)?;
        meter.settled = true;
        let reserved = meter.terms.reserve_msat;
        let cost = meter.terms.charge(reserved, reported, meter.answer);
        let shared = Rc::clone(&self.shared);
        match meter.written.take() {
            Some(seen) => {
                let (after, charged) = seen.ledger.settle(reserved, cost);
                shared.service_counts.charged(&meter.service, charged);
                shared.ledgers.hand_over(meter.token_id, Charge { reserved, cost }, seen);
                Some(after.balance_msat())
            }
            None => match store::settle(&HostStore, &key("balance", &meter.token_id), reserved, cost) {
                Ok((after, charged)) => {
                    shared.service_counts.charged(&meter.service, charged);
                    Some(after.balance_msat())
                }
                Err(e) => {
                    // The reservation stays held: the client is charged it, never less.
                    shared.count(Counter::StoreErrors);
                    host::log(LogLevel::Warn, &format!("shared store: charging a metered request: {e}"));
                    None
                }
            },
        }
    }
}
