//! The state in a PostgreSQL database (`[state] url = "postgres://..."`): the same
//! tables and columns as the SQLite state's schema of the same version, with PostgreSQL's types,
//! so that a state can be copied table by table from one store to the other.
//!
//! [`StateStore`] is synchronous and is called from inside the engine's tokio runtime,
//! where blocking on a future would stall (or, on a current-thread runtime, deadlock)
//! the caller's runtime. So a [`PgState`] owns one thread of its own, with a
//! current-thread runtime and one connection: every trait call sends that thread a
//! job and waits for its answer. The thread also renews the store's lease between
//! jobs (see [`lease`]).

mod lease;
mod read;
mod schema;
mod transfer;
mod write;

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, Connection};

use crate::open::Access;
use crate::{
    ConflictEntry, Interaction, Link, LockMode, PendingCreate, PendingLink, RefusedRequest,
    RunRecord, Scope, StateBatch, StateError, StateStore,
};
use lease::Lease;

/// How long a lease lasts without renewal. The store's thread renews it every third
/// of that, so a live process keeps it through two missed renewals; a process that
/// died frees the state after at most this long.
pub const LEASE_TTL: Duration = Duration::from_secs(30);

/// The name of the lease an exclusive holder of the whole state takes.
const STATE_LEASE: &str = "state";

/// The first part of the name of a standby worker's lease: `standby <owner>`.
pub const STANDBY_LEASE: &str = "standby";

/// The first part of the name of the lease of a partition of the work, taken by the
/// worker that runs it: `partition <index>/<count>`.
pub const PARTITION_LEASE: &str = "partition ";

/// The PostgreSQL [`StateStore`].
///
/// Opened with [`LockMode::Exclusive`], it holds the lease `state` (see [`lease`])
/// until dropped; with [`LockMode::Shared`] it holds none, for commands that read.
#[derive(Debug)]
pub struct PgState {
    /// Jobs for the store's thread.
    jobs: Jobs,
    thread: Option<JoinHandle<()>>,
    /// The url with its password hidden, for messages.
    shown: String,
    /// When the leases held were last known to be this store's (see
    /// [`StateStore::confirm_lease`]).
    confirmed: Confirmed,
    ttl: Duration,
}

/// When the leases were last extended, as seen before the extension was sent: the
/// lease then lasts at least a lifetime from that instant, whatever the clocks say.
/// `None` while none is held.
type Confirmed = Arc<Mutex<Option<Instant>>>;

/// Work for the store's thread.
type Job = Box<dyn FnOnce(&mut Session) + Send>;

/// What the store's thread owns: its runtime and connection, and the leases held.
pub(crate) struct Session {
    runtime: tokio::runtime::Runtime,
    conn: PgConnection,
    options: PgConnectOptions,
    /// The connection was lost: the next job connects again first.
    lost: bool,
    /// The url with its password hidden.
    shown: String,
    /// The url as given, to scrub its password from messages.
    url: String,
    leases: Vec<Lease>,
    ttl: Duration,
    confirmed: Confirmed,
}

/// How long opening a connection may take: a server behind a firewall that drops
/// packets would otherwise keep a run waiting for minutes.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

async fn connect(options: &PgConnectOptions) -> Result<PgConnection, String> {
    match tokio::time::timeout(CONNECT_TIMEOUT, options.connect()).await {
        Ok(connected) => connected.map_err(|e| e.to_string()),
        Err(_) => Err(format!("no answer within {} s", CONNECT_TIMEOUT.as_secs())),
    }
}

/// Whether `e` means the connection is gone (the server restarted, the network
/// failed, an administrator ended the session), rather than a statement failed.
fn connection_lost(e: &sqlx::Error) -> bool {
    matches!(
        e,
        sqlx::Error::Io(_) | sqlx::Error::Protocol(_) | sqlx::Error::Tls(_)
    ) || e
        .as_database_error()
        .and_then(|d| d.code())
        // Class 57P: the server is shutting down or ended this session.
        .is_some_and(|code| code.starts_with("57P"))
}

