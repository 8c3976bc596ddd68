//! Root keys derived from operator secrets, so that any gateway holding the secret verifies any token
//! without shared state: `root_key = HMAC-SHA256(key = secret, msg = the 66-byte identifier)`.
//! This derivation is a public contract; other services may verify our tokens with it.

use super::macaroon::HmacSha256;
use core::fmt;
use hmac::Mac;

/// Shortest operator secret accepted, in bytes.
pub const MIN_SECRET_BYTES: usize = 32;

/// The operator's secrets: the first mints, every one verifies (rotation keeps old tokens valid
/// until their secret is removed).
///
/// Each secret is kept as an HMAC already keyed with it, so deriving a root key costs only the
/// identifier's blocks.
#[derive(Clone)]
pub struct SecretRing {
    keyed: Vec<HmacSha256>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretError {
    Empty,
    TooShort { index: usize, len: usize },
}

impl fmt::Display for SecretError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretError::Empty => write!(f, "no secret given"),
            SecretError::TooShort { index, len } => {
                write!(f, "secret #{index} has {len} bytes, at least {MIN_SECRET_BYTES} are required")
            }
        }
    }
}

impl SecretRing {
    pub fn new(secrets: Vec<Vec<u8>>) -> Result<SecretRing, SecretError> {
        if secrets.is_empty() {
            return Err(SecretError::Empty);
        }
        if let Some((index, s)) = secrets.iter().enumerate().find(|(_, s)| s.len() < MIN_SECRET_BYTES) {
            return Err(SecretError::TooShort { index, len: s.len() });
        }
        let keyed = secrets.iter().filter_map(|s| HmacSha256::new_from_slice(s).ok()).collect();
        Ok(SecretRing { keyed })
    }

    /// Root key for minting, from the first secret.
    pub fn minting_root_key(&self, identifier: &[u8]) -> [u8; 32] {
        self.keyed.first().map(|k| root_key(k, identifier)).unwrap_or([0; 32])
    }

    /// Root keys to try when verifying, newest secret first.
    pub fn verifying_root_keys<'a>(&'a self, identifier: &'a [u8]) -> impl Iterator<Item = [u8; 32]> + 'a {
        self.keyed.iter().map(move |k| root_key(k, identifier))
    }
}

fn root_key(keyed: &HmacSha256, identifier: &[u8]) -> [u8; 32] {
    let mut mac = keyed.clone();
    mac.update(identifier);
    mac.finalize().into_bytes().into()
}

/// Secrets never reach a log line, even through `{:?}`.
impl fmt::Debug for SecretRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretRing({} secrets)", self.keyed.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::l402::macaroon::hmac;

    #[test]
    fn refuses_short_or_missing_secrets() {
        assert_eq!(SecretRing::new(vec![]).err(), Some(SecretError::Empty));
        let err = SecretRing::new(vec![vec![1; 32], vec![2; 31]]).err();
        assert_eq!(err, Some(SecretError::TooShort { index: 1, len: 31 }));
    }

    #[test]
    fn first_secret_mints_all_verify_and_debug_hides_them() {
        let ring = SecretRing::new(vec![vec![1; 32], vec![2; 40]]).unwrap();
        let id = [5u8; 66];
        let keys: Vec<_> = ring.verifying_root_keys(&id).collect();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0], ring.minting_root_key(&id));
        assert_eq!(keys[0], hmac(&[1; 32], &id));
        assert_ne!(keys[0], keys[1]);
        assert_eq!(format!("{ring:?}"), "SecretRing(2 secrets)");
    }
}
