//! The discovery manifest (`/.well-known/l402-services`): the public paid routes, their prices,
//! dialects and terms, in the layout ngx_l402 publishes (its field names where it has one, ours
//! beside them). Rendered once per configuration, with its ETag, and answered by the filter.

use crate::config::{Access, Config, HostMatch, NodeKind, PathMatch, Route, Service};
use crate::json::{Json, Object};
use crate::l402::caveats::{CAPABILITIES_SUFFIX, METHODS_SUFFIX, PATH_PREFIX_SUFFIX, SERVICES};
use crate::l402::encoding::hex_encode;
use crate::policy::path_only;
use crate::response::{error_body, grpc, LocalResponse};
use sha2::{Digest, Sha256};

/// The manifest layout's version, ngx_l402's `"1"`.
const VERSION: &str = "1";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    path: String,
    body: String,
    etag: String,
    cache_control: String,
}

impl Manifest {
    /// The manifest of a configuration with discovery enabled.
    pub fn new(config: &Config) -> Option<Manifest> {
        let discovery = config.discovery.as_ref()?;
        let routes: Vec<Json> = config
            .routes
            .iter()
            .filter_map(|route| match &route.access {
                Access::Paid(service) if service.public => Some(route_entry(config, route, service).into()),
                Access::Paid(_) | Access::Free => None,
            })
            .collect();
        let backend = match config.node.kind {
            NodeKind::Lnd => "LND",
            NodeKind::Cln => "CLN",
            NodeKind::Lnbits => "LNBITS",
        };
        let info = &discovery.service;
        let mut service = Object::new();
        for (name, text) in [
            ("name", &info.name),
            ("description", &info.description),
            ("operator", &info.operator),
            ("contact", &info.contact),
        ] {
            if let Some(text) = text {
                service.insert(name, text);
            }
        }
        let method = Object::new().with("type", "lightning").with("backend", backend);
        let manifest = Object::new()
            .with("version", VERSION)
            .with("service", service)
            .with("payment_methods", vec![method])
            .with("routes", routes);
        let body = Json::from(manifest).text();
        let digest = Sha256::digest(body.as_bytes());
        let etag = format!("\"{}\"", hex_encode(digest.get(..16).unwrap_or_default()));
        let cache_control = format!("public, max-age={}", discovery.max_age_s);
        Some(Manifest { path: discovery.path.clone(), body, etag, cache_control })
    }

    /// Whether the request target is the manifest's (whatever its query string).
    pub fn serves(&self, target: &str) -> bool {
        path_only(target) == self.path
    }

    pub fn body(&self) -> &str {
        &self.body
    }

    /// GET and HEAD read the manifest; anything else is 405.
    pub fn allows(method: &str) -> bool {
        method.eq_ignore_ascii_case("GET") || method.eq_ignore_ascii_case("HEAD")
    }

    /// 200 with the manifest, or 304 when the client's `If-None-Match` names it.
    pub fn answer(&self, if_none_match: Option<&str>) -> LocalResponse {
        let headers = vec![("etag", self.etag.clone()), ("cache-control", self.cache_control.clone())];
        if if_none_match.is_some_and(|tags| names_etag(tags, &self.etag)) {
            return local(304, headers, String::new());
        }
        let mut headers = headers;
        headers.push(("content-type", "application/json".to_owned()));
        local(200, headers, self.body.clone())
    }

    pub fn method_not_allowed() -> LocalResponse {
        let body = error_body("method_not_allowed", "method_not_allowed", "the manifest is read with GET or HEAD");
        let headers = vec![("allow", "GET, HEAD".to_owned()), ("content-type", "application/json".to_owned())];
        local(405, headers, Json::from(body).text())
    }
}

fn local(status: u32, headers: Vec<(&'static str, String)>, body: String) -> LocalResponse {
    LocalResponse { status, headers, body, grpc_status: grpc::INVALID_ARGUMENT, grpc_message: "not a gRPC method" }
}

/// `If-None-Match`: `*` or a list of entity tags, compared weakly (RFC 9110 §13.1.2).
fn names_etag(if_none_match: &str, etag: &str) -> bool {
    if_none_match.split(',').map(str::trim).any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == etag)
}

