//! The records a run read of one scope, held packed and in id order until its plan
//! is made (see `tandem_model::PackedRecord`).

use tandem_model::{PackedRecord, PackedRecords, Record};

/// Records by id: packed, sorted by id, one per id.
///
/// Why not a map of `Record`s: a first sync of a million partners holds two million
/// records until it has planned; as `Record`s in a `BTreeMap` they took 1.2 GiB (a
/// 32-byte pair per field, the id twice, the map's nodes), packed about a third of
/// that, back to back in buffers ([`PackedRecords`]) a little less again.
///
/// Looked up by binary search over the first eight bytes of each id, held beside the
/// records (16 MB for two million): a search that read each id from its record
/// chased a pointer at every step, and made the planning of a first sync at 1M a
/// second slower than the map.
#[derive(Debug, Default, Clone)]
pub struct Records {
    records: PackedRecords,
    /// `prefix` of each record's id, in the same order.
    prefixes: Vec<u64>,
}

/// [`tandem_model::id_prefix`] of `id`.
pub(crate) fn prefix(id: &str) -> u64 {
    tandem_model::id_prefix(id.as_bytes())
}

/// Where `id` lies in a list of ids in order, held elsewhere, whose [`prefix`]es are
/// `prefixes`: the positions of the ids equal to it, or the empty range where it would
/// go. `cmp_at(i)` orders the id at `i` against `id`. The search runs over the
/// prefixes, side by side in memory, and reads the ids themselves (a pointer each)
/// only among the few that share `id`'s prefix.
pub(crate) fn id_range(
    prefixes: &[u64],
    id: &str,
    cmp_at: impl Fn(usize) -> std::cmp::Ordering,
) -> std::ops::Range<usize> {
    let key = prefix(id);
    let from = lower_bound_near(prefixes, key, last_found(prefixes));
    let to = match key.checked_add(1) {
        Some(above) => lower_bound_near(prefixes, above, from),
        None => prefixes.len(),
    };
    let first = |mut low: usize, mut high: usize, before: &dyn Fn(usize) -> bool| {
        while low < high {
            let mid = low + (high - low) / 2;
            match before(mid) {
                true => low = mid + 1,
                false => high = mid,
            }
        }
        low
    };
    let start = first(from, to, &|i| cmp_at(i).is_lt());
    let end = first(start, to, &|i| cmp_at(i).is_eq());
    remember_found(prefixes, start);
    start..end
}

/// Steps a search takes outward from where the last one ended before it searches the
/// rest of the list by halves: a lookup far from it costs a few steps more than a
/// plain search, never twice as many.
const NEAR_STEPS: u32 = 6;

/// The first position in `prefixes` (in order) whose prefix is not below `key`,
/// searched outward from `near` (any position: a hint).
///
/// Why: a run looks most records up in id order (the hubs go by contact id, and
/// their links and accounts mostly follow), so the next id lies a few places after the
/// last. A search by halves over a million prefixes (8 MB) missed the cache at nearly
/// every step; outward from the last it reads a few neighbours (merging 805,000 hubs at
/// 1M spent a fifth of its time searching).
fn lower_bound_near(prefixes: &[u64], key: u64, near: usize) -> usize {
    let n = prefixes.len();
    let near = near.min(n);
    let below = |i: usize| prefixes[i] < key;
    // Every position before `low` is below `key`, and none from `high` on.
    let (mut low, mut high) = (0, n);
    let mut step = 1;
    if near == 0 || below(near - 1) {
        low = near;
        for _ in 0..NEAR_STEPS {
            if low + step > n || !below(low + step - 1) {
                high = (low + step).min(n);
                break;
            }
            low += step;
            step *= 2;
        }
    } else {
        high = near;
        for _ in 0..NEAR_STEPS {
            if high < step + 1 || below(high - step - 1) {
                low = high.saturating_sub(step);
                break;
            }
            high -= step;
            step *= 2;
        }
    }
    low + prefixes[low..high].partition_point(|p| *p < key)
}

/// Lists searched lately on this thread, by address, with where their last search
/// ended; a few, since a run looks up in several lists by turns (contacts, accounts,
/// new links). A list freed and another made at its address only gets a poor hint.
const LISTS_REMEMBERED: usize = 8;

thread_local! {
    static LAST_FOUND: std::cell::Cell<[(usize, usize); LISTS_REMEMBERED]> =
        const { std::cell::Cell::new([(0, 0); LISTS_REMEMBERED]) };
}

