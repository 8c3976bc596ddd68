//! Which 402 dialects a route speaks: L402, the Payment scheme (draft-httpauth-payment, Lightning
//! charge), or both, for one invoice.

use super::read::Fields;
use super::ConfigError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schemes {
    pub l402: bool,
    pub payment: bool,
}

impl Default for Schemes {
    fn default() -> Schemes {
        Schemes { l402: true, payment: false }
    }
}

impl Schemes {
    /// `["l402"]`, `["payment"]` or both, each at most once.
    pub(super) fn parse(names: &[String], field: &str) -> Result<Schemes, ConfigError> {
        let mut schemes = Schemes { l402: false, payment: false };
        for (i, name) in names.iter().enumerate() {
            let slot = match name.as_str() {
                "l402" => &mut schemes.l402,
                "payment" => &mut schemes.payment,
                _ => return Err(ConfigError::new(format!("{field}[{i}]"), "must be \"l402\" or \"payment\"")),
            };
            if std::mem::replace(slot, true) {
                return Err(ConfigError::new(format!("{field}[{i}]"), "is listed twice"));
            }
        }
        if !schemes.l402 && !schemes.payment {
            return Err(ConfigError::new(field, "name at least one of \"l402\" and \"payment\""));
        }
        Ok(schemes)
    }
}

/// The Payment scheme's settings.
pub(super) struct RawPayment {
    realm: Option<String>,
}

impl RawPayment {
    pub(super) fn read(mut f: Fields) -> Result<RawPayment, ConfigError> {
        let raw = RawPayment { realm: f.opt_string("realm")? };
        f.done()?;
        Ok(raw)
    }

    /// The realm, if set: text a quoted-string carries and the challenge id's `|`-joined input
    /// cannot misread.
    pub(super) fn realm(self) -> Result<Option<String>, ConfigError> {
        match self.realm {
            Some(realm)
                if realm.is_empty()
                    || realm.len() > 255
                    || !realm.bytes().all(|b| (0x20..0x7f).contains(&b) && !matches!(b, b'|' | b'"' | b'\\')) =>
            {
                Err(ConfigError::new(
                    "payment.realm",
                    "must be 1-255 printable ASCII characters other than |, \" and \\",
                ))
            }
            realm => Ok(realm),
        }
    }
}
