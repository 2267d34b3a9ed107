//! `tandem run`: Tandem as a long-running service.
//!
//! One loop owns the state (held with the exclusive lock for the life of the
//! process) and the connectors, and does one thing at a time, so runs never overlap:
//! a *poll* of the connectors that are due (a plan limited to their scopes: it reads
//! with the stored cursors and writes nothing, so a quiet poll leaves no trace in the
//! state), a *sync* of everything as soon as a poll found a change, and a *full read*
//! on its own longer schedule ([`schedule`]). Operator commands from the HTTP listener
//! ([`http`]) reach the loop as [`ServiceCommand`]s and are carried out between runs.
//! Signals ([`signals`]) end the loop after the run in flight, or stop that run at a
//! safe point; the process then exits 0.

pub(crate) mod config;
mod http;
mod metrics;
mod quiet;
mod schedule;
mod signals;
mod worker;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, anyhow};
use secrecy::SecretString;
use tandem_connector::Connector;
use tandem_engine::{Engine, EngineError, Partition, Relations, RunReport, StopFlag, Take};
use tandem_state::{ConflictEntry, LockMode, StateError, StateStore};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::instrument::WithSubscriber;
use tracing::{debug, error, info, warn};

use self::metrics::{Metrics, Outcome};
use self::schedule::{Next, Schedule};
use crate::config::Config;
use crate::{Cli, build_connectors, load, open_state, registry};

pub use self::http::router;

/// A request the loop carries out between runs (it holds the state).
#[derive(Debug)]
pub enum ServiceCommand {
    /// `tandem conflicts resolve`: settles an open conflict; the next sync writes it.
    ResolveConflict {
        id: i64,
        take: Take,
        reply: oneshot::Sender<Result<ConflictEntry, CommandError>>,
    },
}

#[derive(Debug)]
pub enum CommandError {
    UnknownConflict(String),
    Failed(String),
}

/// What the loop shares with the listener.
#[derive(Debug)]
pub struct Shared {
    pub metrics: Arc<Metrics>,
    pub token: Option<SecretString>,
    pub commands: mpsc::Sender<ServiceCommand>,
    /// Per connector: `None` when its last check, poll or sync read passed, else why
    /// not.
    health: Mutex<BTreeMap<String, Option<String>>>,
}

impl Shared {
    /// Why the service is not ready (empty: ready): every connector's last check or
    /// poll must have passed. Names only: errors go to the log.
    pub fn not_ready(&self) -> Vec<String> {
        let health = self.health.lock().unwrap_or_else(|e| e.into_inner());
        (health.iter())
            .filter(|(_, failed)| failed.is_some())
            .map(|(name, _)| format!("connector {name} failed its last check or poll"))
            .collect()
    }

    fn set_health(&self, connector: &str, failed: Option<String>) {
        let mut health = self.health.lock().unwrap_or_else(|e| e.into_inner());
        health.insert(connector.to_owned(), failed);
    }
}

/// `tandem run`; with `worker`, one of several processes sharing a PostgreSQL state
/// ([`worker`]).
pub(crate) async fn run(cli: &Cli, worker: bool) -> anyhow::Result<ExitCode> {
    let registry = registry();
    let config = load(cli, &registry)?;
    if worker {
        worker::require_shared_state(&config)?;
    }
    // Held until the process ends: no sync or operator command runs beside the service.
    // A worker takes it later, when it is its turn.
    let mut state = match worker {
        false => Some(open_state(&config, LockMode::Exclusive)?),
        true => None,
    };
    let connectors = build_connectors(&config, &registry)?;
    let relations = Relations::from_config(&config.sync).with_partitions(config.state_partitions);
    let metrics = Arc::new(Metrics::new());
    observe_http(&config, &metrics);
    let (commands, mut receiver) = mpsc::channel(16);
    let shared = Arc::new(Shared {
        metrics: metrics.clone(),
        token: config.service.token.clone(),
        commands,
        health: Mutex::new(BTreeMap::new()),
    });
    let stop = StopFlag::new();
    let mut stopping = signals::listen(config.service.grace_period, stop.clone())
        .context("cannot listen for SIGTERM and SIGINT")?;
    listen(&config, &shared).await?;
    loop {
        let (mut held, partition) = match state.take() {
            Some(held) => (held, Partition::whole()),
            None => match worker::take_over(&config, &mut stopping).await? {
                Some(held) => held,
                None => break,
            },
        };
        Engine::new(relations.clone(), connectors.clone(), held.as_mut())
            .map_err(|e| anyhow!("{}: {e}", config.shown()))?;
        check_connectors(&connectors, &shared).await;
        let mut service = Service {
            verbose: cli.verbose > 0,
            config: &config,
            state: held.as_mut(),
            connectors: connectors.clone(),
            relations: relations.clone(),
            shared: shared.clone(),
            schedule: Schedule::new(
                &config.service,
                connectors.keys().map(String::as_str),
                Instant::now(),
            ),
            stop: stop.clone(),
            partition,
        };
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
        announce(&config);
        match service.serve(&mut receiver, stopping.clone()).await {
            Flow::LeaseLost(e) if worker => {
                warn!("{e}; this worker stands by again");
            }
            Flow::LeaseLost(e) => {
                return Err(anyhow!(e).context(
                    "another process took the state over while this one stalled; \
                     start `tandem run` again once it stops, or run workers (`--worker`)",
                ));
            }
            Flow::Continue | Flow::Stopped => break,
        }
    }
    info!("stopped; the state is saved");
    Ok(ExitCode::SUCCESS)
}

