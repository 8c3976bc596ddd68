//! Route rules: what a request is matched on, and what a matching request must pay for.

use super::browser::RawBrowser;
use super::read::Fields;
use super::{is_header_name, is_token_text, Browser, ConfigError, NodeKind, PricingFallback, Schemes};
use crate::meter::Metered;

/// Most segments in a glob pattern, to keep matching cheap.
const MAX_GLOB_SEGMENTS: usize = 32;

pub(super) struct RawRoute {
    matcher: RawMatch,
    free: bool,
    service: Option<String>,
    price_sat: Option<u64>,
    price_msat: Option<u64>,
    lifetime_s: Option<u64>,
    capabilities: Vec<String>,
    restrict: RawRestrict,
    uses: Option<u64>,
    freebies: Option<Freebies>,
    dynamic_price: bool,
    schemes: Option<Vec<String>>,
    dry_run: Option<bool>,
    public: Option<bool>,
    browser: Option<RawBrowser>,
    metered: Option<RawMetered>,
}

struct RawMetered {
    reserve_msat: u64,
    max_cost_msat: Option<u64>,
    cost_header: Option<String>,
}

/// Requests a client network may make on a route before it is asked to pay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Freebies {
    pub requests: u64,
    pub period_s: u64,
}

struct RawMatch {
    path: Option<String>,
    path_prefix: Option<String>,
    path_glob: Option<String>,
    methods: Option<Vec<String>>,
    host: Option<String>,
}

struct RawRestrict {
    path_prefix: Option<String>,
    methods: Option<Vec<String>>,
}

impl RawRoute {
    pub(super) fn read(mut f: Fields) -> Result<RawRoute, ConfigError> {
        let raw = RawRoute {
            matcher: RawMatch::read(f.object("match")?)?,
            free: f.bool_or("free", false)?,
            service: f.opt_string("service")?,
            price_sat: f.opt_whole("price_sat")?,
            price_msat: f.opt_whole("price_msat")?,
            lifetime_s: f.opt_whole("lifetime_s")?,
            capabilities: f.strings("capabilities")?,
            restrict: RawRestrict::read(f.defaulted_object("restrict")?)?,
            uses: f.opt_whole("uses")?,
            freebies: f.opt_object("freebies")?.map(Freebies::read).transpose()?,
            dynamic_price: f.bool_or("dynamic_price", false)?,
            schemes: f.opt_strings("schemes")?,
            dry_run: f.opt_bool("dry_run")?,
            public: f.opt_bool("public")?,
            browser: f.opt_object("browser")?.map(RawBrowser::read).transpose()?,
            metered: f.opt_object("metered")?.map(RawMetered::read).transpose()?,
        };
        f.done()?;
        Ok(raw)
    }
}

impl RawMetered {
    fn read(mut f: Fields) -> Result<RawMetered, ConfigError> {
        let raw = RawMetered {
            reserve_msat: f.whole("reserve_msat")?,
            max_cost_msat: f.opt_whole("max_cost_msat")?,
            cost_header: f.opt_string("cost_header")?,
        };
        f.done()?;
        Ok(raw)
    }
}

impl Freebies {
    fn read(mut f: Fields) -> Result<Freebies, ConfigError> {
        let freebies = Freebies { requests: f.whole("requests")?, period_s: f.whole("period_s")? };
        f.done()?;
        Ok(freebies)
    }
}

impl RawMatch {
    fn read(mut f: Fields) -> Result<RawMatch, ConfigError> {
        let raw = RawMatch {
            path: f.opt_string("path")?,
            path_prefix: f.opt_string("path_prefix")?,
            path_glob: f.opt_string("path_glob")?,
            methods: f.opt_strings("methods")?,
            host: f.opt_string("host")?,
        };
        f.done()?;
        Ok(raw)
    }
}

impl RawRestrict {
    fn read(mut f: Fields) -> Result<RawRestrict, ConfigError> {
        let raw = RawRestrict { path_prefix: f.opt_string("path_prefix")?, methods: f.opt_strings("methods")? };
        f.done()?;
        Ok(raw)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    Exact(String),
    Prefix(String),
    Glob(Glob),
    Any,
}

/// A path pattern: `*` matches within one segment, a `**` segment matches any number of segments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    segments: Vec<String>,
}

