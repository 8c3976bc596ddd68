//! An unpaid request: a freebie, a rate-limit answer, or a price, an invoice from the node and a 402.

use super::host::{self, HostStore};
use super::http::{header, key, Http, Waiting};
use crate::config::{PricingFallback, Service};
use crate::gate::Refusal;
use crate::l402::caveats::{METHODS_SUFFIX, PATH_PREFIX_SUFFIX, PATH_SUFFIX, PRICE_SUFFIX};
use crate::l402::encoding::{base64_encode, hex_encode};
use crate::l402::{mint, Grant};
use crate::lightning::{invoice_request, invoiceable_msat, InvoiceOrder, NodeError};
use crate::meter::Ledger;
use crate::metrics::Counter;
use crate::outcome::{Outcome, Record};
use crate::payment::wire::rfc3339;
use crate::payment::{charge_request, Binding, Params};
use crate::policy::path_only;
use crate::pricing::{price_request, Quote};
use crate::response::{self, LocalResponse};
use crate::store;
use proxy_wasm::types::{Action, LogLevel};
use std::rc::Rc;

/// What an unpaid request will be offered: the route's service, the token id of the purchase (drawn
/// before any call, its use counter created with it), and what was wrong with the credential.
pub(super) struct Offer {
    pub(super) service: Service,
    pub(super) token_id: [u8; 32],
    pub(super) refusal: Option<Refusal>,
}

