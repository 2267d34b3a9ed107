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

/// A [`Record`] packed into bytes: a flags byte (deleted, has a version, has a
/// modification time), the kind, the id, the version, the time, then the fields as
/// [`crate::PackedFields`] writes them. Held alone (`Box<PackedRecord>`) or many back
/// to back in one buffer ([`PackedRecords`]).
///
/// Why: a run holds every record it read until its plan is made. As a `Record` a
/// contact of ten short fields took about 540 bytes with the map that found it (the
/// struct, a 32-byte pair per field, the id twice); packed it takes its text and a
/// few bytes more. Not a stored format: it lives in memory.
#[derive(PartialEq, Eq)]
#[repr(transparent)]
pub struct PackedRecord {
    bytes: [u8],
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

/// Appends `record` packed to `out`.
fn write(record: &Record, out: &mut Vec<u8>) {
    let flag = |on: bool, bit: u8| if on { bit } else { 0 };
    let flags = flag(record.deleted, DELETED)
        | flag(record.version.is_some(), VERSION)
        | flag(record.modified_at.is_some(), MODIFIED);
    out.push(flags);
    out.push(kind_byte(record.kind));
    put_str(out, &record.id);
    if let Some(version) = &record.version {
        put_str(out, version);
    }
    if let Some(at) = record.modified_at {
        out.extend_from_slice(&at.0.to_le_bytes());
    }
    packed::put_fields(out, &record.fields);
}

/// About what `record` takes packed, to size a buffer once.
fn size_hint(record: &Record) -> usize {
    32 + 16 * record.fields.len()
}

fn kind_byte(kind: EntityKind) -> u8 {
    EntityKind::ALL
        .iter()
        .position(|k| *k == kind)
        .expect("every kind is in ALL") as u8
}

impl PackedRecord {
    pub fn pack(record: &Record) -> Box<PackedRecord> {
        let mut out = Vec::with_capacity(size_hint(record));
        write(record, &mut out);
        let bytes = Box::into_raw(out.into_boxed_slice());
        // SAFETY: `PackedRecord` is a transparent wrapper of `[u8]`, so a boxed slice
        // is a boxed `PackedRecord` of the same layout and allocation; the bytes are
        // a whole record as `write` packs it, which is what every reader expects.
        #[allow(unsafe_code)]
        unsafe {
            Box::from_raw(bytes as *mut PackedRecord)
        }
    }

    /// The record `bytes` hold: the whole of one record as `write` packed it (the
    /// readers below walk it without checking, and read its texts as `str`s).
    fn of(bytes: &[u8]) -> &PackedRecord {
        // SAFETY: as in `pack`, the layouts are the same; the callers pass the bytes
        // of one record as `write` packed it (`PackedRecords` keeps where each begins
        // and ends).
        #[allow(unsafe_code)]
        unsafe {
            &*(bytes as *const [u8] as *const PackedRecord)
        }
    }

    pub fn unpack(&self) -> Record {
        let parts = self.parts();
        Record {
            id: parts.id.to_owned(),
            kind: self.kind(),
            fields: packed::fields_of(parts.fields),
            version: parts.version.map(str::to_owned),
            modified_at: parts.modified_at,
            deleted: parts.flags & DELETED != 0,
        }
    }

    fn parts(&self) -> Parts<'_> {
        let mut bytes = &self.bytes[..];
        let flags = take(&mut bytes, 2)[0];
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

