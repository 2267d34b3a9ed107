use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{Value, field};

/// A field name: one pointer to its interned text. Canonical names point into the
/// static list of `field`; any other name is interned once per process (leaked: the
/// names a deployment meets are its connectors' columns and keys, a bounded set). A
/// record's dozen fields then cost a pointer per name instead of a 24-byte string
/// handle, a third of each (name, value) pair, for the millions of records a run holds.
#[derive(Clone)]
pub struct FieldName(&'static &'static str);

impl FieldName {
    pub fn new(name: &str) -> FieldName {
        match field::canonical_slot(name) {
            Some(canonical) => FieldName(canonical),
            None => FieldName(intern(name)),
        }
    }

    pub fn as_str(&self) -> &'static str {
        self.0
    }

    /// The interned slot (what names compare by).
    pub(crate) fn slot(&self) -> &'static &'static str {
        self.0
    }

    /// The name of a slot of [`field::SLOTS`] or of the interner.
    pub(crate) fn from_slot(slot: &'static &'static str) -> FieldName {
        FieldName(slot)
    }
}

/// The interned slot of a name that is not canonical.
fn intern(name: &str) -> &'static &'static str {
    use std::collections::HashMap;
    use std::sync::{PoisonError, RwLock};
    static NAMES: RwLock<Option<HashMap<&'static str, &'static &'static str>>> = RwLock::new(None);
    let known = NAMES.read().unwrap_or_else(PoisonError::into_inner);
    if let Some(slot) = known.as_ref().and_then(|names| names.get(name)) {
        return slot;
    }
    drop(known);
    let mut names = NAMES.write().unwrap_or_else(PoisonError::into_inner);
    let names = names.get_or_insert_with(HashMap::new);
    if let Some(slot) = names.get(name) {
        return slot;
    }
    let text: &'static str = Box::leak(name.to_owned().into_boxed_str());
    let slot: &'static &'static str = Box::leak(Box::new(text));
    names.insert(text, slot);
    slot
}

impl PartialEq for FieldName {
    fn eq(&self, other: &FieldName) -> bool {
        // Interned: one slot per text, so equal names share their slot.
        std::ptr::eq(self.0, other.0)
    }
}

impl Eq for FieldName {}

