//! A node's answer to the create-invoice call: the first byte picks the HTTP status (0: no answer,
//! 1-199: 2xx, 200-254: a few error statuses, 255: the next four bytes), the rest is the body; parsed
//! as every node kind. Never panics; an accepted invoice is safe to put in a response header.
#![no_main]

use l402::config::NodeKind;
use l402::lightning::parse_invoice;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else { return };
    let (status, body) = match first {
        0 => (None, rest),
        1..=199 => (Some(200 + u32::from(first % 100)), rest),
        200..=254 => (Some([100, 301, 400, 401, 404, 500, 503, 199, 300][usize::from(first - 200) % 9]), rest),
        255 => match rest.split_first_chunk::<4>() {
            Some((status, body)) => (Some(u32::from_le_bytes(*status)), body),
            None => (Some(0), rest),
        },
    };
    for kind in [NodeKind::Lnd, NodeKind::Cln, NodeKind::Lnbits] {
        if let Ok(invoice) = parse_invoice(kind, status, body) {
            assert!(status.is_some_and(|s| (200..300).contains(&s)), "accepted an answer with status {status:?}");
            let bolt11 = invoice.bolt11.as_bytes();
            assert!(bolt11.len() >= 2 && bolt11[..2].eq_ignore_ascii_case(b"ln"), "{:?}", invoice.bolt11);
            assert!(bolt11.iter().all(u8::is_ascii_alphanumeric), "header-unsafe invoice {:?}", invoice.bolt11);
        }
    }
});
