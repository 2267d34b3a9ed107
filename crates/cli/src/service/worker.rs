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
//! With `[state] partitions` above 1 the work is cut into that many partitions
//! (`tandem_engine::partition`): a worker takes the first partition no other runs,
//! under the lease `partition <index>/<count>`, and workers beyond the count stand
//! by. Every partition needs a worker: run at least as many as partitions.

use std::time::Duration;

use anyhow::{anyhow, bail};
use tandem_engine::Partition;
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

/// Stands by until this worker holds the state, or one partition of it with
/// `[state] partitions` above 1, and returns it; `None` when a signal stopped the wait.
pub(super) async fn take_over(
    config: &Config,
    stopping: &mut watch::Receiver<bool>,
) -> anyhow::Result<Option<(Box<dyn StateStore>, Partition)>> {
    let (url, lease) = (config.state_url.clone(), config.state_lease);
    let standby = blocking(move || PgState::standing_by(&url, lease)).await?;
    let mut holder_named = None;
    loop {
        match take(config).await {
            Ok((state, partition)) => {
                drop(standby);
                match partition.is_whole() {
                    true => info!("this worker holds the state {} now", state.location()),
                    false => info!(
                        "this worker runs {} of the state {} now",
                        partition.lease_name(),
                        state.location()
                    ),
                }
                return Ok(Some((state, partition)));
            }
            Err(StateError::Leased {
                owner, expires_at, ..
            }) => {
                if holder_named.as_ref() != Some(&owner) {
                    let what = match config.state_partitions {
                        1 => "the state".to_owned(),
                        n => format!("the last of the {n} partitions"),
                    };
                    info!(
                        "standing by: {owner} holds {what} (its lease runs to \
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

/// One try: the whole state, or the first partition no worker runs. The refusal of
/// the last partition tried when every one is run.
async fn take(config: &Config) -> Result<(Box<dyn StateStore>, Partition), StateError> {
    let (url, base, lease) = (
        config.state_url.clone(),
        config.base_dir.clone(),
        config.state_lease,
    );
    let count = config.state_partitions;
    if count <= 1 {
        let state = blocking(move || {
            tandem_state::open_url_with_lease(&url, &base, LockMode::Exclusive, lease)
        })
        .await?;
        return Ok((state, Partition::whole()));
    }
    let mut refused = None;
    for index in 0..count {
        let partition = Partition::new(index, count).expect("index below count");
        let (url, name) = (url.clone(), partition.lease_name());
        match blocking(move || PgState::open_partition(&url, &name, lease)).await {
            Ok(state) => return Ok((Box::new(state), partition)),
            Err(e @ StateError::Leased { .. }) => refused = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(refused.expect("at least two partitions tried"))
}

/// Opening a PostgreSQL state waits on the network: off the loop's threads.
async fn blocking<T: Send + 'static>(
    open: impl FnOnce() -> Result<T, StateError> + Send + 'static,
) -> Result<T, StateError> {
    tokio::task::spawn_blocking(open)
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}
