//! The filter's JSON configuration: one document for Envoy's `configuration`, Kong's filter `config`
//! and `l402 config check`. Parsing is strict (unknown fields are refused) and every error names the
//! field it is about, so a bad config stops the plugin at load with a message an operator can act on.

mod browser;
mod discovery;
mod paths;
mod read;
mod routes;
#[cfg(test)]
mod schema;
mod schemes;

pub use browser::{Browser, Cookie};
use discovery::RawDiscovery;
pub use discovery::{Discovery, ServiceInfo};
pub use paths::{EncodedSlashes, Paths};
use routes::RawRoute;
pub use routes::{Access, Freebies, Glob, HostMatch, PathMatch, Route, Service};
use schemes::RawPayment;
pub use schemes::Schemes;

use crate::json::Json;
use crate::l402::encoding::{hex_decode, hex_decode_array};
use crate::l402::SecretRing;
use crate::payment::IdKeys;
use read::{Fields, Kind, Source};
use std::collections::{HashMap, HashSet};
use std::fmt;

/// Longest invoice description BOLT11 can carry.
const MAX_MEMO_BYTES: usize = 639;
const DEFAULT_TIMEOUT_MS: u32 = 3000;
const DEFAULT_EXPIRY_S: u32 = 600;
const DEFAULT_MEMO: &str = "{service} access";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub field: String,
    pub message: String,
}

impl ConfigError {
    pub(crate) fn new(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError { field: field.into(), message: message.into() }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration: {}: {}", self.field, self.message)
    }
}

struct RawConfig {
    secrets: Source<Vec<String>>,
    node: RawNode,
    invoice: RawInvoice,
    routes: Vec<RawRoute>,
    unmatched: Unmatched,
    challenge: RawChallenge,
    upstream_headers: RawUpstreamHeaders,
    revoked: Vec<String>,
    challenge_limit: Option<ChallengeLimit>,
    client_network: ClientNetwork,
    pricing: Option<RawPricing>,
    fleet: Option<RawFleet>,
    on_store_error: OnStoreError,
    paths: Paths,
    schemes: Option<Vec<String>>,
    payment: RawPayment,
    dry_run: bool,
    access_log_fields: bool,
    discovery: RawDiscovery,
}

impl RawConfig {
    fn read(mut f: Fields) -> Result<RawConfig, ConfigError> {
        let raw = RawConfig {
            secrets: f.inline_or_env("secrets", Kind::Strings, Fields::strings_of)?,
            node: RawNode::read(f.object("node")?)?,
            invoice: RawInvoice::read(f.defaulted_object("invoice")?)?,
            routes: f.objects("routes")?.into_iter().map(RawRoute::read).collect::<Result<_, _>>()?,
            unmatched: f.choice_or(
                "unmatched",
                &[("deny", Unmatched::Deny), ("free", Unmatched::Free)],
                Unmatched::Deny,
            )?,
            challenge: RawChallenge::read(f.defaulted_object("challenge")?)?,
            upstream_headers: RawUpstreamHeaders::read(f.defaulted_object("upstream_headers")?)?,
            revoked: f.strings("revoked")?,
            challenge_limit: f.opt_object("challenge_limit")?.map(ChallengeLimit::read).transpose()?,
            client_network: ClientNetwork::read(f.defaulted_object("client_network")?)?,
            pricing: f.opt_object("pricing")?.map(RawPricing::read).transpose()?,
            fleet: f.opt_object("fleet")?.map(RawFleet::read).transpose()?,
            on_store_error: f.choice_or(
                "on_store_error",
                &[("fail_closed", OnStoreError::FailClosed), ("fail_open", OnStoreError::FailOpen)],
                OnStoreError::FailClosed,
            )?,
            paths: Paths::read(f.defaulted_object("paths")?)?,
            schemes: f.opt_strings("schemes")?,
            payment: RawPayment::read(f.defaulted_object("payment")?)?,
            dry_run: f.bool_or("dry_run", false)?,
            access_log_fields: f.bool_or("access_log_fields", false)?,
            discovery: RawDiscovery::read(f.defaulted_object("discovery")?)?,
        };
        f.done()?;
        Ok(raw)
    }
}

struct RawFleet {
    upstream: String,
    authority: String,
    tls: bool,
    timeout_ms: u32,
    prefix: String,
    revocation_poll_s: u64,
}

/// The fleet's shared store (etcd's v3 JSON gateway): use counts across gateways and a revocation
/// list they all read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fleet {
    pub endpoint: Endpoint,
    pub prefix: String,
    pub revocation_poll_s: u64,
}

/// What a request that needs the shared store gets when the store fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnStoreError {
    /// 503: no use is granted that cannot be counted.
    FailClosed,
    /// Let the paid request through uncounted.
    FailOpen,
}

impl RawFleet {
    fn read(mut f: Fields) -> Result<RawFleet, ConfigError> {
        let raw = RawFleet {
            upstream: f.string("upstream")?,
            authority: f.string("authority")?,
            tls: f.bool_or("tls", false)?,
            timeout_ms: f.whole_or("timeout_ms", 500)?,
            prefix: f.string_or("prefix", "/l402/")?,
            revocation_poll_s: f.whole_or("revocation_poll_s", 5)?,
        };
        f.done()?;
        Ok(raw)
    }

