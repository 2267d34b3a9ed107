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
        put_fields(&mut out, fields);
        PackedFields(out.into_boxed_slice())
    }

    pub fn unpack(&self) -> Fields {
        fields_of(&self.0)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// As the fields it holds.
impl serde::Serialize for PackedFields {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.unpack().serialize(serializer)
    }
}

impl fmt::Debug for PackedFields {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.unpack(), f)
    }
}

/// Appends `fields` in the packed form.
pub(crate) fn put_fields(out: &mut Vec<u8>, fields: &Fields) {
    for (name, value) in fields {
        put_name(out, name);
        put_value(out, value);
    }
}

fn put_name(out: &mut Vec<u8>, name: &FieldName) {
    match field::slot_index(name.slot()) {
        Some(index) => out.push(index),
        None => {
            out.push(OTHER_NAME);
            put_str(out, name.as_str());
        }
    }
}

/// Changes of fields, each a name and its value before and after, packed as
/// [`PackedFields`] packs fields: the name, then both values (an empty one too).
///
/// Why: a plan holds the changes of every hub it carries out, a first sync at 1M
/// about eight a hub; as a vector of (name, value, value) each took 56 bytes and
/// the vector's own 24, packed a few bytes each and the box's 16.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct PackedChanges(Box<[u8]>);

impl PackedChanges {
    pub fn pack<'c>(
        changes: impl IntoIterator<Item = (&'c FieldName, &'c Value, &'c Value)>,
    ) -> PackedChanges {
        let mut out = Vec::new();
        for (name, old, new) in changes {
            put_name(&mut out, name);
            put_value(&mut out, old);
            put_value(&mut out, new);
        }
        PackedChanges(out.into_boxed_slice())
    }

    /// These changes, then `more`, each of which replaces a change of the same field:
    /// as a list would give by dropping those and pushing `more` at its end. The
    /// changes kept are copied as they are packed, not unpacked (a first sync adds the
    /// codes a contact lists to 805,000 hubs' changes).
    pub fn with(&self, more: &[(&FieldName, &Value, &Value)]) -> PackedChanges {
        let replaced: Vec<PackedName<'_>> = (more.iter())
            .map(|(name, _, _)| PackedName::named(name))
            .collect();
        let mut out = Vec::with_capacity(self.0.len() + 16 * more.len());
        let mut bytes: &[u8] = &self.0;
        while !bytes.is_empty() {
            let start = bytes;
            let name = take_name(&mut bytes).expect("a packed change");
            for _ in 0..2 {
                let len = value_len(bytes);
                take(&mut bytes, len);
            }
            if !replaced.contains(&name) {
                out.extend_from_slice(&start[..start.len() - bytes.len()]);
            }
        }
        for (name, old, new) in more {
            put_name(&mut out, name);
            put_value(&mut out, old);
            put_value(&mut out, new);
        }
        PackedChanges(out.into_boxed_slice())
    }

    /// Each change, unpacked, in the order packed.
    pub fn iter(&self) -> ChangesIter<'_> {
        ChangesIter { bytes: &self.0 }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The changes of a [`PackedChanges`], unpacked one by one: (name, before, after).
#[derive(Debug, Clone)]
pub struct ChangesIter<'b> {
    bytes: &'b [u8],
}

impl Iterator for ChangesIter<'_> {
    type Item = (FieldName, Value, Value);

    fn next(&mut self) -> Option<(FieldName, Value, Value)> {
        let name = take_name(&mut self.bytes)?;
        let old = take_value(&mut self.bytes);
        Some((name.field_name(), old, take_value(&mut self.bytes)))
    }
}

impl fmt::Debug for PackedChanges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// The fields `put_fields` wrote into `bytes`.
pub(crate) fn fields_of(mut bytes: &[u8]) -> Fields {
    let mut fields = Fields::with_capacity(bytes.len() / 8);
    while let Some(name) = take_name(&mut bytes) {
        fields.set(name.field_name(), take_value(&mut bytes));
    }
    fields
}

/// The name of a packed field: a canonical slot, or its text. Also what a lookup
/// asks for, worked out once per lookup, so the walk compares a byte per field, not a
/// name.
#[derive(PartialEq, Eq)]
pub(crate) enum PackedName<'b> {
    Slot(u8),
    Other(&'b str),
}