    /// The id's bytes: it comes first after the flags and the kind, read without the
    /// rest of the head.
    fn id_bytes(&self) -> &[u8] {
        let mut bytes = &self.bytes[2..];
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
        EntityKind::ALL[usize::from(self.bytes[1])]
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

/// Packed records back to back in buffers, each after its length, found by where
/// that begins; in the order they were put in, until sorted. Records packed apart
/// (a page of a listing, a part packed on another core) are appended buffer and all,
/// not copied.
///
/// Why not a `Box<PackedRecord>` each: a first sync at ten million partners holds
/// twenty million records, and each box took 16 bytes for its pointer and length
/// plus what the allocator rounds it up to; here a record takes the 8 bytes of where
/// it begins and a byte or two of length. Twenty million allocations, and as many
/// frees when the run lets them go, are a few hundred buffers.
///
/// Invariant: each of `starts` is a buffer's number (the high bits, [`OFFSET_BITS`])
/// and where in it the length of a record `write` packed begins, the record right
/// after it; records put in again leave their older bytes unused.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct PackedRecords {
    buffers: Vec<Buffer>,
    starts: Vec<u64>,
}

/// Bytes of packed records kept outside the heap once written: a file mapped into
/// memory, say, whose pages the system may drop and read again. The bytes never
/// change and stay at the same address while held (records borrowed from them live
/// as long as the [`PackedRecords`]).
pub trait HeldBytes: Send + Sync {
    fn bytes(&self) -> &[u8];
    /// The bytes are not needed in memory for now: the holder may let the pages go
    /// (they are read again when next touched).
    fn let_go(&self);
}

/// A buffer of packed records: grown on the heap, or handed to a holder once full.
#[derive(Clone)]
enum Buffer {
    Growing(Vec<u8>),
    Held(std::sync::Arc<dyn HeldBytes>),
}

impl Buffer {
    fn bytes(&self) -> &[u8] {
        match self {
            Buffer::Growing(bytes) => bytes,
            Buffer::Held(held) => held.bytes(),
        }
    }
}

impl PartialEq for Buffer {
    fn eq(&self, other: &Buffer) -> bool {
        self.bytes() == other.bytes()
    }
}

impl Eq for Buffer {}

/// The bits of a start that say where in its buffer: buffers of up to 1 TiB, and
/// 2^24 of them.
const OFFSET_BITS: u32 = 40;

impl PackedRecords {
    pub const fn new() -> PackedRecords {
        PackedRecords {
            buffers: Vec::new(),
            starts: Vec::new(),
        }
    }

    /// Room for `records`, so that packing them grows the buffers about once.
    pub fn with_room_for(records: &[Record]) -> PackedRecords {
        PackedRecords {
            buffers: vec![Buffer::Growing(Vec::with_capacity(
                records.iter().map(size_hint).sum(),
            ))],
            starts: Vec::with_capacity(records.len()),
        }
    }

    pub fn len(&self) -> usize {
        self.starts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.starts.is_empty()
    }

    /// Packs `record` after the others.
    pub fn push(&mut self, record: &Record) {
        let start = self.put(record);
        self.starts.push(start);
    }

    /// Packs `record` in place of the `i`th.
    pub fn replace(&mut self, i: usize, record: &Record) {
        self.starts[i] = self.put(record);
    }

    /// Packs `record` as the `i`th, the ones from there on one further.
    pub fn insert(&mut self, i: usize, record: &Record) {
        let start = self.put(record);
        self.starts.insert(i, start);
    }

    /// Writes `record` at the end of the last buffer, after its length: where its
    /// length begins.
    fn put(&mut self, record: &Record) -> u64 {
        if !matches!(self.buffers.last(), Some(Buffer::Growing(_))) {
            self.buffers.push(Buffer::Growing(Vec::new()));
        }
        let number = (self.buffers.len() - 1) as u64;
        let Some(Buffer::Growing(buffer)) = self.buffers.last_mut() else {
            unreachable!("a growing buffer was put last")
        };
        let at = buffer.len();
        write(record, buffer);
        // The length goes before the record, known once it is written: a record is
        // short, and moving it by a byte or two is cheaper than a buffer of its own.
        let (head, n) = crate::binary::len_bytes(buffer.len() - at);
        buffer.splice(at..at, head[..n].iter().copied());
        (number << OFFSET_BITS) | at as u64
    }

    /// The `i`th record.
    pub fn get(&self, i: usize) -> &PackedRecord {
        self.at(self.starts[i])
    }

    /// The record whose length begins at `start`.
    fn at(&self, start: u64) -> &PackedRecord {
        let buffer = self.buffers[(start >> OFFSET_BITS) as usize].bytes();
        let mut rest = &buffer[(start & ((1 << OFFSET_BITS) - 1)) as usize..];
        let len = packed::take_len(&mut rest);
        PackedRecord::of(&rest[..len])
    }

    /// In their order.
    pub fn iter(
        &self,
    ) -> impl DoubleEndedIterator<Item = &PackedRecord> + ExactSizeIterator + Clone + '_ {
        self.starts.iter().map(|start| self.at(*start))
    }

    /// The records from `range.start` to before `range.end`, in their order.
    pub fn range(
        &self,
        range: std::ops::Range<usize>,
    ) -> impl DoubleEndedIterator<Item = &PackedRecord> + ExactSizeIterator + Clone + '_ {
        self.starts[range].iter().map(|start| self.at(*start))
    }