fn last_found(prefixes: &[u64]) -> usize {
    let list = prefixes.as_ptr() as usize;
    let remembered = LAST_FOUND.with(std::cell::Cell::get);
    (remembered.iter())
        .find(|(l, _)| *l == list)
        .map_or(0, |(_, at)| *at)
}

fn remember_found(prefixes: &[u64], at: usize) {
    let list = prefixes.as_ptr() as usize;
    LAST_FOUND.with(|cell| {
        let mut remembered = cell.get();
        let slot = match remembered.iter().position(|(l, _)| *l == list) {
            Some(slot) => slot,
            None => {
                // The oldest goes: entries move up, the newest is first.
                remembered.rotate_right(1);
                0
            }
        };
        remembered[slot] = (list, at);
        cell.set(remembered);
    });
}

/// From this many records on, packing is split over the machine's cores.
const PARALLEL_PACKING: usize = 20_000;

impl Records {
    /// None, for a static.
    pub const EMPTY: Records = Records {
        records: PackedRecords::new(),
        prefixes: Vec::new(),
    };

    pub fn new() -> Records {
        Records::default()
    }

    /// Records as read, packed; of an id sent twice, the last copy, as a map keeps it.
    pub fn from_read(records: Vec<Record>) -> Records {
        Records::from_packed(pack_all(records))
    }

    /// Records packed in the order read; of an id sent twice, the last copy.
    pub fn from_packed(records: PackedRecords) -> Records {
        let mut out = Records {
            records,
            prefixes: Vec::new(),
        };
        out.sort_and_dedup();
        out
    }

    /// Adds `record`; one of the same id is replaced.
    pub fn insert(&mut self, record: Record) {
        match self.position(&record.id) {
            Ok(i) => self.records.replace(i, &record),
            Err(i) => {
                self.records.insert(i, &record);
                self.prefixes.insert(i, prefix(&record.id));
            }
        }
    }

    /// Adds many at once: one sort, not a move of the rest per record.
    pub fn extend(&mut self, records: Vec<Record>) {
        if records.len() < 16 {
            records.into_iter().for_each(|r| self.insert(r));
            return;
        }
        self.records.append(pack_all(records));
        self.sort_and_dedup();
    }

    fn sort_and_dedup(&mut self) {
        self.prefixes = self.records.sort_by_id_keeping_last();
        self.records.shrink_to_fit();
    }

    /// The prefixes of records already sorted, one per id.
    fn index_sorted(&mut self) {
        self.records.shrink_to_fit();
        self.prefixes = self.records.iter().map(|r| prefix(r.id())).collect();
    }

    fn position(&self, id: &str) -> Result<usize, usize> {
        let found = id_range(&self.prefixes, id, |i| self.records.get(i).cmp_id(id));
        match found.is_empty() {
            true => Err(found.start),
            false => Ok(found.start),
        }
    }

    pub fn get(&self, id: &str) -> Option<&PackedRecord> {
        self.position(id).ok().map(|i| self.records.get(i))
    }

    /// The record and its id, borrowed from it.
    pub fn get_key_value(&self, id: &str) -> Option<(&str, &PackedRecord)> {
        self.get(id).map(|r| (r.id(), r))
    }

    pub fn contains_key(&self, id: &str) -> bool {
        self.position(id).is_ok()
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// In id order (named as a map's, as the planner reads them).
    pub fn values(&self) -> impl DoubleEndedIterator<Item = &PackedRecord> + Clone + '_ {
        self.records.iter()
    }