/// Starts the HTTP listener, when `[service] listen` asks for one.
async fn listen(config: &Config, shared: &Arc<Shared>) -> anyhow::Result<()> {
    let Some(addr) = config.service.listen else {
        return Ok(());
    };
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        anyhow!(config.error_at("service.listen", format!("cannot listen on {addr}: {e}")))
    })?;
    let app = router(shared.clone()).merge(crate::web::service_routes(config, shared)?);
    let server = axum::serve(listener, app);
    tokio::spawn(async move {
        if let Err(e) = server.await {
            error!("the HTTP listener stopped: {e}");
        }
    });
    info!("listening on http://{addr} (the status page, /healthz, /readyz, /metrics)");
    Ok(())
}

fn announce(config: &Config) {
    info!(
        "running: polls every {} (up to {} when quiet), a full read every {}; \
         SIGTERM or Ctrl-C stops",
        humantime::format_duration(config.service.poll_interval),
        humantime::format_duration(config.service.max_poll_interval),
        humantime::format_duration(config.service.full_listing_interval),
    );
}

/// Counts HTTP requests under the name of the connector whose `url` they go to.
fn observe_http(config: &Config, metrics: &Arc<Metrics>) {
    #[cfg(any(
        feature = "connector-tryton",
        feature = "connector-carddav",
        feature = "connector-business-central",
        feature = "connector-hubspot"
    ))]
    {
        use tandem_connector::http::Url;
        let origins = (config.connectors.iter())
            .filter_map(|(name, c)| {
                let url = Url::parse(c.settings.get("url")?.as_str()?).ok()?;
                let port = url.port_or_known_default()?;
                let origin = format!("{}://{}:{port}", url.scheme(), url.host_str()?);
                Some((origin, name.clone()))
            })
            .collect();
        let counter = metrics::HttpCounter {
            metrics: metrics.clone(),
            origins,
        };
        tandem_connector::http::set_request_observer(Arc::new(counter));
    }
    #[cfg(not(any(
        feature = "connector-tryton",
        feature = "connector-carddav",
        feature = "connector-business-central",
        feature = "connector-hubspot"
    )))]
    let _ = (config, metrics);
}

async fn check_connectors(connectors: &HashMap<String, Arc<dyn Connector>>, shared: &Shared) {
    for (name, connector) in connectors {
        let failed = connector.check().await.err().map(|e| e.to_string());
        if let Some(e) = &failed {
            warn!("connector {name}: check failed: {e}; polling goes on and retries it");
        }
        shared.set_health(name, failed);
    }
}

/// The loop and everything it owns.
struct Service<'a> {
    verbose: bool,
    config: &'a Config,
    state: &'a mut dyn StateStore,
    connectors: HashMap<String, Arc<dyn Connector>>,
    relations: Relations,
    shared: Arc<Shared>,
    schedule: Schedule,
    stop: StopFlag,
    /// The share of the work this loop runs (a worker's partition).
    partition: Partition,
}

