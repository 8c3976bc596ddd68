//! The proxy-wasm ABI's serialized header map, as a host hands over a whole map in one call: the
//! number of pairs, each pair's key and value sizes (little-endian u32), then the keys and values,
//! each followed by a NUL. Decoded without trusting any size.

/// A header map's pairs: names and values as bytes, in the host's order.
pub type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// The pairs; `None` when the sizes do not fit the buffer.
pub fn decode(bytes: &[u8]) -> Option<Pairs> {
    if bytes.is_empty() {
        return Some(Vec::new());
    }
    let count = read_u32(bytes, 0)?;
    let mut at = count.checked_mul(8)?.checked_add(4)?;
    // No more pairs than the buffer has room for, whatever the count says.
    let mut pairs = Vec::with_capacity(count.min(bytes.len() / 10));
    for n in 0..count {
        let sizes = n.checked_mul(8)?.checked_add(4)?;
        let key_len = read_u32(bytes, sizes)?;
        let value_len = read_u32(bytes, sizes.checked_add(4)?)?;
        let key = bytes.get(at..at.checked_add(key_len)?)?.to_vec();
        at = at.checked_add(key_len)?.checked_add(1)?;
        let value = bytes.get(at..at.checked_add(value_len)?)?.to_vec();
        at = at.checked_add(value_len)?.checked_add(1)?;
        pairs.push((key, value));
    }
    Some(pairs)
}

fn read_u32(bytes: &[u8], at: usize) -> Option<usize> {
    let word: [u8; 4] = bytes.get(at..at.checked_add(4)?)?.try_into().ok()?;
    usize::try_from(u32::from_le_bytes(word)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(pairs: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = (pairs.len() as u32).to_le_bytes().to_vec();
        for (k, v) in pairs {
            out.extend((k.len() as u32).to_le_bytes());
            out.extend((v.len() as u32).to_le_bytes());
        }
        for (k, v) in pairs {
            out.extend(k.as_bytes());
            out.push(0);
            out.extend(*v);
            out.push(0);
        }
        out
    }

    #[test]
    fn decodes_what_a_host_encodes() {
        let pairs: &[(&str, &[u8])] =
            &[(":method", b"GET"), ("authorization", b"L402 a:b"), ("x", b"\xff\xfe"), ("e", b"")];
        let decoded = decode(&encode(pairs)).unwrap();
        assert_eq!(decoded.len(), 4);
        assert_eq!(decoded[1], (b"authorization".to_vec(), b"L402 a:b".to_vec()));
        assert_eq!(decoded[2].1, b"\xff\xfe", "values stay bytes");
        assert_eq!(decode(&[]), Some(Vec::new()));
    }

    #[test]
    fn sizes_that_do_not_fit_are_refused() {
        let good = encode(&[("name", b"value")]);
        for cut in 1..good.len() - 1 {
            assert_eq!(decode(&good[..cut]), None, "cut at {cut}");
        }
        let mut huge_count = good.clone();
        huge_count[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode(&huge_count), None);
        let mut huge_key = good.clone();
        huge_key[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode(&huge_key), None);
    }
}
