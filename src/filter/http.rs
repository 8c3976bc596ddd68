//! One request: decide, hand paid requests to the upstream, and for a challenge fetch an invoice
//! from the node and answer 402.

use super::host;
use super::root::Shared;
use crate::config::{Config, Service};
use crate::gate::{decide, Decision, RequestView};
use crate::l402::caveats::{METHODS_SUFFIX, PATH_PREFIX_SUFFIX};
use crate::l402::encoding::{base64_encode, hex_encode};
use crate::l402::{mint, Grant, VerifyError};
use crate::lightning::{invoice_request, parse_invoice, InvoiceOrder, MAX_RESPONSE_BYTES};
use crate::metrics::Counter;
use crate::response::{self, is_grpc, LocalResponse};
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, LogLevel};
use std::rc::Rc;
use std::time::Duration;

/// A challenge waiting for the node's invoice.
struct Pending {
    service: Service,
    token_id: [u8; 32],
    refusal: Option<VerifyError>,
    dispatched: Duration,
}

pub struct Http {
    shared: Rc<Shared>,
    pending: Option<Pending>,
}

fn header(name: &str) -> Option<String> {
    host::request_header(name).ok().flatten()
}

impl Http {
    pub fn new(shared: Rc<Shared>) -> Http {
        Http { shared, pending: None }
    }

    fn respond(&self, response: &LocalResponse) {
        if header("content-type").is_some_and(|t| is_grpc(&t)) {
            let headers = response.headers.iter().filter(|(k, _)| *k != "content-type").map(|(k, v)| (*k, v.as_bytes())).collect();
            host::send_grpc_response(response.grpc_status, response.grpc_message, headers);
        } else {
            let headers = response.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            host::send_response(response.status, headers, response.body.as_bytes());
        }
    }

    /// The upstream gets the request without the credential (unless configured otherwise) and with
    /// the metering headers, which replace any copy the client sent.
    fn hand_off(config: &Config, service: &Service, token_id: &[u8; 32], from_authorization: bool) {
        let headers = &config.upstream_headers;
        if headers.strip_credential {
            if from_authorization {
                host::remove_request_header("authorization");
            } else {
                host::remove_request_header("grpc-metadata-macaroon");
                host::remove_request_header("macaroon");
            }
        }
        if let Some(name) = &headers.token_id {
            host::set_request_header(name, &hex_encode(token_id));
        }
        if let Some(name) = &headers.service {
            host::set_request_header(name, &service.name);
        }
        if let Some(name) = &headers.price_msat {
            host::set_request_header(name, &service.price_msat.to_string());
        }
    }

    /// Asks the node for an invoice; the request stays paused until it answers.
    fn start_challenge(&mut self, service: Service, refusal: Option<VerifyError>) -> Action {
        let config = &self.shared.config;
        let Some(token_id) = host::random_token_id() else {
            self.shared.count(Counter::GatewayErrors);
            self.respond(&response::gateway_failure("no randomness available for a token id"));
            return Action::Pause;
        };
        let label = hex_encode(&token_id);
        let memo = config.memo_for(&service.name);
        let order = InvoiceOrder { amount_msat: service.price_msat, memo: &memo, expiry_s: config.invoice_expiry_s, label: &label };
        let node = &config.node;
        let request = invoice_request(node.kind, &node.credential.0, &order);
        let content_length = request.body.len().to_string();
        let mut headers: Vec<(&str, &str)> = vec![
            (":method", request.method),
            (":path", &request.path),
            (":authority", &node.authority),
            (":scheme", if node.tls { "https" } else { "http" }),
            ("content-length", &content_length),
        ];
        headers.extend(request.headers.iter().map(|(k, v)| (*k, v.as_str())));
        let timeout = Duration::from_millis(u64::from(node.timeout_ms));
        match host::dispatch(&node.upstream, headers, &request.body, timeout) {
            Ok(_) => {
                self.pending = Some(Pending { service, token_id, refusal, dispatched: host::now() });
            }
            Err(()) => {
                self.shared.count(Counter::GatewayErrors);
                host::log(LogLevel::Warn, &format!("could not dispatch the invoice call to {}", node.upstream));
                self.respond(&response::gateway_failure("the invoice call to the Lightning node could not be dispatched"));
            }
        }
        Action::Pause
    }