impl PackedName<'_> {
    /// The packed name of `name`.
    pub(crate) fn named(name: &FieldName) -> PackedName<'_> {
        match field::slot_index(name.slot()) {
            Some(index) => PackedName::Slot(index),
            None => PackedName::Other(name.as_str()),
        }
    }

    /// The packed name of the field named `name`.
    pub(crate) fn text(name: &str) -> PackedName<'_> {
        match field::canonical_slot(name).and_then(field::slot_index) {
            Some(index) => PackedName::Slot(index),
            None => PackedName::Other(name),
        }
    }

    fn field_name(&self) -> FieldName {
        match self {
            PackedName::Slot(index) => FieldName::from_slot(&field::SLOTS[usize::from(*index)]),
            PackedName::Other(text) => FieldName::new(text),
        }
    }
}

fn take_name<'b>(bytes: &mut &'b [u8]) -> Option<PackedName<'b>> {
    let (&first, rest) = bytes.split_first()?;
    *bytes = rest;
    Some(match first {
        OTHER_NAME => PackedName::Other(take_str(bytes)),
        index => PackedName::Slot(index),
    })
}

/// The bytes of the value of field `wanted` (its tag first), found without unpacking
/// the fields before it.
pub(crate) fn find<'b>(mut bytes: &'b [u8], wanted: &PackedName<'_>) -> Option<&'b [u8]> {
    while let Some(name) = take_name(&mut bytes) {
        let len = value_len(bytes);
        let value = take(&mut bytes, len);
        if *wanted == name {
            return Some(value);
        }
    }
    None
}

/// The length of the value `bytes` start with, its tag included.
fn value_len(bytes: &[u8]) -> usize {
    let mut rest = &bytes[1..];
    match bytes[0] {
        b'T' | b'D' => {
            let n = take_len(&mut rest);
            rest = &rest[n..];
        }
        b'B' => rest = &rest[1..],
        b'N' => rest = &rest[8..],
        b'L' => {
            for _ in 0..take_len(&mut rest) {
                let n = take_len(&mut rest);
                rest = &rest[n..];
            }
        }
        _ => {}
    }
    bytes.len() - rest.len()
}

// The readers below read what `pack` wrote in this process: a short or malformed
// buffer cannot occur, so they index and unwrap.

pub(crate) fn take<'b>(bytes: &mut &'b [u8], n: usize) -> &'b [u8] {
    let (head, rest) = bytes.split_at(n);
    *bytes = rest;
    head
}

pub(crate) fn take_len(bytes: &mut &[u8]) -> usize {
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

pub(crate) fn take_str<'b>(bytes: &mut &'b [u8]) -> &'b str {
    let n = take_len(bytes);
    str_of(take(bytes, n))
}

/// Bytes `put_str` wrote, as the `str` they were written from.
pub(crate) fn str_of(text: &[u8]) -> &str {
    debug_assert!(std::str::from_utf8(text).is_ok(), "packed from a str");
    // SAFETY: packed bytes are private to this crate and written only by `put_str`
    // from a `&str`, and read back at the offsets they were written at: `text` is the
    // whole of one `str`. Checking it again took a twentieth of a first sync's CPU
    // (every id compared, every value unpacked).
    #[allow(unsafe_code)]
    unsafe {
        std::str::from_utf8_unchecked(text)
    }
}

/// A packed value's bytes fed to a content hash as [`Value`]'s own encoding would
/// feed them, without unpacking the value.
pub(crate) struct PackedValue<'b>(pub(crate) &'b [u8]);

impl crate::value::HashEncode for PackedValue<'_> {
    fn encode_for_hash(&self, out: &mut Vec<u8>) {
        let mut bytes = self.0;
        let tag = take(&mut bytes, 1)[0];
        let put_text = |out: &mut Vec<u8>, bytes: &mut &[u8]| {
            let n = take_len(bytes);
            out.extend_from_slice(&(n as u64).to_le_bytes());
            out.extend_from_slice(take(bytes, n));
        };
        match tag {
            b'T' | b'D' => {
                out.push(tag);
                put_text(out, &mut bytes);
            }
            b'B' => out.extend_from_slice(if bytes[0] != 0 { b"B1" } else { b"B0" }),
            b'N' => {
                out.push(b'N');
                out.extend_from_slice(&bytes[..8]);
            }
            b'L' => {
                out.push(b'L');
                let n = take_len(&mut bytes);
                out.extend_from_slice(&(n as u64).to_le_bytes());
                for _ in 0..n {
                    put_text(out, &mut bytes);
                }
            }
            _ => out.push(b'0'),
        }
    }
}

