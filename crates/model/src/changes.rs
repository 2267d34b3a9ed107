//! A change set for an update: the fields to set, `Null` for one to clear.

use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{FieldName, FieldsIter, Value};

/// A change set for an update: `Null` clears a field, anything else sets it. Fields not
/// named are left as they are. Each name once, in name order.
///
/// Held as a vector sorted by name, with a map's interface: an update names a field or
/// two, and a first sync hands a connector a million updates at once. A `BTreeMap`
/// took a node of eleven slots for each (about 370 bytes an update, a third of a
/// gigabyte at a million partners); this takes what the changes hold.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Changes(Vec<(FieldName, Value)>);

impl Changes {
    pub fn new() -> Changes {
        Changes::default()
    }

    pub fn with_capacity(n: usize) -> Changes {
        Changes(Vec::with_capacity(n))
    }

    fn position(&self, name: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(n, _)| n.as_str().cmp(name))
    }

    /// Sets `name` to `value` (`Null` included: it clears); the value it replaced.
    pub fn insert(&mut self, name: FieldName, value: Value) -> Option<Value> {
        match self.position(name.as_str()) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i].1, value)),
            Err(i) => {
                self.0.insert(i, (name, value));
                None
            }
        }
    }

    pub fn get<N: Borrow<str> + ?Sized>(&self, name: &N) -> Option<&Value> {
        let i = self.position(name.borrow()).ok()?;
        Some(&self.0[i].1)
    }

    pub fn contains_key<N: Borrow<str> + ?Sized>(&self, name: &N) -> bool {
        self.position(name.borrow()).is_ok()
    }

    pub fn remove<N: Borrow<str> + ?Sized>(&mut self, name: &N) -> Option<Value> {
        let i = self.position(name.borrow()).ok()?;
        Some(self.0.remove(i).1)
    }

    /// Keeps the changes `keep` says yes to.
    pub fn retain(&mut self, mut keep: impl FnMut(&FieldName, &mut Value) -> bool) {
        self.0.retain_mut(|(name, value)| keep(name, value));
    }

    /// The changes in name order.
    pub fn iter(&self) -> FieldsIter<'_> {
        FieldsIter(self.0.iter())
    }

    pub fn keys(&self) -> impl DoubleEndedIterator<Item = &FieldName> + ExactSizeIterator {
        self.0.iter().map(|(name, _)| name)
    }

    pub fn values(&self) -> impl DoubleEndedIterator<Item = &Value> + ExactSizeIterator {
        self.0.iter().map(|(_, value)| value)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Changes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<'a> IntoIterator for &'a Changes {
    type Item = (&'a FieldName, &'a Value);
    type IntoIter = FieldsIter<'a>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl IntoIterator for Changes {
    type Item = (FieldName, Value);
    type IntoIter = std::vec::IntoIter<(FieldName, Value)>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

/// A name given twice keeps its last value, as a map's `collect` does.
impl FromIterator<(FieldName, Value)> for Changes {
    fn from_iter<I: IntoIterator<Item = (FieldName, Value)>>(iter: I) -> Changes {
        let mut changes: Vec<(FieldName, Value)> = iter.into_iter().collect();
        // Stable: of equal names, the last given ends last, and is the one kept.
        changes.sort_by(|(a, _), (b, _)| a.cmp(b));
        let mut kept: Vec<(FieldName, Value)> = Vec::with_capacity(changes.len());
        for (name, value) in changes {
            match kept.last_mut() {
                Some(last) if last.0 == name => last.1 = value,
                _ => kept.push((name, value)),
            }
        }
        Changes(kept)
    }
}

impl Extend<(FieldName, Value)> for Changes {
    fn extend<I: IntoIterator<Item = (FieldName, Value)>>(&mut self, iter: I) {
        for (name, value) in iter {
            self.insert(name, value);
        }
    }
}

impl<const N: usize> From<[(FieldName, Value); N]> for Changes {
    fn from(changes: [(FieldName, Value); N]) -> Changes {
        changes.into_iter().collect()
    }
}

/// As a map of names to values, as a `BTreeMap` of them was: the shape plugins read.
impl Serialize for Changes {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(k, v)| (k.as_str(), v)))
    }
}

impl<'de> Deserialize<'de> for Changes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Changes, D::Error> {
        let map = BTreeMap::<String, Value>::deserialize(deserializer)?;
        Ok(Changes(
            map.into_iter()
                .map(|(k, v)| (FieldName::new(&k), v))
                .collect(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(n: &str) -> FieldName {
        FieldName::new(n)
    }

    #[test]
    fn changes_behave_as_a_map_of_names() {
        let mut changes = Changes::new();
        assert_eq!(changes.insert(name("phone"), Value::text("1")), None);
        assert_eq!(changes.insert(name("city"), Value::Null), None);
        assert_eq!(
            changes.insert(name("phone"), Value::text("2")),
            Some(Value::text("1"))
        );
        let keys: Vec<&str> = changes.keys().map(FieldName::as_str).collect();
        assert_eq!(keys, ["city", "phone"]);
        assert_eq!(
            changes.get("city"),
            Some(&Value::Null),
            "Null is kept: it clears"
        );
        assert_eq!(changes.get(&name("phone")), Some(&Value::text("2")));
        assert!(changes.contains_key("phone") && !changes.contains_key("email"));
        assert_eq!(changes.remove("city"), Some(Value::Null));
        assert_eq!(changes.len(), 1);
    }

    #[test]
    fn collected_changes_keep_the_last_value_of_a_name_and_are_sorted() {
        let changes: Changes = [
            (name("phone"), Value::text("1")),
            (name("city"), Value::text("Gent")),
            (name("phone"), Value::text("2")),
        ]
        .into();
        let map: BTreeMap<FieldName, Value> = [
            (name("phone"), Value::text("1")),
            (name("city"), Value::text("Gent")),
            (name("phone"), Value::text("2")),
        ]
        .into();
        assert!(changes.iter().eq(map.iter()));
        assert_eq!(format!("{changes:?}"), format!("{map:?}"));
    }

    #[test]
    fn changes_serialise_as_the_map_they_replace() {
        let changes: Changes = [
            (name("phone"), Value::text("1")),
            (name("city"), Value::Null),
        ]
        .into();
        let map: BTreeMap<FieldName, Value> = changes.clone().into_iter().collect();
        let json = serde_json::to_string(&changes).unwrap();
        assert_eq!(json, serde_json::to_string(&map).unwrap());
        assert_eq!(serde_json::from_str::<Changes>(&json).unwrap(), changes);
    }
}