    fn validate(self) -> Result<Fleet, ConfigError> {
        let endpoint = Endpoint::new("fleet", self.upstream, self.authority, self.tls, self.timeout_ms)?;
        if !self.prefix.starts_with('/') || self.prefix.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        {
            return Err(ConfigError::new("fleet.prefix", "must start with / and contain no spaces"));
        }
        if !(1..=3600).contains(&self.revocation_poll_s) {
            return Err(ConfigError::new("fleet.revocation_poll_s", "must be between 1 and 3600"));
        }
        Ok(Fleet { endpoint, prefix: self.prefix, revocation_poll_s: self.revocation_poll_s })
    }
}

struct RawPricing {
    upstream: String,
    authority: String,
    path: String,
    tls: bool,
    timeout_ms: u32,
    cache_s: u64,
    headers: Vec<String>,
    on_error: PricingFallback,
}

/// What a dynamically priced route does when the pricing endpoint fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PricingFallback {
    /// Answer 503: no invoice without a price.
    Deny,
    /// Invoice at the route's static price.
    Static,
}

/// The operator's pricing endpoint, for routes with `dynamic_price`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pricing {
    pub endpoint: Endpoint,
    pub path: String,
    pub cache_s: u64,
    /// Request headers sent along to the pricer (lower case).
    pub headers: Vec<String>,
    pub on_error: PricingFallback,
}

impl RawPricing {
    fn read(mut f: Fields) -> Result<RawPricing, ConfigError> {
        let raw = RawPricing {
            upstream: f.string("upstream")?,
            authority: f.string("authority")?,
            path: f.string("path")?,
            tls: f.bool_or("tls", false)?,
            timeout_ms: f.whole_or("timeout_ms", 1000)?,
            cache_s: f.whole_or("cache_s", 60)?,
            headers: f.strings("headers")?,
            on_error: f.choice_or(
                "on_error",
                &[("deny", PricingFallback::Deny), ("static", PricingFallback::Static)],
                PricingFallback::Deny,
            )?,
        };
        f.done()?;
        Ok(raw)
    }

    fn validate(self) -> Result<Pricing, ConfigError> {
        let endpoint = Endpoint::new("pricing", self.upstream, self.authority, self.tls, self.timeout_ms)?;
        if !self.path.starts_with('/') || self.path.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control()) {
            return Err(ConfigError::new("pricing.path", "must start with / and contain no spaces"));
        }
        let mut headers = Vec::with_capacity(self.headers.len());
        for (i, name) in self.headers.iter().enumerate() {
            if name.is_empty()
                || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                || RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str())
            {
                return Err(ConfigError::new(
                    format!("pricing.headers[{i}]"),
                    "must be a header name that carries no credential",
                ));
            }
            headers.push(name.to_ascii_lowercase());
        }
        Ok(Pricing { endpoint, path: self.path, cache_s: self.cache_s, headers, on_error: self.on_error })
    }
}

/// A token bucket per client network on challenge issuance, so an unpaid flood cannot make the
/// node create unbounded invoices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChallengeLimit {
    pub burst: u64,
    pub per_minute: u64,
}

impl ChallengeLimit {
    fn read(mut f: Fields) -> Result<ChallengeLimit, ConfigError> {
        let limit = ChallengeLimit { burst: f.whole("burst")?, per_minute: f.whole("per_minute")? };
        f.done()?;
        Ok(limit)
    }
}

/// How client addresses are grouped for freebies and challenge limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientNetwork {
    pub ipv4_prefix: u8,
    pub ipv6_prefix: u8,
}

impl ClientNetwork {
    fn read(mut f: Fields) -> Result<ClientNetwork, ConfigError> {
        let network =
            ClientNetwork { ipv4_prefix: f.whole_or("ipv4_prefix", 24)?, ipv6_prefix: f.whole_or("ipv6_prefix", 48)? };
        f.done()?;
        Ok(network)
    }
}

struct RawNode {
    kind: NodeKind,
    upstream: String,
    authority: String,
    tls: bool,
    credential: Source<String>,
    timeout_ms: u32,
    strict: bool,
    macaroon_only: bool,
}

impl RawNode {
    fn read(mut f: Fields) -> Result<RawNode, ConfigError> {
        let kinds = &[("lnd", NodeKind::Lnd), ("cln", NodeKind::Cln), ("lnbits", NodeKind::Lnbits)];
        let raw = RawNode {
            kind: f.choice("kind", kinds)?,
            upstream: f.string("upstream")?,
            authority: f.string("authority")?,
            tls: f.bool_or("tls", false)?,
            credential: f.inline_or_env("credential", Kind::String, Fields::string_of)?,
            timeout_ms: f.whole_or("timeout_ms", DEFAULT_TIMEOUT_MS)?,
            strict: f.bool_or("strict", false)?,
            macaroon_only: f.bool_or("macaroon_only", false)?,
        };
        f.done()?;
        Ok(raw)
    }
}

struct RawInvoice {
    expiry_s: u32,
    memo: String,
}

