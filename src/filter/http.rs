//! One request through the gate: a paid request is admitted (settlement check and use count where
//! configured) and handed to the upstream; an unpaid one gets a freebie, a rate-limit answer, or an
//! invoice from the node and a 402.

use super::host::{self, Host, HostStore};
use super::root::Shared;
use crate::config::{Config, Endpoint, OnStoreError, PricingFallback, Service};
use crate::fleet::{self, Seen, TxnOutcome};
use crate::gate::{self, Decision, Presented, Refusal, Routing};
use crate::l402::caveats::{METHODS_SUFFIX, PATH_PREFIX_SUFFIX, PATH_SUFFIX, PRICE_SUFFIX};
use crate::l402::encoding::{base64_encode, hex_encode};
use crate::l402::{mint, Grant, Identifier};
use crate::lightning::{
    invoice_request, invoiceable_msat, parse_invoice, parse_settlement, settlement_request, Callout, InvoiceOrder,
    NodeError, MAX_RESPONSE_BYTES,
};
use crate::metrics::Counter;
use crate::policy::{canonical_target, path_only};
use crate::pricing::{parse_quote, price_request, Quote};
use crate::response::{self, is_grpc, LocalResponse, Offer};
use crate::store;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, LogLevel};
use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

/// A paid request on its way in; `from_authorization` tells which header carried the credential.
#[derive(Clone)]
struct Admission {
    identifier: Identifier,
    service: Service,
    /// The price the token was bought at, for the metering header.
    price_msat: Option<u64>,
    from_authorization: bool,
}

/// What a paused request waits for.
enum Waiting {
    /// The pricing endpoint's quote for a dynamically priced route.
    Price { service: Service, refusal: Option<Refusal> },
    /// The node's invoice, to answer with a challenge.
    Invoice { service: Service, quote: Quote, token_id: [u8; 32], refusal: Option<Refusal> },
    /// The node's word that the token's invoice is settled.
    Settlement(Admission),
    /// The fleet store's answer to a compare-and-swap on the token's use count.
    Usage { admission: Admission, limit: u64, attempt: u8 },
}

/// Compare-and-swap rounds on a fleet use counter before the store counts as failing.
const FLEET_CAS_ATTEMPTS: u8 = 4;

pub struct Http {
    shared: Rc<Shared>,
    waiting: Option<(Waiting, Duration)>,
    /// The request's method and target (its path in canonical form), kept for the pricing endpoint.
    method: String,
    path: String,
    host: Host,
    /// The filter let the request go on: only then may an upstream answer reach the client.
    admitted: bool,
    /// The filter answered the request itself.
    responded: Cell<bool>,
    /// The last callout failed before any answer came (nginx then loses a local response's body).
    call_failed: bool,
    /// An upstream answer to a request never admitted is being replaced, by this body.
    replacing_body: bool,
    withheld: Option<String>,
}

fn header(name: &str) -> Option<String> {
    host::request_header(name).ok().flatten()
}

fn key(kind: &str, id: &[u8; 32]) -> String {
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
        }
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

    fn respond(&self, response: &LocalResponse) {
        self.responded.set(true);
        if self.host == Host::Nginx {
            return self.respond_on_nginx(response);
        }
        respond_now(response);
    }

    /// nginx keeps only the last of repeated headers in a local response (and cannot add to
    /// `WWW-Authenticate` later): repeated headers go out as one field value, a list as RFC 9110
    /// allows. It also loses the body of a local response sent right after a failed call (the
    /// call's request buffer is recycled into the response and then emptied with the call), so
    /// that response goes out with its status and headers only.
    fn respond_on_nginx(&self, response: &LocalResponse) {
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
        respond_now(&LocalResponse { headers, body, ..response.clone() });
    }
}

/// Sends a local response as it is.
fn respond_now(response: &LocalResponse) {
    if header("content-type").is_some_and(|t| is_grpc(&t)) {
        let headers =
            response.headers.iter().filter(|(k, _)| *k != "content-type").map(|(k, v)| (*k, v.as_bytes())).collect();
        host::send_grpc_response(response.grpc_status, response.grpc_message, headers);
    } else {
        let headers = response.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        host::send_response(response.status, headers, response.body.as_bytes());
    }
}

