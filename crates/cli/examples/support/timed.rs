//! The benchmarks' shared connector wrapper: time spent in a connector's calls and the
//! records it wrote, so a figure can say what the system took and what Tandem did.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use std::collections::HashMap;
use std::path::Path;

use tandem_connector::{
    Capabilities, Connector, ConnectorError, Cursor, Page, WriteOp, WriteOutcome,
};
use tandem_engine::{Engine, Relations, SyncConfig};
use tandem_model::{EntityKind, Record};
use tandem_state::{LockMode, SqliteState};

/// A connector that adds up the time spent in another's calls.
pub struct Timed {
    pub inner: Arc<dyn Connector>,
    pub nanos: AtomicU64,
    pub writes: AtomicU64,
}

impl std::fmt::Debug for Timed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Timed")
    }
}

impl Timed {
    /// `inner`, timed from now on.
    pub fn around(inner: Arc<dyn Connector>) -> Arc<Timed> {
        Arc::new(Timed {
            inner,
            nanos: AtomicU64::new(0),
            writes: AtomicU64::new(0),
        })
    }

    fn add(&self, started: Instant) {
        self.nanos
            .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
    }

    pub fn spent(&self) -> Duration {
        Duration::from_nanos(self.nanos.load(Ordering::Relaxed))
    }
}

#[async_trait::async_trait]
impl Connector for Timed {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn check(&self) -> Result<(), ConnectorError> {
        self.inner.check().await
    }

    fn new_id(&self, kind: EntityKind) -> Option<String> {
        self.inner.new_id(kind)
    }

    async fn read(
        &self,
        kind: EntityKind,
        cursor: Option<&Cursor>,
    ) -> Result<Page, ConnectorError> {
        let started = Instant::now();
        let out = self.inner.read(kind, cursor).await;
        self.add(started);
        out
    }

    async fn read_ids(
        &self,
        kind: EntityKind,
        ids: &[&str],
    ) -> Result<Vec<Record>, ConnectorError> {
        let started = Instant::now();
        let out = self.inner.read_ids(kind, ids).await;
        self.add(started);
        out
    }

    async fn write(
        &self,
        kind: EntityKind,
        ops: Vec<WriteOp>,
    ) -> Result<Vec<WriteOutcome>, ConnectorError> {
        let started = Instant::now();
        self.writes.fetch_add(ops.len() as u64, Ordering::Relaxed);
        let out = self.inner.write(kind, ops).await;
        self.add(started);
        out
    }
}

/// What one timed sync did: its wall time, the time and record writes spent in the
/// `Timed` connector's calls, and the counts of relation `CUST`.
#[allow(dead_code, reason = "each benchmark reports the counts it needs")]
pub struct TimedSync {
    pub wall: Duration,
    pub in_connector: Duration,
    pub writes: u64,
    pub linked: u64,
    pub created: u64,
    pub updated: u64,
}

/// One sync over the state at `state_path`, as `tandem sync` runs it; any failed record
/// stops the benchmark.
pub async fn sync_timed(
    config: &SyncConfig,
    connectors: &HashMap<String, Arc<dyn Connector>>,
    timed: &Timed,
    state_path: &Path,
) -> TimedSync {
    let mut state = SqliteState::open(state_path, LockMode::Exclusive).expect("state");
    let (spent, writes) = (timed.spent(), timed.writes.load(Ordering::Relaxed));
    let started = Instant::now();
    let mut engine = Engine::new(
        Relations::from_config(config),
        connectors.clone(),
        &mut state,
    )
    .expect("engine");
    let report = engine.sync().await.expect("sync");
    let wall = started.elapsed();
    assert!(
        report.failures.is_empty(),
        "failures: {:?}",
        report.failures
    );
    let cust = report.counts.iter().find(|c| c.code == "CUST").unwrap();
    TimedSync {
        wall,
        in_connector: timed.spent() - spent,
        writes: timed.writes.load(Ordering::Relaxed) - writes,
        linked: cust.linked,
        created: cust.created,
        updated: cust.updated,
    }
}