impl RawInvoice {
    fn read(mut f: Fields) -> Result<RawInvoice, ConfigError> {
        let raw = RawInvoice {
            expiry_s: f.whole_or("expiry_s", DEFAULT_EXPIRY_S)?,
            memo: f.string_or("memo", DEFAULT_MEMO)?,
        };
        f.done()?;
        Ok(raw)
    }
}

/// What the upstream receives with a paid request. A name set to `null` turns that header off.
struct RawUpstreamHeaders {
    strip_credential: bool,
    token_id: Option<String>,
    service: Option<String>,
    price_msat: Option<String>,
    reserved_msat: Option<String>,
    balance_msat: Option<String>,
}

impl RawUpstreamHeaders {
    fn read(mut f: Fields) -> Result<RawUpstreamHeaders, ConfigError> {
        let raw = RawUpstreamHeaders {
            strip_credential: f.bool_or("strip_credential", true)?,
            token_id: f.string_or_null("token_id", "x-l402-token-id")?,
            service: f.string_or_null("service", "x-l402-service")?,
            price_msat: f.string_or_null("price_msat", "x-l402-price-msat")?,
            reserved_msat: f.string_or_null("reserved_msat", "x-l402-reserved-msat")?,
            balance_msat: f.string_or_null("balance_msat", "x-l402-balance-msat")?,
        };
        f.done()?;
        Ok(raw)
    }
}

/// Headers set on paid requests for the upstream to meter on; client-sent copies are always removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamHeaders {
    pub strip_credential: bool,
    pub token_id: Option<String>,
    pub service: Option<String>,
    pub price_msat: Option<String>,
    /// On metered routes: the amount held for the request, and the balance left beside it. The
    /// balance header also tells the client its balance after the charge.
    pub reserved_msat: Option<String>,
    pub balance_msat: Option<String>,
}

impl UpstreamHeaders {
    pub fn names(&self) -> impl Iterator<Item = &str> {
        [&self.token_id, &self.service, &self.price_msat, &self.reserved_msat, &self.balance_msat]
            .into_iter()
            .flatten()
            .map(String::as_str)
    }
}

struct RawChallenge {
    lsat_header: bool,
    invalid_credential_status: u32,
}

impl RawChallenge {
    fn read(mut f: Fields) -> Result<RawChallenge, ConfigError> {
        let raw = RawChallenge {
            lsat_header: f.bool_or("lsat_header", true)?,
            invalid_credential_status: f.whole_or("invalid_credential_status", 402)?,
        };
        f.done()?;
        Ok(raw)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    Lnd,
    Cln,
    Lnbits,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unmatched {
    Deny,
    Free,
}

#[derive(Debug, Clone)]
pub struct Node {
    pub kind: NodeKind,
    pub endpoint: Endpoint,
    pub credential: Secret,
    /// Confirm with the node that the invoice is settled before a token's first use.
    pub strict: bool,
    /// Accept `L402 <macaroon>` without a preimage once the node says the invoice is settled.
    pub macaroon_only: bool,
}

/// Where a callout goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Envoy cluster name (or `host:port` under Kong) the callout is dispatched to.
    pub upstream: String,
    pub authority: String,
    pub tls: bool,
    pub timeout_ms: u32,
}

impl Endpoint {
    fn new(
        section: &str,
        upstream: String,
        authority: String,
        tls: bool,
        timeout_ms: u32,
    ) -> Result<Endpoint, ConfigError> {
        if upstream.trim().is_empty() {
            return Err(ConfigError::new(
                format!("{section}.upstream"),
                "must name the Envoy cluster (or host:port) to call",
            ));
        }
        if authority.trim().is_empty() || authority.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control()) {
            return Err(ConfigError::new(format!("{section}.authority"), "must be host[:port]"));
        }
        if !(1..=60_000).contains(&timeout_ms) {
            return Err(ConfigError::new(format!("{section}.timeout_ms"), "must be between 1 and 60000"));
        }
        Ok(Endpoint { upstream, authority, tls, timeout_ms })
    }
}

/// A node credential. It never reaches a log line, even through `{:?}` of the whole config.
#[derive(Clone)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub secrets: SecretRing,
    pub node: Node,
    pub invoice_expiry_s: u32,
    pub memo: String,
    pub routes: Vec<Route>,
    pub unmatched: Unmatched,
    pub lsat_header: bool,
    pub upstream_headers: UpstreamHeaders,
    /// Whether any route matches on the host, so `:authority` must be read.
    pub matches_host: bool,
    /// Token ids refused whatever their signature says.
    pub revoked: HashSet<[u8; 32]>,
    pub challenge_limit: Option<ChallengeLimit>,
    pub client_network: ClientNetwork,
    pub pricing: Option<Pricing>,
    pub fleet: Option<Fleet>,
    pub on_store_error: OnStoreError,
    pub paths: Paths,
    /// The status of a 402 answering a refused L402 credential: 402 (clients retry with the fresh
    /// challenge) or 401 (the revised L402 spec's word).
    pub invalid_credential_status: u32,
    /// Keys of the Payment scheme's challenge ids, derived from the secrets.
    pub payment_keys: IdKeys,
    /// The Payment challenge's realm; absent: the route's service.
    pub payment_realm: Option<String>,
    /// Requests no paid route decides (free, unmatched, ambiguous) pass with the would-be decision.
    pub dry_run: bool,
    /// Whether any request may be in dry run, so the dry-run header is the filter's to set.
    pub dry_run_anywhere: bool,
    /// Publish each request's outcome for the proxy's access log.
    pub access_log_fields: bool,
    /// The manifest of public paid routes, if enabled.
    pub discovery: Option<Discovery>,
}