fn route_entry(config: &Config, route: &Route, service: &Service) -> Object {
    let (path, path_match) = match &route.path {
        PathMatch::Exact(p) => (p.clone(), "exact"),
        PathMatch::Prefix(p) => (p.clone(), "prefix"),
        PathMatch::Glob(glob) => (glob.pattern(), "glob"),
        PathMatch::Any => ("/".to_owned(), "prefix"),
    };
    let price = match (service.dynamic_price, service.price_msat) {
        (false, Some(msat)) => {
            Object::new().with("type", "static").with("amount_msat", msat).with("amount_sat", msat.div_ceil(1000))
        }
        _ => Object::new().with("type", "dynamic"),
    };
    let schemes: Vec<&str> = [(service.schemes.l402, "l402"), (service.schemes.payment, "payment")]
        .iter()
        .filter(|s| s.0)
        .map(|s| s.1)
        .collect();
    let mut entry = Object::new().with("path", path).with("path_match", path_match);
    if !route.methods.is_empty() {
        entry.insert("methods", route.methods.clone());
    }
    if let Some(host) = &route.host {
        let host = match host {
            HostMatch::Exact(name) => name.clone(),
            HostMatch::Suffix(suffix) => format!("*{suffix}"),
        };
        entry.insert("host", host);
    }
    entry.insert("service", &service.name);
    entry.insert("price", price);
    entry.insert("schemes", schemes);
    if !service.capabilities.is_empty() {
        entry.insert("capabilities", service.capabilities.clone());
    }
    if service.schemes.l402 {
        entry.insert("caveats_required", caveats(service));
        if let Some(lifetime) = service.lifetime_s {
            entry.insert("macaroon_timeout_secs", lifetime);
        }
        if config.node.macaroon_only {
            entry.insert("auto_detect_payment", true);
        }
    }
    if let Some(uses) = service.uses {
        entry.insert("uses", uses);
    }
    if let Some(freebies) = service.freebies {
        entry.insert("freebies", Object::new().with("requests", freebies.requests).with("period_s", freebies.period_s));
    }
    entry
}