impl Http {
    /// The store that counts uses failed: 503, or uncounted passage under `fail_open`.
    fn store_failure(&mut self, error: &dyn std::fmt::Display, admission: Option<&Admission>) -> Action {
        self.shared.count(Counter::StoreErrors);
        host::log(LogLevel::Warn, &format!("shared store: {error}"));
        match (self.shared.config.on_store_error, admission) {
            (OnStoreError::FailOpen, Some(admission)) => self.pass(admission),
            _ => {
                self.respond(&response::gateway_failure("the gateway's shared store is unavailable"));
                Action::Pause
            }
        }
    }

    fn client_network(config: &Config) -> String {
        let net = &config.client_network;
        host::client_address()
            .and_then(|address| store::client_network(&address, net.ipv4_prefix, net.ipv6_prefix))
            .unwrap_or_else(|| "unknown".to_owned())
    }

    /// Sends a callout; the HTTP request stays paused until it is answered.
    fn call(&mut self, endpoint: &Endpoint, request: &Callout, waiting: Waiting) -> Action {
        match host::dispatch(endpoint, request) {
            Ok(_) => self.waiting = Some((waiting, host::now())),
            Err(()) => {
                self.shared.count(Counter::GatewayErrors);
                host::log(LogLevel::Warn, &format!("could not dispatch a call to {}", endpoint.upstream));
                self.respond(&response::gateway_failure("a call from the gateway could not be dispatched"));
            }
        }
        Action::Pause
    }

    fn call_node(&mut self, request: &Callout, waiting: Waiting) -> Action {
        let shared = Rc::clone(&self.shared);
        self.call(&shared.config.node.endpoint, request, waiting)
    }

    /// A paid request: confirm settlement where required, then count the use and hand it on.
    fn admit(&mut self, admission: Admission, preimage_proven: bool) -> Action {
        let config = &self.shared.config;
        if preimage_proven && !config.node.strict {
            return self.count_use_and_hand_off(&admission);
        }
        match store::flag(&HostStore, &key("settled", &admission.identifier.payment_hash)) {
            Ok(true) => self.count_use_and_hand_off(&admission),
            Ok(false) => {
                let node = &config.node;
                let request = settlement_request(node.kind, &node.credential.0, &admission.identifier.payment_hash);
                self.call_node(&request, Waiting::Settlement(admission))
            }
            Err(e) => self.store_failure(&e, None),
        }
    }

    fn count_use_and_hand_off(&mut self, admission: &Admission) -> Action {
        let Some(limit) = admission.service.uses else { return self.pass(admission) };
        let shared = Rc::clone(&self.shared);
        if let Some(fleet) = &shared.config.fleet {
            let request = fleet::count_use(&fleet::uses_key(&fleet.prefix, &admission.identifier.token_id), None);
            let waiting = Waiting::Usage { admission: admission.clone(), limit, attempt: 1 };
            return self.call(&fleet.endpoint, &request, waiting);
        }
        match store::take_one(&HostStore, &key("uses", &admission.identifier.token_id), limit) {
            Ok(true) => self.pass(admission),
            Ok(false) => self.challenge(admission.service.clone(), Some(Refusal::UsedUp)),
            Err(e) => self.store_failure(&e, Some(admission)),
        }
    }

    /// The fleet store answered a use-count step: counted, used up, or try again.
    fn counted(
        &mut self,
        admission: Admission,
        limit: u64,
        attempt: u8,
        answer: Result<TxnOutcome, NodeError>,
    ) -> Action {
        let shared = Rc::clone(&self.shared);
        let Some(fleet) = &shared.config.fleet else { return Action::Pause };
        match answer {
            Ok(TxnOutcome::Counted) => self.pass(&admission),
            Ok(TxnOutcome::Changed(Seen { count, .. })) if count >= limit => {
                self.challenge(admission.service, Some(Refusal::UsedUp))
            }
            Ok(TxnOutcome::Changed(seen)) if attempt < FLEET_CAS_ATTEMPTS => {
                let request =
                    fleet::count_use(&fleet::uses_key(&fleet.prefix, &admission.identifier.token_id), Some(&seen));
                self.call(
                    &fleet.endpoint,
                    &request,
                    Waiting::Usage { admission, limit, attempt: attempt.saturating_add(1) },
                )
            }
            Ok(TxnOutcome::Changed(_)) => self.store_failure(&"use counter kept changing", Some(&admission)),
            Err(error) => self.store_failure(&error, Some(&admission)),
        }
    }

