//! The benchmarks' shared connector wrapper: time spent in a connector's calls and the
//! records it wrote, so a figure can say what the system took and what Tandem did.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tandem_connector::{
    Capabilities, Connector, ConnectorError, Cursor, Page, WriteOp, WriteOutcome,
};
use tandem_model::{EntityKind, Record};

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
    fn add(&self, started: Instant) {
        self.nanos
            .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
    }

    #[allow(dead_code, reason = "not every benchmark reports the time apart")]
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
