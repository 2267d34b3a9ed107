//! Progress of a run, for people watching it: `tracing` events at trace level under
//! the target [`TARGET`], which a front end turns into progress bars (`tandem sync` on
//! a terminal) and which a log filter leaves out otherwise.
//!
//! Every event has a `phase` (`read`, `plan`, `apply`) and a `step` (`start`,
//! `progress`, `end`); counts are `done` and `total`, where a `total` of 0 means
//! unknown. Read events name the `connector` and `kind`. Events come once per page
//! read and once per batch written, so they cost nothing next to the work they count.

use std::sync::atomic::{AtomicU64, Ordering};

use tandem_model::EntityKind;
use tracing::trace;

/// The target of every progress event.
pub const TARGET: &str = "tandem_progress";

/// A scope's reading began; `expected` is the number of records the state knows of
/// it when the listing is a full one (0: not known).
pub(crate) fn read_start(connector: &str, kind: EntityKind, expected: u64) {
    trace!(target: TARGET, phase = "read", step = "start", connector, kind = kind.plural(), total = expected);
}

/// Records of a scope read so far.
pub(crate) fn read_progress(connector: &str, kind: EntityKind, done: u64, expected: u64) {
    trace!(target: TARGET, phase = "read", step = "progress", connector, kind = kind.plural(), done, total = expected);
}

/// A scope was read: `done` records in all.
pub(crate) fn read_end(connector: &str, kind: EntityKind, done: u64) {
    trace!(target: TARGET, phase = "read", step = "end", connector, kind = kind.plural(), done);
}

/// Matching and planning began (after the first pass of reads).
pub(crate) fn plan_start() {
    trace!(target: TARGET, phase = "plan", step = "start");
}

/// The plan is made: `writes` records to write.
pub(crate) fn plan_end(writes: u64) {
    trace!(target: TARGET, phase = "plan", step = "end", total = writes);
}

/// Writes sent so far, of `total` planned, and the step of the apply under way.
pub(crate) fn apply_progress(done: u64, total: u64, step: &'static str) {
    trace!(target: TARGET, phase = "apply", step = "progress", done, total, at = step);
}

/// The run is applied.
pub(crate) fn apply_end(done: u64, total: u64) {
    trace!(target: TARGET, phase = "apply", step = "end", done, total);
}

/// Writes of a run that were sent (whatever their outcome), for the progress events.
#[derive(Debug, Default)]
pub(crate) struct Applying {
    /// Counted through a shared reference, as `done`: a range is planned while the
    /// range before is sent.
    total: AtomicU64,
    /// Counted through a shared reference: the contact and account updates may be
    /// sent side by side.
    done: AtomicU64,
}

impl Applying {
    pub(crate) fn new(total: u64) -> Applying {
        apply_progress(0, total, "start");
        Applying {
            total: total.into(),
            done: 0.into(),
        }
    }

    /// `n` more writes were sent, in the step `at`.
    pub(crate) fn advance(&self, n: usize, at: &'static str) {
        let n = n as u64;
        let done = self.done.fetch_add(n, Ordering::Relaxed) + n;
        apply_progress(done, self.total(), at);
    }

    /// `n` more writes are planned.
    pub(crate) fn plan_more(&self, n: u64) {
        self.total.fetch_add(n, Ordering::Relaxed);
    }

    /// The writes planned so far.
    pub(crate) fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// The writes sent so far.
    pub(crate) fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }
}
