//! `tandem run --worker`: several processes, on one host or on several, share one
//! PostgreSQL state. One of them holds the state's lease and runs the service loop;
//! the others stand by, each under a lease of its own (`standby <owner>`, which
//! `tandem status` lists), and try to take the state's lease every sixth of its
//! lifetime. When the holder dies its lease expires (at once when it died on this
//! host, see `tandem_state`'s lease module) and a standby takes over with the next
//! epoch: its first sync finishes what the dead one left (R18). A holder that stalled
//! past its lease (stopped, suspended, cut off) finds out before its next write, to
//! the state or to a system, and stands by again.
//!
//! One holder at a time: the engine's run reads and matches every record, so two
//! runs side by side would both act on the same unlinked records (see
//! ARCHITECTURE.md, "Workers").

use std::time::Duration;

use anyhow::{anyhow, bail};
use tandem_state::{LockMode, PgState, StateError, StateStore, StoreKind};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::config::Config;

/// Workers share the state through a database: a SQLite file is one host's.
pub(super) fn require_shared_state(config: &Config) -> anyhow::Result<()> {
    match StoreKind::of_url(&config.state_url) {
        Ok(StoreKind::Postgres) => Ok(()),
        Ok(StoreKind::Sqlite) => bail!(
            config.error_at(
                "state.url",
                "`tandem run --worker` needs a state on PostgreSQL (`postgres://...`), which \
             the workers share; a SQLite state is one process's: run `tandem run` without \
             --worker, or move the state with `tandem migrate` (docs/configuration.md)"
                    .to_owned()
            )
        ),
        Err(e) => bail!(config.error_at("state.url", e.to_string())),
    }
}

/// How often a standby worker tries to take the state.
fn retry_every(lease: Duration) -> Duration {
    lease / 6
}

/// Stands by until this worker holds the state, and returns it; `None` when a signal
/// stopped the wait.
pub(super) async fn take_over(
    config: &Config,
    stopping: &mut watch::Receiver<bool>,
) -> anyhow::Result<Option<Box<dyn StateStore>>> {
    let (url, lease) = (config.state_url.clone(), config.state_lease);
    let standby = blocking(move || PgState::standing_by(&url, lease)).await?;
    let mut holder_named = None;
    loop {
        let (url, base, lease) = (
            config.state_url.clone(),
            config.base_dir.clone(),
            config.state_lease,
        );
        let taken = blocking(move || {
            tandem_state::open_url_with_lease(&url, &base, LockMode::Exclusive, lease)
        })
        .await;
        match taken {
            Ok(state) => {
                drop(standby);
                info!("this worker holds the state {} now", state.location());
                return Ok(Some(state));
            }
            Err(StateError::Leased {
                owner, expires_at, ..
            }) => {
                if holder_named.as_ref() != Some(&owner) {
                    info!(
                        "standing by: {owner} holds the state (its lease runs to \
                         {expires_at} unless renewed); taking over when it ends"
                    );
                    holder_named = Some(owner);
                }
            }
            Err(e @ (StateError::Open { .. } | StateError::Postgres { .. })) => {
                warn!(
                    "standing by: cannot reach the state ({e}); trying again in {}",
                    humantime::format_duration(retry_every(config.state_lease))
                );
            }
            Err(e) => return Err(anyhow!(e)),
        }
        tokio::select! {
            () = tokio::time::sleep(retry_every(config.state_lease)) => {}
            _ = stopping.changed() => {}
        }
        if *stopping.borrow() {
            return Ok(None);
        }
    }
}

/// Opening a PostgreSQL state waits on the network: off the loop's threads.
async fn blocking<T: Send + 'static>(
    open: impl FnOnce() -> Result<T, StateError> + Send + 'static,
) -> Result<T, StateError> {
    tokio::task::spawn_blocking(open)
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}