/// Whether the loop goes on after a sync.
#[derive(Debug, PartialEq, Eq)]
enum Flow {
    Continue,
    Stopped,
    /// The state's lease was taken over (the process stalled past it): nothing more
    /// is written, by this loop, to the state or to any system.
    LeaseLost(String),
}

impl Service<'_> {
    /// The loop, until a signal stops it ([`Flow::Stopped`]) or the state's lease is
    /// lost ([`Flow::LeaseLost`]).
    async fn serve(
        &mut self,
        commands: &mut mpsc::Receiver<ServiceCommand>,
        mut stopping: watch::Receiver<bool>,
    ) -> Flow {
        loop {
            if *stopping.borrow() {
                return Flow::Stopped;
            }
            // A loop that was stopped while it waited finds out here, not at its next
            // sync, which may be long in coming when nothing changes.
            if let Err(e @ StateError::LeaseLost { .. }) = self.state.confirm_lease() {
                return Flow::LeaseLost(e.to_string());
            }
            while let Ok(command) = commands.try_recv() {
                self.command(command);
            }
            match self.schedule.next(Instant::now()) {
                Next::Wait(until) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(until.into()) => {}
                        Some(command) = commands.recv() => self.command(command),
                        _ = stopping.changed() => {}
                    }
                }
                Next::Poll(due) => self.poll(due).await,
                Next::Sync { full } => match self.sync(full).await {
                    Flow::Continue => {}
                    ended => return ended,
                },
            }
        }
    }

    fn engine(&mut self) -> Engine<'_> {
        let connectors = self.connectors.clone();
        let mut engine = Engine::new(self.relations.clone(), connectors, &mut *self.state)
            .expect("the connectors were checked against the relations at start");
        self.config
            .run
            .configure(&mut engine, &self.config.base_dir);
        engine.set_partition(self.partition);
        engine
    }

    /// Runs `future` with the engine's progress lines hidden, unless `-v`.
    async fn quietly<T>(verbose: bool, future: impl Future<Output = T>) -> T {
        match verbose {
            true => future.await,
            false => future.with_subscriber(quiet::Quieter::current()).await,
        }
    }

    /// A plan over the due connectors' scopes: what changed there since the cursors.
    async fn poll(&mut self, due: BTreeSet<String>) {
        let started = Instant::now();
        let verbose = self.verbose;
        let mut engine = self.engine();
        engine.set_read_connectors(Some(due.clone()));
        let result = Self::quietly(verbose, engine.plan()).await;
        drop(engine);
        let metrics = self.shared.metrics.clone();
        let changed = match result {
            Ok(report) => {
                metrics.report(&report, &self.relations, false);
                metrics.run("poll", Outcome::Ok, started.elapsed());
                due.iter()
                    .for_each(|name| self.shared.set_health(name, None));
                let changed = found_changes(&report);
                debug!(connectors = ?due, changed, "polled");
                changed
            }
            Err(e) => {
                metrics.run("poll", Outcome::Failed, started.elapsed());
                self.unhealthy(&e);
                warn!("poll of {} failed: {e}", names(&due));
                false
            }
        };
        self.schedule.polled(&due, changed, Instant::now());
        for name in &due {
            if let Some(interval) = self.schedule.interval(name) {
                metrics.poll_interval(name, interval);
            }
        }
    }

    async fn sync(&mut self, full: bool) -> Flow {
        let started = Instant::now();
        let verbose = self.verbose;
        let stop = self.stop.clone();
        let mut engine = self.engine();
        engine.set_full_read(full);
        engine.set_stop_flag(stop);
        let result = Self::quietly(verbose, engine.sync()).await;
        drop(engine);
        let mode = if full { "full" } else { "sync" };
        let metrics = self.shared.metrics.clone();
        let took = started.elapsed();
        match result {
            Ok(report) => {
                let outcome = match report.failed() > 0 || !report.failures.is_empty() {
                    true => Outcome::Partial,
                    false => Outcome::Ok,
                };
                metrics.run(mode, outcome, took);
                metrics.report(&report, &self.relations, true);
                let read = report.read.iter().filter(|r| !r.skipped);
                read.for_each(|r| self.shared.set_health(&r.connector, None));
                self.count_conflicts();
                let line = summary(&report, took);
                match did_something(&report) {
                    true => info!("{mode} run {}: {line}", report.run_id.unwrap_or_default()),
                    false => debug!(
                        "{mode} run {}: nothing to do",
                        report.run_id.unwrap_or_default()
                    ),
                }
                let status = format!("last run: {line}");
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Status(&status)]);
                self.schedule
                    .synced(full, true, report.writes > 0, Instant::now());
                Flow::Continue
            }
            Err(EngineError::Stopped) => {
                metrics.run(mode, Outcome::Stopped, took);
                info!("the run stopped at a safe point; the next run carries on from there (R18)");
                Flow::Stopped
            }
            Err(EngineError::State(e @ StateError::LeaseLost { .. })) => {
                metrics.run(mode, Outcome::Failed, took);
                Flow::LeaseLost(format!("{mode} run stopped before its next write: {e}"))
            }
            Err(e) => {
                metrics.run(mode, Outcome::Failed, took);
                self.unhealthy(&e);
                match &e {
                    EngineError::Read { .. } => warn!("{mode} run failed: {e}"),
                    _ => error!("{mode} run failed: {e}"),
                }
                self.schedule.synced(full, false, false, Instant::now());
                Flow::Continue
            }
        }
    }

    fn unhealthy(&self, e: &EngineError) {
        if let EngineError::Read { connector, .. } = e {
            self.shared.set_health(connector, Some(e.to_string()));
        }
    }

    fn count_conflicts(&self) {
        let mut per_code: BTreeMap<String, u64> = (self.relations.relations.iter())
            .map(|r| (r.code.clone(), 0))
            .collect();
        match self.state.conflicts(true) {
            Ok(open) => open
                .iter()
                .for_each(|c| *per_code.entry(c.code.clone()).or_default() += 1),
            Err(e) => warn!("cannot count the open conflicts: {e}"),
        }
        self.shared.metrics.conflicts(&per_code);
    }

    fn command(&mut self, command: ServiceCommand) {
        match command {
            ServiceCommand::ResolveConflict { id, take, reply } => {
                let result =
                    tandem_engine::resolve_conflict(&mut *self.state, &self.relations, id, &take);
                let answer = match result {
                    Ok(entry) => {
                        info!(
                            "conflict {id} ({} contact {}, field {}) settled; syncing it now",
                            entry.code, entry.contact_id, entry.field
                        );
                        self.schedule.sync_soon();
                        Ok(entry)
                    }
                    Err(e @ StateError::UnknownConflict { .. }) => {
                        Err(CommandError::UnknownConflict(e.to_string()))
                    }
                    Err(e) => Err(CommandError::Failed(format!(
                        "cannot record the decision: {e}"
                    ))),
                };
                let _ = reply.send(answer);
            }
        }
    }
}

