//! Metered routes: a token buys a bundle (its balance, in msat), each request reserves an amount
//! before it goes upstream, and the upstream's reported cost is charged after it answered. Pure: the
//! ledger's arithmetic and the rules for what a response is charged.

/// A metered route's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metered {
    /// Held from the balance before the request goes upstream.
    pub reserve_msat: u64,
    /// The most one request is charged, whatever the upstream reports.
    pub max_cost_msat: u64,
    /// The response header, or trailer, in which the upstream reports the cost (lower case).
    pub cost_header: String,
}

/// A token's balance: what it was bought with (plus credits) and what is spent or held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Ledger {
    pub total_msat: u64,
    pub spent_msat: u64,
}

impl Ledger {
    pub fn fresh(total_msat: u64) -> Ledger {
        Ledger { total_msat, spent_msat: 0 }
    }

    pub fn balance_msat(self) -> u64 {
        self.total_msat.saturating_sub(self.spent_msat)
    }

    /// The ledger with `amount` held, or `None` when the balance cannot cover it.
    pub fn reserve(self, amount: u64) -> Option<Ledger> {
        (self.balance_msat() >= amount).then(|| Ledger { spent_msat: self.spent_msat.saturating_add(amount), ..self })
    }

    /// Turns a reservation of `reserved` into a charge of `cost`: the rest is released, and a cost
    /// above the reservation takes only what the balance still holds, so it never goes below zero.
    /// Returns the ledger and what was charged.
    pub fn settle(self, reserved: u64, cost: u64) -> (Ledger, u64) {
        let charged = cost.min(reserved.saturating_add(self.balance_msat()));
        let spent = self.spent_msat.saturating_sub(reserved).saturating_add(charged);
        (Ledger { spent_msat: spent, ..self }, charged)
    }

    /// Adds `amount` to what the balance was bought with (an operator's credit or refund).
    pub fn credit(self, amount: u64) -> Ledger {
        Ledger { total_msat: self.total_msat.saturating_add(amount), ..self }
    }
}

/// What the upstream said of a request's cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reported {
    /// A cost in msat.
    Cost(u64),
    /// A value that is not a cost.
    Malformed,
    /// Nothing.
    Missing,
}

impl Reported {
    /// Reads the cost header's value: ASCII digits only (surrounding whitespace allowed).
    pub fn read(value: Option<&str>) -> Reported {
        let Some(value) = value.map(str::trim) else { return Reported::Missing };
        let digits = !value.is_empty() && value.len() <= 20 && value.bytes().all(|b| b.is_ascii_digit());
        match value.parse() {
            Ok(cost) if digits => Reported::Cost(cost),
            _ => Reported::Malformed,
        }
    }
}

/// How the upstream's answer ended, as far as the charge is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Response headers with this status came (the stream may have ended early after them).
    Status(u32),
    /// No response came at all (reset before headers).
    None,
}

impl Metered {
    /// What a request is charged before the ledger's own cap: a reported cost, capped; otherwise the
    /// reservation, except after a server error or no answer, which cost the client nothing. A
    /// stream the client abandons after the headers is charged the reservation: it read the answer.
    pub fn charge(&self, reserved: u64, reported: Reported, answer: Answer) -> u64 {
        match (reported, answer) {
            (Reported::Cost(cost), _) => cost.min(self.max_cost_msat),
            (Reported::Malformed, _) => reserved,
            (Reported::Missing, Answer::Status(500..) | Answer::None) => 0,
            (Reported::Missing, Answer::Status(_)) => reserved,
        }
    }
}

/// gRPC status codes that are the server's failure, not the request's: UNKNOWN, UNIMPLEMENTED,
/// INTERNAL, UNAVAILABLE and DATA_LOSS (the codes gRPC maps HTTP 5xx to, and its own server errors).
pub fn is_grpc_server_error(code: u32) -> bool {
    matches!(code, 2 | 12 | 13 | 14 | 15)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn terms() -> Metered {
        Metered { reserve_msat: 20, max_cost_msat: 50, cost_header: "x-l402-cost-msat".into() }
    }

    #[test]
    fn reservations_never_exceed_the_balance() {
        let ledger = Ledger::fresh(50);
        let one = ledger.reserve(20).unwrap();
        let two = one.reserve(20).unwrap();
        assert_eq!(two.balance_msat(), 10);
        assert_eq!(two.reserve(20), None);
        assert_eq!(Ledger::fresh(20).reserve(20).map(Ledger::balance_msat), Some(0));
    }

    #[test]
    fn settlement_releases_the_rest_and_caps_at_the_balance() {
        let held = Ledger::fresh(100).reserve(20).unwrap();
        assert_eq!(held.settle(20, 7), (Ledger { total_msat: 100, spent_msat: 7 }, 7));
        assert_eq!(held.settle(20, 0).0.balance_msat(), 100);
        assert_eq!(held.settle(20, 60), (Ledger { total_msat: 100, spent_msat: 60 }, 60));
        assert_eq!(held.settle(20, 500), (Ledger { total_msat: 100, spent_msat: 100 }, 100), "never below zero");
        let credited = held.settle(20, 100).0.credit(30);
        assert_eq!(credited.balance_msat(), 30);
    }

    #[test]
    fn costs_are_plain_digits() {
        assert_eq!(Reported::read(Some("1200")), Reported::Cost(1200));
        assert_eq!(Reported::read(Some(" 7 ")), Reported::Cost(7));
        for bad in ["", "-5", "+5", "1e3", "12.5", "0x10", "99999999999999999999999", "1 2"] {
            assert_eq!(Reported::read(Some(bad)), Reported::Malformed, "{bad:?}");
        }
        assert_eq!(Reported::read(None), Reported::Missing);
    }

    #[test]
    fn what_a_response_is_charged() {
        let t = terms();
        assert_eq!(t.charge(20, Reported::Cost(9), Answer::Status(200)), 9);
        assert_eq!(t.charge(20, Reported::Cost(90), Answer::Status(200)), 50, "capped");
        assert_eq!(t.charge(20, Reported::Cost(9), Answer::Status(503)), 9, "a reported cost stands");
        assert_eq!(t.charge(20, Reported::Malformed, Answer::Status(200)), 20);
        assert_eq!(t.charge(20, Reported::Missing, Answer::Status(200)), 20);
        assert_eq!(t.charge(20, Reported::Missing, Answer::Status(502)), 0);
        assert_eq!(t.charge(20, Reported::Missing, Answer::None), 0);
    }

    #[test]
    fn grpc_server_errors_are_the_servers() {
        assert!([2, 12, 13, 14, 15].into_iter().all(is_grpc_server_error));
        assert!(![0, 1, 3, 4, 5, 7, 8, 16].into_iter().any(is_grpc_server_error), "the request's own failures");
    }
}
