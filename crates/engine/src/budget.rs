//! A run's memory budget (`[sync] memory_budget`): how many hubs a sync plans and
//! carries out at a time, worked out once its head is planned from what the process
//! holds then (the records read, what the run saw of them, the head's plan) and what
//! each hub of a range adds while the range is in flight.
//!
//! An estimate, not a cap: what a hub costs depends on the data. The figure below was
//! measured on the benchmark's data (docs/BENCHMARKS.md); what the process holds
//! before the hubs grows with the records read, and a budget below it gives ranges of
//! [`MIN_HUBS_PER_RANGE`], with a warning.

use tracing::{info, warn};

/// What a hub costs while its range is in flight: its plan, held twice (the range
/// being written, and the range before it being settled or the next one planned), its
/// contact's and its accounts' writes and their outcomes (the two sides are sent at
/// once), its state rows, and the
/// memory freed that the allocator keeps a second for the next range to reuse (a
/// binary in ranges keeps it so: given back at once, each range faulted its pages in
/// again, 2 s of a first sync of 1M within 1 GiB). Measured at a million partners, with
/// what is held once matched measured after the allocator gave back what it kept: the
/// peak less that less what is held beside the hubs came to 4.0 KB per hub of ranges of
/// 104,000. 5 KB kept a 1 GiB budget's peak under it at 1M (936 to 959 MiB) but not a 4
/// GiB budget's at 10M (4,135 to 4,172 MiB); 6 KB keeps both (885 to 915 MiB, 3,882
/// MiB). The creates go a range's hubs per call (`Applier::per_range`): sent all at
/// once they were the peak of such a run.
pub const BYTES_PER_HUB: u64 = 6_000;

/// What a run holds besides its hubs while a range is in flight: the files' write
/// buffers, the state's page cache and batches, the creates' rows. Measured at a
/// million partners: the peak less what was held once matched less the hubs' share
/// came to 90 MiB.
pub const BYTES_BESIDE_HUBS: u64 = 96 << 20;

/// What a write call holds per record of the scope it writes, when that is more than
/// [`BYTES_BESIDE_HUBS`]: a file connector indexes every row of the file it rewrites
/// (where each row and its id begin). At ten million partners each call of the create
/// step took about 780 MB before its creates, 78 bytes a contact, while the file
/// connector kept each id's hash and row in a map; with row numbers only (4 bytes a
/// slot) and ids' ends of 4 bytes, its old and new row index take about 44 bytes a
/// row and a create call's table of ids 8 more.
pub const BYTES_BESIDE_PER_RECORD: u64 = 55;

/// The smallest range a budget gives: each range writes every file it touches, and
/// smaller ranges would rewrite a million-row file hundreds of times to save a few
/// MiB (a range of 10,000 hubs takes about 38 MiB).
pub const MIN_HUBS_PER_RANGE: usize = 10_000;

/// The share of a budget the records read may take on the heap (one over this): past
/// it they go to a file mapped into memory (`spill.rs`), as kept on the heap they
/// would leave the hubs too little room. Measured at ten million partners, whose
/// records take 2.5 GB: with a budget of 4 GiB, the records on the heap left ranges
/// of 10,000 hubs, in a file ranges of 125,000 (466 s); with 7 GiB they stay on the
/// heap: in a file the run was faster (297 s against 350 s, larger ranges) but took
/// 8.4 GiB against 6.7 GiB, its mapped pages beside the heap the budget counts. At a
/// million partners (250 MB) with 1 GiB they stay too: the file cost 1 to 3 s and
/// saved nothing the budget needed.
pub const RECORDS_SHARE: u64 = 2;

/// While the listings come, the records go to the file once they pass this share of
/// the budget (one over this), before it is known whether all of them will pass
/// [`RECORDS_SHARE`]: the records held until then add to the heap's peak of reading
/// (at ten million partners with 4 GiB: 1.9 GiB with every record to the file, 3.3
/// GiB from a third on). A run whose records end under half keeps on the heap the
/// ones read before they passed a third.
pub const READING_SHARE: u64 = 3;

