//! What a run saw of each record it kept ([`Seen`]), by id, held compactly.
//!
//! Why not a `HashMap<String, Seen>`: a first sync of a million partners sees two
//! million records. The map held a 48-byte slot per entry in a table sized to the next
//! power of two (up to twice the entries), and each id in an allocation of its own:
//! about 110 bytes a record, 200 MB at 1M, for the whole run. Here the ids lie end to
//! end in one buffer, the [`Seen`]s in a vector in the same order, and the hash table
//! holds only each entry's position (4 bytes a slot): about 50 bytes a record. Where
//! each id ends is 4 bytes and a [`Seen`] 18 (packed): about 40 bytes a record, 0.8 GB
//! at a first sync of ten million partners (20 million records).

use std::hash::BuildHasher;

use hashbrown::HashTable;
use hashbrown::hash_table::Entry;

use super::Seen;

/// [`Seen`] by record id, in the order first inserted. An id inserted again keeps its
/// place and takes the new value, as a map's insert.
///
/// Invariant: `ends`, `seen` and the positions in `index` cover the same entries;
/// entry `i`'s id is `ids[ends[i - 1]..ends[i]]` (from 0 for the first); the ids of a
/// scope take less than 4 GiB.
#[derive(Default, Clone)]
pub(crate) struct SeenMap {
    ids: String,
    ends: Vec<u32>,
    seen: Vec<Seen>,
    index: HashTable<u32>,
    hasher: foldhash::fast::RandomState,
    /// The entry [`SeenMap::get_mut`] found last: the next one is tried first.
    last: usize,
}

impl std::fmt::Debug for SeenMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl SeenMap {
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    fn position(&self, id: &str) -> Option<usize> {
        let hash = self.hasher.hash_one(id);
        let (ids, ends) = (&self.ids, &self.ends);
        (self.index)
            .find(hash, |&i| id_at(ids, ends, i as usize) == id)
            .map(|&i| i as usize)
    }

    pub fn get(&self, id: &str) -> Option<&Seen> {
        self.position(id).map(|i| &self.seen[i])
    }

    /// Tries the entry after the one found last before the table: a run settles its
    /// records in id order, which is the order a file sorted by id was read in, so
    /// the next record is the next entry. A first sync settles two million records
    /// at 1M; each lookup in the table is a cache miss or more (about 0.3 µs), the
    /// next entry lies beside the last.
    pub fn get_mut(&mut self, id: &str) -> Option<&mut Seen> {
        let next = self.last + 1;
        let at = match next < self.seen.len() && id_at(&self.ids, &self.ends, next) == id {
            true => next,
            false => self.position(id)?,
        };
        self.last = at;
        Some(&mut self.seen[at])
    }

    pub fn contains_key(&self, id: &str) -> bool {
        self.position(id).is_some()
    }

    /// Sets `id`'s value, replacing one it had.
    pub fn insert(&mut self, id: &str, seen: Seen) {
        // One hash and one probe for both the lookup and the insert: a first sync
        // inserts two million.
        let at = u32::try_from(self.seen.len()).expect("fewer than 2^32 records in a scope");
        let (ids, ends, hasher) = (&self.ids, &self.ends, &self.hasher);
        let entry = self.index.entry(
            hasher.hash_one(id),
            |&i| id_at(ids, ends, i as usize) == id,
            |&i| hasher.hash_one(id_at(ids, ends, i as usize)),
        );
        match entry {
            Entry::Occupied(entry) => self.seen[*entry.get() as usize] = seen,
            Entry::Vacant(entry) => {
                entry.insert(at);
                self.ids.push_str(id);
                let end = u32::try_from(self.ids.len()).expect("less than 4 GiB of ids in a scope");
                self.ends.push(end);
                self.seen.push(seen);
            }
        }
    }

    /// Every entry, in the order first inserted.
    pub fn iter(&self) -> Iter<'_> {
        Iter { map: self, next: 0 }
    }

    /// Lets go of room grown ahead of need (held for the rest of the run).
    pub fn shrink_to_fit(&mut self) {
        self.ids.shrink_to_fit();
        self.ends.shrink_to_fit();
        self.seen.shrink_to_fit();
        let (ids, ends, hasher) = (&self.ids, &self.ends, &self.hasher);
        (self.index).shrink_to_fit(|&i| hasher.hash_one(id_at(ids, ends, i as usize)));
    }
}

/// The entries of a [`SeenMap`], in the order first inserted.
#[derive(Clone)]
pub(crate) struct Iter<'m> {
    map: &'m SeenMap,
    next: usize,
}

