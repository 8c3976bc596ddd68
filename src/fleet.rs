//! State shared by a fleet of gateways, kept in etcd and reached through its v3 JSON gateway:
//! use counts updated with compare-and-swap transactions, and a revocation list read periodically.
//! Pure: requests as data, answers parsed. Keys and values travel base64-encoded, as the gateway
//! requires; 64-bit numbers arrive as strings (proto3 JSON).

use crate::callout::{check_answer, check_status, parse_json, Callout};
use crate::l402::encoding::{base64_decode, base64_encode, hex_decode_array, hex_encode};
use crate::lightning::NodeError;
use serde::Deserialize;
use serde_json::json;
use std::collections::HashSet;

/// Most revoked token ids read per poll; the list is meant for exceptions.
pub const MAX_REVOKED: usize = 100_000;

pub fn uses_key(prefix: &str, token_id: &[u8; 32]) -> String {
    format!("{prefix}uses/{}", hex_encode(token_id))
}

pub fn revoked_prefix(prefix: &str) -> String {
    format!("{prefix}revoked/")
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
    let key64 = base64_encode(key.as_bytes());
    let compare = match seen {
        None => json!({ "key": key64, "result": "EQUAL", "target": "VERSION", "version": "0" }),
        Some(s) => json!({ "key": key64, "result": "EQUAL", "target": "MOD", "mod_revision": s.mod_revision }),
    };
    let txn = json!({
        "compare": [compare],
        "success": [{ "request_put": { "key": key64, "value": base64_encode(next.to_string().as_bytes()) } }],
        "failure": [{ "request_range": { "key": key64 } }],
    });
    Callout::post_json("/v3/kv/txn", None, &txn)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOutcome {
    /// The write went through.
    Counted,
    /// Someone else wrote first; this is what is there now.
    Changed(Seen),
}

#[derive(Deserialize)]
struct TxnResponse {
    #[serde(default)]
    succeeded: bool,
    #[serde(default)]
    responses: Vec<ResponseOp>,
}

#[derive(Deserialize)]
struct ResponseOp {
    response_range: Option<RangeResponse>,
}

#[derive(Deserialize)]
struct RangeResponse {
    #[serde(default)]
    kvs: Vec<KeyValue>,
}

#[derive(Deserialize)]
struct KeyValue {
    key: String,
    #[serde(default)]
    value: String,
    #[serde(default)]
    mod_revision: String,
}

pub fn parse_count(status: Option<u32>, body: &[u8]) -> Result<TxnOutcome, NodeError> {
    check_answer(status, body)?;
    let answer: TxnResponse = parse_json(body)?;
    if answer.succeeded {
        return Ok(TxnOutcome::Counted);
    }
    let kv = answer
        .responses
        .into_iter()
        .find_map(|op| op.response_range)
        .and_then(|range| range.kvs.into_iter().next())
        // Deleted between the compare and the read: start again from nothing.
        .map_or_else(|| Ok(None), |kv| Some(read_count(&kv)).transpose())?;
    Ok(TxnOutcome::Changed(kv.unwrap_or(Seen { count: 0, mod_revision: "0".to_owned() })))
}

fn read_count(kv: &KeyValue) -> Result<Seen, NodeError> {
    let count = base64_decode(&kv.value)
        .and_then(|v| String::from_utf8(v).ok())
        .and_then(|v| v.parse().ok())
        .ok_or(NodeError::BadResponse("use counter is not a number"))?;
    if kv.mod_revision.is_empty() || !kv.mod_revision.bytes().all(|b| b.is_ascii_digit()) {
        return Err(NodeError::BadResponse("mod_revision is not a number"));
    }
    Ok(Seen { count, mod_revision: kv.mod_revision.clone() })
}

/// Every key under the revocation prefix (keys only).
pub fn list_revoked(prefix: &str) -> Callout {
    let start = revoked_prefix(prefix);
    // The range end of a prefix: the prefix with its last byte incremented.
    let mut end = start.clone().into_bytes();
    if let Some(last) = end.last_mut() {
        *last = last.saturating_add(1);
    }
    let range = json!({
        "key": base64_encode(start.as_bytes()),
        "range_end": base64_encode(&end),
        "keys_only": true,
        "limit": MAX_REVOKED.to_string(),
    });
    Callout::post_json("/v3/kv/range", None, &range)
}

/// Token ids named by the keys under the revocation prefix; other keys are ignored.
pub fn parse_revoked(prefix: &str, status: Option<u32>, body: &[u8]) -> Result<HashSet<[u8; 32]>, NodeError> {
    check_status(status)?;
    let answer: RangeResponse = parse_json(body)?;
    let start = revoked_prefix(prefix);
    Ok(answer
        .kvs
        .iter()
        .filter_map(|kv| base64_decode(&kv.key))
        .filter_map(|key| String::from_utf8(key).ok())
        .filter_map(|key| key.strip_prefix(&start).and_then(hex_decode_array::<32>))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

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
            parse_count(Some(200), br#"{"header":{},"succeeded":true,"responses":[{"response_put":{}}]}"#),
            Ok(TxnOutcome::Counted)
        );
        let current = format!(
            r#"{{"header":{{}},"responses":[{{"response_range":{{"kvs":[{{"key":"eA==","value":"{}","mod_revision":"42","version":"3"}}],"count":"1"}}}}]}}"#,
            base64_encode(b"3")
        );
        assert_eq!(
            parse_count(Some(200), current.as_bytes()),
            Ok(TxnOutcome::Changed(Seen { count: 3, mod_revision: "42".into() }))
        );
        let gone = br#"{"responses":[{"response_range":{}}]}"#;
        assert_eq!(parse_count(Some(200), gone), Ok(TxnOutcome::Changed(Seen { count: 0, mod_revision: "0".into() })));
        assert_eq!(parse_count(None, b""), Err(NodeError::Unreachable));
        assert!(parse_count(
            Some(200),
            br#"{"responses":[{"response_range":{"kvs":[{"key":"eA==","value":"eA==","mod_revision":"1"}]}}]}"#
        )
        .is_err());
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