/// The caveats every token of the service carries, as minted; the expiry and a quoted price's
/// caveats differ per token and are left out.
fn caveats(service: &Service) -> Vec<String> {
    let name = &service.name;
    let mut out = vec![format!("{SERVICES}={name}:0")];
    if !service.capabilities.is_empty() {
        out.push(format!("{name}{CAPABILITIES_SUFFIX}={}", service.capabilities.join(",")));
    }
    if let Some(prefix) = &service.restrict_path_prefix {
        out.push(format!("{name}{PATH_PREFIX_SUFFIX}={prefix}"));
    }
    if !service.restrict_methods.is_empty() {
        out.push(format!("{name}{METHODS_SUFFIX}={}", service.restrict_methods.join(",")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::config_json;
    use serde_json::{json, Value};

    fn manifest(routes: Value, discovery: Value) -> Option<Manifest> {
        let mut json = config_json(routes);
        json["discovery"] = discovery;
        Manifest::new(&Config::parse(json.to_string().as_bytes(), &|_| None).unwrap())
    }

    fn body(m: &Manifest) -> Value {
        serde_json::from_str(m.body()).unwrap()
    }

    #[test]
    fn lists_public_paid_routes_in_order() {
        let m = manifest(
            json!([
                { "match": { "path_prefix": "/health" }, "free": true },
                { "match": { "path_prefix": "/v1/", "methods": ["get"] }, "service": "weather", "price_msat": 10_500,
                  "lifetime_s": 60, "capabilities": ["read"], "uses": 3 },
                { "match": { "path_glob": "/files/**/*.json", "host": "*.example.com" }, "service": "files",
                  "price_sat": 2, "restrict": { "path_prefix": "/files/public/", "methods": ["GET"] },
                  "freebies": { "requests": 2, "period_s": 60 } },
                { "match": { "path": "/secret" }, "service": "secret", "price_sat": 1, "public": false },
                { "match": {}, "service": "charge", "price_sat": 1, "schemes": ["payment"] }
            ]),
            json!({ "enabled": true, "service": { "name": "Weather" } }),
        )
        .unwrap();
        let doc = body(&m);
        assert_eq!(doc["version"], "1");
        assert_eq!(doc["service"], json!({ "name": "Weather" }));
        assert_eq!(doc["payment_methods"], json!([{ "type": "lightning", "backend": "LND" }]));
        let routes = doc["routes"].as_array().unwrap();
        assert_eq!(routes.len(), 3);
        assert_eq!(
            routes[0],
            json!({ "path": "/v1/", "path_match": "prefix", "methods": ["GET"], "service": "weather",
                    "price": { "type": "static", "amount_msat": 10_500, "amount_sat": 11 }, "schemes": ["l402"],
                    "capabilities": ["read"], "caveats_required": ["services=weather:0", "weather_capabilities=read"],
                    "macaroon_timeout_secs": 60, "uses": 3 })
        );
        assert_eq!(routes[1]["path"], "/files/**/*.json");
        assert_eq!(routes[1]["path_match"], "glob");
        assert_eq!(routes[1]["host"], "*.example.com");
        assert_eq!(
            routes[1]["caveats_required"],
            json!(["services=files:0", "files_path_prefix=/files/public/", "files_methods=GET"])
        );
        assert_eq!(routes[1]["freebies"], json!({ "requests": 2, "period_s": 60 }));
        assert_eq!(routes[2]["path"], "/");
        assert_eq!(routes[2]["schemes"], json!(["payment"]));
        assert!(routes[2].get("caveats_required").is_none());
    }

    #[test]
    fn answers_with_an_etag_and_304_when_it_is_named() {
        let m = manifest(json!([{ "match": {}, "service": "a", "price_sat": 1 }]), json!({ "enabled": true })).unwrap();
        let ok = m.answer(None);
        assert_eq!(ok.status, 200);
        let etag = ok.headers.iter().find(|(k, _)| *k == "etag").map(|(_, v)| v.clone()).unwrap();
        assert!(etag.starts_with('"') && etag.len() == 34);
        assert!(ok.headers.contains(&("cache-control", "public, max-age=300".into())));
        for tags in [etag.clone(), format!("W/{etag}"), format!("\"x\", {etag}"), "*".into()] {
            let r = m.answer(Some(&tags));
            assert_eq!((r.status, r.body.as_str()), (304, ""), "{tags}");
        }
        assert_eq!(m.answer(Some("\"other\"")).status, 200);
        assert!(m.serves("/.well-known/l402-services?x=1") && !m.serves("/.well-known/l402-services/x"));
        assert!(Manifest::allows("head") && !Manifest::allows("POST"));
    }

    #[test]
    fn dynamic_prices_say_so_and_disabled_discovery_has_no_manifest() {
        let mut json = config_json(json!([{ "match": {}, "service": "llm", "dynamic_price": true }]));
        json["pricing"] = json!({ "upstream": "p", "authority": "p:80", "path": "/price" });
        json["discovery"] = json!({ "enabled": true, "path": "/api/services", "max_age_s": 0 });
        let m = Manifest::new(&Config::parse(json.to_string().as_bytes(), &|_| None).unwrap()).unwrap();
        assert_eq!(body(&m)["routes"][0]["price"], json!({ "type": "dynamic" }));
        assert!(m.serves("/api/services"));
        assert!(m.answer(None).headers.contains(&("cache-control", "public, max-age=0".into())));
        let routes = json!([{ "match": {}, "service": "a", "price_sat": 1 }]);
        assert!(manifest(routes.clone(), json!({ "path": "/x" })).is_none());
        assert!(manifest(routes, json!({ "enabled": false })).is_none());
    }
}
