//! l402-wasm: an L402 paywall for Envoy and Kong as a proxy-wasm filter.
//!
//! `l402` is the protocol; `lightning`, `pricing` and `fleet` the services the filter calls, as
//! plain data; `config`, `policy` and `gate` the decision; `store` the counters kept in the proxy's
//! shared data; `meter` the balances of metered routes; `response` and `metrics` what the filter answers and counts;
//! `json` the JSON it reads and writes. All of them are pure
//! and tested natively. `filter` is the only module that talks to the proxy-wasm host.

// A panic kills the VM for every request on its worker: nothing in the library may panic on
// request data, node answers or configuration. Tests may unwrap.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing,
        clippy::arithmetic_side_effects,
        clippy::unreachable,
        clippy::todo
    )
)]

pub mod browser;
pub mod callout;
pub mod config;
pub mod discovery;
#[cfg(target_arch = "wasm32")]
mod filter;
pub mod fleet;
pub mod gate;
pub mod json;
pub mod l402;
pub mod lightning;
pub mod meter;
pub mod metrics;
pub mod outcome;
pub mod payment;
pub mod policy;
pub mod pricing;
pub mod response;
pub mod store;
#[cfg(test)]
mod testing;
