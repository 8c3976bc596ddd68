//! What the filter did with one request, as a record for the proxy's access log
//! (`access_log_fields`) and, in dry run, for the header the upstream gets instead of the decision.

use crate::l402::encoding::hex_encode;
use std::fmt::Write;

/// The end of a request in the filter. `as_str()` is stable: it appears in logs and headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Paid,
    Free,
    Freebie,
    /// A 402 without a credential.
    Challenge,
    /// A 402 (or 401) for a credential that does not open the route.
    Refused,
    RateLimited,
    NoRoute,
    AmbiguousPath,
    ReservedHeader,
    /// 503: the node, the pricer, the store or the gateway failed.
    Error,
    /// The discovery manifest, answered by the filter.
    Discovery,
    /// A browser's payment, redeemed into the cookie.
    Redeemed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Paid => "paid",
            Outcome::Free => "free",
            Outcome::Freebie => "freebie",
            Outcome::Challenge => "challenge",
            Outcome::Refused => "refused",
            Outcome::RateLimited => "rate_limited",
            Outcome::NoRoute => "no_route",
            Outcome::AmbiguousPath => "ambiguous_path",
            Outcome::ReservedHeader => "reserved_header",
            Outcome::Error => "error",
            Outcome::Discovery => "discovery",
            Outcome::Redeemed => "redeemed",
        }
    }
}

/// The reason of a challenge without a credential, as its counter names it.
const NO_CREDENTIAL: &str = "no_credential";

/// An outcome and what the filter knew of it. Every value is token text (service names, reason
/// codes, digits, hex), so neither rendering needs quoting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    pub outcome: Outcome,
    pub reason: Option<&'a str>,
    pub service: Option<&'a str>,
    /// The price paid, or asked for.
    pub price_msat: Option<u64>,
    /// The token paid with, or the one a challenge offers.
    pub token_id: Option<&'a [u8; 32]>,
    /// The outcome was not enforced: the request went upstream.
    pub dry_run: bool,
}

impl<'a> Record<'a> {
    pub fn new(outcome: Outcome) -> Record<'a> {
        Record { outcome, reason: None, service: None, price_msat: None, token_id: None, dry_run: false }
    }

    /// A 402: for the refusal's reason, or for no credential at all.
    pub fn challenge(refusal: Option<&'a str>) -> Record<'a> {
        match refusal {
            Some(reason) => Record::new(Outcome::Refused).reason(reason),
            None => Record::new(Outcome::Challenge).reason(NO_CREDENTIAL),
        }
    }

    pub fn reason(self, reason: &'a str) -> Record<'a> {
        Record { reason: Some(reason), ..self }
    }

    pub fn service(self, service: &'a str, price_msat: Option<u64>) -> Record<'a> {
        Record { service: Some(service), price_msat, ..self }
    }

    pub fn token(self, token_id: &'a [u8; 32]) -> Record<'a> {
        Record { token_id: Some(token_id), ..self }
    }

    /// `outcome=paid service=weather price_msat=10000 token_id=…`: logfmt, for access logs.
    pub fn log_fields(&self) -> String {
        let mut out = format!("outcome={}", self.outcome.as_str());
        self.each_field(|name, value| {
            let _ = write!(out, " {name}={value}");
        });
        if self.dry_run {
            out.push_str(" dry_run=true");
        }
        out
    }

    /// `challenge; reason=no_credential; service=weather; price_msat=10000`: the dry-run header.
    pub fn header_value(&self) -> String {
        let mut out = self.outcome.as_str().to_owned();
        self.each_field(|name, value| {
            let _ = write!(out, "; {name}={value}");
        });
        out
    }

    fn each_field(&self, mut field: impl FnMut(&str, &dyn std::fmt::Display)) {
        if let Some(reason) = self.reason {
            field("reason", &reason);
        }
        if let Some(service) = self.service {
            field("service", &service);
        }
        if let Some(price) = self.price_msat {
            field("price_msat", &price);
        }
        if let Some(id) = self.token_id {
            field("token_id", &hex_encode(id));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_render_as_logfmt_and_as_header_parameters() {
        let paid = Record::new(Outcome::Paid).service("weather", Some(10_000)).token(&[0xab; 32]);
        let id = "ab".repeat(32);
        assert_eq!(paid.log_fields(), format!("outcome=paid service=weather price_msat=10000 token_id={id}"));
        assert_eq!(paid.header_value(), format!("paid; service=weather; price_msat=10000; token_id={id}"));
        let refused = Record { dry_run: true, ..Record::new(Outcome::Refused).reason("expired").service("w", None) };
        assert_eq!(refused.log_fields(), "outcome=refused reason=expired service=w dry_run=true");
        assert_eq!(refused.header_value(), "refused; reason=expired; service=w");
        assert_eq!(Record::new(Outcome::NoRoute).header_value(), "no_route");
    }
}
