//! One request through the gate: a paid request is admitted (settlement check and use count where
//! configured) and handed to the upstream; an unpaid one gets a freebie, a rate-limit answer, or an
//! invoice from the node and a 402.

use super::admission::Admission;
use super::browser::BrowserState;
use super::challenge::Offer;
use super::host::{self, Host, HostStore};
use super::metering::Meter;
use super::root::Shared;
use crate::config::{Config, Endpoint, OnStoreError, Service};
use crate::fleet;
use crate::gate::{self, Decision, Presented, Refusal, Routing};
use crate::l402::encoding::hex_encode;
use crate::lightning::{parse_invoice, parse_settlement, Callout, MAX_RESPONSE_BYTES};
use crate::meter::Ledger;
use crate::metrics::Counter;
use crate::outcome::{Outcome, Record};
use crate::payment::{is_payment_authorization, receipt};
use crate::policy::canonical_target;
use crate::pricing::{parse_quote, Quote};
use crate::response::{self, is_grpc, LocalResponse};
use crate::store;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, LogLevel};
use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

/// What a paused request waits for.
pub(super) enum Waiting {
    /// The pricing endpoint's quote for a dynamically priced route.
    Price(Offer),
    /// The node's invoice, to answer with a challenge.
    Invoice { service: Service, quote: Quote, token_id: [u8; 32], refusal: Option<Refusal> },
    /// The node's word that the token's invoice is settled.
    Settlement(Admission),
    /// The fleet store's answer to a compare-and-swap on the token's use count.
    Usage { admission: Admission, limit: u64, attempt: u8 },
    /// The fleet store's answer to a compare-and-swap holding a reservation on the token's balance.
    Reservation { admission: Admission, held: Ledger, attempt: u8 },
}

pub struct Http {
    pub(super) shared: Rc<Shared>,
    pub(super) waiting: Option<(Waiting, Duration)>,
    /// The request's method and target (its path in canonical form), kept for the pricing endpoint.
    pub(super) method: String,
    pub(super) path: String,
    pub(super) host: Host,
    /// The filter let the request go on: only then may an upstream answer reach the client.
    pub(super) admitted: bool,
    /// The filter answered the request itself.
    pub(super) responded: Cell<bool>,
    /// The last callout failed after its request went out and before any answer came (nginx then
    /// loses a local response's body).
    pub(super) call_failed: bool,
    /// An upstream answer to a request never admitted is being replaced, by this body.
    pub(super) replacing_body: bool,
    pub(super) withheld: Option<String>,
    /// The `Payment-Receipt` of an admitted Payment-scheme charge, for the response.
    pub(super) receipt: Option<String>,
    /// The clock as the gate read it for a paid route (Unix seconds): the receipt's timestamp.
    pub(super) now: u64,
    /// On a route with the browser's cookie: what the page and the upstream's `Cookie` need.
    pub(super) browser: BrowserState,
    /// On a metered route: the reservation held for this request until its answer is charged.
    pub(super) meter: Option<Meter>,
}

/// The gRPC metadata key of the revised L402 spec's token.
const GRPC_TOKEN: &str = "token";

pub(super) fn header(name: &str) -> Option<String> {
    host::request_header(name).ok().flatten()
}

pub(super) fn key(kind: &str, id: &[u8; 32]) -> String {
    format!("l402.{kind}.{}", hex_encode(id))
}

impl Http {
    pub fn new(shared: Rc<Shared>) -> Http {
        Http {
            shared,
            waiting: None,
            method: String::new(),
            path: String::new(),
            host: Host::Envoy,
            admitted: false,
            responded: Cell::new(false),
            call_failed: false,
            replacing_body: false,
            withheld: None,
            receipt: None,
            now: 0,
            browser: BrowserState::default(),
            meter: None,
        }
    }

    /// The host the client asked for: Envoy's `:authority`; on nginx its `Host`, since the engine's
    /// `:authority` is nginx's own server name and port.
    pub(super) fn client_host(&self) -> Option<String> {
        header(if self.host == Host::Nginx { "host" } else { ":authority" })
    }

    /// The host, asked on the first request of this worker; on nginx also the request target as sent.
    fn learn_host(&mut self) -> Option<String> {
        let target = match self.shared.host.get() {
            Some(Host::Envoy) => return None,
            Some(Host::Nginx) | None => host::nginx_request_uri(),
        };
        self.host = if target.is_some() { Host::Nginx } else { Host::Envoy };
        if self.shared.host.replace(Some(self.host)).is_none() && self.host == Host::Nginx {
            // Without a default zone every shared-data call traps the module, which it cannot
            // detect beforehand: the hint stands in the log before the first trap.
            let fields = self.shared.config.shared_data_fields();
            if !fields.is_empty() {
                let message = format!("{} keep state in shared data: the default key-value zone must exist (Kong: nginx_wasm_shm_kv = 16m)", fields.join(", "));
                host::log(LogLevel::Info, &message);
            }
        }
        target
    }