impl Session {
    /// Runs `job` on the connection, on this thread's runtime. A job that finds the
    /// connection lost fails (whether a commit landed is unknown then), and the next
    /// job connects again: the leases are rows, not the session's, so they stay held.
    fn on<T>(
        &mut self,
        job: impl AsyncFnOnce(&mut PgConnection, &str) -> Result<T, StateError>,
    ) -> Result<T, StateError> {
        if self.lost {
            let conn =
                self.runtime
                    .block_on(connect(&self.options))
                    .map_err(|e| StateError::Open {
                        path: self.shown.clone(),
                        message: scrub(&format!("cannot connect again: {e}"), &self.url),
                    })?;
            self.conn = conn;
            self.lost = false;
        }
        let result = self.runtime.block_on(job(&mut self.conn, &self.shown));
        if let Err(StateError::Postgres { source, .. }) = &result
            && connection_lost(source)
        {
            self.lost = true;
        }
        result
    }
}

impl PgState {
    /// Opens the state in the database named by `url` (`postgres://` or
    /// `postgresql://`), creating its schema in an empty database. A database with
    /// other tables and no Tandem schema is refused with [`StateError::NotAState`] and
    /// left alone; a newer schema with [`StateError::TooNew`]. With
    /// [`LockMode::Exclusive`] it takes the state's lease, and fails with
    /// [`StateError::Leased`] while another process holds it.
    pub fn open_url(url: &str, mode: LockMode) -> Result<PgState, StateError> {
        PgState::open_url_with_ttl(url, mode, LEASE_TTL)
    }

    /// [`PgState::open_url`] with a lease lifetime other than [`LEASE_TTL`].
    pub fn open_url_with_ttl(
        url: &str,
        mode: LockMode,
        ttl: Duration,
    ) -> Result<PgState, StateError> {
        let opened = PgState::open_for(url, Access::Lock(mode), ttl)?;
        opened.ok_or_else(|| StateError::Open {
            path: redact(url),
            message: "the state's schema was not created".to_owned(),
        })
    }

    /// Opens the state for `access` ([`crate::open`]): with [`Access::Lock`] as
    /// [`PgState::open_url`] does; with [`Access::Existing`] and [`Access::ReadOnly`]
    /// without a lease and without creating anything: `None` when the database holds
    /// no state yet. [`Access::ReadOnly`] sessions refuse every write (the server's
    /// `default_transaction_read_only`).
    pub fn open_for(
        url: &str,
        access: Access,
        ttl: Duration,
    ) -> Result<Option<PgState>, StateError> {
        let shown = redact(url);
        let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
        if !matches!(scheme.as_deref(), Some("postgres" | "postgresql")) {
            return Err(StateError::UnsupportedUrl { url: shown });
        }
        let options = PgConnectOptions::from_str(url).map_err(|e| StateError::Open {
            path: shown.clone(),
            message: scrub(&e.to_string(), url),
        })?;
        // Statements are logged by the server if anyone wants them; sqlx's own log of
        // every statement would flood a first sync's output.
        let options = options.disable_statement_logging();
        // Named in `pg_stat_activity`, unless the url names it otherwise.
        let options = if url.contains("application_name=") {
            options
        } else {
            options.application_name("tandem state")
        };
        let options = match access {
            Access::ReadOnly => options.options([("default_transaction_read_only", "on")]),
            Access::Lock(_) | Access::Existing => options,
        };
        let (opened_tx, opened_rx) = mpsc::sync_channel(1);
        let (jobs, jobs_rx) = mpsc::channel::<Job>();
        let thread_shown = shown.clone();
        let url_owned = url.to_owned();
        let confirmed = Confirmed::default();
        let thread_confirmed = confirmed.clone();
        let thread = std::thread::Builder::new()
            .name("tandem-state".to_owned())
            .spawn(move || {
                let opening = Opening {
                    options: &options,
                    shown: &thread_shown,
                    url: &url_owned,
                    access,
                    ttl,
                    confirmed: thread_confirmed,
                };
                let session = match start(opening) {
                    Ok(Some(session)) => {
                        let _ = opened_tx.send(Ok(true));
                        session
                    }
                    Ok(None) => {
                        let _ = opened_tx.send(Ok(false));
                        return;
                    }
                    Err(e) => {
                        let _ = opened_tx.send(Err(e));
                        return;
                    }
                };
                serve(session, &jobs_rx);
            })
            .map_err(|e| StateError::Open {
                path: shown.clone(),
                message: format!("cannot start the state's thread: {e}"),
            })?;
        let opened = opened_rx.recv().unwrap_or_else(|_| {
            Err(StateError::Open {
                path: shown.clone(),
                message: "the state's thread stopped while opening it".to_owned(),
            })
        });
        match opened {
            Ok(true) => Ok(Some(PgState {
                jobs: Jobs {
                    sender: Arc::new(Mutex::new(Some(jobs))),
                    shown: shown.clone(),
                },
                thread: Some(thread),
                shown,
                confirmed,
                ttl,
            })),
            Ok(false) => {
                let _ = thread.join();
                Ok(None)
            }
            Err(e) => {
                let _ = thread.join();
                Err(e)
            }
        }
    }

