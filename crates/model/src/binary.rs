//! The binary form of values that Tandem stores (baselines, intent batches: the state's
//! codec, migration 8) and holds in memory (a plan's packed baselines).
//!
//! A value is a tag byte, then: `T` text and `D` date as a length (LEB128) and UTF-8
//! bytes, `B` one byte, `N` eight bytes (little-endian `f64` bits), `L` a count and its
//! items as texts, `0` nothing (null). Stored states hold these bytes: never edit a
//! shipped tag or layout.

use crate::Value;

/// `n` as LEB128: seven bits a byte, the high bit set on all but the last.
pub fn put_len(out: &mut Vec<u8>, n: usize) {
    let (bytes, len) = len_bytes(n);
    out.extend_from_slice(&bytes[..len]);
}

/// The bytes [`put_len`] writes for `n`, and how many they are.
pub fn len_bytes(mut n: usize) -> ([u8; 10], usize) {
    let mut out = [0u8; 10];
    let mut i = 0;
    while n >= 0x80 {
        out[i] = (n as u8 & 0x7f) | 0x80;
        n >>= 7;
        i += 1;
    }
    out[i] = n as u8;
    (out, i + 1)
}

/// A text as its length and bytes.
pub fn put_str(out: &mut Vec<u8>, s: &str) {
    put_len(out, s.len());
    out.extend_from_slice(s.as_bytes());
}

pub fn put_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Text(s) => {
            out.push(b'T');
            put_str(out, s);
        }
        Value::Date(d) => {
            out.push(b'D');
            put_str(out, d);
        }
        Value::Bool(b) => out.extend_from_slice(&[b'B', u8::from(*b)]),
        Value::Number(n) => {
            out.push(b'N');
            out.extend_from_slice(&n.to_bits().to_le_bytes());
        }
        Value::List(items) => {
            out.push(b'L');
            put_len(out, items.len());
            for item in items.iter() {
                put_str(out, item);
            }
        }
        Value::Null => out.push(b'0'),
    }
}
