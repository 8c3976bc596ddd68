//! `access_log_fields`: each request's outcome, published as one property for the proxy's access
//! log. One host call per request, and none when the setting is off.

use super::host::{self, Host};
use super::http::Http;
use crate::outcome::Record;

/// The property's name: Envoy keeps it as filter state `wasm.l402_decision`, nginx (Kong) writes
/// the variable `$l402_decision`, which its configuration must declare.
const PROPERTY: &str = "l402_decision";

impl Http {
    /// Records the request's outcome for the access log, if configured.
    pub(super) fn decided(&self, record: &Record<'_>) {
        if !self.shared.config.access_log_fields {
            return;
        }
        let path: &[&str] = match self.host {
            Host::Envoy => &[PROPERTY],
            Host::Nginx => &["ngx", PROPERTY],
        };
        // An undeclared nginx variable is the operator's choice: nothing to log then.
        host::set_property(path, &record.log_fields());
    }
}
