//! State shared by a fleet of gateways, kept in etcd and reached through its v3 JSON gateway:
//! use counts and balances updated with compare-and-swap transactions, and a revocation list read periodically.
//! Pure: requests as data, answers parsed. Keys and values travel base64-encoded, as the gateway
//! requires; 64-bit numbers arrive as strings (proto3 JSON).

use crate::callout::{check_answer, check_status, parse_json, Answer, Callout};
use crate::json::{Json, Object};
use crate::l402::encoding::{base64_decode, base64_encode, hex_decode_array, hex_encode};
use crate::lightning::NodeError;
use crate::meter::Ledger;
use std::collections::HashSet;

/// Most revoked token ids read per poll; the list is meant for exceptions.
pub const MAX_REVOKED: usize = 100_000;

pub fn uses_key(prefix: &str, token_id: &[u8; 32]) -> String {
    format!("{prefix}uses/{}", hex_encode(token_id))
}

pub fn revoked_prefix(prefix: &str) -> String {
    format!("{prefix}revoked/")
}

pub fn balance_key(prefix: &str, token_id: &[u8; 32]) -> String {
    format!("{prefix}balance/{}", hex_encode(token_id))
}

/// What the counter looked like when last read: `None` before it exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub count: u64,
    pub mod_revision: String,
}

/// One compare-and-swap step on a use counter: if it is still as `seen`, write `next` (one more
/// use, or every use of the purchase at once); otherwise read it back.
pub fn count_use(key: &str, seen: Option<&Seen>, next: u64) -> Callout {
    swap(key, seen.map(|s| s.mod_revision.as_str()), next.to_string().as_bytes())
}

/// A token's balance as last read from etcd, with the revision to compare against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenLedger {
    pub ledger: Ledger,
    pub mod_revision: String,
}

/// One compare-and-swap step on a balance: if it is still as `seen` (absent: `None`), write
/// `ledger`; otherwise read it back.
pub fn put_ledger(key: &str, seen: Option<&SeenLedger>, ledger: &Ledger) -> Callout {
    let value = Object::new().with("total_msat", ledger.total_msat).with("spent_msat", ledger.spent_msat);
    swap(key, seen.map(|s| s.mod_revision.as_str()), Json::from(value).text().as_bytes())
}

/// A read of a balance, as a transaction that never writes: its answer is read like a lost swap.
pub fn read_ledger(key: &str) -> Callout {
    let key64 = base64_encode(key.as_bytes());
    let compare =
        Object::new().with("key", &key64).with("result", "LESS").with("target", "VERSION").with("version", "0");
    let txn = Object::new().with("compare", vec![compare]).with("failure", vec![read_range(&key64)]);
    Callout::post_json("/v3/kv/txn", None, txn)
}

/// A transaction that writes `value` at `key` if its modification revision is still `revision`, or
/// if the key is absent when `revision` is `None`; otherwise it reads the key.
fn swap(key: &str, revision: Option<&str>, value: &[u8]) -> Callout {
    let key64 = base64_encode(key.as_bytes());
    let compare = Object::new().with("key", &key64).with("result", "EQUAL");
    let compare = match revision {
        None => compare.with("target", "VERSION").with("version", "0"),
        Some(revision) => compare.with("target", "MOD").with("mod_revision", revision),
    };
    let put = Object::new().with("key", &key64).with("value", base64_encode(value));
    let txn = Object::new()
        .with("compare", vec![compare])
        .with("success", vec![Object::new().with("request_put", put)])
        .with("failure", vec![read_range(&key64)]);
    Callout::post_json("/v3/kv/txn", None, txn)
}

/// A transaction's operation reading one key.
fn read_range(key64: &str) -> Object {
    Object::new().with("request_range", Object::new().with("key", key64))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Swapped<T> {
    /// The write went through, as the key's modification revision `revision`.
    Written { revision: String },
    /// Someone else wrote first; this is what is there now.
    Changed(T),
}

struct KeyValue<'a> {
    key: &'a str,
    value: &'a str,
    mod_revision: &'a str,
}