    /// `other`'s records after these: its buffers join these, uncopied.
    pub fn append(&mut self, other: PackedRecords) {
        if other.is_empty() {
            return;
        }
        let shift = (self.buffers.len() as u64) << OFFSET_BITS;
        self.buffers.extend(other.buffers);
        (self.starts).extend(other.starts.iter().map(|s| s + shift));
    }

    /// Sorted by id, one record per id: of an id put in twice, the later copy, as a
    /// map keeps it. Answers the [`id_prefix`] of each record kept, in the new order:
    /// the sort takes them anyway, and taken again after it they would be read at
    /// random where the records lie in another order.
    pub fn sort_by_id_keeping_last(&mut self) -> Vec<u64> {
        if self.is_sorted_by_id() {
            return (self.starts.iter())
                .map(|start| id_prefix(self.at(*start).id_bytes()))
                .collect();
        }
        let mut starts = std::mem::take(&mut self.starts);
        let id = |start: &u64| self.at(*start);
        // Each id's first eight bytes taken once, beside its start: the sort compares
        // them side by side in memory and reads the ids themselves only where two
        // share them. Read at every comparison, a million records read out of id
        // order took a second to sort, a cache miss per side.
        let mut keyed: Vec<(u64, u64)> = (starts.iter())
            .map(|start| (id_prefix(id(start).id_bytes()), *start))
            .collect();
        // Stable: of equal ids the later copy stays later, and wins below.
        keyed.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| id(&a.1).cmp_by_id(id(&b.1))));
        keyed.dedup_by(|later, earlier| {
            let same = later.0 == earlier.0 && id(&later.1).cmp_by_id(id(&earlier.1)).is_eq();
            if same {
                std::mem::swap(later, earlier);
            }
            same
        });
        starts.clear();
        let mut prefixes = Vec::with_capacity(keyed.len());
        for (prefix, start) in keyed {
            prefixes.push(prefix);
            starts.push(start);
        }
        self.starts = starts;
        prefixes
    }

    /// Whether the records lie in strictly increasing id order (one per id), as
    /// [`PackedRecords::sort_by_id_keeping_last`] leaves them without moving any.
    pub fn is_sorted_by_id(&self) -> bool {
        (self.starts.iter()).is_sorted_by(|a, b| self.at(**a).cmp_by_id(self.at(**b)).is_lt())
    }

    /// Whether the records lie in their buffers in their order (one listing's, pushed
    /// one after the other, as they are read), so that reading them in order reads
    /// the buffers front to back.
    pub fn lie_in_order(&self) -> bool {
        self.starts.is_sorted()
    }

    /// The records copied into new buffers in their order, so that where they lie
    /// follows their order (the order they are read in); the old buffers are let go.
    /// `hold` is called each time the new buffers on the heap reach `chunk` bytes, and
    /// once at the end: it may hand them to a holder ([`PackedRecords::hold`]), so
    /// that the heap holds at most a chunk of the copies at a time.
    ///
    /// Why: records handed to a holder as a listing came (a file mapped into memory)
    /// lie in the listing's order; read in id order they are read at random, and each
    /// read of a mapped file may bring a large part of it into memory.
    pub fn repack_in_order<E>(
        &mut self,
        chunk: usize,
        mut hold: impl FnMut(&mut PackedRecords) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut copy = PackedRecords {
            buffers: vec![Buffer::Growing(Vec::with_capacity(
                chunk.min(self.byte_len()),
            ))],
            starts: Vec::with_capacity(self.starts.len()),
        };
        for start in &self.starts {
            let record = &self.at(*start).bytes;
            let number = (copy.buffers.len() - 1) as u64;
            let Some(Buffer::Growing(buffer)) = copy.buffers.last_mut() else {
                unreachable!("the copy's last buffer is a growing one")
            };
            copy.starts
                .push((number << OFFSET_BITS) | buffer.len() as u64);
            let (head, n) = crate::binary::len_bytes(record.len());
            buffer.extend_from_slice(&head[..n]);
            buffer.extend_from_slice(record);
            if buffer.len() >= chunk {
                hold(&mut copy)?;
                copy.buffers
                    .push(Buffer::Growing(Vec::with_capacity(chunk)));
            }
        }
        hold(&mut copy)?;
        copy.shrink_to_fit();
        *self = copy;
        Ok(())
    }

    /// Gives back the room the buffers hold beyond what they use.
    pub fn shrink_to_fit(&mut self) {
        for buffer in &mut self.buffers {
            if let Buffer::Growing(bytes) = buffer {
                bytes.shrink_to_fit();
            }
        }
        self.buffers.shrink_to_fit();
        self.starts.shrink_to_fit();
    }

    /// The bytes of every buffer, on the heap or held.
    pub fn byte_len(&self) -> usize {
        self.buffers.iter().map(|b| b.bytes().len()).sum()
    }

    /// The bytes of the buffers still on the heap.
    pub fn growing_bytes(&self) -> usize {
        (self.buffers.iter())
            .map(|b| match b {
                Buffer::Growing(bytes) => bytes.len(),
                Buffer::Held(_) => 0,
            })
            .sum()
    }

    /// Hands the buffers on the heap to `hold` all at once, which answers a holder of
    /// the same bytes for each, in their order (slices of one file it wrote them to and
    /// mapped, say: one map per call, however many pages the buffers came in); the
    /// heap's copies are freed. The records read as before. On an error the buffers
    /// stay on the heap.
    pub fn hold<E>(
        &mut self,
        hold: impl FnOnce(&[&[u8]]) -> Result<Vec<std::sync::Arc<dyn HeldBytes>>, E>,
    ) -> Result<(), E> {
        let growing: Vec<usize> = (0..self.buffers.len())
            .filter(|&i| matches!(&self.buffers[i], Buffer::Growing(b) if !b.is_empty()))
            .collect();
        if growing.is_empty() {
            return Ok(());
        }
        let bytes: Vec<&[u8]> = growing.iter().map(|&i| self.buffers[i].bytes()).collect();
        let held = hold(&bytes)?;
        // The lengths only: comparing the bytes would read a mapped file's every page
        // back into memory.
        let given: Vec<usize> = bytes.iter().map(|b| b.len()).collect();
        let kept: Vec<usize> = held.iter().map(|h| h.bytes().len()).collect();
        assert_eq!(given, kept, "a holder keeps the bytes given");
        for (i, held) in growing.into_iter().zip(held) {
            self.buffers[i] = Buffer::Held(held);
        }
        Ok(())
    }

    /// Tells the holders of the held buffers that their pages are not needed now
    /// ([`HeldBytes::let_go`]).
    pub fn let_go_held(&self) {
        for buffer in &self.buffers {
            if let Buffer::Held(held) = buffer {
                held.let_go();
            }
        }
    }
}

