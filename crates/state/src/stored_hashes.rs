//! The stored content hashes a listing is compared with.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use tandem_model::SmolStr;

/// A scope's stored content hashes, sorted by record id, as a listing is compared with
/// them: a million lookups per scope, made by the threads that hash the records read.
/// Each hash is taken once ([`StoredHashes::take`]); the ones no record took once a
/// full listing is through are the records that are gone ([`StoredHashes::untaken`]).
///
/// Why sorted and walked, not hashed: the state gives the hashes in id order, and a
/// listing mostly comes in that order too (a file Tandem wrote keeps its rows and
/// appends new ids above the highest). A reader that follows the listing with a
/// [`Walk`] finds each record at the entry after the last one it found: no hashing,
/// no cache miss, and a load that only appends. A record elsewhere is searched for
/// (binary search); a listing in another order builds an index of the ids once.
///
/// Taking flags an entry instead of removing it, so that several threads check
/// records off at once.
#[derive(Debug, Default)]
pub struct StoredHashes {
    /// By id, in byte order; no id twice.
    entries: Vec<Entry>,
    /// Entry by the hash of its id, for listings in another order; built once, at the
    /// first walk that strays too often. Ids whose hashes collide are searched for.
    index: OnceLock<HashMap<u64, u32, foldhash::fast::FixedState>>,
}

#[derive(Debug)]
struct Entry {
    id: SmolStr,
    hash: u64,
    taken: AtomicBool,
}

impl Entry {
    fn new(id: SmolStr, hash: u64) -> Entry {
        let taken = AtomicBool::new(false);
        Entry { id, hash, taken }
    }
}

/// What [`StoredHashes::take`] found for an id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// Its stored hash, taken now.
    First(u64),
    /// It has a stored hash, which another record of the listing took (a record
    /// listed twice).
    Again,
    /// No hash is stored for it.
    Absent,
}

impl Take {
    /// The hash taken now, if any.
    pub fn first(self) -> Option<u64> {
        match self {
            Take::First(hash) => Some(hash),
            Take::Again | Take::Absent => None,
        }
    }
}

/// Where a reader of a listing is in the stored hashes: one per thread.
#[derive(Debug, Default, Clone)]
pub struct Walk {
    next: usize,
    lookups: usize,
    strays: usize,
}

/// Entries after the walk's place looked at before searching: records deleted since
/// the last run leave theirs behind in the sorted entries.
const WALK_AHEAD: usize = 4;

impl StoredHashes {
    /// Room for `n` hashes.
    pub fn with_capacity(n: usize) -> StoredHashes {
        StoredHashes {
            entries: Vec::with_capacity(n),
            index: OnceLock::new(),
        }
    }

    /// Stores `hash` for `id` (not taken), in place of any before. Ids given in
    /// order are appended; others are put in their place.
    pub fn insert(&mut self, id: SmolStr, hash: u64) {
        self.index = OnceLock::new();
        let after_last = self.entries.last().is_none_or(|last| last.id < id);
        if after_last {
            self.entries.push(Entry::new(id, hash));
            return;
        }
        match self.search(&id) {
            Ok(at) => self.entries[at] = Entry::new(id, hash),
            Err(at) => self.entries.insert(at, Entry::new(id, hash)),
        }
    }

    /// How many hashes are stored, taken or not.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The hash stored for `id`, taken or not.
    pub fn get(&self, id: &str) -> Option<&u64> {
        self.search(id).ok().map(|at| &self.entries[at].hash)
    }

    /// Every id and hash, in id order.
    pub fn iter(&self) -> impl Iterator<Item = (&SmolStr, u64)> {
        self.entries.iter().map(|e| (&e.id, e.hash))
    }

    /// Takes the hash stored for `id`, from any thread, `walk` being where this
    /// thread's reading of the listing is. A record listed twice finds it taken
    /// ([`Take::Again`]) the second time.
    pub fn take(&self, id: &str, walk: &mut Walk) -> Take {
        let Some(at) = self.find(id, walk) else {
            return Take::Absent;
        };
        walk.next = at + 1;
        let entry = &self.entries[at];
        // Relaxed: the flag orders nothing else; the threads that take are joined
        // before `untaken` reads the flags.
        match entry.taken.swap(true, Ordering::Relaxed) {
            false => Take::First(entry.hash),
            true => Take::Again,
        }
    }

