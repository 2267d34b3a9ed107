//! What a long-running caller (`tandem run`) asks of a run beyond a plain sync: to stop
//! at the next safe point, and to read only some connectors' scopes (a poll).

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tandem_model::EntityKind;

use crate::error::EngineError;
use crate::read::ScopeRead;
use crate::run::Engine;

/// A request to stop a run at the next safe point, shared with whoever asks (a signal
/// handler). Safe points are the boundaries between write batches: before a batch of
/// creates is written down, and between batches of updates, whose intents are stored
/// already (R18). A run stopped there ends with [`crate::EngineError::Stopped`], and the
/// next run carries out what it left, as after a crash.
#[derive(Debug, Clone, Default)]
pub struct StopFlag(Arc<AtomicBool>);

impl StopFlag {
    pub fn new() -> StopFlag {
        StopFlag::default()
    }

    /// Asks the run to stop at its next safe point.
    pub fn stop(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub fn is_stopped(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Which connectors' scopes a run reads. A scope left out is treated as unchanged
/// (as when its fingerprint is), unless the run needs one of its records or one waits
/// to be looked at again.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) enum ScopeFilter {
    #[default]
    All,
    Only(BTreeSet<String>),
}

impl ScopeFilter {
    pub(crate) fn reads(&self, connector: &str) -> bool {
        match self {
            ScopeFilter::All => true,
            ScopeFilter::Only(names) => names.contains(connector),
        }
    }
}

impl Engine<'_> {
    /// Shares `flag` with the caller: once set, the run stops at its next safe point
    /// with [`EngineError::Stopped`].
    pub fn set_stop_flag(&mut self, flag: StopFlag) {
        self.stop = flag;
    }

    /// Reads the scopes of these connectors only (`None`: all). The others count as
    /// unchanged, as when their fingerprint is, unless the run needs one of their
    /// records or one waits to be looked at again. Meant for `plan` (a poll): a sync
    /// that leaves a scope out keeps its cursor and fingerprint as they were.
    pub fn set_read_connectors(&mut self, connectors: Option<BTreeSet<String>>) {
        self.scopes = connectors.map_or(ScopeFilter::All, ScopeFilter::Only);
    }

    /// The empty read of a scope this run leaves out, if it does.
    pub(crate) fn left_out(
        &self,
        connector: &str,
        kind: EntityKind,
        wanted: &HashSet<String>,
    ) -> Result<Option<ScopeRead>, EngineError> {
        if self.scopes.reads(connector) || !wanted.is_empty() {
            return Ok(None);
        }
        let scope = self.partition.scope(connector, kind);
        if self.state.has_rechecks(&scope)? {
            return Ok(None);
        }
        let mut read = ScopeRead::empty(connector, scope, None);
        read.stats.skipped = true;
        Ok(Some(read))
    }
}
