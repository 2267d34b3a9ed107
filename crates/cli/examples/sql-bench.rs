//! Benchmark: N customers in a real PostgreSQL table with N contacts in a file, as
//! `tandem sync` runs it (SQL connector, file connector, SQLite state): the first sync,
//! an incremental run after 1 % of the rows changed, and a run with nothing changed.
//!
//! ```sh
//! eval "$(bash scripts/sql-env)"
//! cargo run --release -p tandem-cli --example sql-bench -- 10000 [triggers|updated_at|full]
//! ```
//!
//! Every contact matches its row by VAT number and carries a newer phone number: the
//! first sync reads the table (a full listing), links N pairs and writes N updates to
//! the table (batches of `batch_size`, one transaction each). Then N / 100 rows get a new
//! city behind Tandem's back, and the next sync reads only those changes (from the
//! trigger-filled change table, or by `updated_at`; `full` reads the whole table again)
//! and writes them to the file. "SQL" is the time spent in the SQL connector's calls.

#[path = "support/timed.rs"]
mod timed;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use sqlx::AssertSqlSafe;
use tandem_connector::{BuildContext, Connector, ConnectorFactory};
use tandem_connector_file::FileConnectorFactory;
use tandem_connector_sql::SqlConnector;
use tandem_connector_sql::testsupport::PostgresServer;
use tandem_engine::{ContactsConfig, RelationConfig, SyncConfig};
use timed::Timed;

fn vat(i: usize) -> String {
    format!("BE0{:09}", 400_000_000 + i)
}

fn contacts(n: usize) -> String {
    let mut out = String::from("id,contact_type,name,city,phone,vat_registration_no\n");
    for i in 0..n {
        out.push_str(&format!(
            "C{i:06},company,Customer {i},Gent,+32 9 {:03} {:04},{}\n",
            i % 1000,
            i,
            vat(i)
        ));
    }
    out
}

struct Measured {
    wall: Duration,
    sql: Duration,
    sql_writes: u64,
    linked: u64,
    updated: u64,
}

async fn run(
    config: &SyncConfig,
    connectors: &HashMap<String, Arc<dyn Connector>>,
    timed: &Timed,
    state_path: &std::path::Path,
) -> Measured {
    let s = timed::sync_timed(config, connectors, timed, state_path).await;
    Measured {
        wall: s.wall,
        sql: s.in_connector,
        sql_writes: s.writes,
        linked: s.linked,
        updated: s.updated,
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().map(|a| a.parse().expect("N")).unwrap_or(10_000);
    let mode = args.next().unwrap_or_else(|| "triggers".into());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let server = PostgresServer::start().expect("run `eval \"$(bash scripts/sql-env)\"` first");
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("crm")).unwrap();
    std::fs::write(dir.path().join("crm/contacts.csv"), contacts(n)).unwrap();
    let context = BuildContext {
        base_dir: dir.path().to_owned(),
    };
    let shop = SqlConnector::from_settings(
        json!({
            "url": server.url(),
            "kinds": {"customer": {
                "table": "customers",
                "version": "version",
                "updated_at": "updated_at",
                "changes": mode,
                "columns": {"name": "company_name", "city": "city", "phone": "phone", "vat_registration_no": "vat"}
            }}
        }),
        &context,
    )
    .unwrap();
    rt.block_on(async {
        let pool = shop.pool();
        for sql in [
            "CREATE TABLE customers (id BIGSERIAL PRIMARY KEY, company_name TEXT NOT NULL, \
             city TEXT, phone TEXT, vat TEXT, credit_limit NUMERIC(12,2) NOT NULL DEFAULT 1000, \
             version INTEGER NOT NULL DEFAULT 1, updated_at TIMESTAMPTZ NOT NULL DEFAULT now())",
            &format!(
                "INSERT INTO customers (company_name, city, phone, vat) \
                 SELECT 'Customer ' || i, 'Gent', '+32 9 000 ' || lpad(i::text, 4, '0'), \
                 'BE0' || (400000000 + i) FROM generate_series(0, {}) AS i",
                n - 1
            ),
        ] {
            sqlx::raw_sql(AssertSqlSafe(sql.to_owned()))
                .execute(pool)
                .await
                .unwrap();
        }
        if mode == "triggers" {
            shop.install_triggers().await.unwrap();
        }
    });
    let shop = Arc::new(shop);
    let timed = Timed::around(shop.clone());
    let mut connectors: HashMap<String, Arc<dyn Connector>> = HashMap::new();
    connectors.insert("shop".into(), timed.clone());
    connectors.insert(
        "crm".into(),
        FileConnectorFactory
            .build(json!({"path": "crm"}), &context)
            .unwrap(),
    );
    let relation: RelationConfig = serde_json::from_value(json!({
        "kind": "customer",
        "connector": "shop",
        "match": [["vat_registration_no"]],
        "fields": ["name", "city", "phone", "vat_registration_no"],
    }))
    .unwrap();
    let config = SyncConfig::new(
        ContactsConfig {
            connector: "crm".into(),
            preserve: None,
        },
        BTreeMap::from([("CUST".to_owned(), relation)]),
    )
    .unwrap();
    let state_path = dir.path().join("state.db");
    let first = rt.block_on(run(&config, &connectors, &timed, &state_path));
    assert_eq!(first.linked as usize, n);
    // 1 % of the rows change behind Tandem's back.
    let changed = (n / 100).max(1);
    rt.block_on(async {
        let sql = format!(
            "UPDATE customers SET city = 'Brugge', version = version + 1, updated_at = now() \
             WHERE id % 100 = 0 AND id <= {}",
            changed * 100
        );
        sqlx::raw_sql(AssertSqlSafe(sql))
            .execute(shop.pool())
            .await
            .unwrap();
    });
    let second = rt.block_on(run(&config, &connectors, &timed, &state_path));
    let third = rt.block_on(run(&config, &connectors, &timed, &state_path));
    println!("N = {n} rows x {n} contacts, PostgreSQL on 127.0.0.1, changes = \"{mode}\"");
    println!(
        "{:<12} {:>8} {:>7} {:>7} {:>8} {:>11}",
        "sync", "wall s", "SQL s", "linked", "updated", "SQL writes"
    );
    for (name, m) in [
        ("first", &first),
        (&*format!("{changed} changed"), &second),
        ("unchanged", &third),
    ] {
        println!(
            "{:<12} {:>8.2} {:>7.2} {:>7} {:>8} {:>11}",
            name,
            m.wall.as_secs_f64(),
            m.sql.as_secs_f64(),
            m.linked,
            m.updated,
            m.sql_writes
        );
    }
    drop(server);
}
