//! A plugin whose connector panics in `check`, `read` and `write` (after logging a
//! warning), or already in its factory with `settings = { panic_in_build = true }`.
//! Its capabilities are fine, so the host can build it.
//!
//! With `settings = { slow_check_ms = N }`, `check` instead blocks its thread for N
//! milliseconds and succeeds: a plugin call that takes a while.

use std::sync::Arc;

use serde::Deserialize;
use tandem_connector::{
    BuildContext, Capabilities, Connector, ConnectorError, ConnectorFactory, Cursor, Page, WriteOp,
    WriteOutcome, parse_settings,
};
use tandem_model::EntityKind;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default)]
    panic_in_build: bool,
    #[serde(default)]
    slow_check_ms: Option<u64>,
}

#[derive(Debug, Default)]
pub struct PanickingFactory;

impl ConnectorFactory for PanickingFactory {
    fn type_name(&self) -> &'static str {
        "panicking"
    }

    fn build(
        &self,
        settings: serde_json::Value,
        _context: &BuildContext,
    ) -> Result<Arc<dyn Connector>, ConnectorError> {
        let settings: Settings = parse_settings(settings)?;
        tracing::info!(
            panic_in_build = settings.panic_in_build,
            "building the panicking connector"
        );
        if settings.panic_in_build {
            panic!("boom in build");
        }
        Ok(Arc::new(Panicking {
            slow_check_ms: settings.slow_check_ms,
        }))
    }
}

#[derive(Debug)]
struct Panicking {
    slow_check_ms: Option<u64>,
}

#[async_trait::async_trait]
impl Connector for Panicking {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            kinds: vec![EntityKind::Customer],
            incremental: false,
            write: true,
            delete: false,
            max_batch: 10,
        }
    }

    async fn check(&self) -> Result<(), ConnectorError> {
        if let Some(ms) = self.slow_check_ms {
            std::thread::sleep(std::time::Duration::from_millis(ms));
            return Ok(());
        }
        tracing::warn!(call = "check", "about to panic");
        panic!("boom in check");
    }

    async fn read(&self, _: EntityKind, _: Option<&Cursor>) -> Result<Page, ConnectorError> {
        tracing::warn!(call = "read", "about to panic");
        panic!("boom in read");
    }

    async fn write(
        &self,
        _: EntityKind,
        _: Vec<WriteOp>,
    ) -> Result<Vec<WriteOutcome>, ConnectorError> {
        tracing::warn!(call = "write", "about to panic");
        panic!("boom in write");
    }
}

tandem_plugin::export_connector!(PanickingFactory);