    /// A worker waiting to take the state over (`tandem run --worker`): a store that
    /// holds no lock but a lease of its own, `standby <owner>`, renewed as any lease is,
    /// so that `tandem status` lists the workers standing by. Creates the state's schema
    /// when the database has none (the first worker may be the first to start).
    pub fn standing_by(url: &str, ttl: Duration) -> Result<PgState, StateError> {
        let state = PgState::open_url_with_ttl(url, LockMode::Shared, ttl)?;
        state.run(|s| {
            let owner = lease::owner();
            s.hold(&format!("{STANDBY_LEASE} {owner}"), &owner)
        })?;
        Ok(state)
    }

    /// A worker's store for one partition of the work (`tandem run --worker` with
    /// partitions): holds the lease `lease` (`partition <index>/<count>`), renewed
    /// and fencing every write as the state's lease does. Refused with
    /// [`StateError::Leased`] while another process runs that partition, while a
    /// process holds the whole state, or while a worker runs a partition of another
    /// count (the cut would overlap). Creates the schema in an empty database.
    pub fn open_partition(url: &str, lease: &str, ttl: Duration) -> Result<PgState, StateError> {
        let state = PgState::open_url_with_ttl(url, LockMode::Shared, ttl)?;
        let lease = lease.to_owned();
        // Dropped on a refusal, which lets the lease just taken go again.
        state.run(move |s| {
            s.hold(&lease, &lease::owner())?;
            let count = |name: &str| name.rsplit_once('/').map(|(_, count)| count.to_owned());
            let ours = count(&lease);
            s.on(async |conn, shown| {
                let overlaps = |name: &str| {
                    name == STATE_LEASE
                        || (name.starts_with(PARTITION_LEASE) && count(name) != ours)
                };
                lease::refuse_overlapping(conn, shown, overlaps).await
            })
        })?;
        Ok(state)
    }

    /// The url of the state, its password hidden.
    pub fn url(&self) -> &str {
        &self.shown
    }

    /// Runs `job` on the store's thread and waits for its answer.
    fn run<R: Send + 'static>(
        &self,
        job: impl FnOnce(&mut Session) -> Result<R, StateError> + Send + 'static,
    ) -> Result<R, StateError> {
        self.jobs.run(job)
    }
}

/// The way to the store's thread, shared with the store's lease checks
/// ([`StateStore::lease_check`]). Closed when the store is dropped, however many
/// copies are held: a copy never keeps the thread from ending.
#[derive(Debug, Clone)]
struct Jobs {
    /// `None` once the store is dropped.
    sender: Arc<Mutex<Option<mpsc::Sender<Job>>>>,
    /// The url with its password hidden, for messages.
    shown: String,
}

impl Jobs {
    /// Runs `job` on the store's thread and waits for its answer.
    fn run<R: Send + 'static>(
        &self,
        job: impl FnOnce(&mut Session) -> Result<R, StateError> + Send + 'static,
    ) -> Result<R, StateError> {
        let (reply_tx, reply_rx) = mpsc::sync_channel(1);
        self.send(Box::new(move |session| {
            let _ = reply_tx.send(job(session));
        }))?;
        reply_rx.recv().map_err(|_| self.gone())?
    }

    /// Hands `job` to the store's thread.
    fn send(&self, job: Job) -> Result<(), StateError> {
        let sender = self.sender.lock().unwrap_or_else(|e| e.into_inner());
        (sender.as_ref().ok_or_else(|| self.gone())?)
            .send(job)
            .map_err(|_| self.gone())
    }

    /// Closes the way: the thread ends once it has run the jobs sent before.
    fn close(&self) {
        drop(self.sender.lock().unwrap_or_else(|e| e.into_inner()).take());
    }

    /// The store's thread stopped (a job panicked), or the store was dropped.
    fn gone(&self) -> StateError {
        StateError::Open {
            path: self.shown.clone(),
            message: "the state's connection thread stopped; open the state again".to_owned(),
        }
    }
}

