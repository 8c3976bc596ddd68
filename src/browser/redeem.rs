//! The redemption endpoint: once the page has the preimage, its script POSTs the challenge's
//! credential (`Authorization: L402 <macaroon>:<preimage>`, as a paid request carries it) to the
//! resource's own URL with the reserved query parameter; the filter answers 303 back to the resource
//! with the cookie, and the page reloads.
//!
//! The same URL keeps the redemption on the route that sold the resource (its rule, host and
//! gateway route) with nothing configured beside it. The credential travels in a header, never in
//! a URL a log would keep, nor in a body (a proxy-wasm filter sees a body only after the request's
//! headers went upstream). And no other site can post it: a cross-origin `Authorization` header
//! needs a CORS preflight the route never grants.

use std::borrow::Cow;

/// The reserved query parameter: only a POST on a route whose GET offers the cookie reads it.
pub const PARAMETER: &str = "l402-redeem";

/// The resource's request target if `target` carries the reserved parameter (bare or with a value):
/// the target without it.
pub fn resource(target: &str) -> Option<String> {
    let (path, query) = target.split_once('?')?;
    let (mut reserved, mut resource) = (false, path.to_owned());
    for field in query.split('&').filter(|f| !f.is_empty()) {
        if field.split_once('=').map_or(field, |(name, _)| name) == PARAMETER {
            reserved = true;
        } else {
            resource.push(if resource.len() == path.len() { '?' } else { '&' });
            resource.push_str(field);
        }
    }
    reserved.then_some(resource)
}

/// Where the page posts the credential for the resource at `target`: its URL with the parameter.
pub fn action(target: &str) -> String {
    let separator = if target.contains('?') { '&' } else { '?' };
    format!("{}{separator}{PARAMETER}", same_origin(target))
}

/// `target` as a reference a browser resolves on this origin: a path starting with `//` (or `/\`,
/// which browsers read alike) would name another host, so it gets a `/.` the browser removes.
pub fn same_origin(target: &str) -> Cow<'_, str> {
    if target.starts_with("//") || target.starts_with("/\\") {
        Cow::Owned(format!("/.{target}"))
    } else {
        Cow::Borrowed(target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserved_parameter_marks_a_redemption() {
        assert_eq!(resource("/v1/forecast?l402-redeem").as_deref(), Some("/v1/forecast"));
        assert_eq!(resource("/v1/forecast?city=paris&l402-redeem").as_deref(), Some("/v1/forecast?city=paris"));
        assert_eq!(resource("/v1/f?l402-redeem=1&city=paris&&x").as_deref(), Some("/v1/f?city=paris&x"));
        assert_eq!(resource("/v1/forecast"), None);
        assert_eq!(resource("/v1/forecast?l402-redeemed"), None);
        assert_eq!(resource("/v1/forecast?x=l402-redeem"), None);
        assert_eq!(resource("/v1/l402-redeem"), None);
    }

    #[test]
    fn actions_and_locations_stay_on_this_origin() {
        assert_eq!(action("/v1/forecast"), "/v1/forecast?l402-redeem");
        assert_eq!(action("/v1/forecast?city=paris"), "/v1/forecast?city=paris&l402-redeem");
        assert_eq!(action("//evil.example/x"), "/.//evil.example/x?l402-redeem");
        assert_eq!(same_origin("/\\evil.example"), "/./\\evil.example");
        assert_eq!(same_origin("/v1/x"), "/v1/x");
        // Every redemption resolves back to its resource.
        for target in ["/v1/forecast", "/v1/f?a=1&b=2", "//evil.example/x"] {
            assert_eq!(resource(&action(target)).as_deref(), Some(&*same_origin(target)));
        }
    }
}
