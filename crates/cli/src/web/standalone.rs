//! `tandem status --serve ADDR`: the status page on a listener of its own, beside
//! whatever syncs the state. It reads through a read-only connection and settles a
//! conflict by taking the state's lock for that one write, as `tandem conflicts
//! resolve` does (refused, with a message, while a sync holds it).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, anyhow};
use async_trait::async_trait;
use tandem_engine::{Relations, Take};
use tandem_state::{LockMode, SqliteState, StateError};

use super::render::Kinds;
use super::{Access, SettleError, Settled, Web};
use crate::config::Config;
use crate::{Cli, load, print_stdout, registry};

/// The state as a process of its own reaches it.
struct Direct {
    state_url: String,
    base_dir: PathBuf,
    relations: Relations,
}

#[async_trait]
impl Access for Direct {
    fn read(&self) -> anyhow::Result<SqliteState> {
        Ok(SqliteState::open_url_read_only(
            &self.state_url,
            &self.base_dir,
        )?)
    }

    async fn settle(&self, id: i64, take: Take) -> Result<Settled, SettleError> {
        let url = self.state_url.clone();
        let base_dir = self.base_dir.clone();
        let relations = self.relations.clone();
        let done = tokio::task::spawn_blocking(move || {
            let mut state = SqliteState::open_url(&url, &base_dir, LockMode::Exclusive)?;
            tandem_engine::resolve_conflict(&mut state, &relations, id, &take)
        })
        .await
        .map_err(|e| SettleError::Failed(format!("the decision was not recorded: {e}")))?;
        match done {
            Ok(_) => Ok(Settled::Recorded),
            Err(StateError::UnknownConflict { id }) => Err(SettleError::Unknown(id)),
            // A sync holding the lock says so, and when to try again.
            Err(e) => Err(SettleError::Failed(format!(
                "the decision was not recorded: {e}"
            ))),
        }
    }
}

/// The account kind of each configured code.
pub(crate) fn kinds(config: &Config) -> Kinds {
    Kinds(
        config
            .sync
            .relations
            .iter()
            .map(|(code, r)| (code.clone(), r.kind.as_str()))
            .collect(),
    )
}

/// `tandem status --serve ADDR`; runs until the process is stopped.
pub(crate) async fn serve(cli: &Cli, addr: SocketAddr) -> anyhow::Result<ExitCode> {
    if !addr.ip().is_loopback() {
        return Err(anyhow!(
            "status --serve {addr}: the status page serves loopback addresses only (127.0.0.1, \
             [::1]) and has no token here; use an SSH tunnel or a reverse proxy to reach it \
             from elsewhere"
        ));
    }
    let config = load(cli, &registry())?;
    let access = Direct {
        state_url: config.state_url.clone(),
        base_dir: config.base_dir.clone(),
        relations: Relations::from_config(&config.sync),
    };
    let web = Arc::new(Web::new(Arc::new(access), kinds(&config), None)?);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("status --serve: cannot listen on {addr}"))?;
    let bound = listener.local_addr()?;
    // The bound address, port 0 resolved: scripts and tests read it from this line.
    print_stdout(&format!("Status page on http://{bound}/\n"))?;
    let app: axum::Router = super::routes(web);
    axum::serve(listener, app)
        .await
        .context("the status page's listener failed")?;
    Ok(ExitCode::SUCCESS)
}