/// The fields of `bytes` with their values as packed, for a content hash.
pub(crate) fn packed_entries(
    mut bytes: &[u8],
) -> impl Iterator<Item = (&'static str, PackedValue<'_>)> + '_ {
    std::iter::from_fn(move || {
        let name = take_name(&mut bytes)?;
        let len = value_len(bytes);
        Some((
            name.field_name().as_str(),
            PackedValue(take(&mut bytes, len)),
        ))
    })
}

pub(crate) fn take_value(bytes: &mut &[u8]) -> Value {
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
    fn packed_changes_unpack_to_themselves_in_their_order() {
        let long = Value::text("a text longer than the twenty-three bytes kept inline".repeat(3));
        let changes = [
            (FieldName::new("name"), Value::Null, Value::text("Acme")),
            (FieldName::new("x_rating"), Value::text("4"), Value::Null),
            (FieldName::new("city"), long.clone(), Value::text("Gent")),
            (
                FieldName::new("business_relations"),
                Value::list(vec!["CUST".into()]),
                Value::list(vec!["CUST".into(), "VEND".into()]),
            ),
            (
                FieldName::new("x_since"),
                Value::Null,
                Value::date("2026-12-06").unwrap(),
            ),
            (
                FieldName::new("x_member"),
                Value::Bool(false),
                Value::Bool(true),
            ),
            (
                FieldName::new("x_score"),
                Value::Number(2.0),
                Value::Number(-1.5),
            ),
            (FieldName::new("name"), Value::text("Acme"), long),
        ];
        let packed = PackedChanges::pack(changes.iter().map(|(n, o, v)| (n, o, v)));
        assert_eq!(packed.iter().collect::<Vec<_>>(), changes.to_vec());
        assert!(!packed.is_empty());
        let none = PackedChanges::pack([]);
        assert!(none.is_empty());
        assert_eq!(none.iter().count(), 0);
    }

    /// A few field names, canonical and not, and values of every kind.
    fn change() -> impl proptest::strategy::Strategy<Value = (FieldName, Value, Value)> {
        use proptest::prelude::*;
        let name = prop::sample::select(vec!["name", "city", "business_relations", "x_a", "x_b"]);
        let value = prop_oneof![
            Just(Value::Null),
            "[a-z]{0,30}".prop_map(Value::text),
            any::<bool>().prop_map(Value::Bool),
            any::<f64>()
                .prop_filter("comparable", |x| !x.is_nan())
                .prop_map(Value::Number),
            prop::collection::vec("[A-Z]{1,4}", 0..3).prop_map(Value::list),
        ];
        (name.prop_map(FieldName::new), value.clone(), value)
    }

    proptest::proptest! {
        /// `with` gives what a list gives that drops the changes of the fields added
        /// and pushes the added ones at its end.
        #[test]
        fn changes_with_more_answer_as_a_list_would(
            first in proptest::collection::vec(change(), 0..8),
            more in proptest::collection::vec(change(), 0..4),
        ) {
            let mut list = first.clone();
            for change in &more {
                list.retain(|c| c.0 != change.0);
                list.push(change.clone());
            }
            // The list's way keeps one change per field added: so must `with`'s.
            let mut added: Vec<(FieldName, Value, Value)> = Vec::new();
            for change in &more {
                added.retain(|c| c.0 != change.0);
                added.push(change.clone());
            }
            let packed = PackedChanges::pack(first.iter().map(|(n, o, v)| (n, o, v)));
            let more: Vec<(&FieldName, &Value, &Value)> =
                added.iter().map(|(n, o, v)| (n, o, v)).collect();
            proptest::prop_assert_eq!(packed.with(&more).iter().collect::<Vec<_>>(), list);
        }
    }

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
