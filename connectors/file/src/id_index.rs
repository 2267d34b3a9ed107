//! Rows by id, keyed by the id's 64-bit hash: a write that loads a file indexes every
//! row, and a million ids kept as strings took a quarter of a second and 50 MiB to
//! index (a first sync loads three such files). An id whose hash another id took is
//! kept by its text. The ids themselves stay in the rows; each call says how to read
//! the id of a row.

use std::collections::HashMap;
use std::collections::hash_map::Entry;

#[derive(Debug)]
pub(crate) struct IdIndex {
    by_hash: HashMap<u64, usize, foldhash::fast::RandomState>,
    /// Ids whose hash is held by another id.
    collided: HashMap<String, usize>,
    /// The bits of the hash kept: all of them, but for tests that make ids collide.
    mask: u64,
}

impl Default for IdIndex {
    fn default() -> IdIndex {
        IdIndex::with_capacity(0)
    }
}

impl IdIndex {
    pub(crate) fn with_capacity(n: usize) -> IdIndex {
        IdIndex {
            by_hash: HashMap::with_capacity_and_hasher(n, Default::default()),
            collided: HashMap::new(),
            mask: u64::MAX,
        }
    }

    /// The row of `id`; `id_of` reads the id of a row this index holds.
    pub(crate) fn find<'r>(&self, id: &str, id_of: impl Fn(usize) -> &'r str) -> Option<usize> {
        match self.by_hash.get(&self.hash(id)) {
            Some(&row) if id_of(row) == id => Some(row),
            _ => self.collided.get(id).copied(),
        }
    }

    /// Puts `id` at `row`. Returns the row that held `id` before, if one did: a
    /// duplicate, when a file is indexed.
    pub(crate) fn insert<'r>(
        &mut self,
        id: &str,
        row: usize,
        id_of: impl Fn(usize) -> &'r str,
    ) -> Option<usize> {
        match self.by_hash.entry(self.hash(id)) {
            Entry::Vacant(slot) => {
                slot.insert(row);
                // Kept by its text while another id held the hash, since forgotten.
                match self.collided.is_empty() {
                    true => None,
                    false => self.collided.remove(id),
                }
            }
            Entry::Occupied(mut slot) if id_of(*slot.get()) == id => {
                Some(std::mem::replace(slot.get_mut(), row))
            }
            Entry::Occupied(_) => self.collided.insert(id.to_owned(), row),
        }
    }

    /// Forgets `id`, which is at `row`.
    pub(crate) fn remove(&mut self, id: &str, row: usize) {
        let key = self.hash(id);
        match self.by_hash.get(&key) {
            Some(&held) if held == row => {
                self.by_hash.remove(&key);
            }
            _ => {
                self.collided.remove(id);
            }
        }
    }

    fn hash(&self, id: &str) -> u64 {
        xxhash_rust::xxh3::xxh3_64(id.as_bytes()) & self.mask
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    /// Inserts (true) and removes (false) of ids out of a small set.
    fn steps() -> impl Strategy<Value = Vec<(bool, u8)>> {
        proptest::collection::vec((any::<bool>(), 0u8..40), 0..200)
    }

    proptest! {
        /// With every bit of the hash, and with two (ids collide all the time).
        #[test]
        fn the_index_answers_as_a_map_of_ids_would(steps in steps(), mask in prop_oneof![Just(u64::MAX), Just(3u64)]) {
            // Each insert's row holds the id it was inserted with, as a table's rows do.
            let mut rows: Vec<String> = Vec::new();
            let mut index = IdIndex { mask, ..IdIndex::default() };
            let mut model: BTreeMap<String, usize> = BTreeMap::new();
            for (insert, n) in steps {
                let id = format!("C{n}");
                if insert {
                    rows.push(id.clone());
                    let row = rows.len() - 1;
                    let before = index.insert(&id, row, |r| rows[r].as_str());
                    prop_assert_eq!(before, model.insert(id, row));
                } else if let Some(row) = model.remove(&id) {
                    index.remove(&id, row);
                }
                for n in 0u8..40 {
                    let id = format!("C{n}");
                    prop_assert_eq!(index.find(&id, |r| rows[r].as_str()), model.get(&id).copied());
                }
            }
        }
    }
}