impl PartialOrd for FieldName {
    fn partial_cmp(&self, other: &FieldName) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for FieldName {
    fn cmp(&self, other: &FieldName) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl std::hash::Hash for FieldName {
    // As `str` hashes: a map keyed by names is looked up by `&str` (`Borrow<str>`).
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl From<&str> for FieldName {
    fn from(name: &str) -> FieldName {
        FieldName::new(name)
    }
}

impl Serialize for FieldName {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for FieldName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<FieldName, D::Error> {
        let s = String::deserialize(deserializer)?;
        Ok(FieldName::new(&s))
    }
}

impl Borrow<str> for FieldName {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Debug for FieldName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for FieldName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The same order as `str::cmp`, byte by byte in line: field names are short and
/// mostly differ in their first bytes, and a lookup by name is the engine's most
/// frequent operation (about a third of planning was calls to `memcmp` for names of
/// four to twenty bytes).
#[inline]
fn compare_names(a: &str, b: &str) -> std::cmp::Ordering {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    for (x, y) in a.iter().zip(b) {
        if x != y {
            return x.cmp(y);
        }
    }
    a.len().cmp(&b.len())
}

/// The fields of a record: names to non-empty values, ordered by name.
///
/// Setting an empty value removes the field, so a field is either filled or absent.
/// A map of *changes* (where `Null` means "clear this field") is a plain
/// `BTreeMap<FieldName, Value>`, not `Fields`.
///
/// Stored as a vector sorted by name: records have a dozen fields or so, and a
/// million of them must fit in memory, where a map's nodes would cost several times
/// the data.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Fields(Vec<(FieldName, Value)>);

impl Fields {
    pub fn new() -> Fields {
        Fields::default()
    }

    /// Room for `n` fields without growing: a reader that knows its columns sets
    /// them without a reallocation each.
    pub fn with_capacity(n: usize) -> Fields {
        Fields(Vec::with_capacity(n))
    }

    fn position(&self, name: &str) -> Result<usize, usize> {
        self.0
            .binary_search_by(|(n, _)| compare_names(n.as_str(), name))
    }

    pub fn get(&self, name: &str) -> Option<&Value> {
        self.position(name).ok().map(|i| &self.0[i].1)
    }

    /// [`Fields::get`] by an interned name: slots are compared, not text. A record's
    /// dozen names are scanned faster than a binary search compares their bytes, and
    /// the merge looks up every shared field of every side of every hub (a quarter of
    /// planning went to lookups by text).
    pub fn get_named(&self, name: &FieldName) -> Option<&Value> {
        // Beyond this, a binary search by text wins over a scan.
        const SCAN_UP_TO: usize = 24;
        if self.0.len() > SCAN_UP_TO {
            return self.get(name.as_str());
        }
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    /// [`Fields::value`] by an interned name (see [`Fields::get_named`]).
    pub fn value_named(&self, name: &FieldName) -> &Value {
        static NULL: Value = Value::Null;
        self.get_named(name).unwrap_or(&NULL)
    }

    /// The field as text, if it holds text or a date.
    pub fn text(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(Value::as_text)
    }

    /// Sets a field; an empty value removes it.
    pub fn set(&mut self, name: impl Into<FieldName>, value: Value) {
        let name = name.into();
        // Sets in name order (a merge's baselines, a reader's sorted columns) append:
        // one comparison instead of a search.
        let after_last = (self.0.last()).is_none_or(|(last, _)| {
            compare_names(last.as_str(), name.as_str()) == std::cmp::Ordering::Less
        });
        if after_last {
            if !value.is_empty() {
                self.0.push((name, value));
            }
            return;
        }
        match (self.position(name.as_str()), value.is_empty()) {
            (Ok(i), true) => {
                self.0.remove(i);
            }
            (Ok(i), false) => self.0[i].1 = value,
            (Err(_), true) => {}
            (Err(i), false) => self.0.insert(i, (name, value)),
        }
    }

    /// Builder form of [`Fields::set`].
    pub fn with(mut self, name: &str, value: impl Into<Value>) -> Fields {
        self.set(name, value.into());
        self
    }

    pub fn remove(&mut self, name: &str) -> Option<Value> {
        self.position(name).ok().map(|i| self.0.remove(i).1)
    }

    /// Gives back the room grown for fields that were never set: a field set kept for
    /// long (a plan's baseline) should not carry a doubled vector.
    pub fn shrink_to_fit(&mut self) {
        self.0.shrink_to_fit();
    }

    pub fn iter(&self) -> FieldsIter<'_> {
        FieldsIter(self.0.iter())
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The value of `name`, or `Null` when the field is empty.
    pub fn value(&self, name: &str) -> &Value {
        static NULL: Value = Value::Null;
        self.get(name).unwrap_or(&NULL)
    }

    /// Only the named fields.
    pub fn project(&self, names: &[&str]) -> Fields {
        let mut out = Fields::new();
        for name in names {
            if let Some(value) = self.get(name) {
                out.set(*name, value.clone());
            }
        }
        out
    }

    /// Applies a change set: `Null` clears, anything else sets.
    pub fn apply(&mut self, changes: &crate::Changes) {
        for (name, value) in changes {
            self.set(name.clone(), value.clone());
        }
    }

    /// A stable 64-bit content hash (xxh3) of all fields, used to notice that a record
    /// read from a full listing did not change since the last run.
    pub fn content_hash(&self) -> u64 {
        self.content_hash_after(std::iter::empty())
    }

    /// [`Fields::content_hash`] of these fields with `changes` set on them in order (an
    /// empty value removes the field, as [`Fields::set`] does), without making the
    /// changed copy: a run asks it for every contact it writes to.
    pub fn content_hash_after<'c>(
        &self,
        changes: impl IntoIterator<Item = (&'c FieldName, &'c Value)>,
    ) -> u64 {
        content_hash_of(self.iter().map(|(n, v)| (n.as_str(), v)), changes)
    }
}

/// The content hash of fields given in name order ([`Fields::content_hash_after`]),
/// however they are held: borrowed from a field set, or unpacked one by one.
pub(crate) fn content_hash_of<'c, V: crate::value::HashEncode>(
    fields: impl Iterator<Item = (&'static str, V)>,
    changes: impl IntoIterator<Item = (&'c FieldName, &'c Value)>,
) -> u64 {
    thread_local! {
        // Hashed once per record read: one buffer per thread, not one per record.
        static BUF: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(Vec::with_capacity(1024));
    }
    let mut overlay: Vec<(&str, &Value)> = Vec::new();
    for (name, value) in changes {
        match overlay.iter_mut().find(|(n, _)| *n == name.as_str()) {
            Some(slot) => slot.1 = value,
            None => overlay.push((name.as_str(), value)),
        }
    }
    overlay.sort_by(|a, b| compare_names(a.0, b.0));
    BUF.with(|buf| {
        let mut buf = buf.borrow_mut();
        buf.clear();
        let mut put = |name: &str, value: &dyn crate::value::HashEncode| {
            buf.extend_from_slice(&(name.len() as u64).to_le_bytes());
            buf.extend_from_slice(name.as_bytes());
            value.encode_for_hash(&mut buf);
        };
        // A change to an empty value removes the field; the fields held are hashed
        // as they are.
        let mut changed = (overlay.into_iter())
            .map(|(n, v)| (n, (!v.is_empty()).then_some(v)))
            .peekable();
        for (name, value) in fields {
            while let Some((before, new)) = changed.next_if(|(n, _)| compare_names(n, name).is_lt())
            {
                new.inspect(|new| put(before, new));
            }
            match changed.next_if(|(n, _)| *n == name) {
                Some((_, new)) => {
                    new.inspect(|new| put(name, new));
                }
                None => put(name, &value),
            }
        }
        changed.for_each(|(name, new)| {
            new.inspect(|new| put(name, new));
        });
        xxhash_rust::xxh3::xxh3_64(&buf)
    })
}

impl fmt::Debug for Fields {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// Iterates fields (or changes, [`crate::Changes`]) in name order.
#[derive(Debug, Clone)]
pub struct FieldsIter<'a>(pub(crate) std::slice::Iter<'a, (FieldName, Value)>);

impl<'a> Iterator for FieldsIter<'a> {
    type Item = (&'a FieldName, &'a Value);

    fn next(&mut self) -> Option<Self::Item> {
        self.0.next().map(|(n, v)| (n, v))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.0.size_hint()
    }
}

impl DoubleEndedIterator for FieldsIter<'_> {
    fn next_back(&mut self) -> Option<Self::Item> {
        self.0.next_back().map(|(n, v)| (n, v))
    }
}

impl ExactSizeIterator for FieldsIter<'_> {}

impl<'a> IntoIterator for &'a Fields {
    type Item = (&'a FieldName, &'a Value);
    type IntoIter = FieldsIter<'a>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl FromIterator<(FieldName, Value)> for Fields {
    fn from_iter<I: IntoIterator<Item = (FieldName, Value)>>(iter: I) -> Fields {
        let mut fields = Fields::new();
        for (name, value) in iter {
            fields.set(name, value);
        }
        fields
    }
}

impl Serialize for Fields {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(k, v)| (k.as_str(), v)))
    }
}

