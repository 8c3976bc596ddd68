//! Arbitrary bytes as the filter's JSON config: parsing never panics, and an accepted config can be
//! used: routes selected, invoice requests built, challenges rendered (L402 and Payment, as each
//! route speaks them; a Payment challenge's id verifies under the config's keys).
#![no_main]

#[path = "../common/mod.rs"]
mod common;

use l402::config::{Access, Config};
use l402::lightning::{invoice_request, InvoiceOrder};
use l402::payment::wire::rfc3339;
use l402::payment::{charge_request, Binding, Params};
use l402::policy;
use l402::response::{self, Offer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let config = match Config::parse(data, &common::fuzz_env) {
        Ok(config) => config,
        Err(error) => {
            let _ = error.to_string();
            return;
        }
    };
    let _ = format!("{config:?}");
    for (method, path, authority) in [
        ("GET", "/", "api.example.com"),
        ("POST", "/v1/x/y/forecast?y=1", "a.example.com:8443"),
        ("get", "/health#f", "[::1]:80"),
        ("DELETE", "", ""),
        ("GET", "/health/..%2F;x/v1%252f", "API.example.com.:80"),
    ] {
        if let Ok(readings) = policy::path::readings(policy::path_only(path), config.paths.encoded_slashes) {
            let _ = policy::select(&config, method, &readings, authority);
        }
    }
    for route in &config.routes {
        if let Access::Paid(service) = &route.access {
            // Every paid route has a price, unless a pricing endpoint names it.
            assert!(service.price_msat.is_some() || service.dynamic_price);
            let price_msat = service.price_msat.unwrap_or(1);
            let memo = config.memo_for(&service.name);
            let order =
                InvoiceOrder { amount_msat: price_msat, memo: &memo, expiry_s: config.invoice_expiry_s, label: "00ff" };
            let request = invoice_request(config.node.kind, &config.node.credential.0, &order);
            assert!(request.path.starts_with('/'));
            // The challenges of the schemes the route speaks, a Payment one as the filter writes it.
            let payment = service.schemes.payment.then(|| {
                let binding =
                    Binding { service: service.name.clone(), token_id: "00".repeat(32), ..Binding::default() };
                let request = charge_request(price_msat.div_ceil(1000), &memo, "lnbc1", &[0; 32]);
                let realm = config.payment_realm.clone().unwrap_or_else(|| service.name.clone());
                let mut params = Params::charge(realm, request, rfc3339(u64::from(config.invoice_expiry_s)), &binding);
                config.payment_keys.sign(&mut params);
                assert!(config.payment_keys.verify(&params));
                params.header_value()
            });
            let offer = Offer {
                service: &service.name,
                price_msat,
                macaroon_b64: service.schemes.l402.then_some("AgEEbHNhdA"),
                payment: payment.as_deref(),
                invoice: "lnbc1",
                expiry_s: config.invoice_expiry_s,
            };
            let _ = response::payment_required(&config, &offer, None);
        }
    }
});
