//! Requests through the gate (format: `common::parse_gate_input`), sharing one small verified-token
//! cache. Never panics, and the decision agrees with an independent model of the config's routes
//! and with `verify`: a request is Paid exactly when `verify` accepts the credential the gate reads
//! for its route (unless a path caveat excludes another reading of the path), and a Paid token also
//! satisfies an independent model of the caveat rules. A path is refused as ambiguous, or else every
//! reading of it an independent model makes (decoded up to three times, `\` as `/`, slashes merged,
//! `;params` dropped) falls under the rule chosen for it and has no dot segment or encoded slash.
#![no_main]

#[path = "../common/mod.rs"]
mod common;

use l402::config::{Access, Config};
use l402::gate::{decide, Decision, Refusal, RequestView, VerifiedCache};
use l402::l402::header::{is_l402_authorization, parse_authorization, parse_macaroon_header};
use l402::l402::{verify, Requirement, VerifyError};
use l402::policy;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

static CONFIG: OnceLock<Config> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let config = CONFIG.get_or_init(common::gate_config);
    let text = String::from_utf8_lossy(data);
    let mut cache = VerifiedCache::new(2);
    for request in common::parse_gate_input(&text) {
        let view = RequestView {
            method: &request.method,
            path: &request.path,
            authority: &request.authority,
            authorization: request.authorization.as_deref(),
            macaroon: request.macaroon.as_deref(),
            now: request.now,
        };
        let decision = decide(config, &mut cache, &view);
        assert!(cache.len() <= 2, "cache grew past its capacity");

        let path = policy::path_only(view.path);
        let expected = common::model_route(view.method, view.path, view.authority);
        if let Decision::AmbiguousPath(_) = decision {
            let readable_twice = path.contains(['%', '\\', ';']) || path.contains("//") || common::has_dot_segment(path);
            assert!(readable_twice, "{path:?} refused, but it has one reading");
            continue;
        }
        // The rule chosen for the path as sent is the rule of every reading an upstream may make.
        for reading in common::model_readings(path) {
            assert!(!common::has_dot_segment(&reading), "{path:?} passed, read as {reading:?}");
            assert!(!common::has_encoded_slash(&reading), "{path:?} passed, read as {reading:?}");
            let rule = common::model_route(view.method, &reading, view.authority);
            assert_eq!(rule, expected, "{path:?} passed under {expected:?}, read as {reading:?} under {rule:?}");
        }
        let readings = policy::path::readings(path, config.paths.encoded_slashes).expect("a path that passed");
        let route = policy::select(config, view.method, &readings, view.authority).expect("a path that passed");
        let index = route.and_then(|r| config.routes.iter().position(|c| std::ptr::eq(c, r)));
        assert_eq!(index, expected, "route for {} {:?} on {:?}", view.method, view.path, view.authority);

        let service = match route.map(|r| &r.access) {
            None => {
                assert_eq!(decision, Decision::NoRoute);
                continue;
            }
            Some(Access::Free) => {
                assert_eq!(decision, Decision::Free);
                continue;
            }
            Some(Access::Paid(service)) => service,
        };
        // The credential the gate is documented to read: an L402/LSAT Authorization, else the
        // macaroon header.
        let parsed = match (view.authorization, view.macaroon) {
            (Some(h), _) if is_l402_authorization(h) => Some(parse_authorization(h)),
            (_, Some(h)) => Some(parse_macaroon_header(h)),
            _ => None,
        };
        let need = Requirement {
            service: &service.name,
            capabilities: &service.capabilities,
            now: view.now,
            method: view.method,
            path: readings.canonical(),
        };
        let verified = parsed.map(|p| p.and_then(|credential| verify(&config.secrets, credential, &need)));
        match (&decision, &verified) {
            (Decision::Paid { identifier, preimage_proven, service: paid, .. }, Some(Ok(token))) => {
                assert_eq!(*paid, service);
                assert_eq!(*identifier, token.identifier);
                assert!(*preimage_proven, "every credential of this config carries a preimage");
                if let Err(why) = common::model_admits(
                    token.caveats(),
                    need.service,
                    need.capabilities,
                    need.now,
                    need.method,
                    need.path,
                ) {
                    panic!("Paid, but the caveat model refuses: {why}");
                }
            }
            (Decision::Paid { .. }, other) => {
                panic!("Paid for {:?} / {:?}, but verify says {other:?}", view.authorization, view.macaroon)
            }
            (Decision::Challenge { service: challenged, refusal }, _) => {
                assert_eq!(*challenged, service);
                match &verified {
                    // Path caveats hold for the canonical reading but not for another one.
                    Some(Ok(_)) => assert!(
                        *refusal == Some(Refusal::Token(VerifyError::Restricted)) && readings.decoded().count() > 1,
                        "verify accepts {:?} / {:?}, but the gate refused: {refusal:?}",
                        view.authorization,
                        view.macaroon
                    ),
                    Some(Err(e)) => {
                        assert_eq!(*refusal, Some(Refusal::Token(e.clone())), "refusal differs from verify's")
                    }
                    None => assert_eq!(*refusal, None),
                }
            }
            (other, _) => panic!("paid route, decision {other:?}"),
        }
    }
});
