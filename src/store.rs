//! Counters and rate limits kept in the host's shared key-value store (proxy-wasm shared data),
//! which every worker of one gateway sees. Updates are compare-and-swap loops, so concurrent
//! workers never lose a count.

use crate::meter::Ledger;
use core::fmt;

/// The host's shared data: values with a version for compare-and-swap.
pub trait SharedStore {
    fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), StoreError>;
    /// Writes only if the value is still at version `cas` (`None`: unconditionally).
    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError>;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreError {
    /// Someone else wrote first; read again.
    CasMismatch,
    /// The host refused the operation.
    Unavailable,
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::CasMismatch => write!(f, "concurrent update"),
            StoreError::Unavailable => write!(f, "shared store unavailable"),
        }
    }
}

/// How often a compare-and-swap is retried before giving up.
const CAS_ATTEMPTS: usize = 16;

fn read_u64s<const N: usize>(bytes: &[u8]) -> [u64; N] {
    let mut out = [0u64; N];
    for (slot, chunk) in out.iter_mut().zip(bytes.chunks_exact(8)) {
        if let Ok(array) = <[u8; 8]>::try_from(chunk) {
            *slot = u64::from_le_bytes(array);
        }
    }
    out
}

fn write_u64s<const N: usize>(values: [u64; N]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Applies `update` to the numbers stored at `key` (`None` if nothing is stored yet) atomically;
/// `update` returns the new numbers (or `None` to leave them) and a verdict, which is returned once
/// the write, if any, succeeded.
fn update<const N: usize, T>(
    store: &dyn SharedStore,
    key: &str,
    update: impl Fn(Option<[u64; N]>) -> (Option<[u64; N]>, T),
) -> Result<T, StoreError> {
    for _ in 0..CAS_ATTEMPTS {
        let (bytes, cas) = store.get(key)?;
        let (new, verdict) = update(bytes.as_deref().map(read_u64s));
        let Some(new) = new else { return Ok(verdict) };
        match store.set(key, &write_u64s(new), cas) {
            Ok(()) => return Ok(verdict),
            Err(StoreError::CasMismatch) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(StoreError::CasMismatch)
}

/// How a credential draws on its purchase's use count: an L402 token one use at a time; a
/// Payment-scheme charge all of it at once, and only if none was used (it is single-use, and spends
/// the L402 token bought with the same invoice). One rule for the shared data and the fleet's etcd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Draw {
    One,
    All,
}

impl Draw {
    /// The count after the draw against `limit`, from the count before it; `None` when it may not
    /// be made.
    pub fn next(self, used: u64, limit: u64) -> Option<u64> {
        match self {
            Draw::One => (used < limit).then(|| used.saturating_add(1)),
            Draw::All => (used == 0).then_some(limit.max(1)),
        }
    }
}

/// Draws on the count at `key` against `limit`; `Ok(false)` when the draw may not be made.
pub fn draw(store: &dyn SharedStore, key: &str, draw: Draw, limit: u64) -> Result<bool, StoreError> {
    update::<1, bool>(store, key, |stored| {
        let [used] = stored.unwrap_or_default();
        match draw.next(used, limit) {
            Some(next) => (Some([next]), true),
            None => (None, false),
        }
    })
}

/// Counts one use against `limit`; `Ok(false)` when the limit was already reached.
pub fn take_one(store: &dyn SharedStore, key: &str, limit: u64) -> Result<bool, StoreError> {
    draw(store, key, Draw::One, limit)
}

/// Creates a use counter at zero before its first use. The proxy-wasm ABI has no create-if-absent:
/// two workers creating a counter at the same instant could both count a first use. Created when
/// the challenge is issued, the counter is only ever compare-and-swapped on redemption.
pub fn create_counter(store: &dyn SharedStore, key: &str) -> Result<(), StoreError> {
    store.set(key, &write_u64s([0]), None)
}

/// Creates a token's balance before its first use, as [`create_counter`] does for use counts.
pub fn create_ledger(store: &dyn SharedStore, key: &str, ledger: Ledger) -> Result<(), StoreError> {
    store.set(key, &write_u64s([ledger.total_msat, ledger.spent_msat]), None)
}

/// Holds `amount` from the balance at `key` (created as `fresh` if absent): the ledger after it,
/// or `Err` with the ledger as it is when the balance cannot cover it.
pub fn reserve(
    store: &dyn SharedStore,
    key: &str,
    fresh: Ledger,
    amount: u64,
) -> Result<Result<Ledger, Ledger>, StoreError> {
    update::<2, Result<Ledger, Ledger>>(store, key, |stored| {
        let ledger = stored.map_or(fresh, |[total_msat, spent_msat]| Ledger { total_msat, spent_msat });
        match ledger.reserve(amount) {
            Some(held) => (Some([held.total_msat, held.spent_msat]), Ok(held)),
            None => (None, Err(ledger)),
        }
    })
}

/// Charges `cost` against a reservation of `reserved` at `key` (see [`Ledger::settle`]): the ledger
/// after it and what was charged.
pub fn settle(store: &dyn SharedStore, key: &str, reserved: u64, cost: u64) -> Result<(Ledger, u64), StoreError> {
    update::<2, (Ledger, u64)>(store, key, |stored| {
        let [total_msat, spent_msat] = stored.unwrap_or_default();
        let (after, charged) = Ledger { total_msat, spent_msat }.settle(reserved, cost);
        (Some([after.total_msat, after.spent_msat]), (after, charged))
    })
}

/// A token bucket of `burst` tokens refilled at `per_minute`; takes one token or tells how many
/// seconds until one is available.
pub fn take_token(
    store: &dyn SharedStore,
    key: &str,
    now_ms: u64,
    burst: u64,
    per_minute: u64,
) -> Result<Result<(), u64>, StoreError> {
    // Stored: milli-tokens available and the time they were counted.
    let capacity = burst.saturating_mul(1000);
    update::<2, Result<(), u64>>(store, key, |stored| {
        let available = match stored {
            None => capacity,
            Some([tokens, at]) => {
                let refill = now_ms.saturating_sub(at).saturating_mul(per_minute) / 60;
                tokens.saturating_add(refill).min(capacity)
            }
        };
        if available >= 1000 {
            (Some([available.saturating_sub(1000), now_ms]), Ok(()))
        } else {
            let missing_ms =
                1000u64.saturating_sub(available).saturating_mul(60).checked_div(per_minute).unwrap_or(u64::MAX);
            (None, Err(missing_ms.div_ceil(1000).max(1)))
        }
    })
}

/// Marks `key` as set; reads as true ever after.
pub fn set_flag(store: &dyn SharedStore, key: &str) -> Result<(), StoreError> {
    store.set(key, &[1], None)
}

pub fn flag(store: &dyn SharedStore, key: &str) -> Result<bool, StoreError> {
    Ok(store.get(key)?.0.is_some_and(|v| v.first() == Some(&1)))
}

/// The client's network, the unit of freebies and rate limits: the address with its host bits
/// cleared (IPv4 /`v4_prefix`, IPv6 /`v6_prefix`), as text. `None` if the address is unreadable.
pub fn client_network(address: &str, v4_prefix: u8, v6_prefix: u8) -> Option<String> {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
    let ip = address.parse::<SocketAddr>().map(|s| s.ip()).or_else(|_| address.parse::<IpAddr>()).ok()?;
    Some(match ip {
        IpAddr::V4(v4) => {
            let mask = u32::MAX.checked_shl(32u32.saturating_sub(u32::from(v4_prefix.min(32)))).unwrap_or(0);
            format!("{}/{}", Ipv4Addr::from(u32::from(v4) & mask), v4_prefix.min(32))
        }
        IpAddr::V6(v6) => {
            let mask = u128::MAX.checked_shl(128u32.saturating_sub(u32::from(v6_prefix.min(128)))).unwrap_or(0);
            format!("{}/{}", Ipv6Addr::from(u128::from(v6) & mask), v6_prefix.min(128))
        }
    })
}

#[cfg(test)]
pub mod memory {
    //! An in-memory [`SharedStore`] with the host's compare-and-swap semantics, for unit tests.
    use super::*;
    use std::cell::RefCell;
    use std::collections::HashMap;

    #[derive(Default)]
    pub struct MemoryStore {
        pub entries: RefCell<HashMap<String, (Vec<u8>, u32)>>,
        /// Makes the next `n` writes fail as if another worker had written first.
        pub conflicts: RefCell<usize>,
    }

    impl SharedStore for MemoryStore {
        fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), StoreError> {
            Ok(match self.entries.borrow().get(key) {
                Some((v, cas)) => (Some(v.clone()), Some(*cas)),
                None => (None, None),
            })
        }

        fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
            let mut conflicts = self.conflicts.borrow_mut();
            if *conflicts > 0 {
                *conflicts -= 1;
                return Err(StoreError::CasMismatch);
            }
            let mut entries = self.entries.borrow_mut();
            let current = entries.get(key).map(|(_, c)| *c);
            if cas.is_some() && cas != current {
                return Err(StoreError::CasMismatch);
            }
            entries.insert(key.to_owned(), (value.to_vec(), current.unwrap_or(0) + 1));
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::memory::MemoryStore;
    use super::*;

    #[test]
    fn counts_up_to_the_limit_through_conflicts() {
        let store = MemoryStore::default();
        *store.conflicts.borrow_mut() = 3;
        assert_eq!(take_one(&store, "k", 2), Ok(true));
        assert_eq!(take_one(&store, "k", 2), Ok(true));
        assert_eq!(take_one(&store, "k", 2), Ok(false));
        assert_eq!(take_one(&store, "other", 1), Ok(true));
        *store.conflicts.borrow_mut() = CAS_ATTEMPTS;
        assert_eq!(take_one(&store, "new", 1), Err(StoreError::CasMismatch));
    }

    #[test]
    fn a_charge_takes_a_purchase_whole_and_only_unused() {
        let store = MemoryStore::default();
        assert_eq!(draw(&store, "fresh", Draw::All, 3), Ok(true));
        assert_eq!(take_one(&store, "fresh", 3), Ok(false), "the token of the same purchase is spent");
        assert_eq!(draw(&store, "fresh", Draw::All, 3), Ok(false), "a replay");
        assert_eq!(take_one(&store, "used", 3), Ok(true));
        assert_eq!(draw(&store, "used", Draw::All, 3), Ok(false), "the token was used first");
    }

    #[test]
    fn a_counter_created_ahead_admits_one_of_two_racing_first_uses() {
        let store = MemoryStore::default();
        create_counter(&store, "c").unwrap();
        // Both workers read the created counter, then both write: the second write loses its CAS.
        let (_, seen) = store.get("c").unwrap();
        assert!(seen.is_some());
        assert_eq!(store.set("c", &write_u64s([1]), seen), Ok(()));
        assert_eq!(store.set("c", &write_u64s([1]), seen), Err(StoreError::CasMismatch));
        assert_eq!(take_one(&store, "c", 1), Ok(false));
    }

    #[test]
    fn balances_hold_reservations_and_settle_through_conflicts() {
        let store = MemoryStore::default();
        create_ledger(&store, "b", Ledger::fresh(50)).unwrap();
        *store.conflicts.borrow_mut() = 2;
        let held = reserve(&store, "b", Ledger::fresh(999), 20).unwrap().unwrap();
        assert_eq!(held.balance_msat(), 30, "the created ledger counts, not the fallback");
        assert_eq!(reserve(&store, "b", Ledger::fresh(999), 20).unwrap().unwrap().balance_msat(), 10);
        assert_eq!(reserve(&store, "b", Ledger::fresh(999), 20), Ok(Err(Ledger { total_msat: 50, spent_msat: 40 })));
        assert_eq!(settle(&store, "b", 20, 5), Ok((Ledger { total_msat: 50, spent_msat: 25 }, 5)));
        assert_eq!(
            settle(&store, "b", 20, 80),
            Ok((Ledger { total_msat: 50, spent_msat: 50 }, 45)),
            "capped at the balance"
        );
        assert_eq!(reserve(&store, "absent", Ledger::fresh(30), 20).unwrap().unwrap().balance_msat(), 10);
    }

    #[test]
    fn token_bucket_allows_a_burst_then_refills() {
        let store = MemoryStore::default();
        for _ in 0..3 {
            assert_eq!(take_token(&store, "b", 1_000, 3, 60), Ok(Ok(())));
        }
        assert_eq!(take_token(&store, "b", 1_000, 3, 60), Ok(Err(1)), "one token a second");
        assert_eq!(take_token(&store, "b", 1_500, 3, 60), Ok(Err(1)));
        assert_eq!(take_token(&store, "b", 2_000, 3, 60), Ok(Ok(())));
        assert_eq!(take_token(&store, "slow", 0, 1, 1), Ok(Ok(())));
        assert_eq!(take_token(&store, "slow", 0, 1, 1), Ok(Err(60)));
    }

    #[test]
    fn flags_stick() {
        let store = MemoryStore::default();
        assert_eq!(flag(&store, "f"), Ok(false));
        set_flag(&store, "f").unwrap();
        assert_eq!(flag(&store, "f"), Ok(true));
    }

    #[test]
    fn networks_mask_host_bits() {
        assert_eq!(client_network("203.0.113.77:51000", 24, 48).as_deref(), Some("203.0.113.0/24"));
        assert_eq!(client_network("[2001:db8:1:2:3::9]:443", 24, 48).as_deref(), Some("2001:db8:1::/48"));
        assert_eq!(client_network("10.1.2.3", 16, 48).as_deref(), Some("10.1.0.0/16"));
        assert_eq!(client_network("10.1.2.3", 0, 48).as_deref(), Some("0.0.0.0/0"));
        assert_eq!(client_network("not an address", 24, 48), None);
    }
}