impl Http {
    /// An unpaid request: a freebie if the route grants one, a 429 past the challenge limit,
    /// otherwise an invoice and a 402.
    pub(super) fn challenge(&mut self, service: Service, refusal: Option<Refusal>) -> Action {
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
                    self.decided(&Record::new(Outcome::Freebie).service(&service.name, service.price_msat));
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
                    let record = Record::new(Outcome::RateLimited).reason("challenge_rate_limited");
                    self.decided(&record.service(&service.name, service.price_msat));
                    self.respond(&response::too_many_challenges(retry_after_s));
                    return Action::Pause;
                }
                Err(e) => return self.store_failure(&e, None),
            }
        }

        let Some(token_id) = host::random_token_id() else {
            shared.count(Counter::GatewayErrors);
            self.decided(&Record::new(Outcome::Error).reason("gateway_error"));
            self.respond(&response::gateway_failure("no randomness available for a token id"));
            return Action::Pause;
        };
        // Before any call: where the host traps on shared data (Kong without its zone), a trap here
        // ends the request, while one in a call's callback lets the engine resume it.
        self.create_use_counter(&service, &token_id);
        let offer = Offer { service, token_id, refusal };
        match (&config.pricing, offer.service.dynamic_price) {
            (Some(pricing), true) => {
                let cached = shared.quotes.borrow().get(&self.method, &self.path, host::now_unix()).cloned();
                if let Some(quote) = cached {
                    return self.invoice(offer, quote);
                }
                let headers: Vec<(String, String)> =
                    pricing.headers.iter().filter_map(|name| header(name).map(|value| (name.clone(), value))).collect();
                let request = price_request(pricing, &self.method, &self.path, &offer.service.name, &headers);
                self.call(&pricing.endpoint, &request, Waiting::Price(offer))
            }
            _ => match Self::static_quote(&offer.service) {
                Some(quote) => self.invoice(offer, quote),
                None => {
                    self.decided(&Record::new(Outcome::Error).reason("gateway_error"));
                    self.respond(&response::gateway_failure("the route has no price"));
                    Action::Pause
                }
            },
        }
    }

    pub(super) fn static_quote(service: &Service) -> Option<Quote> {
        Some(Quote { price_msat: service.price_msat?, lifetime_s: service.lifetime_s, capabilities: None })
    }

    /// Asks the node for an invoice at the quoted price.
    pub(super) fn invoice(&mut self, offer: Offer, mut quote: Quote) -> Action {
        let shared = Rc::clone(&self.shared);
        let config = &shared.config;
        let Offer { service, token_id, refusal } = offer;
        quote.price_msat = invoiceable_msat(config.node.kind, quote.price_msat);
        if service.schemes.payment {
            // The Payment scheme's charge request states whole satoshis.
            quote.price_msat = quote.price_msat.div_ceil(1000).saturating_mul(1000);
        }
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
    pub(super) fn priced(&mut self, offer: Offer, answer: Result<Quote, NodeError>) {
        let shared = Rc::clone(&self.shared);
        let Some(pricing) = &shared.config.pricing else { return };
        match answer {
            Ok(quote) => {
                let until = host::now_unix().saturating_add(pricing.cache_s);
                shared.quotes.borrow_mut().put(&self.method, &self.path, quote.clone(), until);
                self.invoice(offer, quote);
            }
            Err(error) => {
                shared.count(Counter::PricingErrors);
                host::log(LogLevel::Warn, &format!("pricing call failed: {}", error.code()));
                match (pricing.on_error, Self::static_quote(&offer.service)) {
                    (PricingFallback::Static, Some(quote)) => {
                        self.invoice(offer, quote);
                    }
                    _ => {
                        self.decided(&Record::new(Outcome::Error).reason("pricing_unavailable"));
                        self.respond(&response::pricing_failure(&error));
                    }
                }
            }
        }
    }

    pub(super) fn payment_required(
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
        let macaroon = service.schemes.l402.then(|| base64_encode(&mint(&config.secrets, &grant).encode()));
        let payment =
            service.schemes.payment.then(|| self.payment_challenge(service, quote, token_id, payment_hash, invoice));
        let offer = response::Offer {
            service: &service.name,
            price_msat: quote.price_msat,
            macaroon_b64: macaroon.as_deref(),
            payment: payment.as_deref(),
            invoice,
            expiry_s: config.invoice_expiry_s,
        };
        match &service.browser {
            Some(browser) => self.browser_challenge(browser, &offer, refusal),
            None => response::payment_required(config, &offer, refusal),
        }
    }

    /// The Payment scheme's challenge for the invoice, expiring with it, bound to the service (and
    /// to the method and path a quoted price was for).
    fn payment_challenge(
        &self,
        service: &Service,
        quote: &Quote,
        token_id: [u8; 32],
        payment_hash: [u8; 32],
        invoice: &str,
    ) -> String {
        let config = &self.shared.config;
        let binding = Binding {
            service: service.name.clone(),
            token_id: hex_encode(&token_id),
            method: service.dynamic_price.then(|| self.method.clone()),
            path: service.dynamic_price.then(|| path_only(&self.path).to_owned()),
        };
        let request =
            charge_request(quote.price_msat.div_ceil(1000), &config.memo_for(&service.name), invoice, &payment_hash);
        let expires = rfc3339(host::now_unix().saturating_add(u64::from(config.invoice_expiry_s)));
        let realm = config.payment_realm.clone().unwrap_or_else(|| service.name.clone());
        let mut params = Params::charge(realm, request, expires, &binding);
        config.payment_keys.sign(&mut params);
        params.header_value()
    }

    /// Creates the use counter (or a metered route's balance) a challenge's credentials will draw
    /// on, in shared data, so that redemption only compare-and-swaps (see `store::create_counter`).
    /// The fleet store needs none: etcd creates a key only where it is absent.
    pub(super) fn create_use_counter(&self, service: &Service, token_id: &[u8; 32]) {
        if self.shared.config.fleet.is_some() {
            return;
        }
        let created = match (&service.metered, service.price_msat) {
            (Some(_), Some(bundle)) => {
                store::create_ledger(&HostStore, &key("balance", token_id), Ledger::fresh(bundle))
            }
            _ if service.schemes.payment || service.uses.is_some() => {
                store::create_counter(&HostStore, &key("uses", token_id))
            }
            _ => return,
        };
        if let Err(e) = created {
            self.shared.count(Counter::StoreErrors);
            host::log(LogLevel::Warn, &format!("shared store: {e}"));
        }
    }

    pub(super) fn node_failed(&self, error: &NodeError) {
        self.shared.count(Counter::for_node_error(error));
        host::log(LogLevel::Warn, &format!("node call failed: {error}"));
        self.decided(&Record::new(Outcome::Error).reason(error.code()));
        self.respond(&response::node_failure(error));
    }
}
