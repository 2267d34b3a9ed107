//! The status page on `tandem run`'s listener. The run loop holds the state (and its
//! lock) for the life of the process: the page reads through a read-only connection
//! of its own (`tandem_state::open_url_read_only`, in whichever store the url names),
//! which sees every committed batch and never waits for a run, and a
//! decision is a [`ServiceCommand`] the loop carries out between runs.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::Router;
use tandem_engine::Take;
use tandem_state::StateStore;
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
    /// [`ANSWER_WITHIN`]; shorter in tests.
    answer_within: Duration,
    /// [`Shared::not_ready`].
    not_ready: Box<dyn Fn() -> Vec<String> + Send + Sync>,
}

#[async_trait]
impl Access for ServiceAccess {
    fn read(&self) -> anyhow::Result<Box<dyn StateStore>> {
        Ok(tandem_state::open_url_read_only(
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
        match tokio::time::timeout(self.answer_within, answer).await {
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

    fn not_ready(&self) -> Vec<String> {
        (self.not_ready)()
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
pub(crate) fn service_routes(config: &Config, shared: &Arc<Shared>) -> anyhow::Result<Router> {
    let health = shared.clone();
    let access = ServiceAccess {
        state_url: config.state_url.clone(),
        base_dir: config.base_dir.clone(),
        commands: shared.commands.clone(),
        answer_within: ANSWER_WITHIN,
        not_ready: Box::new(move || health.not_ready()),
    };
    let web = Web::new(Arc::new(access), kinds(config), shared.token.clone())?;
    Ok(super::routes(Arc::new(web)))
}

#[cfg(test)]
mod tests {
    use tandem_model::{Timestamp, Value};
    use tandem_state::ConflictEntry;

    use super::*;

    fn access(commands: mpsc::Sender<ServiceCommand>) -> ServiceAccess {
        ServiceAccess {
            state_url: "sqlite://state.db".into(),
            base_dir: PathBuf::from("/nonexistent"),
            commands,
            answer_within: Duration::from_millis(50),
            not_ready: Box::new(Vec::new),
        }
    }

    fn entry(id: i64) -> ConflictEntry {
        ConflictEntry {
            id,
            code: "CUST".into(),
            contact_id: "C1".into(),
            account_id: "K1".into(),
            field: "phone".into(),
            base: Value::Null,
            contact_value: Value::text("a"),
            account_value: Value::text("b"),
            opened_at: Timestamp(0),
            run_id: None,
            resolution: Some(Value::text("b")),
            closed_at: None,
        }
    }

    /// Answers the next command with `answer`, as the run loop does between runs.
    fn answer_with(
        mut receiver: mpsc::Receiver<ServiceCommand>,
        answer: fn(i64) -> Result<ConflictEntry, CommandError>,
    ) -> tokio::task::JoinHandle<Take> {
        tokio::spawn(async move {
            let ServiceCommand::ResolveConflict { id, take, reply } =
                receiver.recv().await.unwrap();
            let _ = reply.send(answer(id));
            take
        })
    }

    #[tokio::test]
    async fn a_decision_goes_to_the_run_loop_and_its_answer_comes_back() {
        let (commands, receiver) = mpsc::channel(4);
        let loop_ = answer_with(receiver, |id| Ok(entry(id)));
        let settled = access(commands).settle(3, Take::Account).await;
        assert!(matches!(settled, Ok(Settled::Recorded)), "{settled:?}");
        assert_eq!(loop_.await.unwrap(), Take::Account);

        let (commands, receiver) = mpsc::channel(4);
        let loop_ = answer_with(receiver, |id| {
            Err(CommandError::UnknownConflict(format!(
                "no open conflict {id}"
            )))
        });
        let settled = access(commands).settle(9, Take::Contact).await;
        assert!(
            matches!(settled, Err(SettleError::Unknown(9))),
            "{settled:?}"
        );
        loop_.await.unwrap();
    }

    #[tokio::test]
    async fn a_busy_loop_queues_the_decision_and_a_stopped_one_refuses_it() {
        let (commands, mut receiver) = mpsc::channel(4);
        let settled = access(commands.clone())
            .settle(3, Take::Value("x".into()))
            .await;
        assert!(matches!(settled, Ok(Settled::Queued)), "{settled:?}");
        // Still queued for the loop, which carries it out after the run.
        let ServiceCommand::ResolveConflict { id, take, .. } = receiver.try_recv().unwrap();
        assert_eq!((id, take), (3, Take::Value("x".into())));

        drop(receiver);
        let settled = access(commands).settle(3, Take::Contact).await;
        match settled {
            Err(SettleError::Failed(message)) => assert!(message.contains("stopping"), "{message}"),
            other => panic!("{other:?}"),
        }
    }
}
