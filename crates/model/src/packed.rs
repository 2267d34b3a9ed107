//! A field set packed into one allocation, for field sets held long and read once: a
//! plan's baselines, one per pair, all held until the run stores its links.

use std::fmt;

use crate::binary::{put_str, put_value};
use crate::{FieldName, Fields, SmolStr, Value, field};

/// [`Fields`] packed into bytes: per field the name (the index of a canonical name, or
/// `0xff` and the text) and the value in its binary form ([`crate::binary`]).
///
/// Why: a baseline of a dozen fields is a vector of 32-byte pairs, about 400 bytes;
/// packed, its names are a byte each and its values their text, about 150. A first
/// sync of a million pairs holds a million of them until its links are stored. Not a
/// stored format (the state has its own, `tandem_state`'s codec): it lives in memory.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct PackedFields(Box<[u8]>);

/// The name byte of a field without a canonical name; its text follows.
const OTHER_NAME: u8 = 0xff;

impl PackedFields {
    pub fn pack(fields: &Fields) -> PackedFields {
        let mut out = Vec::with_capacity(16 * fields.len());
        for (name, value) in fields {
            match field::slot_index(name.slot()) {
                Some(index) => out.push(index),
                None => {
                    out.push(OTHER_NAME);
                    put_str(&mut out, name.as_str());
                }
            }
            put_value(&mut out, value);
        }
        PackedFields(out.into_boxed_slice())
    }

    pub fn unpack(&self) -> Fields {
        let mut fields = Fields::with_capacity(self.0.len() / 8);
        let mut bytes = &self.0[..];
        while let Some((&first, rest)) = bytes.split_first() {
            bytes = rest;
            let name = match first {
                OTHER_NAME => FieldName::new(take_str(&mut bytes)),
                index => FieldName::from_slot(&field::SLOTS[usize::from(index)]),
            };
            fields.set(name, take_value(&mut bytes));
        }
        fields
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for PackedFields {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.unpack(), f)
    }
}

// The readers below read what `pack` wrote in this process: a short or malformed
// buffer cannot occur, so they index and unwrap.

fn take<'b>(bytes: &mut &'b [u8], n: usize) -> &'b [u8] {
    let (head, rest) = bytes.split_at(n);
    *bytes = rest;
    head
}

fn take_len(bytes: &mut &[u8]) -> usize {
    let mut n = 0;
    let mut shift = 0;
    loop {
        let byte = take(bytes, 1)[0];
        n |= usize::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return n;
        }
        shift += 7;
    }
}

fn take_str<'b>(bytes: &mut &'b [u8]) -> &'b str {
    let n = take_len(bytes);
    std::str::from_utf8(take(bytes, n)).expect("packed from a str")
}

fn take_value(bytes: &mut &[u8]) -> Value {
    match take(bytes, 1)[0] {
        b'T' => Value::Text(SmolStr::new(take_str(bytes))),
        b'D' => Value::date(take_str(bytes)).expect("packed from a checked date"),
        b'B' => Value::Bool(take(bytes, 1)[0] != 0),
        b'N' => {
            let bits = take(bytes, 8).try_into().expect("eight bytes");
            Value::Number(f64::from_bits(u64::from_le_bytes(bits)))
        }
        b'L' => {
            let n = take_len(bytes);
            Value::list((0..n).map(|_| take_str(bytes).to_owned()).collect())
        }
        _ => Value::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_packed_field_set_unpacks_to_itself() {
        let long = "a text longer than the twenty-three bytes kept inline, ümlaut".repeat(5);
        let fields = Fields::new()
            .with("name", "Acme")
            .with("x_rating", "5")
            .with("city", long.as_str())
            .with(
                "business_relations",
                Value::list(vec!["CUST".into(), "VEND".into()]),
            )
            .with("x_since", Value::date("2026-12-04").unwrap())
            .with("x_member", Value::Bool(true))
            .with("x_score", Value::Number(-1.5));
        let packed = PackedFields::pack(&fields);
        assert_eq!(packed.unpack(), fields);
        assert_eq!(PackedFields::pack(&Fields::new()).unpack(), Fields::new());
        assert!(PackedFields::default().is_empty());
        // A typical baseline takes less than half the pairs it replaces.
        let typical = Fields::new()
            .with("name", "Acme Other 820000")
            .with("phone", "+32 9 000 20 97")
            .with("city", "Elsewhere")
            .with("post_code", "0000")
            .with("country_code", "DE");
        let size = PackedFields::pack(&typical).0.len();
        assert!(
            size * 2 < typical.len() * size_of::<(FieldName, Value)>(),
            "{size}"
        );
        assert_eq!(format!("{packed:?}"), format!("{fields:?}"));
    }
}
