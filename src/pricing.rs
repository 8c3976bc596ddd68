//! Dynamic prices: the operator's pricing endpoint names the price of a request, and the answer is
//! cached per (method, path) for a while. Pure: requests as data, answers parsed into a [`Quote`].

use crate::callout::{check_answer, parse_json, Answer, Callout};
use crate::config::{is_token_text, Pricing};
use crate::json::Object;
use crate::lightning::NodeError;
use std::collections::HashMap;

/// The highest price a pricing endpoint may set: 21 million bitcoin, in msat.
const MAX_PRICE_MSAT: u64 = 21_000_000 * 100_000_000 * 1000;
/// Most quotes kept per worker; past it the cache starts over.
const MAX_QUOTES: usize = 4096;

/// A price and what the token bought at it grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quote {
    pub price_msat: u64,
    pub lifetime_s: Option<u64>,
    pub capabilities: Option<Vec<String>>,
}

/// `headers` are the configured request headers that were present.
pub fn price_request(
    pricing: &Pricing,
    method: &str,
    path: &str,
    service: &str,
    headers: &[(String, String)],
) -> Callout {
    let mut map = Object::new();
    for (name, value) in headers {
        map.insert(name, value);
    }
    let body = Object::new().with("method", method).with("path", path).with("service", service).with("headers", map);
    Callout::post_json(pricing.path.clone(), None, body)
}

/// The fields a quote may have; any other is refused, as a pricer's mistake.
const QUOTE_FIELDS: [&str; 4] = ["price_msat", "price_sat", "lifetime_s", "capabilities"];

pub fn parse_quote(status: Option<u32>, body: &[u8]) -> Result<Quote, NodeError> {
    check_answer(status, body)?;
    let json = parse_json(body)?;
    let answer = Answer::of(&json)?;
    answer.only(&QUOTE_FIELDS)?;
    let (lifetime_s, capabilities) = (answer.opt_whole("lifetime_s")?, answer.opt_texts("capabilities")?);
    let price_msat = match (answer.opt_whole("price_msat")?, answer.opt_whole("price_sat")?) {
        (Some(msat), None) => Some(msat),
        (None, Some(sat)) => sat.checked_mul(1000),
        _ => None,
    }
    .filter(|p| (1..=MAX_PRICE_MSAT).contains(p))
    .ok_or(NodeError::BadResponse("give one positive price_msat or price_sat"))?;
    if lifetime_s == Some(0) {
        return Err(NodeError::BadResponse("lifetime_s must be at least 1"));
    }
    if capabilities.as_ref().is_some_and(|caps| !caps.iter().all(|c| is_token_text(c))) {
        return Err(NodeError::BadResponse("capabilities must be characters of A-Z a-z 0-9 . -"));
    }
    Ok(Quote { price_msat, lifetime_s, capabilities })
}

/// Quotes per (method, path), each valid until its expiry (unix seconds).
#[derive(Default)]
pub struct QuoteCache {
    quotes: HashMap<(String, String), (Quote, u64)>,
}

impl QuoteCache {
    pub fn get(&self, method: &str, path: &str, now: u64) -> Option<&Quote> {
        let (quote, until) = self.quotes.get(&(method.to_owned(), path.to_owned()))?;
        (now < *until).then_some(quote)
    }

    pub fn put(&mut self, method: &str, path: &str, quote: Quote, until: u64) {
        if self.quotes.len() >= MAX_QUOTES {
            self.quotes.clear();
        }
        self.quotes.insert((method.to_owned(), path.to_owned()), (quote, until));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_quotes_and_refuses_nonsense() {
        let q = parse_quote(Some(200), br#"{"price_sat": 21, "lifetime_s": 60, "capabilities": ["gpt4"]}"#).unwrap();
        assert_eq!(q, Quote { price_msat: 21_000, lifetime_s: Some(60), capabilities: Some(vec!["gpt4".into()]) });
        assert_eq!(parse_quote(Some(200), br#"{"price_msat": 1500}"#).unwrap().price_msat, 1500);
        for bad in [
            &br#"{}"#[..],
            br#"{"price_msat": 0}"#,
            br#"{"price_msat": 1, "price_sat": 1}"#,
            br#"{"price_sat": 1, "lifetime_s": 0}"#,
            br#"{"price_sat": 1, "capabilities": ["a,b"]}"#,
            br#"{"price_sat": 1, "extra": 1}"#,
            b"garbage",
        ] {
            assert!(parse_quote(Some(200), bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        assert_eq!(parse_quote(None, b""), Err(NodeError::Unreachable));
        assert_eq!(parse_quote(Some(503), b""), Err(NodeError::Unreachable));
        assert_eq!(parse_quote(Some(500), b""), Err(NodeError::Status(500)));
    }

    #[test]
    fn quotes_expire() {
        let mut cache = QuoteCache::default();
        let q = Quote { price_msat: 1000, lifetime_s: None, capabilities: None };
        cache.put("GET", "/a", q.clone(), 100);
        assert_eq!(cache.get("GET", "/a", 99), Some(&q));
        assert_eq!(cache.get("GET", "/a", 100), None);
        assert_eq!(cache.get("POST", "/a", 0), None);
    }
}
