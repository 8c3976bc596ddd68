//! Charges of metered requests on their way to the fleet's etcd, sent by the root context (a
//! request's own context may end before etcd answers). Charges on one balance are batched: one
//! compare-and-swap in flight per balance and gateway, so a busy token never races itself.

use super::host;
use crate::config::Fleet;
use crate::fleet::{self, SeenLedger, Swapped};
use crate::lightning::NodeError;
use crate::meter::Ledger;
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};

/// One request's charge: its reservation and the cost to charge against it.
#[derive(Debug, Clone, Copy)]
pub struct Charge {
    pub reserved: u64,
    pub cost: u64,
}

/// The charges of one balance not yet written, and the ledger to write them over.
#[derive(Debug, Clone)]
struct Batch {
    charges: Vec<Charge>,
    seen: SeenLedger,
    attempt: u8,
}

/// Compare-and-swap rounds (and failed sends) for one batch before it is given up: its
/// reservations then stay charged in full, never less.
const ATTEMPTS: u8 = 32;
/// Balances whose last written state is remembered per worker, for the next reservation's guess.
const REMEMBERED: usize = 4096;

/// What the HTTP contexts hand over, and what they read back: per worker, shared with the root.
#[derive(Default)]
pub struct Ledgers {
    handed: RefCell<Vec<([u8; 32], Charge, SeenLedger)>>,
    /// The balances as this worker last wrote or read them: a reservation's first compare-and-swap
    /// starts there rather than from nothing.
    last_seen: RefCell<HashMap<[u8; 32], SeenLedger>>,
}

impl Ledgers {
    pub fn hand_over(&self, token_id: [u8; 32], charge: Charge, seen: SeenLedger) {
        self.handed.borrow_mut().push((token_id, charge, seen));
    }

    pub fn last_seen(&self, token_id: &[u8; 32]) -> Option<SeenLedger> {
        self.last_seen.borrow().get(token_id).cloned()
    }

    pub fn remember(&self, token_id: [u8; 32], seen: SeenLedger) {
        let mut last_seen = self.last_seen.borrow_mut();
        if last_seen.len() >= REMEMBERED && !last_seen.contains_key(&token_id) {
            last_seen.clear();
        }
        last_seen.insert(token_id, seen);
    }
}

/// The root context's side: batches waiting, and the one call in flight per balance.
#[derive(Default)]
pub struct Settlements {
    waiting: HashMap<[u8; 32], Batch>,
    in_flight: HashMap<u32, ([u8; 32], Batch)>,
    busy: HashSet<[u8; 32]>,
}

impl Settlements {
    pub fn owns(&self, call: u32) -> bool {
        self.in_flight.contains_key(&call)
    }

    /// Takes the charges handed over and sends every batch whose balance has no call in flight.
    pub fn send(&mut self, fleet: &Fleet, ledgers: &Ledgers) -> Vec<String> {
        for (token_id, charge, seen) in ledgers.handed.borrow_mut().drain(..) {
            let handed = Batch { charges: vec![charge], seen, attempt: 0 };
            let batch = match self.waiting.remove(&token_id) {
                Some(waiting) => waiting.then(handed),
                None => handed,
            };
            self.waiting.insert(token_id, batch);
        }
        let ready: Vec<[u8; 32]> = self.waiting.keys().filter(|id| !self.busy.contains(*id)).copied().collect();
        let mut failures = Vec::new();
        for token_id in ready {
            let Some(batch) = self.waiting.remove(&token_id) else { continue };
            let written = apply(batch.seen.ledger, &batch.charges);
            let request = fleet::put_ledger(&fleet::balance_key(&fleet.prefix, &token_id), Some(&batch.seen), &written);
            match host::dispatch(&fleet.endpoint, &request) {
                Ok(call) => {
                    self.busy.insert(token_id);
                    self.in_flight.insert(call, (token_id, batch));
                }
                Err(()) => failures.extend(self.again(token_id, batch, None, Some("could not dispatch"))),
            }
        }
        failures
    }

    /// etcd answered a batch: written, or to be written again over the ledger as it is now. Returns
    /// what went wrong, for the log and the store-error count.
    pub fn answered(
        &mut self,
        call: u32,
        answer: Result<Swapped<Option<SeenLedger>>, NodeError>,
        ledgers: &Ledgers,
    ) -> Vec<String> {
        let Some((token_id, batch)) = self.in_flight.remove(&call) else { return Vec::new() };
        self.busy.remove(&token_id);
        match answer {
            Ok(Swapped::Written { revision }) => {
                let ledger = apply(batch.seen.ledger, &batch.charges);
                ledgers.remember(token_id, SeenLedger { ledger, mod_revision: revision });
                Vec::new()
            }
            Ok(Swapped::Changed(Some(now))) => {
                ledgers.remember(token_id, now.clone());
                self.again(token_id, batch, Some(now), None).into_iter().collect()
            }
            Ok(Swapped::Changed(None)) => {
                vec!["a metered balance vanished from the fleet store before its charge".into()]
            }
            Err(error) => self.again(token_id, batch, None, Some(&error.to_string())).into_iter().collect(),
        }
    }

    /// Puts a batch back to wait (over `now`, if etcd told what is there), unless it has been tried
    /// too often; returns the failure to report (`why`, or the batch given up).
    fn again(
        &mut self,
        token_id: [u8; 32],
        mut batch: Batch,
        now: Option<SeenLedger>,
        why: Option<&str>,
    ) -> Option<String> {
        batch.attempt = batch.attempt.saturating_add(1);
        if batch.attempt >= ATTEMPTS {
            let why = why.unwrap_or("its compare-and-swap kept losing");
            return Some(format!("a metered charge was given up ({why}); its reservations stay charged"));
        }
        if let Some(now) = now {
            batch.seen = now;
        }
        // Charges handed over meanwhile come after the batch's own.
        let batch = match self.waiting.remove(&token_id) {
            Some(waiting) => batch.then(waiting),
            None => batch,
        };
        self.waiting.insert(token_id, batch);
        why.map(str::to_owned)
    }
}

impl Batch {
    /// This batch's charges and then `later`'s, over the newer ledger seen of the two.
    fn then(mut self, later: Batch) -> Batch {
        self.charges.extend(later.charges);
        if newer(&later.seen, &self.seen) {
            self.seen = later.seen;
        }
        self.attempt = self.attempt.max(later.attempt);
        self
    }
}

/// Charges applied in order, each capped by what the balance holds then.
fn apply(ledger: Ledger, charges: &[Charge]) -> Ledger {
    charges.iter().fold(ledger, |ledger, charge| ledger.settle(charge.reserved, charge.cost).0)
}

/// Whether `a` was written after `b` (revisions are numbers; a malformed one is never newer).
fn newer(a: &SeenLedger, b: &SeenLedger) -> bool {
    match (a.mod_revision.parse::<u64>(), b.mod_revision.parse::<u64>()) {
        (Ok(a), Ok(b)) => a > b,
        (Ok(_), Err(_)) => true,
        _ => false,
    }
}