/// The `kvs` of a range answer.
fn key_values(range: Answer<'_>) -> Result<Vec<KeyValue<'_>>, NodeError> {
    let kvs = range.opt_objects("kvs")?.unwrap_or_default();
    kvs.into_iter()
        .map(|kv| {
            Ok(KeyValue {
                key: kv.text("key")?,
                value: kv.opt_text("value")?.unwrap_or_default(),
                mod_revision: kv.opt_text("mod_revision")?.unwrap_or_default(),
            })
        })
        .collect()
}

/// A key's value and modification revision, as a lost swap read them (`None`: absent).
type Stored = Option<(Vec<u8>, String)>;

/// A swap's answer: written, or what the key holds now.
fn parse_swap(status: Option<u32>, body: &[u8]) -> Result<Swapped<Stored>, NodeError> {
    check_answer(status, body)?;
    let json = parse_json(body)?;
    // proto3 JSON leaves out what has its default value: false, "", [].
    let answer = Answer::of(&json)?;
    if answer.opt_flag("succeeded")?.unwrap_or(false) {
        let header = answer.opt_object("header")?;
        let revision = header.map(|h| h.opt_text("revision")).transpose()?.flatten().unwrap_or_default();
        return Ok(Swapped::Written { revision: revision.to_owned() });
    }
    // The failure branch's read: the first operation that is a range.
    let mut range = None;
    for op in answer.opt_objects("responses")?.unwrap_or_default() {
        range = range.or(op.opt_object("response_range")?);
    }
    let Some(kv) = range.map(key_values).transpose()?.and_then(|kvs| kvs.into_iter().next()) else {
        return Ok(Swapped::Changed(None));
    };
    let value = base64_decode(kv.value).ok_or(NodeError::BadResponse("value is not base64"))?;
    if kv.mod_revision.is_empty() || !kv.mod_revision.bytes().all(|b| b.is_ascii_digit()) {
        return Err(NodeError::BadResponse("mod_revision is not a number"));
    }
    Ok(Swapped::Changed(Some((value, kv.mod_revision.to_owned()))))
}

pub fn parse_count(status: Option<u32>, body: &[u8]) -> Result<Swapped<Seen>, NodeError> {
    Ok(match parse_swap(status, body)? {
        Swapped::Written { revision } => Swapped::Written { revision },
        // Deleted between the compare and the read: start again from nothing.
        Swapped::Changed(None) => Swapped::Changed(Seen { count: 0, mod_revision: "0".to_owned() }),
        Swapped::Changed(Some((value, mod_revision))) => {
            let count = String::from_utf8(value)
                .ok()
                .and_then(|v| v.parse().ok())
                .ok_or(NodeError::BadResponse("use counter is not a number"))?;
            Swapped::Changed(Seen { count, mod_revision })
        }
    })
}

/// A balance swap's (or read's) answer; `Changed(None)`: no balance is stored.
pub fn parse_ledger(status: Option<u32>, body: &[u8]) -> Result<Swapped<Option<SeenLedger>>, NodeError> {
    Ok(match parse_swap(status, body)? {
        Swapped::Written { revision } => Swapped::Written { revision },
        Swapped::Changed(None) => Swapped::Changed(None),
        Swapped::Changed(Some((value, mod_revision))) => {
            let ledger = read_ledger_value(&value).ok_or(NodeError::BadResponse("balance is not a ledger"))?;
            Swapped::Changed(Some(SeenLedger { ledger, mod_revision }))
        }
    })
}

/// A balance as stored: `{"total_msat": N, "spent_msat": M}`.
fn read_ledger_value(value: &[u8]) -> Option<Ledger> {
    let value = Json::parse(value).ok()?;
    let amount = |name: &str| value.get(name).and_then(Json::as_u64);
    Some(Ledger { total_msat: amount("total_msat")?, spent_msat: amount("spent_msat")? })
}

/// Every key under the revocation prefix (keys only).
pub fn list_revoked(prefix: &str) -> Callout {
    let start = revoked_prefix(prefix);
    // The range end of a prefix: the prefix with its last byte incremented.
    let mut end = start.clone().into_bytes();
    if let Some(last) = end.last_mut() {
        *last = last.saturating_add(1);
    }
    let range = Object::new()
        .with("key", base64_encode(start.as_bytes()))
        .with("range_end", base64_encode(&end))
        .with("keys_only", true)
        .with("limit", MAX_REVOKED.to_string());
    Callout::post_json("/v3/kv/range", None, range)
}

/// Token ids named by the keys under the revocation prefix; other keys are ignored.
pub fn parse_revoked(prefix: &str, status: Option<u32>, body: &[u8]) -> Result<HashSet<[u8; 32]>, NodeError> {
    check_status(status)?;
    let json = parse_json(body)?;
    let kvs = key_values(Answer::of(&json)?)?;
    let start = revoked_prefix(prefix);
    Ok(kvs
        .iter()
        .filter_map(|kv| base64_decode(kv.key))
        .filter_map(|key| String::from_utf8(key).ok())
        .filter_map(|key| key.strip_prefix(&start).and_then(hex_decode_array::<32>))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn body(c: &Callout) -> Value {
        serde_json::from_slice(&c.body).unwrap()
    }

    #[test]
    fn first_use_creates_the_counter_later_ones_compare_the_revision() {
        let key = uses_key("/l402/", &[1; 32]);
        assert!(key.starts_with("/l402/uses/0101"));
        let first = body(&count_use(&key, None, 1));
        assert_eq!(first["compare"][0]["target"], "VERSION");
        assert_eq!(first["success"][0]["request_put"]["value"], base64_encode(b"1"));
        let later = body(&count_use(&key, Some(&Seen { count: 2, mod_revision: "17".into() }), 3));
        assert_eq!(later["compare"][0]["mod_revision"], "17");
        assert_eq!(later["success"][0]["request_put"]["value"], base64_encode(b"3"));
    }

    #[test]
    fn reads_transaction_answers() {
        assert_eq!(
            parse_count(
                Some(200),
                br#"{"header":{"revision":"9"},"succeeded":true,"responses":[{"response_put":{}}]}"#
            ),
            Ok(Swapped::Written { revision: "9".into() })
        );
        let current = format!(
            r#"{{"header":{{}},"responses":[{{"response_range":{{"kvs":[{{"key":"eA==","value":"{}","mod_revision":"42","version":"3"}}],"count":"1"}}}}]}}"#,
            base64_encode(b"3")
        );
        assert_eq!(
            parse_count(Some(200), current.as_bytes()),
            Ok(Swapped::Changed(Seen { count: 3, mod_revision: "42".into() }))
        );
        let gone = br#"{"responses":[{"response_range":{}}]}"#;
        assert_eq!(parse_count(Some(200), gone), Ok(Swapped::Changed(Seen { count: 0, mod_revision: "0".into() })));
        assert_eq!(parse_count(None, b""), Err(NodeError::Unreachable));
        assert!(parse_count(
            Some(200),
            br#"{"responses":[{"response_range":{"kvs":[{"key":"eA==","value":"eA==","mod_revision":"1"}]}}]}"#
        )
        .is_err());
    }

    #[test]
    fn balances_are_created_where_absent_and_swapped_by_revision() {
        let key = balance_key("/l402/", &[2; 32]);
        assert!(key.starts_with("/l402/balance/0202"));
        let ledger = Ledger { total_msat: 100_000, spent_msat: 20_000 };
        let create = body(&put_ledger(&key, None, &ledger));
        assert_eq!(create["compare"][0]["target"], "VERSION");
        let written = base64_decode(create["success"][0]["request_put"]["value"].as_str().unwrap()).unwrap();
        assert_eq!(
            serde_json::from_slice::<Value>(&written).unwrap(),
            json!({"total_msat": 100000, "spent_msat": 20000})
        );
        let seen = SeenLedger { ledger, mod_revision: "31".into() };
        assert_eq!(body(&put_ledger(&key, Some(&seen), &ledger))["compare"][0]["mod_revision"], "31");
        assert!(body(&read_ledger(&key))["success"].is_null(), "a read never writes");

        let ok = br#"{"header":{"revision":"32"},"succeeded":true}"#;
        assert_eq!(parse_ledger(Some(200), ok), Ok(Swapped::Written { revision: "32".into() }));
        let current = format!(
            r#"{{"responses":[{{"response_range":{{"kvs":[{{"key":"eA==","value":"{}","mod_revision":"40"}}]}}}}]}}"#,
            base64_encode(br#"{"total_msat":5,"spent_msat":2}"#)
        );
        assert_eq!(
            parse_ledger(Some(200), current.as_bytes()),
            Ok(Swapped::Changed(Some(SeenLedger {
                ledger: Ledger { total_msat: 5, spent_msat: 2 },
                mod_revision: "40".into()
            })))
        );
        assert_eq!(parse_ledger(Some(200), br#"{"responses":[{"response_range":{}}]}"#), Ok(Swapped::Changed(None)));
        let garbage = format!(
            r#"{{"responses":[{{"response_range":{{"kvs":[{{"key":"eA==","value":"{}","mod_revision":"4"}}]}}}}]}}"#,
            base64_encode(b"12")
        );
        assert!(parse_ledger(Some(200), garbage.as_bytes()).is_err());
        assert_eq!(parse_ledger(Some(503), b""), Err(NodeError::Unreachable));
    }

    #[test]
    fn revocation_keys_name_token_ids() {
        let list = body(&list_revoked("/l402/"));
        assert_eq!(list["key"], base64_encode(b"/l402/revoked/"));
        assert_eq!(list["range_end"], base64_encode(b"/l402/revoked0"));
        let id = hex_encode(&[7; 32]);
        let answer = format!(
            r#"{{"kvs":[{{"key":"{}"}},{{"key":"{}"}}],"count":"2"}}"#,
            base64_encode(format!("/l402/revoked/{id}").as_bytes()),
            base64_encode(b"/l402/revoked/not-an-id")
        );
        let revoked = parse_revoked("/l402/", Some(200), answer.as_bytes()).unwrap();
        assert_eq!(revoked.into_iter().collect::<Vec<_>>(), vec![[7; 32]]);
        assert!(parse_revoked("/l402/", Some(200), b"{}").unwrap().is_empty());
    }
}