    fn pass(&self, admission: &Admission) -> Action {
        self.shared.count(Counter::Paid);
        self.hand_off(admission);
        Action::Continue
    }

    /// The upstream gets the request without the credential (unless configured otherwise) and with
    /// the metering headers, which replace any copy the client sent.
    fn hand_off(&self, admission: &Admission) {
        let headers = &self.shared.config.upstream_headers;
        if headers.strip_credential {
            let credential: &[&str] =
                if admission.from_authorization { &["authorization"] } else { &["grpc-metadata-macaroon", "macaroon"] };
            credential.iter().for_each(|name| self.remove_credential_header(name));
        }
        if let Some(name) = &headers.token_id {
            host::set_request_header(name, &hex_encode(&admission.identifier.token_id));
        }
        if let Some(name) = &headers.service {
            host::set_request_header(name, &admission.service.name);
        }
        match (&headers.price_msat, admission.price_msat) {
            (Some(name), Some(price)) => host::set_request_header(name, &price.to_string()),
            (Some(name), None) => self.remove_client_copy(name),
            (None, _) => {}
        }
    }

    /// nginx's proxy module forwards a removed request header all the same: there the credential
    /// is blanked instead, and forwarded as an empty header.
    fn remove_credential_header(&self, name: &str) {
        match self.host {
            Host::Envoy => host::remove_request_header(name),
            Host::Nginx => host::set_request_header(name, ""),
        }
    }

    /// Client copies of the metering headers never reach the upstream. nginx cannot remove them, so
    /// there a request that carries one was refused before any decision (`reserved_header`).
    fn remove_client_copy(&self, name: &str) {
        if self.host == Host::Envoy {
            host::remove_request_header(name);
        }
    }

    fn remove_metering_headers(&self) {
        self.shared.config.upstream_headers.names().for_each(|name| self.remove_client_copy(name));
    }

    /// An unpaid request: a freebie if the route grants one, a 429 past the challenge limit,
    /// otherwise an invoice and a 402.
    fn challenge(&mut self, service: Service, refusal: Option<Refusal>) -> Action {
        let shared = Rc::clone(&self.shared);
        let config = &shared.config;
        shared.count(Counter::for_refusal(refusal.as_ref()));
        let needs_network = (refusal.is_none() && service.freebies.is_some()) || config.challenge_limit.is_some();
        let network = if needs_network { Self::client_network(config) } else { String::new() };

        if let (None, Some(freebies)) = (&refusal, service.freebies) {
            let period = host::now_unix().checked_div(freebies.period_s).unwrap_or(0);
            let key = format!("l402.free.{}.{network}.{period}", service.name);
            match store::take_one(&HostStore, &key, freebies.requests) {
                Ok(true) => {
                    shared.count(Counter::Freebies);
                    self.remove_metering_headers();
                    return Action::Continue;
                }
                Ok(false) => {}
                Err(e) => return self.store_failure(&e, None),
            }
        }
        if let Some(limit) = config.challenge_limit {
            let now_ms = u64::try_from(host::now().as_millis()).unwrap_or(u64::MAX);
            match store::take_token(&HostStore, &format!("l402.limit.{network}"), now_ms, limit.burst, limit.per_minute)
            {
                Ok(Ok(())) => {}
                Ok(Err(retry_after_s)) => {
                    shared.count(Counter::ChallengesLimited);
                    self.respond(&response::too_many_challenges(retry_after_s));
                    return Action::Pause;
                }
                Err(e) => return self.store_failure(&e, None),
            }
        }

        match (&config.pricing, service.dynamic_price) {
            (Some(pricing), true) => {
                let cached = shared.quotes.borrow().get(&self.method, &self.path, host::now_unix()).cloned();
                if let Some(quote) = cached {
                    return self.invoice(service, quote, refusal);
                }
                let headers: Vec<(String, String)> =
                    pricing.headers.iter().filter_map(|name| header(name).map(|value| (name.clone(), value))).collect();
                let request = price_request(pricing, &self.method, &self.path, &service.name, &headers);
                self.call(&pricing.endpoint, &request, Waiting::Price { service, refusal })
            }
            _ => match Self::static_quote(&service) {
                Some(quote) => self.invoice(service, quote, refusal),
                None => {
                    self.respond(&response::gateway_failure("the route has no price"));
                    Action::Pause
                }
            },
        }
    }