    fn challenge_response(config: &Config, pending: &Pending, payment_hash: [u8; 32], invoice: &str) -> LocalResponse {
        let service = &pending.service;
        let mut constraints = Vec::new();
        if let Some(prefix) = &service.restrict_path_prefix {
            constraints.push((format!("{}{PATH_PREFIX_SUFFIX}", service.name), prefix.clone()));
        }
        if !service.restrict_methods.is_empty() {
            constraints.push((format!("{}{METHODS_SUFFIX}", service.name), service.restrict_methods.join(",")));
        }
        let grant = Grant {
            payment_hash,
            token_id: pending.token_id,
            service: &service.name,
            capabilities: &service.capabilities,
            valid_until: service.lifetime_s.map(|life| host::now_unix().saturating_add(life)),
            constraints: &constraints,
        };
        let macaroon = base64_encode(&mint(&config.secrets, &grant).encode());
        response::payment_required(config, service, &macaroon, invoice, pending.refusal.as_ref())
    }
}

impl Context for Http {
    fn on_http_call_response(&mut self, _token_id: u32, _num_headers: usize, body_size: usize, _num_trailers: usize) {
        let Some(pending) = self.pending.take() else { return };
        let shared = Rc::clone(&self.shared);
        let config = &shared.config;
        if let Some(id) = shared.latency_metric {
            let elapsed = host::now().saturating_sub(pending.dispatched);
            host::record_metric(id, u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX));
        }
        let status = host::call_response_status();
        let body = if body_size > MAX_RESPONSE_BYTES { vec![0; MAX_RESPONSE_BYTES + 1] } else { host::call_response_body(body_size) };
        let reply = match parse_invoice(config.node.kind, status, &body) {
            Ok(invoice) => {
                shared.count(Counter::ChallengesIssued);
                Self::challenge_response(config, &pending, invoice.payment_hash, &invoice.bolt11)
            }
            Err(error) => {
                shared.count(Counter::for_node_error(&error));
                host::log(LogLevel::Warn, &format!("invoice call failed: {error}"));
                response::node_failure(&error)
            }
        };
        self.respond(&reply);
    }
}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let shared = Rc::clone(&self.shared);
        let config = &shared.config;
        let method = header(":method").unwrap_or_default();
        let path = header(":path").unwrap_or_default();
        let authority = if config.matches_host { header(":authority").unwrap_or_default() } else { String::new() };
        // A non-UTF-8 credential is a malformed credential, never a missing one.
        let authorization = match host::request_header("authorization") {
            Ok(value) => value,
            Err(()) => Some(String::from("L402 \u{fffd}")),
        };
        let macaroon = match authorization {
            Some(_) => None,
            None => header("grpc-metadata-macaroon").or_else(|| header("macaroon")),
        };
        let view = RequestView {
            method: &method,
            path: &path,
            authority: &authority,
            authorization: authorization.as_deref(),
            macaroon: macaroon.as_deref(),
            now: host::now_unix(),
        };
        let decision = decide(config, &mut shared.cache.borrow_mut(), &view);
        match decision {
            Decision::Free => {
                shared.count(Counter::Free);
                config.upstream_headers.names().for_each(host::remove_request_header);
                Action::Continue
            }
            Decision::Paid { token_id, service } => {
                shared.count(Counter::Paid);
                Self::hand_off(config, service, &token_id, authorization.is_some());
                Action::Continue
            }
            Decision::NoRoute => {
                shared.count(Counter::NoRoute);
                self.respond(&response::no_route());
                Action::Pause
            }
            Decision::Challenge { service, refusal } => {
                shared.count(Counter::for_refusal(refusal.as_ref()));
                self.start_challenge(service.clone(), refusal)
            }
        }
    }
}
