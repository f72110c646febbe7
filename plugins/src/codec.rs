//! Wire encodings: proxy-wasm header-map serialization and Portico's upstream candidate list.

use crate::abi::{PAIRS_MAX_BYTES, PAIRS_MAX_COUNT};
use crate::candidates::Candidate;
use crate::types::HeaderMap;

/// Serialize pairs as the ABI expects: `u32 N`, N x (`u32 key_len`, `u32 value_len`), then each key and value
/// followed by a NUL. All integers little-endian.
pub fn serialize_map(map: &[(String, String)]) -> Vec<u8> {
    serialize_pairs(map.len(), || map.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes())))
}

/// [`serialize_map`] for the `n` pairs `pairs` yields, as bytes (a list, or a request head read in place).
pub(crate) fn serialize_pairs<'a, I>(n: usize, pairs: impl Fn() -> I) -> Vec<u8>
where
    I: Iterator<Item = (&'a [u8], &'a [u8])>,
{
    let data: usize = pairs().map(|(k, v)| k.len() + v.len() + 2).sum();
    let mut out = Vec::with_capacity(4 + 8 * n + data);
    out.extend_from_slice(&(n as u32).to_le_bytes());
    for (k, v) in pairs() {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in pairs() {
        out.extend_from_slice(k);
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
    out
}

/// Size of [`serialize_map`]'s output without building it (`proxy_get_header_map_size`).
pub fn serialized_map_size(map: &[(String, String)]) -> usize {
    serialized_pairs_size(map.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes())))
}

/// [`serialized_map_size`] for the pairs `pairs` yields, as bytes.
pub(crate) fn serialized_pairs_size<'a>(pairs: impl Iterator<Item = (&'a [u8], &'a [u8])>) -> usize {
    4 + pairs.map(|(k, v)| 8 + k.len() + v.len() + 2).sum::<usize>()
}

/// Parse a serialized map. Accepts the empty forms (0 bytes, a single NUL, `N=0`). Returns `None` on
/// truncated or oversized input, or non-UTF-8 keys/values.
pub fn deserialize_map(bytes: &[u8]) -> Option<HeaderMap> {
    if bytes.is_empty() || bytes == [0] {
        return Some(Vec::new());
    }
    if bytes.len() > PAIRS_MAX_BYTES {
        return None;
    }
    let n = read_u32(bytes, 0)? as usize;
    if n > PAIRS_MAX_COUNT {
        return None;
    }
    let mut sizes = Vec::with_capacity(n);
    for i in 0..n {
        let k = read_u32(bytes, 4 + i * 8)? as usize;
        let v = read_u32(bytes, 8 + i * 8)? as usize;
        sizes.push((k, v));
    }
    let mut pos = 4 + n * 8;
    let mut out = Vec::with_capacity(n);
    for (k, v) in sizes {
        let key = bytes.get(pos..pos.checked_add(k)?)?;
        pos = pos.checked_add(k + 1)?;
        let value = bytes.get(pos..pos.checked_add(v)?)?;
        pos = pos.checked_add(v + 1)?;
        out.push((String::from_utf8(key.to_vec()).ok()?, String::from_utf8(value.to_vec()).ok()?));
    }
    // A missing NUL after the very last value is tolerated (`pos` may be `len + 1`).
    Some(out)
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let b = bytes.get(at..at + 4)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// Encode candidates for the `portico.upstream.candidates` property: one line per endpoint,
/// `<address> <weight> <active_requests> <latency_ms> <ejected:0|1>\n`, decimal integers, single spaces.
pub fn encode_candidates(candidates: &[Candidate]) -> Vec<u8> {
    // Built for every pick: digits are written by hand rather than through `fmt`, which showed in profiles.
    let mut out = Vec::with_capacity(candidates.len() * 40);
    for c in candidates {
        out.extend_from_slice(c.address.as_bytes());
        out.push(b' ');
        push_decimal(&mut out, u64::from(c.weight));
        out.push(b' ');
        push_decimal(&mut out, u64::from(c.active_requests));
        out.push(b' ');
        push_decimal(&mut out, u64::try_from(c.latency.as_millis()).unwrap_or(u64::MAX));
        out.push(b' ');
        out.push(if c.ejected { b'1' } else { b'0' });
        out.push(b'\n');
    }
    out
}

fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::time::Duration;

    #[test]
    fn map_layout_matches_sdk_example() {
        let map = vec![("a".to_string(), "1".to_string()), ("b".to_string(), "22".to_string())];
        let bytes = serialize_map(&map);
        let expected: Vec<u8> =
            vec![2, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, b'a', 0, b'1', 0, b'b', 0, b'2', b'2', 0];
        assert_eq!(bytes, expected);
        assert_eq!(serialized_map_size(&map), bytes.len());
        assert_eq!(deserialize_map(&bytes).unwrap(), map);
    }

    #[test]
    fn empty_forms_and_garbage() {
        assert_eq!(deserialize_map(&[]).unwrap(), vec![]);
        assert_eq!(deserialize_map(&[0]).unwrap(), vec![]);
        assert_eq!(deserialize_map(&[0, 0, 0, 0]).unwrap(), vec![]);
        assert!(deserialize_map(&[5, 0, 0, 0, 1]).is_none());
        assert!(deserialize_map(&[1, 0, 0, 0, 200, 0, 0, 0, 1, 0, 0, 0, b'a']).is_none());
    }

    #[test]
    fn candidates_text() {
        let c = [Candidate {
            address: "10.0.0.1:80".into(),
            weight: 3,
            active_requests: 7,
            latency: Duration::from_millis(12),
            ejected: false,
        }];
        assert_eq!(encode_candidates(&c), b"10.0.0.1:80 3 7 12 0\n".to_vec());
        let many = [
            Candidate {
                weight: 0,
                active_requests: 4_000_000_000,
                latency: Duration::ZERO,
                ejected: true,
                ..c[0].clone()
            },
            Candidate { address: "[::1]:8080".into(), weight: 1000, latency: Duration::from_secs(90), ..c[0].clone() },
        ];
        assert_eq!(encode_candidates(&many), b"10.0.0.1:80 0 4000000000 0 1\n[::1]:8080 1000 7 90000 0\n".to_vec());
    }
}
