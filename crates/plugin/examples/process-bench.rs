//! Writing and reading N customers through the Python example connector
//! (`type = "process"`, examples/process-python) against the same through the
//! compiled-in file connector (CSV), each in batches of its own `max_batch`, as a sync
//! would. Figures in docs/BENCHMARKS.md.
//!
//! ```sh
//! cargo run --release -p tandem-plugin --example process-bench -- 100000
//! ```

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tandem_connector::{BuildContext, Connector, ConnectorFactory, WriteOp};
use tandem_connector_file::FileConnectorFactory;
use tandem_model::{EntityKind, Fields, Value};
use tandem_plugin::ProcessFactory;

fn customer(n: usize) -> Fields {
    let mut fields = Fields::new();
    fields.set("name", Value::text(format!("Customer {n} NV")));
    fields.set("address", Value::text(format!("{n} Industrieweg")));
    fields.set("city", Value::text("Gent"));
    fields.set("post_code", Value::text(format!("{}", 9000 + n % 1000)));
    fields.set("country_code", Value::text("BE"));
    fields.set("phone", Value::text(format!("+32 9 {n:07}")));
    fields.set("email", Value::text(format!("customer{n}@example.invalid")));
    fields.set("vat_registration_no", Value::text(format!("BE0{:09}", n)));
    fields.set("x_payment_terms", Value::text("30D"));
    fields
}

/// (seconds to write `n` creates, seconds to read them back, records read).
async fn measure(connector: &dyn Connector, n: usize) -> (Duration, Duration, usize) {
    let batch = connector.capabilities().max_batch.min(n);
    let started = Instant::now();
    let mut next = 0;
    while next < n {
        let end = (next + batch).min(n);
        let ops = (next..end).map(|i| WriteOp::create(customer(i))).collect();
        let outcomes = connector.write(EntityKind::Customer, ops).await.unwrap();
        assert!(outcomes.iter().all(Result::is_ok));
        next = end;
    }
    let wrote = started.elapsed();
    let started = Instant::now();
    let mut cursor = None;
    let mut read = 0;
    loop {
        let page = connector
            .read(EntityKind::Customer, cursor.as_ref())
            .await
            .unwrap();
        read += page.records.len();
        cursor = page.cursor;
        if !page.has_more {
            break;
        }
    }
    (wrote, started.elapsed(), read)
}

fn report(name: &str, (wrote, read, count): (Duration, Duration, usize), n: usize) {
    assert_eq!(count, n, "{name} read back {count} of {n}");
    let rate = |d: Duration| n as f64 / d.as_secs_f64();
    println!(
        "{name:<32} write {:>7.2} s ({:>8.0} records/s)   read {:>7.2} s ({:>8.0} records/s)",
        wrote.as_secs_f64(),
        rate(wrote),
        read.as_secs_f64(),
        rate(read)
    );
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("N, a number of records"))
        .unwrap_or(100_000);
    let dir = tempfile::tempdir().unwrap();
    let context = BuildContext {
        base_dir: dir.path().to_path_buf(),
    };
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/process-python/sqlite_connector.py")
        .canonicalize()
        .unwrap();
    println!(
        "{n} customers, 9 fields each; one run each, in {}",
        dir.path().display()
    );

    std::fs::create_dir_all(dir.path().join("erp")).unwrap();
    let file: Arc<dyn Connector> = FileConnectorFactory
        .build(json!({"path": "erp"}), &context)
        .unwrap();
    report(
        "file (CSV, compiled in)",
        measure(file.as_ref(), n).await,
        n,
    );

    let python: Arc<dyn Connector> = ProcessFactory
        .build(
            json!({
                "name": "erp",
                "command": ["python3", script],
                "env": {"PYTHONDONTWRITEBYTECODE": "1"},
                "settings": {"path": "erp.db", "kinds": ["customer"]},
            }),
            &context,
        )
        .unwrap();
    report(
        "process (Python, SQLite)",
        measure(python.as_ref(), n).await,
        n,
    );
}