/// Bytes a run may take, and how to measure what the process holds.
#[derive(Debug, Clone, Copy)]
pub struct MemoryBudget {
    bytes: u64,
    resident: fn() -> Option<u64>,
    /// Told where the run is, for the allocator.
    at: fn(MemoryStep),
}

/// Where a run with a memory budget is, as the binary's allocator needs to know it:
/// memory it keeps for reuse counts in the peak, and what a step frees the next may
/// use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryStep {
    /// The records are read; the head of the plan is made next, all at once.
    Planning,
    /// The head is planned; the process's memory is measured next, then the ranges
    /// are planned and carried out one after the other.
    Ranges,
}

impl MemoryBudget {
    /// A budget of `bytes`, measured against what the system counts as this process's
    /// resident memory.
    pub fn new(bytes: u64) -> MemoryBudget {
        MemoryBudget {
            bytes,
            resident: resident_bytes,
            at: |_| {},
        }
    }

    /// The same budget, telling `at` where the run is ([`MemoryStep`]): an allocator
    /// that keeps freed memory a while gives it back before [`MemoryStep::Ranges`], so
    /// that what the run let go a moment ago is not measured as held.
    pub fn telling(self, at: fn(MemoryStep)) -> MemoryBudget {
        MemoryBudget { at, ..self }
    }

    /// The run is at `step`.
    pub(crate) fn reached(&self, step: MemoryStep) {
        (self.at)(step);
    }

    /// Bytes of records read that stay on the heap once every scope is read; past
    /// them all go to a file.
    pub(crate) fn records_on_heap(&self) -> usize {
        usize::try_from(self.bytes / RECORDS_SHARE).unwrap_or(usize::MAX)
    }

    /// Bytes of records on the heap past which the records read go to a file as they
    /// come.
    pub(crate) fn records_on_heap_while_read(&self) -> usize {
        usize::try_from(self.bytes / READING_SHARE).unwrap_or(usize::MAX)
    }

    /// The same budget, measured by `resident` (tests).
    pub fn measured_by(self, resident: fn() -> Option<u64>) -> MemoryBudget {
        MemoryBudget { resident, ..self }
    }

    /// Hubs per range for a run with `hubs` hubs left to plan, whose largest scope read
    /// holds `largest` records, said in the log; `None` when the process's memory
    /// cannot be measured here.
    pub(crate) fn hubs_per_range(&self, hubs: usize, largest: usize) -> Option<usize> {
        self.reached(MemoryStep::Ranges);
        let Some(held) = (self.resident)() else {
            warn!(
                "[sync] memory_budget is left aside: this system does not tell a process \
                 how much memory it holds; set [sync] hubs_per_range instead"
            );
            return None;
        };
        let beside = beside(largest);
        let per_range = per_range(self.bytes, held, beside);
        let mib = |bytes: u64| bytes >> 20;
        let cramped = room(self.bytes, held, beside) / BYTES_PER_HUB < MIN_HUBS_PER_RANGE as u64;
        if cramped && hubs > per_range {
            warn!(
                "the memory budget of {} MiB is nearly all taken before any hub is planned \
                 ({} MiB held once the records are read and matched): ranges of {per_range} \
                 hubs, each writing every file it touches; raise [sync] memory_budget",
                mib(self.bytes),
                mib(held)
            );
        }
        match hubs <= per_range {
            _ if hubs == 0 => {}
            true => info!(
                "memory budget {} MiB, {} MiB held once matched: {hubs} hubs at once",
                mib(self.bytes),
                mib(held)
            ),
            false => info!(
                "memory budget {} MiB, {} MiB held once matched: {hubs} hubs in ranges of \
                 {per_range}",
                mib(self.bytes),
                mib(held)
            ),
        }
        Some(per_range)
    }
}