    pub(super) fn respond(&self, response: &LocalResponse) {
        self.respond_with(response, None);
    }

    /// A local response with one header more, named by the configuration.
    pub(super) fn respond_with(&self, response: &LocalResponse, extra: Option<(&str, &str)>) {
        self.responded.set(true);
        if self.host == Host::Nginx {
            return self.respond_on_nginx(response, extra);
        }
        respond_now(response, extra);
    }

    /// nginx keeps only the last of repeated headers in a local response (and cannot add to
    /// `WWW-Authenticate` later): repeated headers go out as one field value, a list as RFC 9110
    /// allows. It also loses the body of a local response sent right after a failed call (the
    /// call's request buffer is recycled into the response and then emptied with the call), so
    /// that response goes out with its status and headers only.
    fn respond_on_nginx(&self, response: &LocalResponse, extra: Option<(&str, &str)>) {
        let mut headers: Vec<(&'static str, String)> = Vec::with_capacity(response.headers.len());
        for (name, value) in &response.headers {
            match headers.iter_mut().find(|(seen, _)| seen == name) {
                Some((_, joined)) => {
                    joined.push_str(", ");
                    joined.push_str(value);
                }
                None => headers.push((*name, value.clone())),
            }
        }
        let body = if self.call_failed { String::new() } else { response.body.clone() };
        respond_now(&LocalResponse { headers, body, ..response.clone() }, extra);
    }
}

/// Sends a local response as it is (and `extra`).
fn respond_now(response: &LocalResponse, extra: Option<(&str, &str)>) {
    let headers = response.headers.iter().map(|(k, v)| (*k, v.as_str())).chain(extra);
    if header("content-type").is_some_and(|t| is_grpc(&t)) {
        let headers = headers.filter(|(k, _)| *k != "content-type").map(|(k, v)| (k, v.as_bytes())).collect();
        host::send_grpc_response(response.grpc_status, response.grpc_message, headers);
    } else {
        host::send_response(response.status, headers.collect(), response.body.as_bytes());
    }
}

impl Http {
    /// The store that counts uses failed: 503, or uncounted passage under `fail_open`.
    pub(super) fn store_failure(&mut self, error: &dyn std::fmt::Display, admission: Option<&Admission>) -> Action {
        self.shared.count(Counter::StoreErrors);
        host::log(LogLevel::Warn, &format!("shared store: {error}"));
        match (self.shared.config.on_store_error, admission) {
            (OnStoreError::FailOpen, Some(admission)) => self.pass(admission),
            _ => {
                self.decided(&Record::new(Outcome::Error).reason("gateway_error"));
                self.respond(&response::gateway_failure("the gateway's shared store is unavailable"));
                Action::Pause
            }
        }
    }

    pub(super) fn client_network(config: &Config) -> String {
        let net = &config.client_network;
        host::client_address()
            .and_then(|address| store::client_network(&address, net.ipv4_prefix, net.ipv6_prefix))
            .unwrap_or_else(|| "unknown".to_owned())
    }

    /// Sends a callout; the HTTP request stays paused until it is answered.
    pub(super) fn call(&mut self, endpoint: &Endpoint, request: &Callout, waiting: Waiting) -> Action {
        match host::dispatch(endpoint, request) {
            Ok(_) => self.waiting = Some((waiting, host::now())),
            Err(()) => {
                self.shared.count(Counter::GatewayErrors);
                host::log(LogLevel::Warn, &format!("could not dispatch a call to {}", endpoint.upstream));
                self.decided(&Record::new(Outcome::Error).reason("gateway_error"));
                self.respond(&response::gateway_failure("a call from the gateway could not be dispatched"));
            }
        }
        Action::Pause
    }

