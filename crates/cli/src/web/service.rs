//! The status page on `tandem run`'s listener. The run loop holds the state (and its
//! lock) for the life of the process: the page reads through a read-only connection
//! of its own, which sees every committed batch (WAL) and never waits for a run, and a
//! decision is a [`ServiceCommand`] the loop carries out between runs.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::Router;
use tandem_engine::Take;
use tandem_state::SqliteState;
use tokio::sync::{mpsc, oneshot};

use super::render::Kinds;
use super::{Access, SettleError, Settled, Web};
use crate::config::Config;
use crate::service::{CommandError, ServiceCommand, Shared};

/// How long a click waits for the loop to record the decision before the page says it
/// is queued (the loop takes commands between runs; a large run takes minutes).
const ANSWER_WITHIN: Duration = Duration::from_secs(5);

struct ServiceAccess {
    state_url: String,
    base_dir: PathBuf,
    commands: mpsc::Sender<ServiceCommand>,
}

#[async_trait]
impl Access for ServiceAccess {
    fn read(&self) -> anyhow::Result<SqliteState> {
        Ok(SqliteState::open_url_read_only(
            &self.state_url,
            &self.base_dir,
        )?)
    }

    async fn settle(&self, id: i64, take: Take) -> Result<Settled, SettleError> {
        let (reply, answer) = oneshot::channel();
        let command = ServiceCommand::ResolveConflict { id, take, reply };
        self.commands.try_send(command).map_err(|e| {
            SettleError::Failed(match e {
                mpsc::error::TrySendError::Full(_) => {
                    "the service has many decisions waiting for the run in flight; settle \
                     again when it ends"
                        .to_owned()
                }
                mpsc::error::TrySendError::Closed(_) => {
                    "the service is stopping; the decision was not recorded".to_owned()
                }
            })
        })?;
        match tokio::time::timeout(ANSWER_WITHIN, answer).await {
            Ok(Ok(Ok(_))) => Ok(Settled::Recorded),
            Ok(Ok(Err(CommandError::UnknownConflict(_)))) => Err(SettleError::Unknown(id)),
            Ok(Ok(Err(CommandError::Failed(message)))) => Err(SettleError::Failed(message)),
            Ok(Err(_)) => Err(SettleError::Failed(
                "the service stopped before recording the decision; settle again once it runs"
                    .to_owned(),
            )),
            // The command stays in the loop's queue and is carried out after the run.
            Err(_) => Ok(Settled::Queued),
        }
    }
}

/// The account kind of each configured code.
fn kinds(config: &Config) -> Kinds {
    Kinds(
        config
            .sync
            .relations
            .iter()
            .map(|(code, r)| (code.clone(), r.kind.as_str()))
            .collect(),
    )
}

/// The status page's routes for the service's listener, guarded by `[service] token`.
pub(crate) fn service_routes(config: &Config, shared: &Shared) -> anyhow::Result<Router> {
    let access = ServiceAccess {
        state_url: config.state_url.clone(),
        base_dir: config.base_dir.clone(),
        commands: shared.commands.clone(),
    };
    let web = Web::new(Arc::new(access), kinds(config), shared.token.clone())?;
    Ok(super::routes(Arc::new(web)))
}