impl Glob {
    fn parse(pattern: &str) -> Option<Glob> {
        let segments: Vec<String> = pattern.split('/').map(str::to_owned).collect();
        let valid = segments.len() <= MAX_GLOB_SEGMENTS
            && segments.iter().all(|s| s == "**" || !s.contains("**"))
            && segments.iter().filter(|s| *s == "**").count() <= 1;
        valid.then_some(Glob { segments })
    }

    /// The pattern as written.
    pub fn pattern(&self) -> String {
        self.segments.join("/")
    }

    /// The path up to the first segment with a wildcard (the whole path without one).
    pub fn literal_prefix(&self) -> String {
        match self.segments.iter().position(|s| s.contains('*')) {
            None => self.segments.join("/"),
            Some(first) => format!("{}/", self.segments.get(..first).unwrap_or_default().join("/")),
        }
    }

    pub fn matches(&self, path: &str) -> bool {
        let path: Vec<&str> = path.split('/').collect();
        match self.segments.iter().position(|s| s == "**") {
            None => path.len() == self.segments.len() && segments_match(&self.segments, &path),
            Some(star) => {
                let (head, tail) = self.segments.split_at(star);
                let tail = tail.get(1..).unwrap_or_default();
                path.len() >= head.len().saturating_add(tail.len())
                    && path.get(..head.len()).is_some_and(|p| segments_match(head, p))
                    && path.get(path.len().saturating_sub(tail.len())..).is_some_and(|p| segments_match(tail, p))
            }
        }
    }
}

fn segments_match(patterns: &[String], segments: &[&str]) -> bool {
    patterns.iter().zip(segments).all(|(p, s)| wildcard_match(p, s))
}

/// `*` matches any run of characters within one segment.
fn wildcard_match(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = text.strip_prefix(first) else { return false };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else { return rest.is_empty() };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = rest.get(at.saturating_add(part.len())..).unwrap_or_default(),
            None => return false,
        }
    }
    rest.ends_with(last)
}

/// A host name or `*.suffix`, matched against `:authority` without its port and one trailing dot
/// (`api.example.com.` is the same name), in any case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatch {
    Exact(String),
    Suffix(String),
}

impl HostMatch {
    pub fn matches(&self, authority: &str) -> bool {
        let host = strip_port(authority);
        let host = host.strip_suffix('.').unwrap_or(host);
        match self {
            HostMatch::Exact(name) => host.eq_ignore_ascii_case(name),
            HostMatch::Suffix(suffix) => {
                host.len() > suffix.len()
                    && host
                        .get(host.len().saturating_sub(suffix.len())..)
                        .is_some_and(|end| end.eq_ignore_ascii_case(suffix))
            }
        }
    }
}

fn strip_port(authority: &str) -> &str {
    if authority.starts_with('[') {
        return authority.split_once(']').map_or(authority, |(host, _)| host.get(1..).unwrap_or_default());
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    }
}

#[derive(Debug, Clone)]
pub struct Route {
    pub path: PathMatch,
    /// Upper-case method names; empty means any method.
    pub methods: Vec<String>,
    pub host: Option<HostMatch>,
    pub access: Access,
}

#[derive(Debug, Clone)]
pub enum Access {
    Free,
    Paid(Service),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub name: String,
    /// The static price; a dynamically priced route may have none (its pricer must answer).
    pub price_msat: Option<u64>,
    /// Ask the pricing endpoint for the price.
    pub dynamic_price: bool,
    pub lifetime_s: Option<u64>,
    pub capabilities: Vec<String>,
    /// Minted as `<service>_path_prefix` and `<service>_methods` caveats, and enforced.
    pub restrict_path_prefix: Option<String>,
    pub restrict_methods: Vec<String>,
    /// How many requests one token is good for; `None`: unlimited within its lifetime.
    pub uses: Option<u64>,
    pub freebies: Option<Freebies>,
    /// The 402 dialects offered, for one invoice.
    pub schemes: Schemes,
    /// Decide but do not enforce: every request passes, with the would-be decision.
    pub dry_run: bool,
    /// Listed in the discovery manifest.
    pub public: bool,
    /// The HTML 402 page (and cookie redemption) for browsers; boxed, as few routes have it.
    pub browser: Option<Box<Browser>>,
    /// Sells a balance drawn down by each request's reported cost.
    pub metered: Option<Box<Metered>>,
}