    pub(super) fn call_node(&mut self, request: &Callout, waiting: Waiting) -> Action {
        let shared = Rc::clone(&self.shared);
        self.call(&shared.config.node.endpoint, request, waiting)
    }
}

impl Context for Http {
    fn on_http_call_response(&mut self, _token_id: u32, _num_headers: usize, body_size: usize, _num_trailers: usize) {
        let Some((waiting, dispatched)) = self.waiting.take() else { return };
        let shared = Rc::clone(&self.shared);
        let config = &shared.config;
        if let Some(id) = shared.latency_metric {
            let elapsed = host::now().saturating_sub(dispatched);
            host::record_metric(id, u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX));
        }
        let status = host::call_response_status();
        self.call_failed = status.is_none() && !(self.host == Host::Nginx && host::call_failed_before_sending());
        // One byte past the limit is enough for the parsers to refuse an oversized answer.
        let body = host::call_response_body(body_size.min(MAX_RESPONSE_BYTES.saturating_add(1)));
        let action = match waiting {
            Waiting::Price(offer) => {
                self.priced(offer, parse_quote(status, &body));
                Action::Pause
            }
            Waiting::Invoice { service, quote, token_id, refusal } => {
                match parse_invoice(config.node.kind, status, &body) {
                    Ok(invoice) => {
                        shared.count(Counter::ChallengesIssued);
                        let outcome = Record::challenge(refusal.as_ref().map(Refusal::code));
                        self.decided(&outcome.service(&service.name, Some(quote.price_msat)).token(&token_id));
                        let reply = self.payment_required(
                            &service,
                            &quote,
                            token_id,
                            refusal.as_ref(),
                            invoice.payment_hash,
                            &invoice.bolt11,
                        );
                        // What an exhausted bundle has left, where clients read the balance.
                        let left = match (&refusal, &config.upstream_headers.balance_msat) {
                            (Some(Refusal::BalanceExhausted { balance_msat, .. }), Some(name)) => {
                                Some((name.as_str(), balance_msat.to_string()))
                            }
                            _ => None,
                        };
                        self.respond_with(&reply, left.as_ref().map(|(name, value)| (*name, value.as_str())));
                    }
                    Err(error) => self.node_failed(&error),
                }
                Action::Pause
            }
            Waiting::Settlement(admission) => match parse_settlement(config.node.kind, status, &body) {
                Ok(true) => match store::set_flag(&HostStore, &key("settled", &admission.identifier.payment_hash)) {
                    Ok(()) => self.count_use_and_hand_off(&admission),
                    Err(e) => self.store_failure(&e, None),
                },
                Ok(false) => self.challenge(admission.service, Some(Refusal::Unsettled)),
                Err(error) => {
                    self.node_failed(&error);
                    Action::Pause
                }
            },
            Waiting::Usage { admission, limit, attempt } => {
                self.counted(admission, limit, attempt, fleet::parse_count(status, &body))
            }
            Waiting::Reservation { admission, held, attempt } => {
                self.reservation_answered(admission, held, attempt, fleet::parse_ledger(status, &body))
            }
        };
        // The request was paused for this call: let it go on if it was admitted.
        if let Action::Continue = action {
            self.admitted = true;
            host::resume_request();
        }
    }
}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let action = self.gate_request();
        if let Action::Continue = action {
            self.admitted = true;
        }
        action
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        self.meter_response_headers(end_of_stream);
        if let Some(receipt) = self.receipt.take() {
            host::set_response_header(receipt::HEADER, Some(&receipt));
            // A response that carries a receipt is the payer's alone, never a shared cache's.
            if !host::response_header("cache-control").is_some_and(|v| v.contains("no-store") || v.contains("private"))
            {
                host::set_response_header("cache-control", Some("private"));
            }
        }
        if !self.admitted && !self.responded.get() {
            // Never happens where the host calls the filter back on every callout; an engine that
            // resumes a paused request by itself (Kong 3.4-3.8 when a call fails) must not leak the API.
            self.shared.count(Counter::UnadmittedResponses);
            host::log(LogLevel::Error, "the host resumed a request the filter did not admit: its answer is withheld");
            let mut body = response::withheld_body();
            if self.host == Host::Nginx {
                // nginx's engines that resume a request by themselves (Kong 3.4-3.8) cannot make a
                // body chunk longer than it came.
                let declared = host::response_header("content-length").and_then(|n| n.trim().parse().ok());
                body = response::fit_to_length(body, declared);
            }
            host::replace_response_headers(503, "application/json", body.len());
            self.withheld = Some(body);
            self.replacing_body = true;
        }
        Action::Continue
    }

    fn on_http_response_trailers(&mut self, _num_trailers: usize) -> Action {
        self.meter_response_trailers();
        Action::Continue
    }

    fn on_log(&mut self) {
        self.meter_log();
    }

    fn on_http_response_body(&mut self, body_size: usize, _end_of_stream: bool) -> Action {
        if self.replacing_body {
            // The whole replacement goes into the first chunk; later ones are emptied.
            host::set_response_body(self.withheld.take().unwrap_or_default().as_bytes(), body_size);
        }
        Action::Continue
    }
}

