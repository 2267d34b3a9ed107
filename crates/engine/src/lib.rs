//! The sync engine: match, merge, plan, apply (DESIGN.md section 3, "A run").
//!
//! [`plan::plan`] is the pure core; [`Engine`] does the IO around it. The engine
//! never names a concrete connector: it gets `dyn Connector`s by config name.

pub mod config;
pub mod matching;
pub mod plan;
pub mod relation;
mod run;

pub use config::{ConfigError, ConflictPolicy, ContactsConfig, InitialSide, MatchTier, RelationConfig, SyncConfig};
pub use relation::Relations;
pub use run::{Engine, EngineError, Failure, ReadStats, RunReport, record_hash};