impl Config {
    /// Parses and validates a config; `env` resolves `{"env": NAME}` sources.
    pub fn parse(json: &[u8], env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let document = Json::parse(json).map_err(|e| ConfigError::new("config", e.to_string()))?;
        RawConfig::read(Fields::document(&document, None)?)?.validate(env)
    }

    /// The memo for a service's invoice.
    pub fn memo_for(&self, service: &str) -> String {
        self.memo.replace("{service}", service)
    }

    /// Where dry run lets requests through unenforced: `dry_run` (the top-level setting, for what no
    /// paid route decides) and each paid route in dry run, as `routes[i]`.
    pub fn dry_run_fields(&self) -> Vec<String> {
        let top = self.dry_run.then(|| "dry_run".to_owned());
        let routes = self.routes.iter().enumerate().filter_map(|(i, route)| match &route.access {
            Access::Paid(service) if service.dry_run => Some(format!("routes[{i}]")),
            _ => None,
        });
        top.into_iter().chain(routes).collect()
    }

    /// The settings that keep state in the host's shared data, by field: they need its default
    /// key-value zone (Kong: `nginx_wasm_shm_kv`). Use counts move to the fleet store with `fleet`.
    pub fn shared_data_fields(&self) -> Vec<String> {
        let mut fields = Vec::new();
        if self.node.strict {
            fields.push("node.strict".to_owned());
        }
        if self.challenge_limit.is_some() {
            fields.push("challenge_limit".to_owned());
        }
        for (i, route) in self.routes.iter().enumerate() {
            let Access::Paid(service) = &route.access else { continue };
            if service.uses.is_some() && self.fleet.is_none() {
                fields.push(format!("routes[{i}].uses"));
            }
            // A charge is single-use: spent charges are counted in shared data too.
            if service.schemes.payment && service.uses.is_none() && self.fleet.is_none() {
                fields.push(format!("routes[{i}].schemes"));
            }
            if service.metered.is_some() && self.fleet.is_none() {
                fields.push(format!("routes[{i}].metered"));
            }
            if service.freebies.is_some() {
                fields.push(format!("routes[{i}].freebies"));
            }
        }
        fields
    }
}

fn resolve<T>(
    source: Source<T>,
    field: &str,
    env: &dyn Fn(&str) -> Option<String>,
    from_env: impl Fn(String) -> T,
) -> Result<T, ConfigError> {
    match source {
        Source::Inline(value) => Ok(value),
        Source::Env(name) => env(&name)
            .filter(|v| !v.trim().is_empty())
            .map(from_env)
            .ok_or_else(|| ConfigError::new(field, format!("environment variable {name} is not set for the plugin"))),
    }
}

/// Secrets are hex strings; from the environment, a comma- or whitespace-separated list.
pub fn parse_secret_list(text: &str) -> Vec<String> {
    text.split(|c: char| c == ',' || c.is_whitespace()).filter(|s| !s.is_empty()).map(str::to_owned).collect()
}

fn secret_ring(hex_secrets: Vec<String>) -> Result<SecretRing, ConfigError> {
    let mut secrets = Vec::with_capacity(hex_secrets.len());
    for (index, text) in hex_secrets.iter().enumerate() {
        let bytes =
            hex_decode(text.trim()).ok_or_else(|| ConfigError::new(format!("secrets[{index}]"), "must be hex"))?;
        secrets.push(bytes);
    }
    SecretRing::new(secrets).map_err(|e| ConfigError::new("secrets", e.to_string()))
}

