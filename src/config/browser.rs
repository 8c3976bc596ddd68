//! A route's `browser` settings: an HTML 402 page for clients that prefer one, and optionally the
//! redemption of a paid invoice into a cookie, so a person in a browser never handles a macaroon.

use super::read::Fields;
use super::{ConfigError, PathMatch, Schemes};

pub(super) struct RawBrowser {
    cookie: bool,
    cookie_secure: Option<bool>,
}

/// What a route offers a browser. Its presence alone turns the page on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Browser {
    /// Redeem a payment into a cookie credential on this route.
    pub cookie: Option<Cookie>,
}

/// The cookie that carries a redeemed L402 credential (`<macaroon>:<preimage>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cookie {
    /// `l402-<service>`: one per service, so the cookies of services on nested paths never shadow
    /// each other.
    pub name: String,
    /// The cookie's `Path`: the part of the route's path the browser can match.
    pub path: String,
    /// `Secure`: off only for plain-HTTP development.
    pub secure: bool,
}

impl RawBrowser {
    pub(super) fn read(mut f: Fields) -> Result<RawBrowser, ConfigError> {
        let raw = RawBrowser { cookie: f.bool_or("cookie", false)?, cookie_secure: f.opt_bool("cookie_secure")? };
        f.done()?;
        Ok(raw)
    }

    pub(super) fn validate(
        self,
        field: &str,
        service: &str,
        path: &PathMatch,
        schemes: Schemes,
    ) -> Result<Browser, ConfigError> {
        if !self.cookie {
            if self.cookie_secure.is_some() {
                return Err(ConfigError::new(format!("{field}.cookie_secure"), "needs browser.cookie"));
            }
            return Ok(Browser { cookie: None });
        }
        if !schemes.l402 {
            return Err(ConfigError::new(
                format!("{field}.cookie"),
                "needs the l402 scheme: the cookie carries the L402 token",
            ));
        }
        let semicolon = match path {
            PathMatch::Exact(p) | PathMatch::Prefix(p) => p.contains(';'),
            PathMatch::Glob(glob) => glob.pattern().contains(';'),
            PathMatch::Any => false,
        };
        if semicolon {
            return Err(ConfigError::new(
                format!("{field}.cookie"),
                "the route's path has a ;, which a cookie's Path cannot carry",
            ));
        }
        let path = cookie_path(path);
        let cookie = Cookie { name: format!("l402-{service}"), path, secure: self.cookie_secure.unwrap_or(true) };
        Ok(Browser { cookie: Some(cookie) })
    }
}

/// The widest `Path` a browser sends the cookie under that the route covers as it can: the exact
/// path, the prefix, a glob's segments before its first wildcard, or `/`.
fn cookie_path(path: &PathMatch) -> String {
    match path {
        PathMatch::Exact(p) | PathMatch::Prefix(p) => p.clone(),
        PathMatch::Glob(glob) => glob.literal_prefix(),
        PathMatch::Any => "/".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Access, Config};
    use serde_json::{json, Value};

    fn parse(browser: Value, extra: Value) -> Result<Config, ConfigError> {
        let mut route =
            json!({ "match": { "path_prefix": "/v1/" }, "service": "weather", "price_sat": 10, "browser": browser });
        for (k, v) in extra.as_object().unwrap() {
            route[k] = v.clone();
        }
        let json = crate::testing::config_json(json!([route]));
        Config::parse(json.to_string().as_bytes(), &|_| None)
    }

    fn browser(config: &Config) -> Browser {
        let Access::Paid(service) = &config.routes[0].access else { panic!("paid route expected") };
        *service.browser.clone().unwrap()
    }

    #[test]
    fn cookies_are_named_per_service_and_scoped_to_the_route() {
        let page_only = parse(json!({}), json!({})).unwrap();
        assert_eq!(browser(&page_only), Browser { cookie: None });
        let with_cookie = parse(json!({ "cookie": true }), json!({})).unwrap();
        let expected = Cookie { name: "l402-weather".into(), path: "/v1/".into(), secure: true };
        assert_eq!(browser(&with_cookie).cookie, Some(expected));
        let plain_http = parse(json!({ "cookie": true, "cookie_secure": false }), json!({})).unwrap();
        assert!(!browser(&plain_http).cookie.unwrap().secure);
        for (matcher, path) in [
            (json!({ "path": "/v1/report" }), "/v1/report"),
            (json!({ "path_glob": "/files/*/x/**" }), "/files/"),
            (json!({ "path_glob": "/img/*.png" }), "/img/"),
            (json!({}), "/"),
        ] {
            let config = parse(json!({ "cookie": true }), json!({ "match": matcher })).unwrap();
            assert_eq!(browser(&config).cookie.unwrap().path, path, "{matcher}");
        }
    }

    #[test]
    fn invalid_settings_name_their_field() {
        let field = |browser: Value, extra: Value| parse(browser, extra).err().map(|e| e.field);
        assert_eq!(
            field(json!({ "cookie_secure": false }), json!({})).as_deref(),
            Some("routes[0].browser.cookie_secure")
        );
        assert_eq!(
            field(json!({ "cookie": false, "cookie_secure": true }), json!({})).as_deref(),
            Some("routes[0].browser.cookie_secure")
        );
        assert_eq!(field(json!({ "cookie": "yes" }), json!({})).as_deref(), Some("routes[0].browser.cookie"));
        assert_eq!(field(json!({ "page": true }), json!({})).as_deref(), Some("routes[0].browser.page"));
        assert_eq!(field(json!(true), json!({})).as_deref(), Some("routes[0].browser"));
        assert_eq!(
            field(json!({ "cookie": true }), json!({ "schemes": ["payment"] })).as_deref(),
            Some("routes[0].browser.cookie")
        );
        for matcher in [json!({ "path_prefix": "/a;b/" }), json!({ "path": "/a;b" }), json!({ "path_glob": "/a/*;x" })]
        {
            assert_eq!(
                field(json!({ "cookie": true }), json!({ "match": matcher })).as_deref(),
                Some("routes[0].browser.cookie")
            );
        }
        // The page alone serves any dialect.
        assert!(parse(json!({}), json!({ "schemes": ["payment"] })).is_ok());
    }
}