/// Whether the server need not be asked: no lease is held, or the leases were renewed
/// less than half their lifetime ago (they have at least that half left).
fn renewed_lately(confirmed: &Confirmed, ttl: Duration) -> bool {
    match *confirmed.lock().unwrap_or_else(|e| e.into_inner()) {
        None => true,
        Some(at) => at.elapsed() < ttl / 2,
    }
}

impl Drop for PgState {
    /// Closes the channel, which ends the thread after it released the lease; waits
    /// for that, so that a state dropped can be opened again at once.
    fn drop(&mut self) {
        self.jobs.close();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// What [`start`] opens, and how.
struct Opening<'a> {
    options: &'a PgConnectOptions,
    shown: &'a str,
    url: &'a str,
    access: Access,
    ttl: Duration,
    confirmed: Confirmed,
}

/// Connects, checks the schema (creating it when `access` locks), and takes the
/// lease of an exclusive lock; `None` when the database holds no state and `access`
/// creates none.
fn start(opening: Opening<'_>) -> Result<Option<Session>, StateError> {
    let Opening {
        options,
        shown,
        url,
        access,
        ttl,
        confirmed,
    } = opening;
    let open_error = |message: String| StateError::Open {
        path: shown.to_owned(),
        message: scrub(&message, url),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| open_error(format!("cannot start a runtime: {e}")))?;
    let conn = runtime
        .block_on(connect(options))
        .map_err(|e| open_error(format!("cannot connect: {e}")))?;
    let mut session = Session {
        runtime,
        conn,
        options: options.clone(),
        lost: false,
        shown: shown.to_owned(),
        url: url.to_owned(),
        leases: Vec::new(),
        ttl,
        confirmed,
    };
    let create = matches!(access, Access::Lock(_));
    if !session.on(async |conn, shown| schema::prepare(conn, shown, create).await)? {
        return Ok(None);
    }
    if access == Access::Lock(LockMode::Exclusive) {
        session.hold(STATE_LEASE, &lease::owner())?;
        // Workers running partitions write side by side: the whole state is theirs.
        let partitions = |name: &str| name.starts_with(PARTITION_LEASE);
        let refused = session
            .on(async |conn, shown| lease::refuse_overlapping(conn, shown, partitions).await);
        if let Err(e) = refused {
            let leases = std::mem::take(&mut session.leases);
            session.on(async |conn, _| lease::release(conn, &leases).await)?;
            return Err(e);
        }
    }
    Ok(Some(session))
}

impl Session {
    /// Claims the lease `name` for `owner` and holds it from now on: renewed, fenced
    /// and released with the others.
    fn hold(&mut self, name: &str, owner: &str) -> Result<(), StateError> {
        let ttl = self.ttl;
        let asked = Instant::now();
        let held =
            self.on(async |conn, shown| lease::claim(conn, shown, name, owner, ttl).await)?;
        self.leases.push(held);
        self.confirmed_at(asked);
        Ok(())
    }

    fn confirmed_at(&self, asked: Instant) {
        *self.confirmed.lock().unwrap_or_else(|e| e.into_inner()) = Some(asked);
    }