impl<'de> Deserialize<'de> for Fields {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Fields, D::Error> {
        let map = BTreeMap::<String, Value>::deserialize(deserializer)?;
        Ok(map
            .into_iter()
            .map(|(k, v)| (FieldName::new(&k), v))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A lookup by interned name finds what a lookup by text finds: canonical and
    /// other names, present and absent, in records small enough to be scanned and
    /// big enough to be searched.
    #[test]
    fn a_lookup_by_interned_name_finds_what_a_lookup_by_text_finds() {
        let names: Vec<String> = (0..60)
            .map(|i| format!("x_custom_{i}"))
            .chain(["email", "phone", "name", "city", "zzz", "a"].map(String::from))
            .collect();
        for size in [0, 1, 5, 12, 24, 25, 40] {
            let mut fields = Fields::new();
            for (i, n) in names
                .iter()
                .enumerate()
                .filter(|(i, _)| i % 2 == 0)
                .take(size)
            {
                fields.set(n.as_str(), Value::text(format!("v{i}")));
            }
            for n in &names {
                let interned = FieldName::new(n);
                assert_eq!(fields.get_named(&interned), fields.get(n), "{size} {n}");
                assert_eq!(fields.value_named(&interned), fields.value(n), "{size} {n}");
            }
        }
    }

    /// The hash after changes is the hash of the changed copy: changes before, between
    /// and after the fields held, a change made twice, a change that removes a field.
    #[test]
    fn the_hash_after_changes_is_that_of_the_changed_copy() {
        let fields = Fields::new()
            .with("city", "Gent")
            .with("name", "Ann")
            .with("phone", "+32 9");
        let name = |n: &str| FieldName::new(n);
        let cases: Vec<Vec<(FieldName, Value)>> = vec![
            vec![],
            vec![(name("address"), Value::text("Kerkstraat 1"))],
            vec![
                (name("name"), Value::text("Bea")),
                (name("name"), Value::text("Cas")),
            ],
            vec![
                (name("phone"), Value::Null),
                (name("zzz"), Value::text("z")),
            ],
            vec![
                (name("email"), Value::text("a@b.be")),
                (name("city"), Value::text("")),
            ],
            vec![
                (name("email"), Value::Null),
                (name("name"), Value::list(vec!["A".into()])),
            ],
        ];
        for changes in cases {
            let mut copy = fields.clone();
            for (n, v) in &changes {
                copy.set(n.clone(), v.clone());
            }
            let after = fields.content_hash_after(changes.iter().map(|(n, v)| (n, v)));
            assert_eq!(after, copy.content_hash(), "{changes:?}");
        }
    }

    #[test]
    fn names_compare_as_strings_do() {
        let mut names: Vec<&str> = field::COMMON
            .iter()
            .chain(field::CONTACT_ONLY)
            .chain(field::BANK_ONLY)
            .copied()
            .collect();
        names.extend([
            "", "a", "x_", "x_rating", "x_r", "name_", "namf", "émail", "n",
        ]);
        for a in &names {
            for b in &names {
                assert_eq!(compare_names(a, b), a.cmp(b), "{a:?} against {b:?}");
            }
        }
    }

    #[test]
    fn empty_values_are_not_stored() {
        let mut f = Fields::new().with("name", "Acme").with("phone", "");
        assert_eq!(f.len(), 1);
        f.set("name", Value::Null);
        assert!(f.is_empty());
    }

    #[test]
    fn a_name_is_one_pointer_to_one_slot_per_text() {
        assert_eq!(size_of::<FieldName>(), size_of::<usize>());
        let name = FieldName::new("post_code");
        assert!(std::ptr::eq(name.0, FieldName::new("post_code").0));
        let extra = FieldName::new("x_rating");
        let again = FieldName::new(&String::from("x_rating"));
        assert!(std::ptr::eq(extra.0, again.0));
        assert_eq!(extra, again);
        assert_ne!(extra, FieldName::new("x_rank"));
        // Ordered and hashed as their text.
        assert!(FieldName::new("city") < FieldName::new("name"));
        assert!(FieldName::new("x_a") < FieldName::new("x_b"));
        let mut set = std::collections::HashSet::new();
        set.insert(FieldName::new("x_rating"));
        assert!(set.contains("x_rating"));
    }

    #[test]
    fn content_hash_follows_content_not_insertion_order() {
        let a = Fields::new().with("name", "Acme").with("city", "Gent");
        let b = Fields::new().with("city", "Gent").with("name", "Acme");
        assert_eq!(a.content_hash(), b.content_hash());
        let c = Fields::new().with("city", "Gent").with("name", "Acme ");
        assert_ne!(a.content_hash(), c.content_hash());
        // A value cannot leak into the next field's name.
        let d = Fields::new().with("name", "ab");
        let e = Fields::new().with("name", "a").with("name_2", "b");
        assert_ne!(d.content_hash(), e.content_hash());
    }

    #[test]
    fn apply_sets_and_clears() {
        let mut f = Fields::new().with("name", "Acme").with("phone", "1");
        let mut changes = crate::Changes::new();
        changes.insert(FieldName::new("phone"), Value::Null);
        changes.insert(FieldName::new("city"), Value::text("Gent"));
        f.apply(&changes);
        assert_eq!(f, Fields::new().with("name", "Acme").with("city", "Gent"));
    }

    #[test]
    fn serde_round_trip() {
        let f = Fields::new()
            .with("name", "Acme")
            .with("x_rating", Value::Number(3.0));
        let json = serde_json::to_string(&f).unwrap();
        assert_eq!(json, r#"{"name":"Acme","x_rating":3}"#);
        assert_eq!(serde_json::from_str::<Fields>(&json).unwrap(), f);
    }
}