    fn static_quote(service: &Service) -> Option<Quote> {
        Some(Quote { price_msat: service.price_msat?, lifetime_s: service.lifetime_s, capabilities: None })
    }

    /// Asks the node for an invoice at the quoted price.
    fn invoice(&mut self, service: Service, mut quote: Quote, refusal: Option<Refusal>) -> Action {
        let shared = Rc::clone(&self.shared);
        let config = &shared.config;
        let Some(token_id) = host::random_token_id() else {
            shared.count(Counter::GatewayErrors);
            self.respond(&response::gateway_failure("no randomness available for a token id"));
            return Action::Pause;
        };
        quote.price_msat = invoiceable_msat(config.node.kind, quote.price_msat);
        let label = hex_encode(&token_id);
        let memo = config.memo_for(&service.name);
        let order = InvoiceOrder {
            amount_msat: quote.price_msat,
            memo: &memo,
            expiry_s: config.invoice_expiry_s,
            label: &label,
        };
        let request = invoice_request(config.node.kind, &config.node.credential.0, &order);
        self.call_node(&request, Waiting::Invoice { service, quote, token_id, refusal })
    }

    /// The pricing endpoint answered (or failed): invoice at its price, or as the fallback says.
    fn priced(&mut self, service: Service, refusal: Option<Refusal>, answer: Result<Quote, NodeError>) {
        let shared = Rc::clone(&self.shared);
        let Some(pricing) = &shared.config.pricing else { return };
        match answer {
            Ok(quote) => {
                let until = host::now_unix().saturating_add(pricing.cache_s);
                shared.quotes.borrow_mut().put(&self.method, &self.path, quote.clone(), until);
                self.invoice(service, quote, refusal);
            }
            Err(error) => {
                shared.count(Counter::PricingErrors);
                host::log(LogLevel::Warn, &format!("pricing call failed: {}", error.code()));
                match (pricing.on_error, Self::static_quote(&service)) {
                    (PricingFallback::Static, Some(quote)) => {
                        self.invoice(service, quote, refusal);
                    }
                    _ => self.respond(&response::pricing_failure(&error)),
                }
            }
        }
    }

    fn payment_required(
        &self,
        service: &Service,
        quote: &Quote,
        token_id: [u8; 32],
        refusal: Option<&Refusal>,
        payment_hash: [u8; 32],
        invoice: &str,
    ) -> LocalResponse {
        let config = &self.shared.config;
        let mut constraints = Vec::new();
        if service.dynamic_price {
            // The price was quoted for this method and path: the token opens only those.
            constraints.push((format!("{}{PATH_SUFFIX}", service.name), path_only(&self.path).to_owned()));
            constraints.push((format!("{}{METHODS_SUFFIX}", service.name), self.method.clone()));
            constraints.push((format!("{}{PRICE_SUFFIX}", service.name), quote.price_msat.to_string()));
        }
        if let Some(prefix) = &service.restrict_path_prefix {
            constraints.push((format!("{}{PATH_PREFIX_SUFFIX}", service.name), prefix.clone()));
        }
        if !service.restrict_methods.is_empty() {
            constraints.push((format!("{}{METHODS_SUFFIX}", service.name), service.restrict_methods.join(",")));
        }
        let grant = Grant {
            payment_hash,
            token_id,
            service: &service.name,
            capabilities: quote.capabilities.as_deref().unwrap_or(&service.capabilities),
            valid_until: quote.lifetime_s.or(service.lifetime_s).map(|life| host::now_unix().saturating_add(life)),
            constraints: &constraints,
        };
        let macaroon = base64_encode(&mint(&config.secrets, &grant).encode());
        let offer = Offer {
            service: &service.name,
            price_msat: quote.price_msat,
            macaroon_b64: &macaroon,
            invoice,
            expiry_s: config.invoice_expiry_s,
        };
        response::payment_required(config, &offer, refusal)
    }

