//! The filter's JSON against serde_json on the same bytes. Never panics; whatever it accepts
//! serde_json accepts too, as the same value, unless serde_json cannot hold one of its numbers (the
//! filter keeps a number's text); whatever it refuses that serde_json accepts is refused on purpose
//! (a repeated member name, nesting deeper than 64); what it writes reads back as itself.
#![no_main]

use l402::json::Json;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let theirs = serde_json::from_slice::<serde_json::Value>(data);
    match Json::parse(data) {
        Ok(ours) => {
            let text = ours.text();
            assert_eq!(Json::parse(text.as_bytes()).as_ref(), Ok(&ours), "not read back as itself");
            match theirs {
                Ok(theirs) => {
                    let reread: serde_json::Value = serde_json::from_str(&text).expect("what we write is JSON");
                    assert_eq!(reread, theirs, "read as another value");
                }
                Err(e) => assert!(e.to_string().starts_with("number out of range"), "accepted what serde_json refuses: {e}"),
            }
        }
        Err(refused) => {
            // Refused where serde_json accepts: only for what the filter's JSON refuses on purpose.
            if theirs.is_ok() {
                assert!(
                    matches!(refused.what, "a member named twice" | "nested too deep"),
                    "refused valid JSON: {refused}"
                );
            }
        }
    }
});
