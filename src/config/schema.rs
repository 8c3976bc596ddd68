//! kong/l402.meta.json names exactly the fields the reader reads. A document with every field is
//! read with a trace of what the reader asked for, and the trace is compared with the schema: the
//! same field names at every level, the same types, the same required fields, `null` allowed where
//! the reader takes it for absent, `{"env": NAME}` where the reader takes it, the same choices, and
//! `additionalProperties: false` everywhere (the reader refuses unknown fields). A field added to
//! the reader without the schema (or the other way round) fails here. Whether each value is accepted
//! the same way by both is tested with examples in tests/e2e/test_kong_schema.py.

use super::read::{Asked, Fields, Kind, Trace};
use super::RawConfig;
use crate::json::Json;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};

/// Every field the reader knows, each of the type it reads (values need not pass validation).
fn every_field() -> Value {
    json!({
        "secrets": ["00"],
        "node": { "kind": "lnd", "upstream": "u", "authority": "a", "tls": true, "credential": "c",
                  "timeout_ms": 1, "strict": true, "macaroon_only": true },
        "invoice": { "expiry_s": 1, "memo": "m" },
        "routes": [{
            "match": { "path": "/", "path_prefix": "/", "path_glob": "/", "methods": ["GET"], "host": "h" },
            "free": false, "service": "s", "price_sat": 1, "price_msat": 1, "lifetime_s": 1,
            "capabilities": ["c"], "restrict": { "path_prefix": "/", "methods": ["GET"] }, "uses": 1,
            "freebies": { "requests": 1, "period_s": 1 }, "dynamic_price": false, "schemes": ["l402"],
            "dry_run": false, "public": true, "browser": { "cookie": true, "cookie_secure": true },
            "metered": { "reserve_msat": 1, "max_cost_msat": 1, "cost_header": "x" }
        }],
        "unmatched": "deny",
        "challenge": { "lsat_header": true, "invalid_credential_status": 402 },
        "upstream_headers": { "strip_credential": true, "token_id": "a", "service": "b", "price_msat": "c",
                              "reserved_msat": "d", "balance_msat": "e" },
        "revoked": [],
        "challenge_limit": { "burst": 1, "per_minute": 1 },
        "client_network": { "ipv4_prefix": 24, "ipv6_prefix": 48 },
        "pricing": { "upstream": "u", "authority": "a", "path": "/", "tls": false, "timeout_ms": 1, "cache_s": 1,
                     "headers": [], "on_error": "deny" },
        "fleet": { "upstream": "u", "authority": "a", "tls": false, "timeout_ms": 1, "prefix": "/",
                   "revocation_poll_s": 1 },
        "on_store_error": "fail_closed",
        "paths": { "encoded_slashes": "reject" },
        "schemes": ["l402"],
        "payment": { "realm": "r" },
        "dry_run": false,
        "access_log_fields": false,
        "discovery": { "enabled": true, "path": "/", "max_age_s": 1,
                       "service": { "name": "n", "description": "d", "operator": "o", "contact": "c" } }
    })
}

fn fields_read() -> BTreeMap<String, Asked> {
    let document = Json::parse(every_field().to_string().as_bytes()).unwrap();
    let trace = Trace::default();
    let read = Fields::document(&document, Some(&trace)).and_then(RawConfig::read);
    assert!(read.is_ok(), "{:?}", read.err());
    trace.into_inner().into_iter().map(|asked| (asked.shape.clone(), asked)).collect()
}

fn schema() -> Value {
    let meta = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/kong/l402.meta.json")).unwrap();
    let meta: Value = serde_json::from_str(&meta).unwrap();
    assert_eq!(meta["config_schema"]["$schema"], "http://json-schema.org/draft-04/schema#");
    meta["config_schema"].clone()
}

fn types_of(schema: &Value) -> BTreeSet<&str> {
    match &schema["type"] {
        Value::String(s) => [s.as_str()].into(),
        Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
        _ => BTreeSet::new(),
    }
}

/// The schema of the inline form of a field that may also be `{"env": NAME}`, if it may.
fn inline_of(schema: &Value) -> Option<&Value> {
    let forms = schema["oneOf"].as_array()?;
    let env = json!({"type": "string", "minLength": 1});
    let is_env = |form: &Value| {
        form["required"] == json!(["env"])
            && form["additionalProperties"] == json!(false)
            && form["properties"]["env"]["type"] == env["type"]
    };
    match forms.as_slice() {
        [inline, env_form] if is_env(env_form) => Some(inline),
        _ => None,
    }
}