    /// The ids no record took.
    pub fn untaken(self) -> Vec<SmolStr> {
        (self.entries.into_iter())
            .filter(|e| !e.taken.load(Ordering::Relaxed))
            .map(|e| e.id)
            .collect()
    }

    /// Where `id` is: at the walk's place or a few entries after it, else searched
    /// for, through the index once the walk strays from the listing's order often.
    fn find(&self, id: &str, walk: &mut Walk) -> Option<usize> {
        walk.lookups += 1;
        let ahead = self.entries.get(walk.next..).unwrap_or_default();
        for (step, entry) in ahead.iter().take(WALK_AHEAD).enumerate() {
            match entry.id.as_str().cmp(id) {
                std::cmp::Ordering::Equal => return Some(walk.next + step),
                std::cmp::Ordering::Less => continue,
                std::cmp::Ordering::Greater => break,
            }
        }
        walk.strays += 1;
        // A listing in another order: after a thousand strays, one in sixteen.
        let astray = walk.strays > 1_000 && walk.strays * 16 > walk.lookups;
        let index = match astray {
            true => Some(self.index.get_or_init(|| self.build_index())),
            false => self.index.get(),
        };
        match index.and_then(|index| index.get(&id_hash(id))) {
            Some(&at) if at != COLLIDED => {
                let at = at as usize;
                (self.entries[at].id == id).then_some(at)
            }
            Some(_) => self.search(id).ok(),
            None if index.is_some() => None,
            None => self.search(id).ok(),
        }
    }

    fn search(&self, id: &str) -> Result<usize, usize> {
        self.entries.binary_search_by(|e| e.id.as_str().cmp(id))
    }

    fn build_index(&self) -> HashMap<u64, u32, foldhash::fast::FixedState> {
        let mut index = HashMap::with_capacity_and_hasher(self.entries.len(), Default::default());
        for (at, entry) in self.entries.iter().enumerate() {
            // More than 4 billion hashes of one scope are searched for past that.
            let at = u32::try_from(at).unwrap_or(COLLIDED);
            index
                .entry(id_hash(&entry.id))
                .and_modify(|held| *held = COLLIDED)
                .or_insert(at);
        }
        index
    }
}

/// In the index: ids with this hash are searched for.
const COLLIDED: u32 = u32::MAX;

fn id_hash(id: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(id.as_bytes())
}

/// The hash stored for `id`; panics when there is none, as a map's index does.
impl std::ops::Index<&str> for StoredHashes {
    type Output = u64;

    fn index(&self, id: &str) -> &u64 {
        self.get(id)
            .unwrap_or_else(|| panic!("no stored hash for {id}"))
    }
}

/// Equal when they store the same hashes, whichever were taken.
impl PartialEq for StoredHashes {
    fn eq(&self, other: &StoredHashes) -> bool {
        self.iter().eq(other.iter())
    }
}

impl Extend<(SmolStr, u64)> for StoredHashes {
    /// Merged in one pass, however many are given and in whatever order: a reader of
    /// changes adds the hashes of each page's records.
    fn extend<I: IntoIterator<Item = (SmolStr, u64)>>(&mut self, items: I) {
        let added = StoredHashes::from_iter(items);
        if added.is_empty() {
            return;
        }
        let held = std::mem::take(&mut self.entries);
        let mut merged = Vec::with_capacity(held.len() + added.len());
        let (mut held, mut added) = (
            held.into_iter().peekable(),
            added.entries.into_iter().peekable(),
        );
        loop {
            let next = match (held.peek(), added.peek()) {
                (Some(h), Some(a)) => match h.id.cmp(&a.id) {
                    std::cmp::Ordering::Less => held.next(),
                    std::cmp::Ordering::Greater => added.next(),
                    // The hash given now replaces the one held.
                    std::cmp::Ordering::Equal => {
                        held.next();
                        added.next()
                    }
                },
                (Some(_), None) => held.next(),
                (None, Some(_)) => added.next(),
                (None, None) => break,
            };
            merged.extend(next);
        }
        self.entries = merged;
        self.index = OnceLock::new();
    }
}

