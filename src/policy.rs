//! Which route rule a request falls under: the first rule whose path and method match.

use crate::config::{Config, Route};

/// The path without its query string or fragment.
pub fn path_only(path: &str) -> &str {
    path.split(['?', '#']).next().unwrap_or(path)
}

/// `path` is without its query string ([`path_only`]).
pub fn select<'c>(config: &'c Config, method: &str, path: &str, authority: &str) -> Option<&'c Route> {
    config.routes.iter().find(|route| route.matches(method, path, authority))
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
        let service =
            |method, path| match select(&config, method, path_only(path), "api.example.com").map(|r| &r.access) {
                Some(Access::Paid(s)) => s.name.clone(),
                Some(Access::Free) => "free".into(),
                None => "none".into(),
            };
        assert_eq!(service("GET", "/v1/free"), "free");
        assert_eq!(service("GET", "/v1/free?x=1"), "free");
        assert_eq!(service("GET", "/v1/free/more"), "read");
        assert_eq!(service("get", "/v1/a"), "read");
        assert_eq!(service("POST", "/v1/a"), "write");
        assert_eq!(service("GET", "/v2/a"), "none");
        assert_eq!(service("GET", "/v1"), "none", "a prefix matches byte for byte");
    }
}
