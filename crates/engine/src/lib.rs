//! The sync engine: match, merge, plan, apply (DESIGN.md section 3, "A run").
//!
//! [`plan::plan`] is the pure core; [`Engine`] does the IO around it. The engine
//! never names a concrete connector: it gets `dyn Connector`s by config name.

// No function over 80 lines (`clippy.toml` beside Cargo.toml sets the limit); the CI's
// clippy run denies warnings, so a longer one fails the build. Table-driven tests may
// be longer.
#![cfg_attr(not(test), warn(clippy::too_many_lines))]

mod apply;
pub mod budget;
pub mod config;
mod error;
pub mod failpoint;
pub mod matching;
pub mod operator;
mod overlap;
mod parallel;
pub mod partition;
mod pending;
pub mod plan;
pub mod progress;
mod read;
mod records;
pub mod relation;
mod report;
mod run;
pub mod side;
mod spill;
mod stop;

/// Maps and sets keyed by record ids, hashed with foldhash: the engine hashes millions
/// of short ids per run, and SipHash (the std default) cost several times more. The seed
/// is random per process, like std's.
pub(crate) type IdMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
pub(crate) type IdSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

/// An id borrowed from a record read, with its hash worked out once: a map or set of
/// them grows (a rehash) without reading an id again, and compares two ids' bytes only
/// when their hashes agree. Why: the records may lie in a file mapped into memory
/// (`spill.rs`), and a table that read its ids in its own order brought every page of
/// that file into memory, a whole page-cache folio (up to a MiB) per id (at ten
/// million partners, 1.5 GB beside the heap while linking; docs/BENCHMARKS.md).
#[derive(Debug, Clone, Copy)]
pub(crate) struct HashedId<'a> {
    hash: u64,
    id: &'a str,
}

impl<'a> HashedId<'a> {
    pub fn of(id: &'a str) -> HashedId<'a> {
        use std::hash::BuildHasher;
        // Fixed, so that two tables agree; the tables hash it again with their seed.
        const SEED: u64 = 0x7461_6e64_656d_6964;
        let hash = foldhash::fast::FixedState::with_seed(SEED).hash_one(id);
        HashedId { hash, id }
    }

    pub fn id(&self) -> &'a str {
        self.id
    }
}

impl std::hash::Hash for HashedId<'_> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

impl PartialEq for HashedId<'_> {
    fn eq(&self, other: &HashedId<'_>) -> bool {
        self.hash == other.hash && self.id == other.id
    }
}

impl Eq for HashedId<'_> {}

pub use budget::{MemoryBudget, MemoryStep};
pub use config::{
    ConfigError, ConflictPolicy, ContactsConfig, InitialSide, MatchNormalise, MatchTier,
    RelationConfig, SyncConfig, TemplateRule,
};
pub use error::EngineError;
pub use operator::{Resolved, RetryTarget, Take, resolve, resolve_conflict, retry};
pub use partition::Partition;
pub use pending::{Pending, PendingDone};
pub use plan::Directives;
pub use read::{DeleteGuard, record_hash};
pub use records::Records;
pub use relation::Relations;
pub use report::{Failure, ReadStats, RunMode, RunReport};
pub use run::Engine;
pub use side::{Side, Winner};
pub use stop::StopFlag;
