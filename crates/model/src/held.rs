//! A record held packed: what a run keeps of every record it read until its plan is
//! made, read field by field without unpacking the whole.

use std::borrow::Cow;
use std::fmt;

use crate::binary::put_str;
use crate::packed::{self, PackedName, take, take_str};
use crate::{EntityKind, FieldName, Fields, Record, Timestamp, Value};

/// What the rules read of a record, however it is held: a [`Record`] as a connector
/// sends it, or a [`PackedRecord`] as a run keeps it.
pub trait RecordView {
    fn record_id(&self) -> &str;
    /// The field as text, if it holds text or a date.
    fn text_of(&self, name: &str) -> Option<&str>;
    /// [`RecordView::text_of`] by an interned name (faster where it is held packed).
    fn text_named(&self, name: &FieldName) -> Option<&str>;
    /// The field's value, borrowed where it is held as one.
    fn value_of(&self, name: &FieldName) -> Option<Cow<'_, Value>>;
}

impl<R: RecordView + ?Sized> RecordView for &R {
    fn record_id(&self) -> &str {
        (**self).record_id()
    }

    fn text_of(&self, name: &str) -> Option<&str> {
        (**self).text_of(name)
    }

    fn text_named(&self, name: &FieldName) -> Option<&str> {
        (**self).text_named(name)
    }

    fn value_of(&self, name: &FieldName) -> Option<Cow<'_, Value>> {
        (**self).value_of(name)
    }
}

impl RecordView for Record {
    fn record_id(&self) -> &str {
        &self.id
    }

    fn text_of(&self, name: &str) -> Option<&str> {
        self.fields.text(name)
    }

    fn text_named(&self, name: &FieldName) -> Option<&str> {
        self.fields.get_named(name).and_then(Value::as_text)
    }

    fn value_of(&self, name: &FieldName) -> Option<Cow<'_, Value>> {
        self.fields.get_named(name).map(Cow::Borrowed)
    }
}

/// A [`Record`] in one allocation: a flags byte (deleted, has a version, has a
/// modification time), the id, the version, the time, then the fields as
/// [`crate::PackedFields`] writes them.
///
/// Why: a run holds every record it read until its plan is made. As a `Record` a
/// contact of ten short fields took about 540 bytes with the map that found it (the
/// struct, a 32-byte pair per field, the id twice); packed it takes its text and a
/// few bytes more. Not a stored format: it lives in memory.
#[derive(Clone, PartialEq, Eq)]
pub struct PackedRecord {
    bytes: Box<[u8]>,
    kind: EntityKind,
}

const DELETED: u8 = 1;
const VERSION: u8 = 2;
const MODIFIED: u8 = 4;

/// A packed record's parts, found by walking its head.
struct Parts<'b> {
    flags: u8,
    id: &'b str,
    version: Option<&'b str>,
    modified_at: Option<Timestamp>,
    fields: &'b [u8],
}

impl PackedRecord {
    pub fn pack(record: &Record) -> PackedRecord {
        let mut out = Vec::with_capacity(32 + 16 * record.fields.len());
        let flag = |on: bool, bit: u8| if on { bit } else { 0 };
        let flags = flag(record.deleted, DELETED)
            | flag(record.version.is_some(), VERSION)
            | flag(record.modified_at.is_some(), MODIFIED);
        out.push(flags);
        put_str(&mut out, &record.id);
        if let Some(version) = &record.version {
            put_str(&mut out, version);
        }
        if let Some(at) = record.modified_at {
            out.extend_from_slice(&at.0.to_le_bytes());
        }
        packed::put_fields(&mut out, &record.fields);
        PackedRecord {
            bytes: out.into_boxed_slice(),
            kind: record.kind,
        }
    }

    pub fn unpack(&self) -> Record {
        let parts = self.parts();
        Record {
            id: parts.id.to_owned(),
            kind: self.kind,
            fields: packed::fields_of(parts.fields),
            version: parts.version.map(str::to_owned),
            modified_at: parts.modified_at,
            deleted: parts.flags & DELETED != 0,
        }
    }

    fn parts(&self) -> Parts<'_> {
        let mut bytes = &self.bytes[..];
        let flags = take(&mut bytes, 1)[0];
        let id = take_str(&mut bytes);
        let version = (flags & VERSION != 0).then(|| take_str(&mut bytes));
        let modified_at = (flags & MODIFIED != 0).then(|| {
            let raw = take(&mut bytes, 8).try_into().expect("eight bytes");
            Timestamp(i64::from_le_bytes(raw))
        });
        Parts {
            flags,
            id,
            version,
            modified_at,
            fields: bytes,
        }
    }

    pub fn id(&self) -> &str {
        packed::str_of(self.id_bytes())
    }

    /// The id's bytes: it comes first after the flags, read without the rest of the
    /// head.
    fn id_bytes(&self) -> &[u8] {
        let mut bytes = &self.bytes[1..];
        let n = packed::take_len(&mut bytes);
        &bytes[..n]
    }

    /// How this record's id orders against `id`, as `str` orders them.
    pub fn cmp_id(&self, id: &str) -> std::cmp::Ordering {
        self.id_bytes().cmp(id.as_bytes())
    }

    /// How two records order by id.
    pub fn cmp_by_id(&self, other: &PackedRecord) -> std::cmp::Ordering {
        self.id_bytes().cmp(other.id_bytes())
    }

    pub fn kind(&self) -> EntityKind {
        self.kind
    }

    pub fn deleted(&self) -> bool {
        self.bytes[0] & DELETED != 0
    }

    pub fn version(&self) -> Option<&str> {
        self.parts().version
    }

    pub fn modified_at(&self) -> Option<Timestamp> {
        self.parts().modified_at
    }

    /// All fields, unpacked.
    pub fn fields(&self) -> Fields {
        packed::fields_of(self.parts().fields)
    }

    /// The field's value, unpacked.
    pub fn get(&self, name: &FieldName) -> Option<Value> {
        let value = packed::find(self.parts().fields, &PackedName::named(name))?;
        Some(packed::take_value(&mut &value[..]))
    }

    /// The field as text, if it holds text or a date: borrowed, not unpacked.
    pub fn text(&self, name: &str) -> Option<&str> {
        self.text_at(&PackedName::text(name))
    }

    /// [`PackedRecord::text`] by an interned name.
    pub fn text_named(&self, name: &FieldName) -> Option<&str> {
        self.text_at(&PackedName::named(name))
    }

    fn text_at(&self, wanted: &PackedName<'_>) -> Option<&str> {
        let mut value = packed::find(self.parts().fields, wanted)?;
        match take(&mut value, 1)[0] {
            b'T' | b'D' => Some(take_str(&mut value)),
            _ => None,
        }
    }

    /// [`Fields::content_hash_after`] of this record's fields, hashed from the packed
    /// bytes: the same hash, nothing unpacked.
    pub fn content_hash_after<'c>(
        &self,
        changes: impl IntoIterator<Item = (&'c FieldName, &'c Value)>,
    ) -> u64 {
        crate::fields::content_hash_of(packed::packed_entries(self.parts().fields), changes)
    }
}