/// Whether a poll saw anything a sync should act on.
fn found_changes(report: &RunReport) -> bool {
    report.writes > 0 || report.read.iter().any(|r| r.changed > 0 || r.deleted > 0)
}

fn did_something(report: &RunReport) -> bool {
    report.writes > 0
        || !report.failures.is_empty()
        || report
            .counts
            .iter()
            .any(|c| c.linked + c.created + c.updated + c.unlinked + c.conflicts + c.failed > 0)
}

/// `CUST 2 updated, 1 linked; VEND 1 created; 4 writes in 230 ms`.
fn summary(report: &RunReport, took: std::time::Duration) -> String {
    let mut parts = Vec::new();
    for c in &report.counts {
        let counts = [
            (c.linked, "linked"),
            (c.created, "created"),
            (c.updated, "updated"),
            (c.unlinked, "unlinked"),
            (c.conflicts, "conflicts"),
            (c.failed, "failed"),
        ];
        let said: Vec<String> = (counts.iter())
            .filter(|(n, _)| *n > 0)
            .map(|(n, what)| format!("{n} {what}"))
            .collect();
        if !said.is_empty() {
            parts.push(format!("{} {}", c.code, said.join(", ")));
        }
    }
    if parts.is_empty() {
        parts.push("no changes".to_owned());
    }
    format!(
        "{}; {} writes in {} ms",
        parts.join("; "),
        report.writes,
        took.as_millis()
    )
}

fn names(set: &BTreeSet<String>) -> String {
    set.iter().cloned().collect::<Vec<_>>().join(", ")
}