    /// Extends the leases held now, and notes when; [`StateError::LeaseLost`] when one
    /// of them was taken over.
    fn confirm(&mut self) -> Result<(), StateError> {
        if self.leases.is_empty() {
            return Ok(());
        }
        let (leases, ttl) = (self.leases.clone(), self.ttl);
        let asked = Instant::now();
        self.on(async |conn, shown| lease::fence(conn, shown, &leases, ttl).await)?;
        self.confirmed_at(asked);
        Ok(())
    }
}

/// The store's thread: runs jobs as they come, renews the leases every third of their
/// lifetime (between jobs, however many come), and releases them when the store is
/// dropped.
fn serve(mut session: Session, jobs: &mpsc::Receiver<Job>) {
    let every = session.ttl / 3;
    let mut next_renewal = Instant::now() + every;
    loop {
        let received = if session.leases.is_empty() {
            jobs.recv().map_err(|_| RecvTimeoutError::Disconnected)
        } else {
            jobs.recv_timeout(next_renewal.saturating_duration_since(Instant::now()))
        };
        match received {
            Ok(job) => job(&mut session),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        if !session.leases.is_empty() && Instant::now() >= next_renewal {
            // A lease lost here fails the next commit (its fence) and the next
            // `confirm_lease`: nothing to do now.
            let _ = session.confirm();
            next_renewal = Instant::now() + every;
        }
    }
    let leases = std::mem::take(&mut session.leases);
    let _ = session.on(async |conn, _| lease::release(conn, &leases).await);
    let Session { runtime, conn, .. } = session;
    let _ = runtime.block_on(conn.close());
}

/// The url with its password hidden: in the user part and in a `password=` parameter.
pub(crate) fn redact(url: &str) -> String {
    crate::open::redact_url(url)
}

/// `message` without the password of `url`, wherever a library repeated it.
fn scrub(message: &str, url: &str) -> String {
    let mut out = message.replace(url, &redact(url));
    for password in passwords(url) {
        if password.len() >= 3 {
            out = out.replace(&password, "***");
        }
    }
    out
}

/// The passwords written in `url`: after the user, and as a parameter.
fn passwords(url: &str) -> Vec<String> {
    let mut out = Vec::new();
    if let Some((_, rest)) = url.split_once("://") {
        let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
        if let Some(at) = authority.rfind('@')
            && let Some((_, password)) = authority[..at].split_once(':')
        {
            out.push(password.to_owned());
        }
    }
    if let Some((_, query)) = url.split_once('?') {
        for param in query.split('&') {
            if let Some((key, value)) = param.split_once('=')
                && key.eq_ignore_ascii_case("password")
            {
                out.push(value.to_owned());
            }
        }
    }
    out
}

fn pg(action: &'static str) -> impl Fn(sqlx::Error) -> StateError {
    move |source| StateError::Postgres { action, source }
}

/// Owned copies of borrowed ids, for a job that outlives the call.
fn owned(ids: &[&str]) -> Vec<String> {
    ids.iter().map(|id| (*id).to_owned()).collect()
}

impl StateStore for PgState {
    fn location(&self) -> String {
        self.shown.clone()
    }

    fn exists(&self) -> bool {
        true
    }

    /// Whether another process holds the state's lease (a sync or a service runs) or
    /// a partition's (a worker runs).
    fn writer_active(&self) -> bool {
        self.run(move |s| {
            s.on(async |conn, _| {
                let live = lease::live_leases(conn).await?;
                Ok(live
                    .iter()
                    .any(|l| l.name == STATE_LEASE || l.name.starts_with(PARTITION_LEASE)))
            })
        })
        .unwrap_or(false)
    }

    /// Answers from the last renewal while it is younger than half the lease's
    /// lifetime (the lease then has at least that half left); otherwise asks the
    /// server, which also renews it, through the store's way to its thread.
    fn lease_check(&self) -> crate::LeaseCheck {
        let (jobs, confirmed, ttl) = (self.jobs.clone(), self.confirmed.clone(), self.ttl);
        crate::LeaseCheck::new(move || match renewed_lately(&confirmed, ttl) {
            true => Ok(()),
            false => jobs.run(Session::confirm),
        })
    }

    fn leases(&self) -> Result<Vec<crate::LeaseInfo>, StateError> {
        PgState::run(self, move |s| {
            s.on(async |conn, _| lease::live_leases(conn).await)
        })
    }

    fn run(&self, id: i64) -> Result<Option<RunRecord>, StateError> {
        PgState::run(self, move |s| {
            s.on(async |conn, _| read::run(conn, id).await)
        })
    }

    fn run_interactions(
        &self,
        run_id: i64,
        limit: usize,
    ) -> Result<(Vec<Interaction>, u64), StateError> {
        PgState::run(self, move |s| {
            s.on(async |conn, _| read::run_interactions(conn, run_id, limit).await)
        })
    }

    /// Ordered by contact id, then code.
    fn links_of_contacts(&self, contact_ids: &[&str]) -> Result<Vec<Link>, StateError> {
        if contact_ids.is_empty() {
            return Ok(Vec::new());
        }
        let ids = owned(contact_ids);
        self.run(move |s| s.on(async |conn, _| read::links_of_contacts(conn, ids).await))
    }

    /// Ordered by account id.
    fn links_of_accounts(&self, code: &str, account_ids: &[&str]) -> Result<Vec<Link>, StateError> {
        if account_ids.is_empty() {
            return Ok(Vec::new());
        }
        let (code, ids) = (code.to_owned(), owned(account_ids));
        self.run(move |s| s.on(async |conn, _| read::links_of_accounts(conn, &code, ids).await))
    }

    fn links(&self, code: Option<&str>) -> Result<Vec<Link>, StateError> {
        let code = code.map(str::to_owned);
        self.run(move |s| s.on(async |conn, _| read::links(conn, code.as_deref()).await))
    }

    fn linked_ids(&self, code: &str) -> Result<(HashSet<String>, HashSet<String>), StateError> {
        let code = code.to_owned();
        self.run(move |s| s.on(async |conn, _| read::linked_ids(conn, &code).await))
    }

    fn count_links(&self, code: &str) -> Result<u64, StateError> {
        let code = code.to_owned();
        self.run(move |s| s.on(async |conn, _| read::count_links(conn, &code).await))
    }

    fn parked_links(&self) -> Result<Vec<Link>, StateError> {
        self.run(|s| s.on(async |conn, _| read::parked_links(conn).await))
    }

    fn links_with_intent(&self) -> Result<Vec<Link>, StateError> {
        self.run(|s| {
            // A partition's worker leaves the intents of runs going on to the workers
            // carrying them out; for anyone else every run but its own is over.
            let partitioned = s.leases.iter().any(|l| l.name.starts_with(PARTITION_LEASE));
            s.on(async |conn, _| read::links_with_intent(conn, partitioned).await)
        })
    }

    fn interactions(&self, contact_id: &str, limit: usize) -> Result<Vec<Interaction>, StateError> {
        let contact_id = contact_id.to_owned();
        self.run(move |s| s.on(async |conn, _| read::interactions(conn, &contact_id, limit).await))
    }

    fn conflicts(&self, open_only: bool) -> Result<Vec<ConflictEntry>, StateError> {
        self.run(move |s| s.on(async |conn, _| read::conflicts(conn, open_only).await))
    }

    fn pending_creates(&self) -> Result<Vec<PendingCreate>, StateError> {
        self.run(|s| s.on(async |conn, _| read::pending_creates(conn).await))
    }

    fn refused_requests(&self) -> Result<Vec<RefusedRequest>, StateError> {
        self.run(|s| s.on(async |conn, _| read::refused_requests(conn).await))
    }

    fn pending_links(&self) -> Result<Vec<PendingLink>, StateError> {
        self.run(|s| s.on(async |conn, _| read::pending_links(conn).await))
    }

    fn unlinked_pairs(&self, code: &str) -> Result<Vec<(String, String)>, StateError> {
        let code = code.to_owned();
        self.run(move |s| s.on(async |conn, _| read::unlinked_pairs(conn, &code).await))
    }

    fn codes_lost(&self) -> Result<Vec<(String, String)>, StateError> {
        self.run(|s| s.on(async |conn, _| read::codes_lost(conn).await))
    }

    fn contact_deleted(&self, code: &str) -> Result<HashSet<String>, StateError> {
        let code = code.to_owned();
        self.run(move |s| s.on(async |conn, _| read::contact_deleted(conn, &code).await))
    }

    fn company_of(&self, contact_id: &str) -> Result<Option<String>, StateError> {
        let contact_id = contact_id.to_owned();
        self.run(move |s| s.on(async |conn, _| read::company_of(conn, &contact_id).await))
    }

    fn holds_companies(&self) -> Result<bool, StateError> {
        self.run(move |s| s.on(async |conn, _| read::holds_companies(conn).await))
    }

    fn cursor(&self, scope: &Scope) -> Result<Option<String>, StateError> {
        let scope = scope.clone();
        self.run(move |s| s.on(async |conn, _| read::cursor(conn, &scope).await))
    }

    fn hashes_of(&self, scope: &Scope, ids: &[&str]) -> Result<HashMap<String, u64>, StateError> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let (scope, ids) = (scope.clone(), owned(ids));
        self.run(move |s| {
            s.on(async |conn, _| read::hashes_of(conn, &scope, ids, read::Hash::Content).await)
        })
    }

    fn match_keys_of(
        &self,
        scope: &Scope,
        ids: &[&str],
    ) -> Result<HashMap<String, u64>, StateError> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let (scope, ids) = (scope.clone(), owned(ids));
        self.run(move |s| {
            s.on(async |conn, _| read::hashes_of(conn, &scope, ids, read::Hash::MatchKeys).await)
        })
    }

