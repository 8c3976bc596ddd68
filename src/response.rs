//! The responses the filter answers with itself, and the one place where every refusal and failure
//! gets its HTTP status.

use crate::browser::page::{content_security_policy, render, Page};
use crate::config::Config;
use crate::gate::Refusal;
use crate::json::{Json, Object};
use crate::l402::header::{challenge_from_base64, Scheme};
use crate::lightning::NodeError;
use crate::payment::PaymentError;
use crate::policy::path::Ambiguity;

/// gRPC status codes used when the request is gRPC: its clients read `grpc-status`, not `:status`.
pub mod grpc {
    pub const INVALID_ARGUMENT: u32 = 3;
    pub const PERMISSION_DENIED: u32 = 7;
    pub const RESOURCE_EXHAUSTED: u32 = 8;
    /// What Aperture answers for payment required.
    pub const INTERNAL: u32 = 13;
    pub const UNAVAILABLE: u32 = 14;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalResponse {
    pub status: u32,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
    /// The gRPC form of this response: status code and message.
    pub grpc_status: u32,
    pub grpc_message: &'static str,
}

fn json_response(
    status: u32,
    body: Object,
    headers: Vec<(&'static str, String)>,
    grpc: (u32, &'static str),
) -> LocalResponse {
    typed_response(status, "application/json", body, headers, grpc)
}

/// The body of a refusal or failure: what kind (`error`), the stable `reason`, and a sentence.
pub(crate) fn error_body(error: &str, reason: &str, detail: &str) -> Object {
    Object::new().with("error", error).with("reason", reason).with("detail", detail)
}

fn typed_response(
    status: u32,
    content_type: &str,
    body: Object,
    mut headers: Vec<(&'static str, String)>,
    (grpc_status, grpc_message): (u32, &'static str),
) -> LocalResponse {
    headers.push(("content-type", content_type.to_owned()));
    headers.push(("cache-control", "no-store".to_owned()));
    LocalResponse { status, headers, body: Json::from(body).text(), grpc_status, grpc_message }
}

/// Whether a request's `content-type` makes it gRPC.
pub fn is_grpc(content_type: &str) -> bool {
    content_type.get(..16).is_some_and(|p| p.eq_ignore_ascii_case("application/grpc"))
}

/// What a challenge offers: the service, its price and the invoice to pay, in the route's dialects.
pub struct Offer<'a> {
    pub service: &'a str,
    pub price_msat: u64,
    /// The L402 macaroon, where the route speaks L402.
    pub macaroon_b64: Option<&'a str>,
    /// The Payment challenge's `WWW-Authenticate` value, where the route speaks the Payment scheme.
    pub payment: Option<&'a str>,
    pub invoice: &'a str,
    pub expiry_s: u32,
}

/// 402 with the challenges, all for one invoice. Aperture's header order: LSAT (for old clients)
/// first, then L402; the Payment challenge last. A refused Payment credential, and a route that
/// speaks only the Payment scheme, get RFC 9457 problem details; L402 clients keep their JSON.
pub fn payment_required(config: &Config, offer: &Offer<'_>, refusal: Option<&Refusal>) -> LocalResponse {
    let Offer { service, price_msat, invoice, expiry_s, .. } = *offer;
    let headers = challenge_headers(config, offer);
    let grpc = (grpc::INTERNAL, "payment required");
    if is_problem(offer, refusal) {
        let (kind, title) = problem_type(refusal);
        let detail = refusal
            .map_or_else(|| "pay the invoice and retry with the Payment credential".to_owned(), Refusal::to_string);
        let body = Object::new()
            .with("type", format!("{PROBLEM_BASE}{kind}"))
            .with("title", title)
            .with("status", 402u32)
            .with("detail", detail)
            .with("reason", refusal.map_or("payment_required", Refusal::code))
            .with("service", service)
            .with("price_sat", price_msat.div_ceil(1000))
            .with("invoice", invoice)
            .with("invoice_expires_in_s", expiry_s);
        return typed_response(402, "application/problem+json", body, headers, grpc);
    }
    let (reason, detail) = match refusal {
        Some(r) => (r.code(), r.to_string()),
        None => ("payment_required", "pay the invoice and retry with the L402 credential".to_owned()),
    };
    let mut body = error_body("payment_required", reason, &detail)
        .with("service", service)
        .with("price_msat", price_msat)
        .with("price_sat", price_msat.div_ceil(1000))
        .with("invoice", invoice)
        .with("invoice_expires_in_s", expiry_s);
    if let Some(Refusal::BalanceExhausted { balance_msat, reserve_msat }) = refusal {
        // What is left on the old token, for a client deciding on a new bundle.
        body = body.with("balance_msat", *balance_msat).with("reserve_msat", *reserve_msat);
    }
    json_response(challenge_status(config, offer, refusal), body, headers, grpc)
}

/// The challenges of the offer, in Aperture's order.
fn challenge_headers(config: &Config, offer: &Offer<'_>) -> Vec<(&'static str, String)> {
    let mut headers = Vec::with_capacity(10);
    if let Some(macaroon_b64) = offer.macaroon_b64 {
        if config.lsat_header {
            headers.push(("www-authenticate", challenge_from_base64(Scheme::Lsat, macaroon_b64, offer.invoice)));
        }
        headers.push(("www-authenticate", challenge_from_base64(Scheme::L402, macaroon_b64, offer.invoice)));
    }
    if let Some(payment) = offer.payment {
        headers.push(("www-authenticate", payment.to_owned()));
    }
    headers.push(("access-control-expose-headers", "WWW-Authenticate".to_owned()));
    headers
}

/// Whether the challenge is in the Payment scheme's words (problem details).
fn is_problem(offer: &Offer<'_>, refusal: Option<&Refusal>) -> bool {
    matches!(refusal, Some(Refusal::Payment(_))) || offer.macaroon_b64.is_none()
}

/// A refused L402 credential gets the configured status; everything else 402.
fn challenge_status(config: &Config, offer: &Offer<'_>, refusal: Option<&Refusal>) -> u32 {
    if refusal.is_some() && !is_problem(offer, refusal) {
        config.invalid_credential_status
    } else {
        402
    }
}

/// The challenge as an HTML page, for a browser: the same challenges and status as the JSON it
/// stands for, and a policy that lets nothing but the page's own style and script run.
pub fn payment_page(config: &Config, offer: &Offer<'_>, page: &Page<'_>, refusal: Option<&Refusal>) -> LocalResponse {
    let mut headers = challenge_headers(config, offer);
    headers.extend([
        ("content-type", "text/html; charset=utf-8".to_owned()),
        ("cache-control", "no-store".to_owned()),
        ("content-security-policy", content_security_policy()),
        ("x-content-type-options", "nosniff".to_owned()),
        ("referrer-policy", "no-referrer".to_owned()),
    ]);
    LocalResponse {
        status: challenge_status(config, offer, refusal),
        headers,
        body: render(page),
        grpc_status: grpc::INTERNAL,
        grpc_message: "payment required",
    }
}

/// 303 to the resource with the cookie a browser's payment was redeemed into.
pub fn redeemed(location: &str, set_cookie: String) -> LocalResponse {
    LocalResponse {
        status: 303,
        headers: vec![
            ("location", location.to_owned()),
            ("set-cookie", set_cookie),
            ("cache-control", "no-store".to_owned()),
        ],
        body: String::new(),
        grpc_status: grpc::INVALID_ARGUMENT,
        grpc_message: "a browser's redemption",
    }
}

/// 403 for a redemption refused: the credential's reason as a paid request would get it, or
/// `cross_site` for one posted from another site (it would plant that site's token in the browser).
pub fn redemption_refused(reason: &str, detail: &str) -> LocalResponse {
    json_response(
        403,
        error_body("forbidden", reason, detail),
        Vec::new(),
        (grpc::PERMISSION_DENIED, "redemption refused"),
    )
}

/// Where the Payment scheme's problem types live (draft-httpauth-payment §8).
pub const PROBLEM_BASE: &str = "https://paymentauth.org/problems/";

/// The draft's problem type and title for a refusal: every one is a 402 with a fresh challenge.
fn problem_type(refusal: Option<&Refusal>) -> (&'static str, &'static str) {
    match refusal {
        None => ("payment-required", "Payment Required"),
        Some(Refusal::Payment(e)) => match e {
            PaymentError::Malformed(_) => ("malformed-credential", "Malformed Credential"),
            PaymentError::MethodUnsupported => ("method-unsupported", "Method Unsupported"),
            PaymentError::InvalidChallenge
            | PaymentError::WrongService
            | PaymentError::Restricted
            | PaymentError::Replayed => ("invalid-challenge", "Invalid Challenge"),
            PaymentError::WrongPrice => ("payment-insufficient", "Payment Insufficient"),
            PaymentError::Expired => ("payment-expired", "Payment Expired"),
            PaymentError::PreimageMismatch => ("verification-failed", "Verification Failed"),
        },
        Some(_) => ("verification-failed", "Verification Failed"),
    }
}

/// 503: the gate cannot decide safely without the node, so nothing passes.
pub fn node_failure(error: &NodeError) -> LocalResponse {
    let body = error_body("node_unavailable", error.code(), &error.to_string());
    json_response(503, body, vec![("retry-after", "5".to_owned())], (grpc::UNAVAILABLE, "lightning node unavailable"))
}

/// 503: the route's price comes from the pricing endpoint, which failed, and the route has no
/// static price to fall back on.
pub fn pricing_failure(error: &NodeError) -> LocalResponse {
    let detail = format!("the pricing endpoint failed ({})", error.code());
    let body = error_body("pricing_unavailable", "pricing_unavailable", &detail);
    json_response(503, body, vec![("retry-after", "5".to_owned())], (grpc::UNAVAILABLE, "pricing unavailable"))
}

/// 503 for a failure inside the gateway itself (e.g. the host could not dispatch the callout).
pub fn gateway_failure(detail: &str) -> LocalResponse {
    json_response(
        503,
        error_body("gateway_error", "gateway_error", detail),
        Vec::new(),
        (grpc::UNAVAILABLE, "gateway error"),
    )
}

/// 429: this client network asked for too many invoices; it may retry after `retry_after_s`.
pub fn too_many_challenges(retry_after_s: u64) -> LocalResponse {
    let detail = "too many unpaid requests from this network; pay an invoice already issued or retry later";
    let body = error_body("too_many_requests", "challenge_rate_limited", detail).with("retry_after_s", retry_after_s);
    json_response(
        429,
        body,
        vec![("retry-after", retry_after_s.to_string())],
        (grpc::RESOURCE_EXHAUSTED, "too many unpaid requests"),
    )
}

/// 403 for a request no route rule covers, under `unmatched: deny`.
pub fn no_route() -> LocalResponse {
    json_response(
        403,
        error_body("forbidden", "no_route", "no route rule covers this request"),
        Vec::new(),
        (grpc::PERMISSION_DENIED, "no route"),
    )
}

/// 400 for a path an upstream could read as another path than the one the filter decided on.
pub fn ambiguous_path(why: &Ambiguity) -> LocalResponse {
    json_response(
        400,
        error_body("bad_request", "ambiguous_path", &why.to_string()),
        Vec::new(),
        (grpc::INVALID_ARGUMENT, "ambiguous path"),
    )
}

/// 400 where the host cannot remove a request header (nginx): a client's copy of a header the
/// filter sets for the upstream would pass as the filter's, so the request is refused.
pub fn reserved_header(name: &str) -> LocalResponse {
    let detail = format!("{name} is set by the gateway for the upstream and may not come from the client");
    json_response(
        400,
        error_body("bad_request", "reserved_header", &detail),
        Vec::new(),
        (grpc::INVALID_ARGUMENT, "reserved header"),
    )
}

/// 500 for every request of a route whose filter configuration was refused (on a host that cannot
/// refuse it at load); the gateway's error log names the field.
pub fn misconfigured() -> LocalResponse {
    let detail = "the paywall's configuration was refused; see the gateway's error log";
    json_response(
        500,
        error_body("gateway_error", "invalid_configuration", detail),
        Vec::new(),
        (grpc::INTERNAL, "invalid paywall configuration"),
    )
}

/// The body that replaces an upstream answer to a request the filter never admitted.
pub fn withheld_body() -> String {
    let detail = "the gateway resumed a request the paywall did not admit";
    Json::from(error_body("gateway_error", "not_admitted", detail)).text()
}

/// `body` padded with spaces to `declared` bytes, or no body where it does not fit; as it is without a
/// declared length. For a replacement body where the host cannot change the length of the answer.
pub fn fit_to_length(body: String, declared: Option<usize>) -> String {
    match declared {
        Some(length) if length >= body.len() => format!("{body:length$}"),
        Some(_) => String::new(),
        None => body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_replacement_body_takes_the_declared_length() {
        assert_eq!(fit_to_length("{}".into(), Some(5)), "{}   ");
        assert_eq!(fit_to_length("{}".into(), Some(2)), "{}");
        assert_eq!(fit_to_length("{\"a\":1}".into(), Some(3)), "");
        assert_eq!(fit_to_length("{}".into(), None), "{}");
        let padded = fit_to_length(withheld_body(), Some(400));
        assert_eq!(padded.len(), 400);
        assert_eq!(serde_json::from_str::<Value>(&padded).unwrap()["reason"], "not_admitted");
    }
    use crate::testing::config_with_routes;
    use serde_json::Value;

    #[test]
    fn challenge_has_both_schemes_and_a_json_reason() {
        let config = config_with_routes(json!([{ "match": {}, "service": "weather", "price_msat": 10_500 }]));
        let offer = Offer {
            service: "weather",
            price_msat: 10_500,
            macaroon_b64: Some("TUFD"),
            payment: None,
            invoice: "lnbc1",
            expiry_s: 600,
        };
        let r = payment_required(&config, &offer, Some(&Refusal::Token(crate::l402::VerifyError::Expired)));
        assert_eq!(r.status, 402);
        let auth: Vec<_> =
            r.headers.iter().filter(|(k, _)| *k == "www-authenticate").map(|(_, v)| v.as_str()).collect();
        assert_eq!(auth.len(), 2);
        assert!(auth[0].starts_with("LSAT macaroon=\"TUFD\", invoice=\"lnbc1\""));
        assert!(auth[1].starts_with("L402 macaroon=\"TUFD\", invoice=\"lnbc1\""));
        assert!(r.headers.contains(&("cache-control", "no-store".into())));
        let body: Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(body["reason"], "expired");
        assert_eq!(body["price_sat"], 11);
        assert_eq!(body["invoice_expires_in_s"], 600);
    }

    #[test]
    fn grpc_requests_are_recognised() {
        assert!(is_grpc("application/grpc"));
        assert!(is_grpc("application/grpc+proto"));
        assert!(is_grpc("Application/GRPC-web"));
        assert!(!is_grpc("application/json"));
        assert!(!is_grpc("application/grp"));
    }

    #[test]
    fn ambiguous_paths_are_400_with_reason() {
        let r = ambiguous_path(&Ambiguity::DotSegment);
        assert_eq!((r.status, r.grpc_status), (400, grpc::INVALID_ARGUMENT));
        let body: Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(body["reason"], "ambiguous_path");
        assert_eq!(body["detail"], "the path has a . or .. segment");
    }

    #[test]
    fn node_failures_are_503_with_reason() {
        let r = node_failure(&NodeError::Status(500));
        assert_eq!(r.status, 503);
        let body: Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(body["reason"], "node_error_status");
    }
}
