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

pub use budget::MemoryBudget;
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