    fn hashes(&self, scope: &Scope) -> Result<crate::StoredHashes, StateError> {
        let scope = scope.clone();
        self.run(move |s| s.on(async |conn, _| read::hashes(conn, &scope).await))
    }

    fn fingerprint(&self, scope: &Scope) -> Result<Option<String>, StateError> {
        let scope = scope.clone();
        self.run(move |s| s.on(async |conn, _| read::fingerprint(conn, &scope).await))
    }

    fn has_rechecks(&self, scope: &Scope) -> Result<bool, StateError> {
        let scope = scope.clone();
        self.run(move |s| s.on(async |conn, _| read::has_rechecks(conn, &scope).await))
    }

    fn rechecks(&self, scope: &Scope) -> Result<Vec<String>, StateError> {
        let scope = scope.clone();
        self.run(move |s| s.on(async |conn, _| read::rechecks(conn, &scope).await))
    }

    fn ambiguities(&self, code: &str) -> Result<Option<serde_json::Value>, StateError> {
        let code = code.to_owned();
        self.run(move |s| s.on(async |conn, _| read::ambiguities(conn, &code).await))
    }

    /// Applies the batch in one transaction, in the order the SQLite store does, after
    /// the lease fence: a store whose lease was taken over applies nothing.
    fn commit(&mut self, batch: StateBatch) -> Result<(), StateError> {
        if batch.is_empty() {
            return Ok(());
        }
        self.run(move |s| {
            let (leases, ttl) = (s.leases.clone(), s.ttl);
            s.on(async |conn, shown| write::commit(conn, shown, &leases, ttl, batch).await)
        })
    }