/// A header name as configured: letters, digits and dashes.
pub(crate) fn is_header_name(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

pub(crate) fn is_token_text(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.'))
}

impl RawUpstreamHeaders {
    fn validate(self) -> Result<UpstreamHeaders, ConfigError> {
        let check = |name: Option<String>, field: &str| -> Result<Option<String>, ConfigError> {
            match name {
                Some(n) if !is_header_name(&n) => Err(ConfigError::new(
                    format!("upstream_headers.{field}"),
                    "must be a header name (A-Z a-z 0-9 -) or null",
                )),
                Some(n) if RESERVED_HEADERS.contains(&n.to_ascii_lowercase().as_str()) => {
                    Err(ConfigError::new(format!("upstream_headers.{field}"), "must not be a credential header"))
                }
                other => Ok(other.map(|n| n.to_ascii_lowercase())),
            }
        };
        let headers = UpstreamHeaders {
            strip_credential: self.strip_credential,
            token_id: check(self.token_id, "token_id")?,
            service: check(self.service, "service")?,
            price_msat: check(self.price_msat, "price_msat")?,
            reserved_msat: check(self.reserved_msat, "reserved_msat")?,
            balance_msat: check(self.balance_msat, "balance_msat")?,
        };
        let fields = ["token_id", "service", "price_msat", "reserved_msat", "balance_msat"];
        let names =
            [&headers.token_id, &headers.service, &headers.price_msat, &headers.reserved_msat, &headers.balance_msat];
        for (at, name) in names.iter().enumerate() {
            let earlier = names.get(..at).unwrap_or_default();
            if name.is_some() && earlier.contains(name) {
                let field = fields.get(at).copied().unwrap_or_default();
                return Err(ConfigError::new(format!("upstream_headers.{field}"), "names a header another field sets"));
            }
        }
        Ok(headers)
    }
}

/// The headers that carry credentials: never usable as metering headers.
const RESERVED_HEADERS: [&str; 3] = ["authorization", "grpc-metadata-macaroon", "macaroon"];

impl RawConfig {
    fn validate(self, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let secrets = secret_ring(resolve(self.secrets, "secrets", env, |v| parse_secret_list(&v))?)?;

        let node = self.node;
        let endpoint = Endpoint::new("node", node.upstream, node.authority, node.tls, node.timeout_ms)?;
        let credential = resolve(node.credential, "node.credential", env, |v| v.trim().to_owned())?;
        if credential.is_empty() || credential.bytes().any(|b| b.is_ascii_control()) {
            return Err(ConfigError::new("node.credential", "must be a non-empty header value"));
        }
        if node.macaroon_only && !node.strict {
            return Err(ConfigError::new(
                "node.macaroon_only",
                "needs node.strict: only the node can tell that such a token was paid",
            ));
        }
        if node.kind == NodeKind::Lnd && hex_decode(&credential).is_none() {
            return Err(ConfigError::new("node.credential", "an LND credential is the invoice macaroon in hex"));
        }

        if self.invoice.expiry_s == 0 {
            return Err(ConfigError::new("invoice.expiry_s", "must be at least 1"));
        }
        if self.invoice.memo.len() > MAX_MEMO_BYTES {
            return Err(ConfigError::new("invoice.memo", format!("must be at most {MAX_MEMO_BYTES} bytes")));
        }

        if self.routes.is_empty() {
            return Err(ConfigError::new("routes", "at least one route is required"));
        }
        let pricing = self.pricing.map(RawPricing::validate).transpose()?;
        let fallback = pricing.as_ref().map(|p| p.on_error);
        let mut prices: HashMap<String, (Option<u64>, bool, usize)> = HashMap::new();
        let schemes = self.schemes.map(|names| Schemes::parse(&names, "schemes")).transpose()?.unwrap_or_default();
        let mut routes = Vec::with_capacity(self.routes.len());
        for (index, raw) in self.routes.into_iter().enumerate() {
            let route = raw.validate(index, node.kind, fallback, schemes, self.dry_run)?;
            if let Access::Paid(service) = &route.access {
                let metered = service.metered.is_some();
                if let Some((price, was_metered, first)) = prices.get(&service.name) {
                    if *price != service.price_msat {
                        return Err(ConfigError::new(
                            format!("routes[{index}].service"),
                            format!("service {} is priced differently in routes[{first}]", service.name),
                        ));
                    }
                    // A bundle's token would open the unmetered route without drawing on it.
                    if *was_metered != metered {
                        return Err(ConfigError::new(
                            format!("routes[{index}].metered"),
                            format!(
                                "service {} is metered in one of routes[{first}] and routes[{index}] only",
                                service.name
                            ),
                        ));
                    }
                } else {
                    prices.insert(service.name.clone(), (service.price_msat, metered, index));
                }
            }
            routes.push(route);
        }

        let matches_host = routes.iter().any(|r| r.host.is_some());
        let mut revoked = HashSet::with_capacity(self.revoked.len());
        for (index, id) in self.revoked.iter().enumerate() {
            let id = hex_decode_array::<32>(id)
                .ok_or_else(|| ConfigError::new(format!("revoked[{index}]"), "must be a token id: 32 bytes of hex"))?;
            revoked.insert(id);
        }
        if let Some(limit) = self.challenge_limit {
            if limit.burst == 0 || limit.per_minute == 0 {
                return Err(ConfigError::new("challenge_limit", "burst and per_minute must be at least 1"));
            }
        }
        if self.client_network.ipv4_prefix > 32 {
            return Err(ConfigError::new("client_network.ipv4_prefix", "must be 0-32"));
        }
        if self.client_network.ipv6_prefix > 128 {
            return Err(ConfigError::new("client_network.ipv6_prefix", "must be 0-128"));
        }
        let mut upstream_headers = self.upstream_headers.validate()?;
        if !routes.iter().any(|r| matches!(&r.access, Access::Paid(service) if service.metered.is_some())) {
            // Without metered routes the filter never sets these: it need not guard them either.
            upstream_headers.reserved_msat = None;
            upstream_headers.balance_msat = None;
        }
        for (index, route) in routes.iter().enumerate() {
            let Access::Paid(Service { metered: Some(metered), .. }) = &route.access else { continue };
            if upstream_headers.names().any(|name| name == metered.cost_header) {
                return Err(ConfigError::new(
                    format!("routes[{index}].metered.cost_header"),
                    "must differ from the upstream_headers the filter sets",
                ));
            }
        }
        if !matches!(self.challenge.invalid_credential_status, 401 | 402) {
            return Err(ConfigError::new("challenge.invalid_credential_status", "must be 402 or 401"));
        }
        let payment_keys = IdKeys::derive(&secrets);
        let dry_run_anywhere =
            self.dry_run || routes.iter().any(|r| matches!(&r.access, Access::Paid(service) if service.dry_run));
        Ok(Config {
            secrets,
            node: Node {
                kind: node.kind,
                endpoint,
                credential: Secret(credential),
                strict: node.strict,
                macaroon_only: node.macaroon_only,
            },
            invoice_expiry_s: self.invoice.expiry_s,
            memo: self.invoice.memo,
            routes,
            unmatched: self.unmatched,
            lsat_header: self.challenge.lsat_header,
            upstream_headers,
            matches_host,
            revoked,
            challenge_limit: self.challenge_limit,
            client_network: self.client_network,
            pricing,
            fleet: self.fleet.map(RawFleet::validate).transpose()?,
            on_store_error: self.on_store_error,
            paths: self.paths,
            invalid_credential_status: self.challenge.invalid_credential_status,
            payment_keys,
            payment_realm: self.payment.realm()?,
            dry_run: self.dry_run,
            dry_run_anywhere,
            access_log_fields: self.access_log_fields,
            discovery: self.discovery.validate()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    const SECRET: &str = "0000000000000000000000000000000000000000000000000000000000000001";

    fn base() -> Value {
        json!({
            "secrets": [SECRET],
            "node": { "kind": "lnd", "upstream": "lnd", "authority": "lnd:8080", "credential": "abcd" },
            "routes": [
                { "match": { "path_prefix": "/health" }, "free": true },
                { "match": { "path_prefix": "/v1/", "methods": ["get"] }, "service": "weather", "price_sat": 10,
                  "lifetime_s": 3600, "capabilities": ["read"] }
            ]
        })
    }

    fn parse(v: &Value) -> Result<Config, ConfigError> {
        Config::parse(v.to_string().as_bytes(), &|name| (name == "L402_SECRETS").then(|| format!("{SECRET}, {SECRET}")))
    }

    fn error_field(v: &Value) -> String {
        parse(v).err().map(|e| e.field).unwrap_or_else(|| "<accepted>".into())
    }

    #[test]
    fn names_the_settings_that_need_shared_data() {
        assert!(parse(&base()).unwrap().shared_data_fields().is_empty());
        let mut v = base();
        v["node"]["strict"] = json!(true);
        v["challenge_limit"] = json!({ "burst": 5, "per_minute": 10 });
        v["routes"][1]["uses"] = json!(1);
        v["routes"][1]["freebies"] = json!({ "requests": 3, "period_s": 60 });
        let fields = parse(&v).unwrap().shared_data_fields();
        assert_eq!(fields, ["node.strict", "challenge_limit", "routes[1].uses", "routes[1].freebies"]);
        v["fleet"] = json!({ "upstream": "etcd", "authority": "etcd:2379" });
        assert!(!parse(&v).unwrap().shared_data_fields().contains(&"routes[1].uses".to_owned()));
    }

    #[test]
    fn parses_with_defaults() {
        let c = parse(&base()).unwrap();
        assert_eq!(c.node.endpoint.timeout_ms, 3000);
        assert_eq!(c.invoice_expiry_s, 600);
        assert_eq!(c.memo_for("weather"), "weather access");
        assert_eq!(c.unmatched, Unmatched::Deny);
        assert!(c.lsat_header);
        assert!(c.upstream_headers.strip_credential);
        assert_eq!(
            c.upstream_headers.names().collect::<Vec<_>>(),
            ["x-l402-token-id", "x-l402-service", "x-l402-price-msat"]
        );
        let mut off = base();
        off["upstream_headers"] = json!({"service": null, "price_msat": "X-Paid"});
        let c2 = parse(&off).unwrap();
        assert_eq!(c2.upstream_headers.names().collect::<Vec<_>>(), ["x-l402-token-id", "x-paid"]);
        off["upstream_headers"] = json!({"service": "X-L402-Token-Id"});
        assert_eq!(error_field(&off), "upstream_headers.service", "one header, two values");
        assert_eq!(c.routes[1].methods, ["GET"]);
        let Access::Paid(service) = &c.routes[1].access else { panic!("paid route expected") };
        assert_eq!(service.price_msat, Some(10_000));
        assert!(!format!("{c:?}").contains("abcd"), "node credential must not be printed");
    }

    #[test]
    fn resolves_secrets_from_the_environment() {
        let mut v = base();
        v["secrets"] = json!({ "env": "L402_SECRETS" });
        assert!(parse(&v).is_ok());
        v["secrets"] = json!({ "env": "UNSET" });
        assert_eq!(error_field(&v), "secrets");
    }

    #[test]
    fn every_error_names_its_field() {
        let cases: Vec<(&str, Value)> = vec![
            ("node.kind", json!({"kind": "eclair"})),
            ("node.timeout_ms", json!({"timeout_ms": 0})),
            ("node.credential", json!({"credential": "not hex"})),
            ("node.upstream", json!({"upstream": " "})),
            ("node.colour", json!({"colour": "red"})),
        ];
        for (field, patch) in cases {
            let mut v = base();
            for (k, val) in patch.as_object().unwrap() {
                v["node"][k] = val.clone();
            }
            assert_eq!(error_field(&v), field, "{patch}");
        }
        let mut short = base();
        short["secrets"] = json!(["abcd"]);
        assert_eq!(error_field(&short), "secrets");
        let mut not_hex = base();
        not_hex["secrets"] = json!(["zz"]);
        assert_eq!(error_field(&not_hex), "secrets[0]");
        let mut expiry = base();
        expiry["invoice"] = json!({"expiry_s": 0});
        assert_eq!(error_field(&expiry), "invoice.expiry_s");
        let mut listed = base();
        listed["node"] = json!(["cln", "node", "node:3010", false, "rune"]);
        assert_eq!(error_field(&listed), "node");
        let mut restrict_list = base();
        restrict_list["routes"][1]["restrict"] = json!(["/v1/"]);
        assert_eq!(error_field(&restrict_list), "routes[1].restrict");
        let mut env_extra = base();
        env_extra["node"]["credential"] = json!({"env": "X", "note": 1});
        assert_eq!(error_field(&env_extra), "node.credential");
        let mut no_routes = base();
        no_routes["routes"] = json!([]);
        assert_eq!(error_field(&no_routes), "routes");
        assert_eq!(Config::parse(b"{", &|_| None).err().map(|e| e.field), Some("config".into()));
        let twice =
            base().to_string().replacen("\"routes\":", "\"unmatched\":\"free\",\"unmatched\":\"deny\",\"routes\":", 1);
        assert!(Config::parse(twice.as_bytes(), &|_| None).is_err_and(|e| e.field == "config"), "{twice}");
        let mut header = base();
        header["upstream_headers"] = json!({"service": "bad header"});
        assert_eq!(error_field(&header), "upstream_headers.service");
        header["upstream_headers"] = json!({"token_id": "Authorization"});
        assert_eq!(error_field(&header), "upstream_headers.token_id");
    }

    #[test]
    fn fleet_store_defaults_and_errors() {
        let mut v = base();
        v["fleet"] = json!({"upstream": "etcd", "authority": "127.0.0.1:2379"});
        let c = parse(&v).unwrap();
        let fleet = c.fleet.unwrap();
        assert_eq!((fleet.prefix.as_str(), fleet.revocation_poll_s, fleet.endpoint.timeout_ms), ("/l402/", 5, 500));
        assert_eq!(c.on_store_error, OnStoreError::FailClosed);
        v["fleet"]["revocation_poll_s"] = json!(0);
        assert_eq!(error_field(&v), "fleet.revocation_poll_s");
        v["fleet"] = json!({"upstream": "etcd", "authority": "x", "prefix": "l402"});
        assert_eq!(error_field(&v), "fleet.prefix");
        v["fleet"] = json!({"upstream": "etcd", "authority": "x"});
        v["on_store_error"] = json!("fail_sideways");
        assert_eq!(error_field(&v), "on_store_error");
    }

    #[test]
    fn paths_reject_encoded_slashes_unless_allowed() {
        let mut v = base();
        assert_eq!(parse(&v).unwrap().paths.encoded_slashes, EncodedSlashes::Reject);
        v["paths"] = json!({"encoded_slashes": "allow"});
        assert_eq!(parse(&v).unwrap().paths.encoded_slashes, EncodedSlashes::Allow);
        v["paths"] = json!({"encoded_slashes": "decode"});
        assert_eq!(error_field(&v), "paths.encoded_slashes");
        v["paths"] = json!({"merge_slashes": true});
        assert_eq!(error_field(&v), "paths.merge_slashes");
    }

    #[test]
    fn dynamic_prices_need_a_pricer_and_a_fallback_price_if_static() {
        let pricer = json!({"upstream": "pricer", "authority": "pricer:80", "path": "/price"});
        let mut v = base();
        v["routes"][1] = json!({"match": {}, "service": "llm", "dynamic_price": true});
        assert_eq!(error_field(&v), "routes[1].dynamic_price");
        v["pricing"] = pricer.clone();
        let c = parse(&v).unwrap();
        let Access::Paid(service) = &c.routes[1].access else { panic!("paid route expected") };
        assert!(service.dynamic_price && service.price_msat.is_none());
        assert_eq!(c.pricing.as_ref().map(|p| (p.cache_s, p.on_error)), Some((60, PricingFallback::Deny)));
        v["pricing"]["on_error"] = json!("static");
        assert_eq!(error_field(&v), "routes[1].price_sat");
        v["routes"][1]["price_sat"] = json!(3);
        assert!(parse(&v).is_ok());
        v["pricing"]["headers"] = json!(["Authorization"]);
        assert_eq!(error_field(&v), "pricing.headers[0]");
        v["pricing"] = json!({"upstream": "p", "authority": "p:80", "path": "price"});
        assert_eq!(error_field(&v), "pricing.path");
    }

    #[test]
    fn route_errors_name_the_route() {
        let route_cases = [
            ("routes[1].service", json!({"match": {}, "price_sat": 1})),
            ("routes[1].service", json!({"match": {}, "service": "a,b", "price_sat": 1})),
            ("routes[1].price_sat", json!({"match": {}, "service": "s"})),
            ("routes[1].price_sat", json!({"match": {}, "service": "s", "price_sat": 0})),
            ("routes[1].price_sat", json!({"match": {}, "service": "s", "price_sat": 1, "price_msat": 1000})),
            ("routes[1].lifetime_s", json!({"match": {}, "service": "s", "price_sat": 1, "lifetime_s": 0})),
            (
                "routes[1].capabilities[0]",
                json!({"match": {}, "service": "s", "price_sat": 1, "capabilities": ["a=b"]}),
            ),
            ("routes[1].match", json!({"match": {"path": "/a", "path_prefix": "/a"}, "service": "s", "price_sat": 1})),
            ("routes[1].match.path_prefix", json!({"match": {"path_prefix": "v1"}, "service": "s", "price_sat": 1})),
            ("routes[1].match.methods[0]", json!({"match": {"methods": ["G ET"]}, "service": "s", "price_sat": 1})),
            ("routes[1].free", json!({"match": {}, "free": true, "price_sat": 1})),
            ("routes[1].service", json!({"match": {}, "service": "weather", "price_sat": 11})),
        ];
        for (field, route) in route_cases {
            let mut v = base();
            v["routes"][1] = route.clone();
            if field == "routes[1].service" && route["service"] == "weather" {
                v["routes"][0] = json!({"match": {}, "service": "weather", "price_sat": 10});
            }
            assert_eq!(error_field(&v), field, "{route}");
        }
        let mut lnbits_msat = base();
        lnbits_msat["node"]["kind"] = json!("lnbits");
        lnbits_msat["routes"][1] = json!({"match": {}, "service": "s", "price_msat": 1500});
        assert_eq!(error_field(&lnbits_msat), "routes[1].price_msat");
    }

    #[test]
    fn metered_routes_sell_a_bundle_and_are_refused_where_it_cannot_hold() {
        let metered = |extra: Value| {
            let mut v = base();
            let mut route = json!({"match": {"path_prefix": "/llm/"}, "service": "llm", "price_sat": 100,
                                   "metered": {"reserve_msat": 20000}});
            for (k, val) in extra.as_object().unwrap() {
                if k == "metered" {
                    for (mk, mv) in val.as_object().unwrap() {
                        route["metered"][mk] = mv.clone();
                    }
                } else {
                    route[k] = val.clone();
                }
            }
            v["routes"][1] = route;
            v
        };
        let c = parse(&metered(json!({}))).unwrap();
        let Access::Paid(service) = &c.routes[1].access else { panic!("paid") };
        let terms = service.metered.as_deref().unwrap();
        assert_eq!(
            (terms.reserve_msat, terms.max_cost_msat, terms.cost_header.as_str()),
            (20000, 20000, "x-l402-cost-msat")
        );
        assert_eq!(c.upstream_headers.reserved_msat.as_deref(), Some("x-l402-reserved-msat"));
        assert_eq!(c.shared_data_fields(), ["routes[1].metered"]);
        let custom = parse(&metered(json!({"metered": {"max_cost_msat": 90000, "cost_header": "X-Usage"}}))).unwrap();
        let Access::Paid(service) = &custom.routes[1].access else { panic!("paid") };
        assert_eq!(
            service.metered.as_deref().map(|m| (m.max_cost_msat, m.cost_header.as_str())),
            Some((90000, "x-usage"))
        );
        assert_eq!(parse(&base()).unwrap().upstream_headers.balance_msat, None, "no metered route, no balance header");

        for (extra, field) in [
            (json!({"metered": {"reserve_msat": 0}}), "routes[1].metered.reserve_msat"),
            (json!({"metered": {"reserve_msat": 100001}}), "routes[1].metered.reserve_msat"),
            (json!({"metered": {"max_cost_msat": 19999}}), "routes[1].metered.max_cost_msat"),
            (json!({"metered": {"cost_header": "x cost"}}), "routes[1].metered.cost_header"),
            (json!({"metered": {"cost_header": "x-l402-balance-msat"}}), "routes[1].metered.cost_header"),
            (json!({"metered": {"cost_header": "Grpc-Status"}}), "routes[1].metered.cost_header"),
            (json!({"metered": {"cost_header": "content-length"}}), "routes[1].metered.cost_header"),
            (json!({"metered": {"surprise": 1}}), "routes[1].metered.surprise"),
            (json!({"uses": 5}), "routes[1].uses"),
            (json!({"schemes": ["l402", "payment"]}), "routes[1].metered"),
        ] {
            assert_eq!(error_field(&metered(extra.clone())), field, "{extra}");
        }
        let mut dynamic = metered(json!({"dynamic_price": true}));
        dynamic["pricing"] = json!({"upstream": "pricer", "authority": "pricer:80", "path": "/price"});
        assert_eq!(error_field(&dynamic), "routes[1].dynamic_price");
        let mut half = metered(json!({}));
        half["routes"]
            .as_array_mut()
            .unwrap()
            .push(json!({"match": {"path_prefix": "/other/"}, "service": "llm", "price_sat": 100}));
        assert_eq!(error_field(&half), "routes[2].metered", "a bundle would open the unmetered route");
        let mut free = base();
        free["routes"][0]["metered"] = json!({"reserve_msat": 1});
        assert_eq!(error_field(&free), "routes[0].free");
    }
}
