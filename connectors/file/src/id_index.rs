//! Rows by id: a write that loads a file indexes every row, and a million ids kept
//! as strings took a quarter of a second and 50 MiB to index (a first sync loads three
//! such files). The table holds each row's number only (4 bytes a slot); an id's hash
//! is worked out again from its row when the table grows. Keyed by the id's 64-bit
//! hash with the row's number beside it (`HashMap<u64, usize>`), the 16.8 million
//! slots of a table for ten million rows took 285 MB; as numbers, 84 MB. The ids
//! themselves stay in the rows; each call says how to read the id of a row.

use hashbrown::HashTable;

#[derive(Debug)]
pub(crate) struct IdIndex {
    rows: HashTable<u32>,
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
            rows: HashTable::with_capacity(n),
            mask: u64::MAX,
        }
    }

    /// The row of `id`; `id_of` reads the id of a row this index holds.
    pub(crate) fn find<'r>(&self, id: &str, id_of: impl Fn(usize) -> &'r str) -> Option<usize> {
        (self.rows)
            .find(hash(id, self.mask), |&row| id_of(row as usize) == id)
            .map(|&row| row as usize)
    }

    /// Puts `id` at `row`. Returns the row that held `id` before, if one did: a
    /// duplicate, when a file is indexed.
    pub(crate) fn insert<'r>(
        &mut self,
        id: &str,
        row: usize,
        id_of: impl Fn(usize) -> &'r str,
    ) -> Option<usize> {
        let at = u32::try_from(row).expect("fewer than 2^32 rows in a file");
        let mask = self.mask;
        let key = hash(id, mask);
        match (self.rows).find_mut(key, |&held| id_of(held as usize) == id) {
            Some(held) => Some(std::mem::replace(held, at) as usize),
            None => {
                (self.rows).insert_unique(key, at, |&held| hash(id_of(held as usize), mask));
                None
            }
        }
    }

    /// Forgets `id`, which is at `row`.
    pub(crate) fn remove(&mut self, id: &str, row: usize) {
        if let Ok(entry) = (self.rows).find_entry(hash(id, self.mask), |&held| held as usize == row)
        {
            entry.remove();
        }
    }
}

/// `id`'s hash, of which `mask` keeps the bits.
fn hash(id: &str, mask: u64) -> u64 {
    xxhash_rust::xxh3::xxh3_64(id.as_bytes()) & mask
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
