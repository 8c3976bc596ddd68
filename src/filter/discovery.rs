//! The discovery manifest, answered by the filter itself: no route, no upstream, no node.

use super::http::{header, Http};
use crate::discovery::Manifest;
use crate::outcome::{Outcome, Record};
use proxy_wasm::types::Action;

impl Http {
    pub(super) fn serve_manifest(&mut self, manifest: &Manifest, method: &str) -> Action {
        let response = if Manifest::allows(method) {
            manifest.answer(header("if-none-match").as_deref())
        } else {
            Manifest::method_not_allowed()
        };
        self.decided(&Record::new(Outcome::Discovery));
        self.respond(&response);
        Action::Pause
    }
}