impl RecordView for PackedRecord {
    fn record_id(&self) -> &str {
        self.id()
    }

    fn text_of(&self, name: &str) -> Option<&str> {
        self.text(name)
    }

    fn text_named(&self, name: &FieldName) -> Option<&str> {
        PackedRecord::text_named(self, name)
    }

    fn value_of(&self, name: &FieldName) -> Option<Cow<'_, Value>> {
        self.get(name).map(Cow::Owned)
    }
}

impl fmt::Debug for PackedRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.unpack(), f)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn value() -> impl Strategy<Value = Value> {
        prop_oneof![
            "[a-zA-Z0-9 @.+ü-]{0,40}".prop_map(Value::text),
            Just(Value::date("2026-12-05").unwrap()),
            any::<bool>().prop_map(Value::Bool),
            (-1e9f64..1e9).prop_map(Value::Number),
            prop::collection::vec("[A-Z]{1,6}", 0..4).prop_map(Value::list),
        ]
    }

    fn record() -> impl Strategy<Value = Record> {
        let names = prop::sample::select(vec![
            "name",
            "city",
            "email",
            "phone",
            "business_relations",
            "x_rating",
            "x_since",
        ]);
        (
            "[A-Z0-9-]{1,20}",
            prop::collection::vec((names, value()), 0..8),
            prop::option::of("[a-z0-9\"-]{1,12}"),
            prop::option::of(any::<i64>()),
            any::<bool>(),
        )
            .prop_map(|(id, pairs, version, at, deleted)| {
                let mut fields = Fields::new();
                for (name, value) in pairs {
                    fields.set(name, value);
                }
                Record {
                    version,
                    modified_at: at.map(Timestamp),
                    deleted,
                    ..Record::new(EntityKind::Customer, id, fields)
                }
            })
    }

    proptest! {
        /// A packed record answers every question as the record it was packed from.
        #[test]
        fn a_packed_record_answers_as_the_record_would(record in record()) {
            let packed = PackedRecord::pack(&record);
            prop_assert_eq!(&packed.unpack(), &record);
            prop_assert_eq!(packed.id(), record.id.as_str());
            prop_assert_eq!(packed.cmp_id("M"), record.id.as_str().cmp("M"));
            let other = PackedRecord::pack(&Record::new(EntityKind::Contact, "M", Fields::new()));
            prop_assert_eq!(packed.cmp_by_id(&other), record.id.as_str().cmp("M"));
            prop_assert_eq!(packed.version(), record.version.as_deref());
            prop_assert_eq!(packed.modified_at(), record.modified_at);
            prop_assert_eq!(packed.deleted(), record.deleted);
            prop_assert_eq!(&packed.fields(), &record.fields);
            let changes = [(FieldName::new("city"), Value::text("Gent")), (FieldName::new("name"), Value::Null)];
            let changes = || changes.iter().map(|(n, v)| (n, v));
            prop_assert_eq!(packed.content_hash_after(changes()), record.fields.content_hash_after(changes()));
            for name in ["name", "city", "email", "phone", "business_relations", "x_rating", "x_since", "x_other"] {
                let field = FieldName::new(name);
                prop_assert_eq!(packed.get(&field), record.fields.get(name).cloned());
                prop_assert_eq!(packed.text(name), record.fields.text(name));
                prop_assert_eq!(packed.text_named(&field), record.fields.text(name));
                prop_assert_eq!(packed.value_of(&field), record.value_of(&field));
            }
        }
    }

    #[test]
    fn a_packed_contact_takes_less_than_half_of_the_record() {
        let fields = Fields::new()
            .with("contact_type", "company")
            .with("name", "Nordwind GmbH 0")
            .with("address", "Rue Haute 54")
            .with("city", "Gent")
            .with("post_code", "9000")
            .with("country_code", "BE")
            .with("phone", "+32 9 000 00 77")
            .with("vat_registration_no", "BE0000000000");
        let record = Record::new(EntityKind::Contact, "C00000000", fields);
        let packed = PackedRecord::pack(&record);
        let as_record = size_of::<Record>()
            + record.fields.len() * size_of::<(FieldName, Value)>()
            + record.id.len();
        let size = packed.bytes.len() + size_of::<PackedRecord>();
        assert!(size * 2 < as_record, "{size} against {as_record}");
        assert_eq!(packed.text("city"), Some("Gent"));
        assert_eq!(packed.text("email"), None);
    }
}