impl fmt::Debug for PackedRecords {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
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

/// The first eight bytes of `id`, zero-padded, as a number that orders as the ids do
/// (a shorter id pads with the smallest byte): ids whose numbers differ order as them.
/// Compared side by side in memory, they spare reading the ids themselves.
pub fn id_prefix(id: &[u8]) -> u64 {
    let mut bytes = [0u8; 8];
    let n = id.len().min(8);
    bytes[..n].copy_from_slice(&id[..n]);
    u64::from_be_bytes(bytes)
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

    /// What `PackedRecords` is asked to do, and a plain list of records to check it by.
    #[derive(Debug, Clone)]
    enum Step {
        Push(Record),
        Replace(usize, Record),
        Insert(usize, Record),
        Append(Vec<Record>),
        Sort,
        /// The buffers on the heap handed to a holder, and its pages let go.
        Hold,
        /// Copied in order into new buffers of about this many bytes, each handed to
        /// a holder or not.
        Repack(usize, bool),
    }

    /// Holds bytes as a mapped file would: a copy elsewhere, counting the let-gos.
    struct Elsewhere(Box<[u8]>, std::sync::atomic::AtomicUsize);

    impl HeldBytes for Elsewhere {
        fn bytes(&self) -> &[u8] {
            &self.0
        }

        fn let_go(&self) {
            self.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    fn step() -> impl Strategy<Value = Step> {
        // Long texts too: a record's length takes one, two or three bytes.
        let long = (record(), 0usize..3).prop_map(|(mut r, size)| {
            r.fields
                .set("x_note", Value::text("n".repeat([10, 300, 17_000][size])));
            r
        });
        let any_record = prop_oneof![record(), long];
        prop_oneof![
            any_record.clone().prop_map(Step::Push),
            (any::<usize>(), any_record.clone()).prop_map(|(i, r)| Step::Replace(i, r)),
            (any::<usize>(), any_record.clone()).prop_map(|(i, r)| Step::Insert(i, r)),
            prop::collection::vec(any_record, 0..4).prop_map(Step::Append),
            Just(Step::Sort),
            Just(Step::Hold),
            (1usize..400, any::<bool>()).prop_map(|(chunk, hold)| Step::Repack(chunk, hold)),
        ]
    }

    proptest! {
        /// Records held back to back answer as a list of the records would: in their
        /// order, each as packed alone, sorted by id with the later of two copies,
        /// whether their buffers are on the heap or handed to a holder.
        #[test]
        fn records_held_back_to_back_answer_as_a_list_of_them_would(
            steps in prop::collection::vec(step(), 0..24),
        ) {
            let (mut held, mut list) = (PackedRecords::new(), Vec::<Record>::new());
            for step in steps {
                match step {
                    Step::Push(r) => {
                        held.push(&r);
                        list.push(r);
                    }
                    Step::Replace(i, r) if !list.is_empty() => {
                        let at = i % list.len();
                        held.replace(at, &r);
                        list[at] = r;
                    }
                    Step::Insert(i, r) => {
                        let at = i % (list.len() + 1);
                        held.insert(at, &r);
                        list.insert(at, r);
                    }
                    Step::Append(rs) => {
                        let mut other = PackedRecords::with_room_for(&rs);
                        rs.iter().for_each(|r| other.push(r));
                        held.append(other);
                        list.extend(rs);
                    }
                    Step::Sort => {
                        held.sort_by_id_keeping_last();
                        prop_assert!(held.is_sorted_by_id());
                        // As a map keeps them: the last copy of each id.
                        let map: std::collections::BTreeMap<String, Record> =
                            list.drain(..).map(|r| (r.id.clone(), r)).collect();
                        list = map.into_values().collect();
                    }
                    Step::Repack(chunk, to_holder) => {
                        held.repack_in_order(chunk, |copy| {
                            if to_holder {
                                copy.hold(|buffers| {
                                    let held = buffers.iter().map(|bytes| {
                                        let holder = Elsewhere((*bytes).into(), 0.into());
                                        std::sync::Arc::new(holder) as std::sync::Arc<dyn HeldBytes>
                                    });
                                    Ok::<_, ()>(held.collect())
                                }).map_err(|()| TestCaseError::fail("a holder refused"))?;
                                prop_assert_eq!(copy.growing_bytes(), 0);
                            }
                            Ok(())
                        })?;
                        // Where they lie follows their order.
                        prop_assert!(held.lie_in_order());
                        prop_assert_eq!(held.byte_len(), list.iter().map(|r| {
                            let len = PackedRecord::pack(r).bytes.len();
                            len + crate::binary::len_bytes(len).1
                        }).sum::<usize>());
                    }
                    Step::Hold => {
                        let mut holders = Vec::new();
                        held.hold(|buffers| {
                            let mut out = Vec::new();
                            for bytes in buffers {
                                let holder = std::sync::Arc::new(Elsewhere((*bytes).into(), 0.into()));
                                holders.push(holder.clone());
                                out.push(holder as std::sync::Arc<dyn HeldBytes>);
                            }
                            Ok::<_, ()>(out)
                        }).unwrap();
                        prop_assert_eq!(held.growing_bytes(), 0);
                        prop_assert!(held.byte_len() > 0 || held.is_empty());
                        held.let_go_held();
                        for holder in holders {
                            prop_assert_eq!(holder.1.load(std::sync::atomic::Ordering::Relaxed), 1);
                        }
                    }
                    Step::Replace(..) => {}
                }
                held.shrink_to_fit();
                prop_assert_eq!(held.len(), list.len());
                let unpacked: Vec<Record> = held.iter().map(PackedRecord::unpack).collect();
                prop_assert_eq!(&unpacked, &list);
                for (i, r) in list.iter().enumerate() {
                    prop_assert_eq!(held.get(i), &*PackedRecord::pack(r));
                    prop_assert_eq!(held.get(i).kind(), r.kind);
                }
                let tail: Vec<Record> = held.range(list.len() / 2..list.len()).map(PackedRecord::unpack).collect();
                prop_assert_eq!(&tail[..], &list[list.len() / 2..]);
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
        // Held in a `PackedRecords`: its bytes, their length and where they begin.
        let size = packed.bytes.len() + 1 + size_of::<u64>();
        assert!(size * 2 < as_record, "{size} against {as_record}");
        assert_eq!(packed.text("city"), Some("Gent"));
        assert_eq!(packed.text("email"), None);
    }
}