/// Hubs per range that fit in what `budget` leaves once `held` and `beside` are taken.
fn per_range(budget: u64, held: u64, beside: u64) -> usize {
    usize::try_from(room(budget, held, beside) / BYTES_PER_HUB)
        .unwrap_or(usize::MAX)
        .max(MIN_HUBS_PER_RANGE)
}

/// What `budget` leaves for the hubs once `held` and what is held `beside` them are
/// taken.
fn room(budget: u64, held: u64, beside: u64) -> u64 {
    budget.saturating_sub(held).saturating_sub(beside)
}

/// What is held beside the hubs when the largest scope read holds `largest` records.
fn beside(largest: usize) -> u64 {
    (largest as u64)
        .saturating_mul(BYTES_BESIDE_PER_RECORD)
        .max(BYTES_BESIDE_HUBS)
}

/// This process's resident memory, as Linux counts it (`VmRSS`); `None` elsewhere.
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn a_range_is_what_the_budget_leaves_over_what_is_held_per_hub() {
        let beside = BYTES_BESIDE_HUBS;
        assert_eq!(
            per_range(1024 * MIB, 700 * MIB, beside),
            ((324 * MIB - BYTES_BESIDE_HUBS) / BYTES_PER_HUB) as usize
        );
        assert_eq!(room(1024 * MIB, 700 * MIB, beside), 324 * MIB - beside);
        assert_eq!(room(512 * MIB, 700 * MIB, beside), 0);
        assert_eq!(room(700 * MIB + beside, 700 * MIB, beside), 0);
        // Nothing left, or less than the smallest range: the smallest range.
        assert_eq!(per_range(512 * MIB, 700 * MIB, beside), MIN_HUBS_PER_RANGE);
        assert_eq!(
            per_range(700 * MIB + 10, 700 * MIB, beside),
            MIN_HUBS_PER_RANGE
        );
        let room = u64::MAX - beside;
        assert_eq!(
            per_range(u64::MAX, 0, beside),
            (room / BYTES_PER_HUB) as usize
        );
    }

    /// Up to about a million records a scope, the files' buffers and the state's cache;
    /// beyond, what a write holds per row of the file it rewrites.
    #[test]
    fn what_is_held_beside_the_hubs_grows_with_the_largest_scope() {
        assert_eq!(beside(0), BYTES_BESIDE_HUBS);
        assert_eq!(beside(1_000_000), BYTES_BESIDE_HUBS);
        assert_eq!(beside(10_000_000), 10_000_000 * BYTES_BESIDE_PER_RECORD);
        let budget = MemoryBudget::new(7 * 1024 * MIB).measured_by(|| Some(5 * 1024 * MIB));
        let room = 2 * 1024 * MIB - 10_000_000 * BYTES_BESIDE_PER_RECORD;
        assert_eq!(
            budget.hubs_per_range(usize::MAX, 10_000_000),
            Some((room / BYTES_PER_HUB) as usize)
        );
    }

    #[test]
    fn this_process_memory_is_measured_on_linux() {
        let held = resident_bytes();
        if cfg!(target_os = "linux") {
            let held = held.expect("VmRSS in /proc/self/status");
            assert!(held > MIB && held < 64 * 1024 * MIB, "{held}");
        }
    }

    #[test]
    fn a_budget_that_cannot_be_measured_gives_no_ranges() {
        let budget = MemoryBudget::new(MIB).measured_by(|| None);
        assert_eq!(budget.hubs_per_range(1_000_000, 0), None);
        let budget = MemoryBudget::new(1024 * MIB).measured_by(|| Some(700 * MIB));
        assert_eq!(
            budget.hubs_per_range(10, 0),
            Some(per_range(1024 * MIB, 700 * MIB, BYTES_BESIDE_HUBS))
        );
    }
}
