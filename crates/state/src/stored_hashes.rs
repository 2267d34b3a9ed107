//! The stored content hashes a listing is compared with.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use tandem_model::SmolStr;

/// A scope's stored content hashes by record id, as a listing is compared with them: a
/// million lookups per scope, made by the threads that hash the records read. Each
/// hash is taken once ([`StoredHashes::take`]); the ones no record took once a full
/// listing is through are the records that are gone ([`StoredHashes::untaken`]).
///
/// Taking flags an entry instead of removing it, so several threads check records off
/// at once: removals on the one thread that collected the hashes were a tenth of a
/// `--full-read` run's CPU, cache misses all. Ids of up to 23 bytes sit in the table
/// itself (no allocation, one cache miss per lookup instead of two), hashed with
/// foldhash rather than SipHash.
#[derive(Debug, Default)]
pub struct StoredHashes {
    by_id: HashMap<SmolStr, Entry, foldhash::fast::RandomState>,
}

#[derive(Debug)]
struct Entry {
    hash: u64,
    taken: AtomicBool,
}

impl StoredHashes {
    /// Room for `n` hashes.
    pub fn with_capacity(n: usize) -> StoredHashes {
        StoredHashes {
            by_id: HashMap::with_capacity_and_hasher(n, Default::default()),
        }
    }

    /// Stores `hash` for `id` (not taken), in place of any before.
    pub fn insert(&mut self, id: SmolStr, hash: u64) {
        let taken = AtomicBool::new(false);
        self.by_id.insert(id, Entry { hash, taken });
    }

    /// How many hashes are stored, taken or not.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// The hash stored for `id`, taken or not.
    pub fn get(&self, id: &str) -> Option<&u64> {
        self.by_id.get(id).map(|e| &e.hash)
    }

    /// Every id and hash, in no order.
    pub fn iter(&self) -> impl Iterator<Item = (&SmolStr, u64)> {
        self.by_id.iter().map(|(id, e)| (id, e.hash))
    }

    /// The hash stored for `id` the first time it is taken, from any thread; `None`
    /// for an id without one, or taken already (a record listed twice is new the
    /// second time).
    pub fn take(&self, id: &str) -> Option<u64> {
        let entry = self.by_id.get(id)?;
        // Relaxed: the flag orders nothing else; the threads that take are joined
        // before `untaken` reads the flags.
        (!entry.taken.swap(true, Ordering::Relaxed)).then_some(entry.hash)
    }

    /// The ids no record took.
    pub fn untaken(self) -> Vec<SmolStr> {
        (self.by_id.into_iter())
            .filter(|(_, e)| !e.taken.load(Ordering::Relaxed))
            .map(|(id, _)| id)
            .collect()
    }
}

/// The hash stored for `id`; panics when there is none, as a map's index does.
impl std::ops::Index<&str> for StoredHashes {
    type Output = u64;

    fn index(&self, id: &str) -> &u64 {
        &self.by_id[id].hash
    }
}

/// Equal when they store the same hashes, whichever were taken.
impl PartialEq for StoredHashes {
    fn eq(&self, other: &StoredHashes) -> bool {
        self.len() == other.len() && self.iter().all(|(id, hash)| other.get(id) == Some(&hash))
    }
}

impl Extend<(SmolStr, u64)> for StoredHashes {
    fn extend<I: IntoIterator<Item = (SmolStr, u64)>>(&mut self, items: I) {
        for (id, hash) in items {
            self.insert(id, hash);
        }
    }
}

impl FromIterator<(SmolStr, u64)> for StoredHashes {
    fn from_iter<I: IntoIterator<Item = (SmolStr, u64)>>(items: I) -> StoredHashes {
        let mut hashes = StoredHashes::default();
        hashes.extend(items);
        hashes
    }
}

impl IntoIterator for StoredHashes {
    type Item = (SmolStr, u64);
    type IntoIter = IntoIter;

    fn into_iter(self) -> IntoIter {
        IntoIter(self.by_id.into_iter())
    }
}

/// Every id and hash of a [`StoredHashes`], in no order.
#[derive(Debug)]
pub struct IntoIter(std::collections::hash_map::IntoIter<SmolStr, Entry>);

impl Iterator for IntoIter {
    type Item = (SmolStr, u64);

    fn next(&mut self) -> Option<(SmolStr, u64)> {
        self.0.next().map(|(id, e)| (id, e.hash))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.0.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(n: u64) -> StoredHashes {
        (0..n)
            .map(|i| (SmolStr::from(format!("R{i}")), i))
            .collect()
    }

    #[test]
    fn each_hash_is_taken_once_and_the_rest_are_untaken() {
        let hashes = stored(5);
        assert_eq!(hashes.take("R1"), Some(1));
        assert_eq!(hashes.take("R1"), None, "taken once");
        assert_eq!(hashes.take("R9"), None, "never stored");
        assert_eq!(hashes.take("R0"), Some(0));
        assert_eq!(hashes.get("R1"), Some(&1), "still stored");
        let mut untaken = hashes.untaken();
        untaken.sort();
        assert_eq!(untaken, ["R2", "R3", "R4"]);
    }

    #[test]
    fn records_taken_from_many_threads_are_each_taken_once() {
        let hashes = stored(10_000);
        let ids: Vec<String> = (0..12_000).map(|i| format!("R{}", i % 9_000)).collect();
        let taken: Vec<Option<u64>> = std::thread::scope(|scope| {
            let workers: Vec<_> = (ids.chunks(1_000))
                .map(|part| {
                    scope.spawn(|| part.iter().map(|id| hashes.take(id)).collect::<Vec<_>>())
                })
                .collect();
            workers
                .into_iter()
                .flat_map(|w| w.join().unwrap())
                .collect()
        });
        // Ids 0..3,000 are listed twice: taken by one of the two copies only.
        assert_eq!(taken.iter().flatten().count(), 9_000);
        let mut untaken = hashes.untaken();
        untaken.sort();
        let mut expected: Vec<String> = (9_000..10_000).map(|i| format!("R{i}")).collect();
        expected.sort();
        assert_eq!(untaken, expected);
    }

    #[test]
    fn equal_stores_ignore_what_was_taken() {
        let (a, b) = (stored(3), stored(3));
        a.take("R2");
        assert_eq!(a, b);
        assert_ne!(a, stored(2));
        let mut c = stored(3);
        c.insert("R2".into(), 7);
        assert_ne!(c, b);
    }
}