fn method_names(list: Option<Vec<String>>, field: impl Fn(usize) -> String) -> Result<Vec<String>, ConfigError> {
    let mut out = Vec::new();
    for (i, m) in list.unwrap_or_default().into_iter().enumerate() {
        if m.is_empty() || !m.bytes().all(|b| b.is_ascii_alphabetic()) {
            return Err(ConfigError::new(field(i), "must be an HTTP method name"));
        }
        out.push(m.to_ascii_uppercase());
    }
    Ok(out)
}

fn checked_path(path: String, field: String) -> Result<String, ConfigError> {
    if !path.starts_with('/') || path.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control() || b == b',') {
        return Err(ConfigError::new(field, "must start with / and contain no spaces or commas"));
    }
    Ok(path)
}

fn host_match(host: String, field: String) -> Result<HostMatch, ConfigError> {
    let (name, wildcard) = match host.strip_prefix("*.") {
        Some(rest) => (rest, true),
        None => (host.as_str(), false),
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    let valid = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.'));
    if !valid {
        return Err(ConfigError::new(field, "must be a host name or *.domain"));
    }
    Ok(if wildcard { HostMatch::Suffix(format!(".{name}")) } else { HostMatch::Exact(name.to_owned()) })
}

impl RawRoute {
    /// `pricing` is the fallback of the configured pricing endpoint, if there is one.
    pub(super) fn validate(
        self,
        index: usize,
        node: NodeKind,
        pricing: Option<PricingFallback>,
        default_schemes: Schemes,
        default_dry_run: bool,
    ) -> Result<Route, ConfigError> {
        let field = |name: &str| format!("routes[{index}].{name}");
        let m = self.matcher;
        let path = match (m.path, m.path_prefix, m.path_glob) {
            (None, None, None) => PathMatch::Any,
            (Some(p), None, None) => PathMatch::Exact(checked_path(p, field("match.path"))?),
            (None, Some(p), None) => PathMatch::Prefix(checked_path(p, field("match.path_prefix"))?),
            (None, None, Some(p)) => {
                let p = checked_path(p, field("match.path_glob"))?;
                PathMatch::Glob(Glob::parse(&p).ok_or_else(|| {
                    ConfigError::new(field("match.path_glob"), "use * within a segment and at most one ** segment")
                })?)
            }
            _ => return Err(ConfigError::new(field("match"), "give one of path, path_prefix and path_glob")),
        };
        let methods = method_names(m.methods, |i| field(&format!("match.methods[{i}]")))?;
        let host = m.host.map(|h| host_match(h, field("match.host"))).transpose()?;

        let access = if self.free {
            let paid_only = [
                self.schemes.is_some(),
                self.dry_run.is_some(),
                self.public.is_some(),
                self.browser.is_some(),
                self.metered.is_some(),
            ];
            if self.service.is_some()
                || self.price_sat.is_some()
                || self.price_msat.is_some()
                || paid_only.contains(&true)
            {
                return Err(ConfigError::new(
                    field("free"),
                    "a free route has no service, price, schemes, dry_run, public, browser or metered",
                ));
            }
            Access::Free
        } else {
            let name =
                self.service.ok_or_else(|| ConfigError::new(field("service"), "required unless the route is free"))?;
            if !is_token_text(&name) || name.len() > 64 {
                return Err(ConfigError::new(field("service"), "must be 1-64 characters of A-Z a-z 0-9 . -"));
            }
            let price_msat = match (self.price_sat, self.price_msat) {
                (Some(sat), None) => Some(sat.checked_mul(1000).filter(|p| *p > 0)),
                (None, Some(msat)) => Some(Some(msat).filter(|p| *p > 0)),
                (None, None) => None,
                (Some(_), Some(_)) => {
                    return Err(ConfigError::new(field("price_sat"), "give one of price_sat and price_msat, not both"))
                }
            };
            let price_msat = match price_msat {
                Some(Some(price)) => Some(price),
                Some(None) => return Err(ConfigError::new(field("price_sat"), "price must be a positive amount")),
                None => None,
            };
            if self.dynamic_price && pricing.is_none() {
                return Err(ConfigError::new(field("dynamic_price"), "needs the top-level pricing endpoint"));
            }
            let price_needed = !self.dynamic_price || pricing == Some(PricingFallback::Static);
            if price_needed && price_msat.is_none() {
                return Err(ConfigError::new(field("price_sat"), "give price_sat or price_msat"));
            }
            if node == NodeKind::Lnbits && price_msat.is_some_and(|p| p % 1000 != 0) {
                return Err(ConfigError::new(field("price_msat"), "LNbits invoices are in whole satoshis"));
            }
            if self.lifetime_s == Some(0) {
                return Err(ConfigError::new(
                    field("lifetime_s"),
                    "must be at least 1 (omit it for tokens that never expire)",
                ));
            }
            for (i, cap) in self.capabilities.iter().enumerate() {
                if !is_token_text(cap) {
                    return Err(ConfigError::new(
                        field(&format!("capabilities[{i}]")),
                        "must be characters of A-Z a-z 0-9 . -",
                    ));
                }
            }
            let restrict_path_prefix =
                self.restrict.path_prefix.map(|p| checked_path(p, field("restrict.path_prefix"))).transpose()?;
            let restrict_methods = method_names(self.restrict.methods, |i| field(&format!("restrict.methods[{i}]")))?;
            let schemes = match &self.schemes {
                Some(names) => Schemes::parse(names, &field("schemes"))?,
                None => default_schemes,
            };
            // The charge request states its amount in satoshis.
            if schemes.payment && price_msat.is_some_and(|p| p % 1000 != 0) {
                return Err(ConfigError::new(field("price_msat"), "the Payment scheme prices in whole satoshis"));
            }
            if !schemes.l402 && self.uses.is_some() {
                return Err(ConfigError::new(
                    field("uses"),
                    "counts L402 token uses; a Payment charge buys one request",
                ));
            }
            if self.uses == Some(0) {
                return Err(ConfigError::new(field("uses"), "must be at least 1 (omit it for unlimited use)"));
            }
            if let Some(f) = self.freebies {
                if f.requests == 0 || f.period_s == 0 {
                    return Err(ConfigError::new(field("freebies"), "requests and period_s must be at least 1"));
                }
            }
            let metered =
                self.metered.map(|m| m.validate(&field("metered"), price_msat, schemes).map(Box::new)).transpose()?;
            if metered.is_some() && self.dynamic_price {
                return Err(ConfigError::new(
                    field("dynamic_price"),
                    "a metered route sells bundles at a fixed price; the upstream reports each request's cost",
                ));
            }
            if metered.is_some() && self.uses.is_some() {
                return Err(ConfigError::new(
                    field("uses"),
                    "a metered route's tokens draw on a balance, not a use count",
                ));
            }
            let browser =
                self.browser.map(|b| b.validate(&field("browser"), &name, &path, schemes).map(Box::new)).transpose()?;
            Access::Paid(Service {
                name,
                price_msat,
                dynamic_price: self.dynamic_price,
                lifetime_s: self.lifetime_s,
                capabilities: self.capabilities,
                restrict_path_prefix,
                restrict_methods,
                uses: self.uses,
                freebies: self.freebies,
                schemes,
                dry_run: self.dry_run.unwrap_or(default_dry_run),
                public: self.public.unwrap_or(true),
                browser,
                metered,
            })
        };
        Ok(Route { path, methods, host, access })
    }
}

impl RawMetered {
    fn validate(self, field: &str, price_msat: Option<u64>, schemes: Schemes) -> Result<Metered, ConfigError> {
        let at = |name: &str| format!("{field}.{name}");
        if schemes.payment {
            return Err(ConfigError::new(
                field.to_owned(),
                "needs L402 tokens: a Payment charge buys one request, not a balance (schemes: [\"l402\"])",
            ));
        }
        if self.reserve_msat == 0 {
            return Err(ConfigError::new(at("reserve_msat"), "must be at least 1"));
        }
        if price_msat.is_some_and(|bundle| self.reserve_msat > bundle) {
            return Err(ConfigError::new(at("reserve_msat"), "must not exceed the route's price (the bundle)"));
        }
        let max_cost_msat = self.max_cost_msat.unwrap_or(self.reserve_msat);
        if max_cost_msat < self.reserve_msat {
            return Err(ConfigError::new(at("max_cost_msat"), "must be at least reserve_msat"));
        }
        let cost_header = self.cost_header.unwrap_or_else(|| DEFAULT_COST_HEADER.to_owned());
        if !is_header_name(&cost_header) {
            return Err(ConfigError::new(at("cost_header"), "must be a header name (A-Z a-z 0-9 -)"));
        }
        let cost_header = cost_header.to_ascii_lowercase();
        if UNREMOVABLE_HEADERS.contains(&cost_header.as_str()) {
            return Err(ConfigError::new(
                at("cost_header"),
                "is removed from every answer: it must not be a header the response needs",
            ));
        }
        Ok(Metered { reserve_msat: self.reserve_msat, max_cost_msat, cost_header })
    }
}

/// Headers a response cannot lose: framing, gRPC's status, and those carrying credentials.
const UNREMOVABLE_HEADERS: [&str; 14] = [
    "content-length",
    "content-type",
    "content-encoding",
    "transfer-encoding",
    "connection",
    "trailer",
    "te",
    "upgrade",
    "location",
    "set-cookie",
    "www-authenticate",
    "authorization",
    "grpc-status",
    "grpc-message",
];

/// Where the upstream reports a metered request's cost, unless configured otherwise.
const DEFAULT_COST_HEADER: &str = "x-l402-cost-msat";

impl Route {
    pub fn matches(&self, method: &str, path: &str, authority: &str) -> bool {
        let path_ok = match &self.path {
            PathMatch::Exact(p) => path == p,
            PathMatch::Prefix(p) => path.starts_with(p.as_str()),
            PathMatch::Glob(glob) => glob.matches(path),
            PathMatch::Any => true,
        };
        path_ok
            && (self.methods.is_empty() || self.methods.iter().any(|m| m.eq_ignore_ascii_case(method)))
            && self.host.as_ref().is_none_or(|h| h.matches(authority))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_segments() {
        let g = Glob::parse("/v1/*/forecast").unwrap();
        assert!(g.matches("/v1/paris/forecast"));
        assert!(!g.matches("/v1/paris/london/forecast"));
        assert!(!g.matches("/v1/forecast"));
        let g = Glob::parse("/files/**/*.json").unwrap();
        assert!(g.matches("/files/a.json"));
        assert!(g.matches("/files/x/y/z.json"));
        assert!(!g.matches("/files/x/y/z.csv"));
        let g = Glob::parse("/img/*-large.png").unwrap();
        assert!(g.matches("/img/cat-large.png"));
        assert!(!g.matches("/img/cat-small.png"));
        assert!(Glob::parse("/a/**/b/**").is_none());
        assert!(Glob::parse("/a/x**").is_none());
    }

    #[test]
    fn hosts_match_without_port_in_any_case() {
        let exact = HostMatch::Exact("api.example.com".into());
        assert!(exact.matches("API.example.com:8443"));
        assert!(!exact.matches("api.example.com.evil"));
        assert!(exact.matches("api.example.com."));
        assert!(exact.matches("Api.Example.Com.:443"));
        assert!(!exact.matches("api.example.com.."));
        let suffix = HostMatch::Suffix(".example.com".into());
        assert!(suffix.matches("eu.example.com"));
        assert!(!suffix.matches("example.com"));
        assert!(!suffix.matches("eu.example.com.evil:80"));
        assert!(suffix.matches("EU.example.com.:8080"));
        assert!(!suffix.matches("example.com."));
        assert_eq!(strip_port("[::1]:8080"), "::1");
    }

    #[test]
    fn wildcards() {
        assert!(wildcard_match("*", ""));
        assert!(wildcard_match("a*b*c", "a-b-c"));
        assert!(!wildcard_match("a*b*c", "a-c-b"));
        assert!(wildcard_match("abc", "abc"));
        assert!(!wildcard_match("abc", "abcd"));
    }
}
