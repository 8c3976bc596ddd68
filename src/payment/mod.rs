//! The "Payment" HTTP authentication scheme (draft-httpauth-payment) with the Lightning method's
//! charge intent (draft-lightning-charge): a second 402 dialect beside L402, for one invoice.
//! Pure: no I/O, no clock, no host.

pub mod challenge;
pub mod credential;
pub mod jcs;
pub mod receipt;
pub mod wire;

pub use challenge::{charge_request, Binding, IdKeys, Params};
pub use credential::{decode, is_payment_authorization, verify, Charge, PaymentError, Presented, Route};