/// Compares the properties of one schema object with what the reader asked for under `at`.
fn compare(read: &BTreeMap<String, Asked>, object: &Value, at: &str, errors: &mut Vec<String>) {
    let here = if at.is_empty() { "config" } else { at };
    if object["additionalProperties"] != json!(false) {
        errors
            .push(format!("{here}: the reader refuses unknown fields, the schema has no additionalProperties: false"));
    }
    let prefix = if at.is_empty() { String::new() } else { format!("{at}.") };
    let props = object["properties"].as_object().cloned().unwrap_or_default();
    let required: BTreeSet<&str> =
        object["required"].as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
    let asked_here: BTreeSet<&str> = read
        .keys()
        .filter_map(|shape| shape.strip_prefix(prefix.as_str()))
        .filter(|rest| !rest.contains('.') && !rest.contains('['))
        .collect();
    for name in asked_here.iter().filter(|name| !props.contains_key(**name)) {
        errors.push(format!("{prefix}{name}: read by the parser, missing from the schema"));
    }
    for (name, prop) in &props {
        let path = format!("{prefix}{name}");
        let Some(asked) = read.get(&path) else {
            errors.push(format!("{path}: in the schema, unknown to the parser"));
            continue;
        };
        if asked.required != required.contains(name.as_str()) {
            errors.push(format!("{path}: required={} in the parser, not so in the schema", asked.required));
        }
        let inline = inline_of(prop);
        if asked.env != inline.is_some() {
            errors.push(format!("{path}: {{\"env\": NAME}} taken={} by the parser, not so in the schema", asked.env));
        }
        let prop = inline.unwrap_or(prop);
        let types = types_of(prop);
        if !types.is_empty() && asked.nullable != types.contains("null") {
            errors
                .push(format!("{path}: null taken={} by the parser, the schema's types are {types:?}", asked.nullable));
        }
        let want = match &asked.kind {
            Kind::Boolean => "boolean",
            Kind::Integer => "integer",
            Kind::String => "string",
            Kind::Strings | Kind::Objects => "array",
            Kind::Object => "object",
            Kind::Choice(values) => {
                let got: BTreeSet<&str> =
                    prop["enum"].as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
                let want: BTreeSet<&str> = values.iter().copied().collect();
                if got != want {
                    errors.push(format!("{path}: choices {want:?} in the parser, {got:?} in the schema"));
                }
                continue;
            }
        };
        if !types.contains(want) {
            errors.push(format!("{path}: {:?} in the parser, {types:?} in the schema", asked.kind));
        }
        match asked.kind {
            Kind::Strings if prop["items"]["type"] != "string" => {
                errors.push(format!("{path}: a list of strings in the parser, not in the schema"));
            }
            Kind::Object => compare(read, prop, &path, errors),
            Kind::Objects => compare(read, &prop["items"], &format!("{path}[]"), errors),
            _ => {}
        }
    }
}

#[test]
fn schema_names_exactly_the_parsers_fields() {
    let read = fields_read();
    assert!(read.contains_key("routes[].match.path_glob") && read.contains_key("node.credential"), "{read:?}");
    let mut errors = Vec::new();
    compare(&read, &schema(), "", &mut errors);
    assert!(errors.is_empty(), "kong/l402.meta.json and src/config disagree:\n  {}", errors.join("\n  "));
}

#[test]
fn the_comparison_catches_a_missing_field() {
    let mut schema = schema();
    schema["properties"]["node"]["properties"].as_object_mut().unwrap().remove("timeout_ms");
    schema["properties"]["routes"]["items"]["properties"]["lifetime_s"]["type"] = Value::from("integer");
    schema["properties"]["invoice"].as_object_mut().unwrap().remove("additionalProperties");
    schema["properties"]["unmatched"]["enum"] = json!(["deny"]);
    schema["properties"]["routes"]["items"]["properties"]["extra"] = json!({"type": "boolean"});
    let mut errors = Vec::new();
    compare(&fields_read(), &schema, "", &mut errors);
    let text = errors.join("\n");
    for expected in [
        "node.timeout_ms: read by the parser",
        "routes[].lifetime_s: null taken=true",
        "invoice: the reader refuses unknown fields",
        "unmatched: choices",
        "routes[].extra: in the schema, unknown to the parser",
    ] {
        assert!(text.contains(expected), "{expected} not in\n{text}");
    }
}
