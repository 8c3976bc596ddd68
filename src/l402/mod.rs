//! The L402 protocol: macaroons, identifiers, caveats, keys, headers. Pure: no I/O, no clock, no host.

pub mod caveats;
pub mod encoding;
pub mod header;
pub mod identifier;
pub mod keys;
pub mod macaroon;
pub mod token;

pub use caveats::Requirement;
pub use header::{challenge, parse_authorization, parse_macaroon_header, parse_macaroon_only, Scheme};
pub use identifier::Identifier;
pub use keys::SecretRing;
pub use macaroon::Macaroon;
pub use token::{authenticate, authenticate_without_preimage, mint, verify, Credential, Grant, Token, VerifyError};