    fn unpack_intents(&mut self) -> Result<u64, StateError> {
        self.run(|s| {
            let (leases, ttl) = (s.leases.clone(), s.ttl);
            s.on(async |conn, shown| write::unpack_intents(conn, shown, &leases, ttl).await)
        })
    }

    /// Also marks every earlier run still `running` as `interrupted`, as the SQLite
    /// store does.
    fn begin_run(&mut self, mode: &str) -> Result<i64, StateError> {
        let mode = mode.to_owned();
        self.run(move |s| {
            let (leases, ttl) = (s.leases.clone(), s.ttl);
            s.on(async |conn, shown| write::begin_run(conn, shown, &leases, ttl, &mode).await)
        })
    }

    fn finish_run(
        &mut self,
        run_id: i64,
        status: &str,
        summary: &serde_json::Value,
    ) -> Result<(), StateError> {
        let (status, summary) = (status.to_owned(), summary.to_string());
        self.run(move |s| {
            let (leases, ttl) = (s.leases.clone(), s.ttl);
            s.on(async |conn, shown| {
                write::finish_run(conn, shown, &leases, ttl, run_id, &status, &summary).await
            })
        })
    }

    fn runs(&self, limit: usize) -> Result<Vec<RunRecord>, StateError> {
        self.run(move |s| s.on(async |conn, _| read::runs(conn, limit).await))
    }

    /// An open PostgreSQL state is at the one version this build knows (opening
    /// refuses any other).
    fn schema_version(&self) -> Result<i64, StateError> {
        Ok(schema::VERSION)
    }

    fn export_table(
        &self,
        table: &str,
        each: &mut dyn FnMut(Vec<crate::transfer::StoredValue>) -> Result<(), StateError>,
    ) -> Result<u64, StateError> {
        PgState::export_table(self, table, each)
    }

    fn import_rows(
        &mut self,
        table: &str,
        rows: Vec<Vec<crate::transfer::StoredValue>>,
    ) -> Result<(), StateError> {
        PgState::import_rows(self, table, rows)
    }
}

#[cfg(test)]
mod tests;