    /// The records whose ids lie in `[from, to)`, in order; `None` leaves that end
    /// open.
    pub fn between(
        &self,
        from: Option<&str>,
        to: Option<&str>,
    ) -> impl DoubleEndedIterator<Item = &PackedRecord> + ExactSizeIterator + '_ {
        let at = |id: Option<&str>, open: usize| {
            id.map_or(open, |id| self.position(id).unwrap_or_else(|i| i))
        };
        let (start, end) = (at(from, 0), at(to, self.records.len()));
        self.records.range(start..end.max(start))
    }

    /// The bytes the records take, on the heap or in a file.
    pub fn byte_len(&self) -> usize {
        self.records.byte_len()
    }

    /// The bytes of the records still on the heap.
    pub fn heap_bytes(&self) -> usize {
        self.records.growing_bytes()
    }

    /// Moves the records on the heap to `spill`'s file, in id order: copied there in
    /// that order when they lie on the heap in another (a listing out of id order,
    /// sorted since; see [`crate::spill::Spill::in_order`]).
    pub(crate) fn spill_to(&mut self, spill: &mut crate::spill::Spill) -> std::io::Result<()> {
        match self.records.lie_in_order() {
            true => spill.take(&mut self.records),
            false => spill.in_order(&mut self.records),
        }
    }

    /// Records all on the heap, lying there in another order than their ids' (a
    /// listing out of id order, sorted since), copied in id order: the steps after the
    /// read walk them in id order (matching, linking, merging, the codes), and each
    /// record they read at random in memory missed the cache (a first sync of a
    /// million partners with every file's rows shuffled took 5 s more than in id
    /// order). The heap holds the scope's records twice while they are copied.
    pub(crate) fn lay_in_order(&mut self) {
        if self.records.lie_in_order() || self.heap_bytes() < self.byte_len() {
            return;
        }
        let copied = self
            .records
            .repack_in_order(usize::MAX, |_| Ok::<(), std::convert::Infallible>(()));
        let Ok(()) = copied;
    }

    /// `records` as read (a listing's order), sorted by id; when they went to
    /// `spill`'s file in another order, copied there again in id order
    /// ([`crate::spill::Spill::in_order`]).
    pub(crate) fn from_spilled(
        records: PackedRecords,
        spill: &mut crate::spill::Spill,
    ) -> std::io::Result<Records> {
        let sorted = records.is_sorted_by_id();
        let mut out = Records {
            records,
            prefixes: Vec::new(),
        };
        if sorted {
            // Read once in order; the sort would read the ids again.
            out.index_sorted();
            return Ok(out);
        }
        // The sort reads the ids at random too.
        let _kept = spill.keep_pages();
        out.sort_and_dedup();
        spill.in_order(&mut out.records)?;
        Ok(out)
    }

    /// Lets the pages of records held in a file go from memory until they are read
    /// again ([`crate::spill`]); records on the heap stay.
    pub fn let_go_pages(&self) {
        self.records.let_go_held();
    }

    /// The ids, in order.
    pub fn keys(&self) -> impl Iterator<Item = &str> + '_ {
        self.records.iter().map(PackedRecord::id)
    }
}

impl FromIterator<Record> for Records {
    fn from_iter<I: IntoIterator<Item = Record>>(records: I) -> Records {
        Records::from_read(records.into_iter().collect())
    }
}

/// As a map is collected from (id, record) pairs: each record is held by its own id.
impl FromIterator<(String, Record)> for Records {
    fn from_iter<I: IntoIterator<Item = (String, Record)>>(pairs: I) -> Records {
        let records = pairs.into_iter().map(|(id, record)| {
            assert_eq!(id, record.id, "a record is held by its own id");
            record
        });
        records.collect()
    }
}