impl FromIterator<(SmolStr, u64)> for StoredHashes {
    /// In any order; a later hash of the same id replaces an earlier one.
    fn from_iter<I: IntoIterator<Item = (SmolStr, u64)>>(items: I) -> StoredHashes {
        let mut items: Vec<(SmolStr, u64)> = items.into_iter().collect();
        // Stable: of one id's hashes the last given comes last, and is kept.
        items.sort_by(|a, b| a.0.cmp(&b.0));
        let mut hashes = StoredHashes::with_capacity(items.len());
        for (id, hash) in items {
            match hashes.entries.last_mut() {
                Some(last) if last.id == id => last.hash = hash,
                _ => hashes.entries.push(Entry::new(id, hash)),
            }
        }
        hashes
    }
}

impl IntoIterator for StoredHashes {
    type Item = (SmolStr, u64);
    type IntoIter = IntoIter;

    fn into_iter(self) -> IntoIter {
        IntoIter(self.entries.into_iter())
    }
}

/// Every id and hash of a [`StoredHashes`], in id order.
#[derive(Debug)]
pub struct IntoIter(std::vec::IntoIter<Entry>);

impl Iterator for IntoIter {
    type Item = (SmolStr, u64);

    fn next(&mut self) -> Option<(SmolStr, u64)> {
        self.0.next().map(|e| (e.id, e.hash))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.0.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    fn stored(n: u64) -> StoredHashes {
        (0..n)
            .map(|i| (SmolStr::from(format!("R{i:05}")), i))
            .collect()
    }

    #[test]
    fn each_hash_is_taken_once_and_the_rest_are_untaken() {
        let hashes = stored(5);
        let mut walk = Walk::default();
        assert_eq!(hashes.take("R00001", &mut walk), Take::First(1));
        assert_eq!(hashes.take("R00001", &mut walk), Take::Again);
        assert_eq!(hashes.take("R00009", &mut walk), Take::Absent);
        assert_eq!(hashes.take("R00000", &mut walk), Take::First(0));
        assert_eq!(hashes.get("R00001"), Some(&1), "still stored");
        assert_eq!(hashes["R00004"], 4);
        assert_eq!(hashes.untaken(), ["R00002", "R00003", "R00004"]);
    }

    #[test]
    fn records_taken_from_many_threads_are_each_taken_once() {
        let hashes = stored(10_000);
        // Ids 0..3,000 are listed twice, the listing shuffled by chunks.
        let mut ids: Vec<String> = (0..12_000).map(|i| format!("R{:05}", i % 9_000)).collect();
        ids.reverse();
        let taken: Vec<Take> = std::thread::scope(|scope| {
            let workers: Vec<_> = (ids.chunks(1_000))
                .map(|part| {
                    scope.spawn(|| {
                        let mut walk = Walk::default();
                        (part.iter())
                            .map(|id| hashes.take(id, &mut walk))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            workers
                .into_iter()
                .flat_map(|w| w.join().unwrap())
                .collect()
        });
        let first = taken.iter().filter(|t| matches!(t, Take::First(_))).count();
        let again = taken.iter().filter(|t| **t == Take::Again).count();
        assert_eq!((first, again), (9_000, 3_000));
        let expected: Vec<String> = (9_000..10_000).map(|i| format!("R{i:05}")).collect();
        assert_eq!(hashes.untaken(), expected);
    }

    #[test]
    fn equal_stores_ignore_what_was_taken() {
        let (a, b) = (stored(3), stored(3));
        a.take("R00002", &mut Walk::default());
        assert_eq!(a, b);
        assert_ne!(a, stored(2));
        let mut c = stored(3);
        c.insert("R00002".into(), 7);
        assert_ne!(c, b);
    }

    /// A listing: the stored ids (some left out: deleted), new ids among them, some
    /// ids listed twice, in id order or shuffled.
    fn listing() -> impl Strategy<Value = (Vec<(u16, u64)>, Vec<u16>)> {
        let stored = proptest::collection::vec((0u16..3_000, any::<u64>()), 0..1_500);
        let listed = proptest::collection::vec(0u16..3_200, 0..3_000);
        (stored, listed, any::<bool>()).prop_map(|(stored, mut listed, sorted)| {
            if sorted {
                listed.sort_unstable();
            }
            (stored, listed)
        })
    }

    proptest! {
        /// Taken in the listing's order on one thread, the hashes answer as a map
        /// would that removes each id as it is taken, whatever the order.
        #[test]
        fn a_walk_answers_as_a_map_would((stored, listed) in listing(), threshold in 0usize..2) {
            let id = |n: u16| SmolStr::from(format!("K{n:04}"));
            let hashes: StoredHashes = stored.iter().map(|&(n, h)| (id(n), h)).collect();
            let mut model: BTreeMap<SmolStr, u64> = stored.iter().map(|&(n, h)| (id(n), h)).collect();
            let held = model.clone();
            if threshold == 1 {
                // The index, as after a walk that strayed.
                hashes.index.get_or_init(|| hashes.build_index());
            }
            let mut walk = Walk::default();
            for n in listed {
                let expected = match (model.remove(&id(n)), held.contains_key(&id(n))) {
                    (Some(hash), _) => Take::First(hash),
                    (None, true) => Take::Again,
                    (None, false) => Take::Absent,
                };
                prop_assert_eq!(hashes.take(&id(n), &mut walk), expected);
            }
            let untaken: Vec<SmolStr> = model.into_keys().collect();
            prop_assert_eq!(hashes.untaken(), untaken);
        }
    }

    #[test]
    fn extending_merges_in_id_order_and_the_hash_given_last_wins() {
        let mut hashes = stored(3);
        hashes.extend([("R00001".into(), 10), ("A".into(), 7), ("R00009".into(), 9)]);
        hashes.extend([("R00001".into(), 11), ("R00001".into(), 12)]);
        hashes.extend([]);
        let all: Vec<(&str, u64)> = hashes.iter().map(|(id, h)| (id.as_str(), h)).collect();
        let expected = [
            ("A", 7),
            ("R00000", 0),
            ("R00001", 12),
            ("R00002", 2),
            ("R00009", 9),
        ];
        assert_eq!(all, expected);
        let mut walk = Walk::default();
        assert_eq!(hashes.take("A", &mut walk), Take::First(7));
        assert_eq!(hashes.take("R00000", &mut walk), Take::First(0));
    }

    #[test]
    fn a_listing_in_another_order_is_indexed_once_and_found() {
        let hashes = stored(20_000);
        let mut walk = Walk::default();
        for i in (0..20_000).rev() {
            assert_eq!(hashes.take(&format!("R{i:05}"), &mut walk), Take::First(i));
        }
        assert!(hashes.index.get().is_some(), "strayed: indexed");
        assert!(hashes.untaken().is_empty());
        // In order, the walk finds every one where it is.
        let hashes = stored(20_000);
        let mut walk = Walk::default();
        for i in 0..20_000 {
            assert_eq!(hashes.take(&format!("R{i:05}"), &mut walk), Take::First(i));
        }
        assert_eq!(walk.strays, 0);
        assert!(hashes.index.get().is_none());
    }

    #[test]
    fn ids_whose_hashes_collide_in_the_index_are_searched_for() {
        let hashes = stored(4);
        let mut index = HashMap::default();
        // Every id made to share one hash.
        index.insert(id_hash("R00002"), COLLIDED);
        hashes.index.set(index).unwrap();
        let mut walk = Walk {
            next: 4,
            ..Walk::default()
        };
        assert_eq!(hashes.take("R00002", &mut walk), Take::First(2));
    }
}