impl<'m> Iterator for Iter<'m> {
    type Item = (&'m str, &'m Seen);

    fn next(&mut self) -> Option<Self::Item> {
        let i = self.next;
        let seen = self.map.seen.get(i)?;
        self.next += 1;
        Some((id_at(&self.map.ids, &self.map.ends, i), seen))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.map.seen.len() - self.next;
        (left, Some(left))
    }
}

impl<'m> IntoIterator for &'m SeenMap {
    type Item = (&'m str, &'m Seen);
    type IntoIter = Iter<'m>;

    fn into_iter(self) -> Iter<'m> {
        self.iter()
    }
}

/// Entry `i`'s id.
fn id_at<'m>(ids: &'m str, ends: &[u32], i: usize) -> &'m str {
    let start = if i == 0 { 0 } else { ends[i - 1] as usize };
    &ids[start..ends[i] as usize]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::read::Change;
    use proptest::prelude::*;

    fn seen(hash: u64) -> Seen {
        Seen::read(hash, hash ^ 1, Change::New)
    }

    /// What a run holds per record kept: 18 bytes of [`Seen`], not 24.
    #[test]
    fn what_is_seen_of_a_record_takes_eighteen_bytes() {
        assert_eq!(size_of::<Seen>(), 18);
    }

    #[test]
    fn an_id_inserted_again_keeps_its_place_and_takes_the_new_value() {
        let mut map = SeenMap::default();
        map.insert("b", seen(1));
        map.insert("a", seen(2));
        map.insert("b", seen(3));
        map.insert("", seen(4));
        assert_eq!(map.len(), 3);
        let entries: Vec<(&str, u64)> = map.iter().map(|(id, s)| (id, s.hash)).collect();
        assert_eq!(entries, [("b", 3), ("a", 2), ("", 4)]);
        assert_eq!(map.get("a").map(|s| s.hash), Some(2));
        assert!(map.get("c").is_none() && !map.contains_key("ab"));
        map.get_mut("a").expect("held").settled = true;
        assert!(map.get("a").expect("held").settled);
    }

    proptest! {
        /// Against a `HashMap`: the same entries, found the same, whatever the ids
        /// (empty, sharing prefixes, repeated) and however the table grew.
        #[test]
        fn holds_what_a_map_holds(
            ops in prop::collection::vec(("[a-c]{0,3}", any::<u64>()), 0..300),
            shrink in any::<bool>(),
        ) {
            let mut map = SeenMap::default();
            let mut oracle = std::collections::HashMap::new();
            let mut order = Vec::new();
            for (id, hash) in &ops {
                map.insert(id, seen(*hash));
                if oracle.insert(id.clone(), *hash).is_none() {
                    order.push(id.clone());
                }
            }
            if shrink {
                map.shrink_to_fit();
            }
            prop_assert_eq!(map.len(), oracle.len());
            let held: Vec<(String, u64)> =
                map.iter().map(|(id, s)| (id.to_owned(), s.hash)).collect();
            let expected: Vec<(String, u64)> =
                order.iter().map(|id| (id.clone(), oracle[id])).collect();
            prop_assert_eq!(held, expected);
            for id in ["", "a", "ab", "abc", "abcd", "d"] {
                prop_assert_eq!(map.get(id).map(|s| s.hash), oracle.get(id).copied());
            }
        }

        /// Looked up for a change, in any order (the order first inserted, which takes
        /// the entry after the last found, or any other): each id finds its own entry.
        #[test]
        fn an_entry_looked_up_for_a_change_is_its_ids_in_any_order(
            ids in prop::collection::vec("[a-d]{0,3}", 0..100),
            asked in prop::collection::vec((any::<bool>(), "[a-e]{0,3}"), 0..200),
        ) {
            let mut map = SeenMap::default();
            let mut oracle = std::collections::HashMap::new();
            for (i, id) in ids.iter().enumerate() {
                map.insert(id, seen(i as u64));
                oracle.insert(id.clone(), i as u64);
            }
            let in_order: Vec<String> = map.iter().map(|(id, _)| id.to_owned()).collect();
            let mut next = 0;
            for (in_turn, other) in &asked {
                // Half the time the next id first inserted, as a run settles them.
                let id = match (*in_turn, in_order.get(next)) {
                    (true, Some(id)) => {
                        next += 1;
                        id
                    }
                    _ => other,
                };
                let found = map.get_mut(id).map(|s| s.hash);
                prop_assert_eq!(found, oracle.get(id).copied(), "{}", id);
            }
        }
    }
}
