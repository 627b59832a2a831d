//! Order-preserving ("memcomparable") key encoding.
//!
//! Strings are written byte by byte with `0x00` escaped as `0x00 0xFF` and a
//! terminator `0x00 0x01`, so that the encoded bytes sort exactly like the
//! strings themselves (a length prefix would sort "B" before "AA") and a
//! string is never a prefix of a longer one's encoding. Signed times are
//! written big-endian with the sign bit flipped, so negative epochs sort first.

use smallvec::SmallVec;

use crate::event::Millis;

/// A key as the state holds it: inline up to 32 bytes, as nearly every key
/// is (ids, a pair of ids, a time and a pair, a 16-byte hash). Built on the
/// stack, a key costs no allocation; held in the overlay's hash slot, it is
/// compared where the lookup has loaded it, not behind a pointer
/// (BENCHMARKS.md, "Overlay keys inline").
pub type Key = SmallVec<[u8; 32]>;

const ESCAPE: u8 = 0x00;
const ESCAPED_ZERO: u8 = 0xFF;
const TERMINATOR: u8 = 0x01;

/// Appends `s` in the order-preserving string encoding.
pub fn push_str(buf: &mut Key, s: &str) {
    let mut parts = s.as_bytes().split(|&b| b == ESCAPE);
    if let Some(first) = parts.next() {
        buf.extend_from_slice(first);
    }
    for part in parts {
        buf.extend_from_slice(&[ESCAPE, ESCAPED_ZERO]);
        buf.extend_from_slice(part);
    }
    buf.extend_from_slice(&[ESCAPE, TERMINATOR]);
}

/// Appends a time so that byte order is numeric order.
pub fn push_ts(buf: &mut Key, ts: Millis) {
    buf.extend_from_slice(&((ts as u64) ^ (1 << 63)).to_be_bytes());
}

/// Reads one encoded string from the front of `key`; returns it and the rest.
pub fn read_str(key: &[u8]) -> Option<(String, &[u8])> {
    let mut out = Vec::with_capacity(key.len());
    let mut i = 0;
    while i < key.len() {
        if key[i] != ESCAPE {
            out.push(key[i]);
            i += 1;
            continue;
        }
        match *key.get(i + 1)? {
            TERMINATOR => return Some((String::from_utf8(out).ok()?, &key[i + 2..])),
            ESCAPED_ZERO => out.push(0),
            _ => return None,
        }
        i += 2;
    }
    None
}

/// The length of the first encoded string of `key`, terminator included.
pub fn first_str_len(key: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i + 1 < key.len() {
        match (key[i], key[i + 1]) {
            (ESCAPE, TERMINATOR) => return Some(i + 2),
            (ESCAPE, _) => i += 2,
            _ => i += 1,
        }
    }
    None
}

/// Reads one encoded time from the front of `key`; returns it and the rest.
pub fn read_ts(key: &[u8]) -> Option<(Millis, &[u8])> {
    let bytes: [u8; 8] = key.get(..8)?.try_into().ok()?;
    Some(((u64::from_be_bytes(bytes) ^ (1 << 63)) as i64, &key[8..]))
}

/// The key of a single string.
pub fn str_key(s: &str) -> Key {
    let mut k = Key::new();
    push_str(&mut k, s);
    k
}

/// The key of two strings, scannable by the first as a prefix.
pub fn pair_key(a: &str, b: &str) -> Key {
    let mut k = Key::new();
    push_str(&mut k, a);
    push_str(&mut k, b);
    k
}

/// Decodes a key written by `pair_key`.
pub fn read_pair(key: &[u8]) -> Option<(String, String)> {
    let (a, rest) = read_str(key)?;
    let (b, rest) = read_str(rest)?;
    rest.is_empty().then_some((a, b))
}

/// The key of a timer: due time first, so a range scan finds what is due.
pub fn timer_key(due: Millis, crm: &str, product: &str) -> Key {
    let mut k = Key::new();
    push_ts(&mut k, due);
    push_str(&mut k, crm);
    push_str(&mut k, product);
    k
}

/// Decodes a key written by `timer_key`.
pub fn read_timer(key: &[u8]) -> Option<(Millis, String, String)> {
    let (due, rest) = read_ts(key)?;
    let (crm, product) = read_pair(rest)?;
    Some((due, crm, product))
}

/// The smallest key strictly greater than every key that starts with `prefix`
/// (the exclusive upper bound of a prefix scan); `None` when there is none.
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_str_len_spans_the_first_string_and_its_terminator() {
        let k = pair_key("p\0x", "crm");
        let n = first_str_len(&k).unwrap();
        assert_eq!(&k[..n], str_key("p\0x").as_slice());
        assert_eq!(first_str_len(b"no terminator"), None);
        assert_eq!(first_str_len(&str_key("")), Some(2));
    }

    #[test]
    fn strings_sort_like_their_encoding() {
        let mut words = vec!["B", "AA", "A", "", "A\0", "A\0B", "AB", "é", "z", "\0"];
        let mut encoded: Vec<Vec<u8>> = words.iter().map(|w| str_key(w).to_vec()).collect();
        words.sort();
        encoded.sort();
        let decoded: Vec<String> = encoded.iter().map(|k| read_str(k).unwrap().0).collect();
        assert_eq!(decoded, words);
    }

    #[test]
    fn a_key_past_the_inline_size_is_encoded_as_an_inline_one() {
        let long = "a\0".repeat(40);
        let mut v = [b'a', ESCAPE, ESCAPED_ZERO].repeat(40);
        v.extend_from_slice(&[ESCAPE, TERMINATOR]);
        let k = str_key(&long);
        assert!(k.spilled(), "{} bytes stay inline", k.len());
        assert_eq!(k.as_slice(), v.as_slice());
        assert_eq!(read_str(&k).unwrap(), (long, &[][..]));
    }

    #[test]
    fn a_string_key_is_never_a_prefix_of_another_pair() {
        let k1 = pair_key("P1", "C");
        let k2 = pair_key("P10", "C");
        let p1 = str_key("P1");
        assert!(k1.starts_with(&p1));
        assert!(!k2.starts_with(&p1));
    }

    #[test]
    fn timers_sort_by_time_then_crm_then_product() {
        let mut keys = [
            timer_key(10, "C2", "P1"),
            timer_key(-5, "C9", "P9"),
            timer_key(10, "C1", "P2"),
            timer_key(10, "C1", "P10"),
            timer_key(3, "C3", "P0"),
        ];
        keys.sort();
        let order: Vec<_> = keys.iter().map(|k| read_timer(k).unwrap()).collect();
        let expected = [
            (-5, "C9", "P9"),
            (3, "C3", "P0"),
            (10, "C1", "P10"),
            (10, "C1", "P2"),
            (10, "C2", "P1"),
        ];
        for (got, want) in order.iter().zip(expected) {
            assert_eq!((got.0, got.1.as_str(), got.2.as_str()), want);
        }
    }

    #[test]
    fn prefix_end_bounds_the_prefix() {
        assert_eq!(prefix_end(&[1, 2]), Some(vec![1, 3]));
        assert_eq!(prefix_end(&[1, 0xFF]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xFF]), None);
    }

    #[test]
    fn truncated_keys_do_not_decode() {
        assert!(read_str(b"abc").is_none());
        assert!(read_str(&[b'a', 0x00, 0x07]).is_none());
        assert!(read_ts(&[1, 2, 3]).is_none());
    }
}