impl Http {
    fn gate_request(&mut self) -> Action {
        let shared = Rc::clone(&self.shared);
        let config = &shared.config;
        let target = self.learn_host();
        if self.host == Host::Nginx {
            if let Some(name) = config.upstream_headers.names().find(|name| host::has_request_header(name)) {
                shared.count(Counter::ReservedHeader);
                self.decided(&Record::new(Outcome::ReservedHeader));
                self.respond(&response::reserved_header(name));
                return Action::Pause;
            }
        }
        let method = header(":method").unwrap_or_default();
        let path = target.unwrap_or_else(|| header(":path").unwrap_or_default());
        if let Some(manifest) = shared.manifest.as_ref().filter(|manifest| manifest.serves(&path)) {
            return self.serve_manifest(manifest, &method);
        }
        let authority = if config.matches_host { self.client_host().unwrap_or_default() } else { String::new() };
        if method == "POST" {
            if let Some(action) = self.redeem(&path, &authority) {
                return action;
            }
        }
        let mut credential_headers: &[&str] = &[];
        let decision = match gate::route(config, &method, &path, &authority) {
            Routing::Decided(decision) => decision,
            Routing::Paid(paid) => {
                // A non-UTF-8 credential is a malformed credential, never a missing one.
                let authorization = match host::request_header("authorization") {
                    Ok(value) => value,
                    // A Payment credential stays one (its lossy reading cannot verify).
                    Err(lossy) if is_payment_authorization(&lossy) => Some(lossy),
                    Err(_) => Some(String::from("L402 \u{fffd}")),
                };
                // A browser's cookie, where the route offers one; an `Authorization` header wins.
                let cookie = self.cookie_credential(paid.service, &path);
                let from_cookie = authorization.is_none() && cookie.is_some();
                let authorization = authorization.or(cookie);
                let macaroon = match authorization {
                    Some(_) => None,
                    None => header("grpc-metadata-macaroon").or_else(|| header("macaroon")),
                };
                // The revised L402 spec's gRPC clients send the token as `token` metadata (read on
                // gRPC only: other APIs have `token` headers of their own).
                let token = match (&authorization, &macaroon) {
                    (None, None) if header("content-type").is_some_and(|t| is_grpc(&t)) => header(GRPC_TOKEN),
                    _ => None,
                };
                credential_headers = match (&authorization, &token) {
                    (Some(_), _) if from_cookie => &[],
                    (Some(_), _) => &["authorization"],
                    (None, Some(_)) => &[GRPC_TOKEN],
                    (None, None) => &["grpc-metadata-macaroon", "macaroon"],
                };
                let macaroon = macaroon.or(token);
                self.now = host::now_unix();
                let presented =
                    Presented { authorization: authorization.as_deref(), macaroon: macaroon.as_deref(), now: self.now };
                gate::decide_paid(config, &mut shared.cache.borrow_mut(), &paid, &method, &presented)
            }
        };
        // Kept (moved, not copied) for a pricing call this request may still need.
        self.method = method;
        self.path = canonical_target(&path, config.paths.encoded_slashes).unwrap_or(path);
        if config.dry_run_anywhere {
            if let Some(action) = self.dry_run(&decision) {
                return action;
            }
        }
        match decision {
            Decision::Free => {
                shared.count(Counter::Free);
                self.decided(&Record::new(Outcome::Free));
                self.remove_metering_headers();
                Action::Continue
            }
            Decision::Paid { identifier, service, .. } if shared.is_revoked_in_fleet(&identifier.token_id) => {
                self.challenge(service.clone(), Some(Refusal::Revoked))
            }
            Decision::Paid { identifier, preimage_proven, service, price_msat, charge, .. } => {
                let admission =
                    Admission { identifier, service: service.clone(), price_msat, credential_headers, charge };
                self.admit(admission, preimage_proven)
            }
            Decision::NoRoute => {
                shared.count(Counter::NoRoute);
                self.decided(&Record::new(Outcome::NoRoute));
                self.respond(&response::no_route());
                Action::Pause
            }
            Decision::Challenge { service, refusal } => self.challenge(service.clone(), refusal),
            Decision::AmbiguousPath(why) => {
                shared.count(Counter::AmbiguousPath);
                self.decided(&Record::new(Outcome::AmbiguousPath));
                self.respond(&response::ambiguous_path(&why));
                Action::Pause
            }
        }
    }
}

/// The request of a route whose configuration was refused, on a host that cannot refuse it.
pub struct Misconfigured;

impl Context for Misconfigured {}

impl HttpContext for Misconfigured {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        respond_now(&response::misconfigured(), None);
        Action::Pause
    }
}
