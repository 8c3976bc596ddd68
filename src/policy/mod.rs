//! Which route rule a request falls under: the first rule whose path and method match, the same
//! rule for every reading an upstream may make of the path ([`path`]).

pub mod path;

use crate::config::{Config, EncodedSlashes, Route};
use path::{Ambiguity, Readings};

/// The path without its query string or fragment.
pub fn path_only(path: &str) -> &str {
    path.split(['?', '#']).next().unwrap_or(path)
}

/// The first rule matching the canonical reading, if every other reading selects it too.
pub fn select<'c>(
    config: &'c Config,
    method: &str,
    readings: &Readings<'_>,
    authority: &str,
) -> Result<Option<&'c Route>, Ambiguity> {
    let rule = |path: &str| config.routes.iter().position(|route| route.matches(method, path, authority));
    let chosen = rule(readings.canonical());
    if readings.all().skip(1).any(|path| rule(path) != chosen) {
        return Err(Ambiguity::DifferentRules);
    }
    Ok(chosen.and_then(|index| config.routes.get(index)))
}

/// The request target (path and query) with its path in canonical form, or `None` when it is that
/// already or is refused.
pub fn canonical_target(target: &str, slashes: EncodedSlashes) -> Option<String> {
    let path = path_only(target);
    match path::readings(path, slashes).ok()?.into_canonical() {
        std::borrow::Cow::Borrowed(_) => None,
        std::borrow::Cow::Owned(canonical) => Some(canonical + target.get(path.len()..).unwrap_or_default()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Access;
    use crate::testing::config_with_routes;
    use serde_json::json;

    #[test]
    fn first_matching_rule_wins() {
        let config = config_with_routes(json!([
            { "match": { "path": "/v1/free" }, "free": true },
            { "match": { "path_prefix": "/v1/", "methods": ["GET"] }, "service": "read", "price_sat": 1 },
            { "match": { "path_prefix": "/v1/" }, "service": "write", "price_sat": 5 }
        ]));
        let service = |method, path| {
            let readings = path::readings(path_only(path), EncodedSlashes::Reject).unwrap();
            match select(&config, method, &readings, "api.example.com").unwrap().map(|r| &r.access) {
                Some(Access::Paid(s)) => s.name.clone(),
                Some(Access::Free) => "free".into(),
                None => "none".into(),
            }
        };
        assert_eq!(service("GET", "/v1/free"), "free");
        assert_eq!(service("GET", "/v1/free?x=1"), "free");
        assert_eq!(service("GET", "/v1/free/more"), "read");
        assert_eq!(service("get", "/v1/a"), "read");
        assert_eq!(service("POST", "/v1/a"), "write");
        assert_eq!(service("GET", "/v2/a"), "none");
        assert_eq!(service("GET", "/v1"), "none", "a prefix matches byte for byte");
    }

    #[test]
    fn every_reading_must_select_the_same_rule() {
        let config = config_with_routes(json!([
            { "match": { "path_prefix": "/health" }, "free": true },
            { "match": { "path_prefix": "/v1/" }, "service": "weather", "price_sat": 10 }
        ]));
        let rule = |path: &str| {
            let readings = path::readings(path, EncodedSlashes::Allow)?;
            let route = select(&config, "GET", &readings, "")?;
            Ok(route.and_then(|r| config.routes.iter().position(|c| std::ptr::eq(c, r))))
        };
        assert_eq!(rule("/v1/caf%C3%A9"), Ok(Some(1)));
        assert_eq!(rule("/health%2Fdeep"), Ok(Some(0)), "both readings are under /health");
        assert_eq!(rule("/other"), Ok(None));
        assert_eq!(rule("//v1/forecast"), Err(Ambiguity::DifferentRules), "a merging upstream serves /v1/");
        assert_eq!(rule("/%76%31/forecast"), Err(Ambiguity::DifferentRules));
        assert_eq!(rule("/v1;x/forecast"), Err(Ambiguity::DifferentRules), "Tomcat serves /v1/forecast");
        assert_eq!(rule("/v1%2Fforecast"), Err(Ambiguity::DifferentRules), "as data it is no /v1/ path");
        assert_eq!(rule("/health/..%2Fv1/forecast"), Err(Ambiguity::DotSegment));
    }

    #[test]
    fn canonical_targets_keep_the_query() {
        assert_eq!(canonical_target("/v1//x?a=%2F", EncodedSlashes::Reject), Some("/v1/x?a=%2F".to_owned()));
        assert_eq!(canonical_target("/v1/x?a//b", EncodedSlashes::Reject), None);
        assert_eq!(canonical_target("/v1/%2e%2e/x", EncodedSlashes::Reject), None);
    }
}