    fn node_failed(&self, error: &NodeError) {
        self.shared.count(Counter::for_node_error(error));
        host::log(LogLevel::Warn, &format!("node call failed: {error}"));
        self.respond(&response::node_failure(error));
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
        self.call_failed = status.is_none();
        // One byte past the limit is enough for the parsers to refuse an oversized answer.
        let body = host::call_response_body(body_size.min(MAX_RESPONSE_BYTES.saturating_add(1)));
        let action = match waiting {
            Waiting::Price { service, refusal } => {
                self.priced(service, refusal, parse_quote(status, &body));
                Action::Pause
            }
            Waiting::Invoice { service, quote, token_id, refusal } => {
                match parse_invoice(config.node.kind, status, &body) {
                    Ok(invoice) => {
                        shared.count(Counter::ChallengesIssued);
                        let reply = self.payment_required(
                            &service,
                            &quote,
                            token_id,
                            refusal.as_ref(),
                            invoice.payment_hash,
                            &invoice.bolt11,
                        );
                        self.respond(&reply);
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

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if !self.admitted && !self.responded.get() {
            // Never happens where the host calls the filter back on every callout; an engine that
            // resumes a paused request by itself (Kong 3.4-3.8 when a call fails) must not leak the API.
            self.shared.count(Counter::UnadmittedResponses);
            host::log(LogLevel::Error, "the host resumed a request the filter did not admit: its answer is withheld");
            let body = response::withheld_body();
            host::replace_response_headers(503, "application/json", body.len());
            self.withheld = Some(body);
            self.replacing_body = true;
        }
        Action::Continue
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
                self.respond(&response::reserved_header(name));
                return Action::Pause;
            }
        }
        let method = header(":method").unwrap_or_default();
        let path = target.unwrap_or_else(|| header(":path").unwrap_or_default());
        let authority = if config.matches_host { header(":authority").unwrap_or_default() } else { String::new() };
        let mut from_authorization = false;
        let decision = match gate::route(config, &method, &path, &authority) {
            Routing::Decided(decision) => decision,
            Routing::Paid(paid) => {
                // A non-UTF-8 credential is a malformed credential, never a missing one.
                let authorization = match host::request_header("authorization") {
                    Ok(value) => value,
                    Err(()) => Some(String::from("L402 \u{fffd}")),
                };
                let macaroon = match authorization {
                    Some(_) => None,
                    None => header("grpc-metadata-macaroon").or_else(|| header("macaroon")),
                };
                from_authorization = authorization.is_some();
                let presented = Presented {
                    authorization: authorization.as_deref(),
                    macaroon: macaroon.as_deref(),
                    now: host::now_unix(),
                };
                gate::decide_paid(config, &mut shared.cache.borrow_mut(), &paid, &method, &presented)
            }
        };
        // Kept (moved, not copied) for a pricing call this request may still need.
        self.method = method;
        self.path = canonical_target(&path, config.paths.encoded_slashes).unwrap_or(path);
        match decision {
            Decision::Free => {
                shared.count(Counter::Free);
                self.remove_metering_headers();
                Action::Continue
            }
            Decision::Paid { identifier, service, .. } if shared.is_revoked_in_fleet(&identifier.token_id) => {
                self.challenge(service.clone(), Some(Refusal::Revoked))
            }
            Decision::Paid { identifier, preimage_proven, service, price_msat } => {
                let admission = Admission { identifier, service: service.clone(), price_msat, from_authorization };
                self.admit(admission, preimage_proven)
            }
            Decision::NoRoute => {
                shared.count(Counter::NoRoute);
                self.respond(&response::no_route());
                Action::Pause
            }
            Decision::Challenge { service, refusal } => self.challenge(service.clone(), refusal),
            Decision::AmbiguousPath(why) => {
                shared.count(Counter::AmbiguousPath);
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
        respond_now(&response::misconfigured());
        Action::Pause
    }
}