/// Packs `records`, each freed once packed, on the machine's cores when they are many.
pub(crate) fn pack_all(mut records: Vec<Record>) -> PackedRecords {
    let pack = |part: Vec<Record>| -> PackedRecords {
        let mut packed = PackedRecords::with_room_for(&part);
        part.into_iter().for_each(|r| packed.push(&r));
        packed
    };
    let threads = crate::parallel::cores();
    if records.len() < PARALLEL_PACKING || threads <= 1 {
        return pack(records);
    }
    let chunk = records.len().div_ceil(threads);
    let mut parts = Vec::with_capacity(threads);
    while records.len() > chunk {
        parts.push(records.split_off(records.len() - chunk));
    }
    parts.push(records);
    parts.reverse();
    std::thread::scope(|scope| {
        let workers: Vec<_> = (parts.into_iter())
            .map(|part| scope.spawn(move || pack(part)))
            .collect();
        let mut out = PackedRecords::new();
        for worker in workers {
            let packed = worker
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p));
            out.append(packed);
        }
        out
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use std::collections::BTreeMap;
    use tandem_model::{EntityKind, Fields};

    use super::*;

    /// Ids of several lengths; some share their first eight bytes and more.
    fn id_of(n: u32) -> String {
        match n % 3 {
            0 => format!("C{n}"),
            1 => format!("SHARED-PREFIX-{n:03}"),
            _ => format!("{n}"),
        }
    }

    fn record(id: &str, copy: u32) -> Record {
        Record::new(
            EntityKind::Contact,
            id,
            Fields::new().with("name", format!("copy {copy}")),
        )
    }

    proptest! {
        /// From any hint, the search outward finds where a search by halves does.
        #[test]
        fn a_search_from_any_hint_finds_what_a_search_by_halves_finds(
            mut prefixes in prop::collection::vec(0u64..40, 0..300),
            keys in prop::collection::vec(0u64..45, 1..20),
            near in prop::collection::vec(0usize..320, 1..20),
        ) {
            prefixes.sort_unstable();
            for (key, near) in keys.iter().zip(near.iter().cycle()) {
                let by_halves = prefixes.partition_point(|p| p < key);
                prop_assert_eq!(lower_bound_near(&prefixes, *key, *near), by_halves);
            }
        }

        /// Read in any order, with repeats, added to later one by one or many at
        /// once: the records answer as a map of ids to their last copy would.
        #[test]
        fn records_answer_as_a_map_of_ids_to_their_last_copy_would(
            read in prop::collection::vec(0u32..60, 0..200),
            added in prop::collection::vec(0u32..80, 0..40),
            one_by_one in any::<bool>(),
        ) {
            let mut map = BTreeMap::new();
            let mut copy = 0;
            let mut next = |id: u32, map: &mut BTreeMap<String, Record>| {
                copy += 1;
                let r = record(&id_of(id), copy);
                map.insert(r.id.clone(), r.clone());
                r
            };
            let first: Vec<Record> = read.iter().map(|id| next(*id, &mut map)).collect();
            let mut records = Records::from_read(first);
            let later: Vec<Record> = added.iter().map(|id| next(*id, &mut map)).collect();
            match one_by_one {
                true => later.into_iter().for_each(|r| records.insert(r)),
                false => records.extend(later),
            }
            let held: Vec<Record> = records.values().map(PackedRecord::unpack).collect();
            let want: Vec<Record> = map.values().cloned().collect();
            prop_assert_eq!(held, want);
            for id in 0..80 {
                let id = id_of(id);
                let held = records.get(&id).map(PackedRecord::unpack);
                prop_assert_eq!(held.as_ref(), map.get(&id));
                prop_assert_eq!(records.contains_key(&id), map.contains_key(&id));
            }
        }
    }

    #[test]
    fn records_moved_to_a_file_answer_as_before_and_count_as_in_the_file() {
        let read: Vec<Record> = (0..500).map(|i| record(&id_of(i), i)).collect();
        let mut records = Records::from_read(read.clone());
        let on_heap = records.heap_bytes();
        assert_eq!((on_heap, records.byte_len()), (records.byte_len(), on_heap));
        let folder = tempfile::tempdir().unwrap();
        let mut spill = crate::spill::Spill::new(folder.path()).unwrap();
        // Read out of id order: they go to the file in id order.
        assert!(!records.records.lie_in_order());
        records.spill_to(&mut spill).unwrap();
        assert!(records.records.lie_in_order());
        records.let_go_pages();
        assert_eq!((records.heap_bytes(), records.byte_len()), (0, on_heap));
        let want = Records::from_read(read);
        let held: Vec<Record> = records.values().map(PackedRecord::unpack).collect();
        let expected: Vec<Record> = want.values().map(PackedRecord::unpack).collect();
        assert_eq!(held, expected);
        for id in (0..520).map(id_of) {
            assert_eq!(records.contains_key(&id), want.contains_key(&id), "{id}");
        }
        // Added after: on the heap again.
        records.insert(record("C9999", 1));
        assert!(records.heap_bytes() > 0 && records.contains_key("C9999"));
    }

    #[test]
    fn records_on_the_heap_out_of_order_are_laid_in_id_order_and_answer_as_before() {
        let read: Vec<Record> = (0..500).map(|i| record(&id_of(i), i)).collect();
        let mut records = Records::from_read(read.clone());
        assert!(!records.records.lie_in_order());
        let before: Vec<Record> = records.values().map(PackedRecord::unpack).collect();
        records.lay_in_order();
        assert!(records.records.lie_in_order());
        let after: Vec<Record> = records.values().map(PackedRecord::unpack).collect();
        assert_eq!(after, before);
        for id in (0..520).map(id_of) {
            let want = read
                .iter()
                .rev()
                .find(|r| r.id == id)
                .map(|r| r.fields.clone());
            let held = records.get(&id).map(|r| r.unpack().fields);
            assert_eq!(held, want, "{id}");
        }
    }

    #[test]
    fn many_records_are_packed_on_the_cores_in_their_order() {
        let read: Vec<Record> = (0..PARALLEL_PACKING + 7)
            .map(|i| record(&format!("C{:06}", PARALLEL_PACKING + 7 - i), 1))
            .collect();
        let records = Records::from_read(read);
        assert_eq!(records.len(), PARALLEL_PACKING + 7);
        assert!(records.keys().is_sorted());
        assert_eq!(records.keys().next(), Some("C000001"));
    }
}
