//! Shared fixtures for the crate's unit tests.

use crate::config::Config;
use serde_json::{json, Value};

pub const SECRET_HEX: &str = "1111111111111111111111111111111111111111111111111111111111111111";

pub fn config_json(routes: Value) -> Value {
    json!({
        "secrets": [SECRET_HEX],
        "node": { "kind": "lnd", "upstream": "lnd", "authority": "lnd:8080", "credential": "abcd" },
        "routes": routes,
    })
}

pub fn config_with_routes(routes: Value) -> Config {
    Config::parse(config_json(routes).to_string().as_bytes(), &|_| None).unwrap()
}

/// `Authorization: Payment …` as a client sends it: the echoed challenge and the preimage.
pub fn payment_header(params: &crate::payment::Params, preimage: &str) -> String {
    use crate::json::{Json, Object};
    let credential =
        Object::new().with("challenge", params.to_json()).with("payload", Object::new().with("preimage", preimage));
    format!("Payment {}", crate::payment::wire::base64url_encode(Json::from(credential).text().as_bytes()))
}
