//! What stops a run as a whole.

use tandem_connector::ConnectorError;
use tandem_model::EntityKind;
use tandem_state::StateError;

/// Everything that stops a run as a whole. Record-level failures do not: they are
/// counted and reported in the [`RunReport`](crate::RunReport) (R17).
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("connector `{connector}` is not configured (named by {by})")]
    UnknownConnector { connector: String, by: String },
    #[error("connector `{connector}` does not hold {kind}s (needed by {by})")]
    KindNotHeld {
        connector: String,
        kind: EntityKind,
        by: String,
    },
    #[error("reading {kind}s from connector `{connector}` failed: {source}")]
    Read {
        connector: String,
        kind: EntityKind,
        #[source]
        source: ConnectorError,
    },
    /// A completed full listing that would delete more of a scope's known records than
    /// the guard lets through, or all of them (R16); nothing was written.
    #[error(
        "a full listing would delete {deleted} of {known} known {} ({percent} %) from connector \
         `{connector}`{}; nothing was written. If these records really were deleted, run again \
         with --allow-deletes; the limit is [sync] max_delete_share (now {max_share})",
        kind.plural(),
        if *empty { " (it listed none at all: is the source missing, empty or misnamed?)" } else { "" },
        percent = deleted * 100 / (*known).max(1),
    )]
    TooManyDeletes {
        connector: String,
        kind: EntityKind,
        /// Known records absent from the listing.
        deleted: u64,
        /// Records of the scope the state knows (stored hashes).
        known: u64,
        /// The listing held no records at all.
        empty: bool,
        /// The configured limit, a share of `known`.
        max_share: f64,
    },
    /// An operator request (`link`, `create`, `unlink`, ...) that cannot be done;
    /// nothing was written.
    #[error("{0}")]
    Refused(String),
    /// The caller asked the run to stop (`StopFlag`), and it stopped at a safe point:
    /// what it wrote is stored, with the intents of what it did not (R18).
    #[error("stopped on request before the run was complete; the next run carries on")]
    Stopped,
    #[error(transparent)]
    State(#[from] StateError),
    /// The records past the memory budget could not go to their file.
    #[error(
        "cannot keep the records read past [sync] memory_budget in folder {folder}: {source}; \
         give Tandem a folder it may write to with room for them ([sync] spill_folder, on a \
         disk, not in memory), or run without a memory budget"
    )]
    Spill {
        folder: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl EngineError {
    /// What stops a run whose records could not go to a file in `folder`.
    pub(crate) fn spill(folder: &std::path::Path) -> impl Fn(std::io::Error) -> EngineError + '_ {
        move |source| EngineError::Spill {
            folder: folder.to_owned(),
            source,
        }
    }
}
