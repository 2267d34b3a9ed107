//! Benchmark: the engine syncing N partners between a contacts file and a real Tryton.
//!
//! ```sh
//! eval "$(bash scripts/tryton-env)"
//! cargo run --release -p tandem-cli --example tryton-bench -- 200
//! ```
//!
//! Starts its own `trytond` on a copy of the template (`testsupport::TrytonServer`),
//! writes N company contacts asking for `CUST`, then runs three syncs in process, as
//! `tandem sync` runs them (file connector, Tryton connector, SQLite state):
//! 1. *create*: one customer per contact;
//! 2. *update*: every contact's phone and city changed, carried to its customer;
//! 3. *idle*: nothing changed.
//!
//! For each run it prints the wall time split into the time spent waiting for Tryton's
//! replies (`Client::stats`, summed over the calls) and the rest (Tandem: planning,
//! the file, the state, JSON), and the RPC calls per record created or updated in Tryton.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tandem_connector::{BuildContext, Connector, ConnectorFactory};
use tandem_connector_file::FileConnectorFactory;
use tandem_connector_tryton::testsupport::TrytonServer;
use tandem_connector_tryton::{TrytonConnector, TrytonConnectorFactory};
use tandem_engine::{ContactsConfig, Engine, RelationConfig, Relations, SyncConfig};
use tandem_state::{LockMode, SqliteState};

/// A valid Belgian VAT number, different for every `n`.
fn be_vat(n: usize) -> String {
    let base = 4_000_000 + n as u64 * 13;
    format!("BE{base:08}{:02}", 97 - base % 97)
}

fn contacts(n: usize, round: usize) -> String {
    let mut out = String::from(
        "id,contact_type,name,address,city,post_code,country_code,phone,email,\
         vat_registration_no,business_relations\n",
    );
    let city = ["Gent", "Antwerpen", "Brugge"][round % 3];
    for i in 0..n {
        out.push_str(&format!(
            "C{i:05},company,Bench Partner {i},Benchstraat {i},{city},{},BE,+32 9 {round}{:02} {:04},\
             partner{i}@bench.example,{},CUST\n",
            1000 + i,
            i % 100,
            i,
            be_vat(i)
        ));
    }
    out
}

struct Measured {
    wall: Duration,
    wait: Duration,
    calls: u64,
    writes: u64,
    created: u64,
    updated: u64,
}

async fn run(
    config: &SyncConfig,
    connectors: &HashMap<String, Arc<dyn Connector>>,
    tryton: &TrytonConnector,
    state_path: &std::path::Path,
) -> Measured {
    let mut state = SqliteState::open(state_path, LockMode::Exclusive).expect("state");
    let (calls, wait) = (tryton.client().stats.calls(), tryton.client().stats.wait());
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
    Measured {
        wall,
        wait: tryton.client().stats.wait() - wait,
        calls: tryton.client().stats.calls() - calls,
        writes: report.writes,
        created: cust.created,
        updated: cust.updated,
    }
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("N, a number of partners"))
        .unwrap_or(200);
    let server = TrytonServer::start().expect("run `eval \"$(bash scripts/tryton-env)\"` first");
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("crm")).unwrap();
    std::fs::write(dir.path().join("crm/contacts.csv"), contacts(n, 0)).unwrap();

    let context = BuildContext {
        base_dir: dir.path().to_owned(),
    };
    let tryton: Arc<TrytonConnector> =
        Arc::new(TrytonConnector::new(serde_json::from_value(server.settings()).unwrap()).unwrap());
    // The factory is what `tandem` uses; built here only to check the settings agree.
    TrytonConnectorFactory
        .build(server.settings(), &context)
        .unwrap();
    let mut connectors: HashMap<String, Arc<dyn Connector>> = HashMap::new();
    connectors.insert(
        "crm".into(),
        FileConnectorFactory
            .build(json!({"path": "crm"}), &context)
            .unwrap(),
    );
    connectors.insert("erp".into(), tryton.clone());
    let relation: RelationConfig = serde_json::from_value(json!({
        "kind": "customer",
        "connector": "erp",
        "match": [["vat_registration_no"]],
        "fields": ["name", "address", "city", "post_code", "country_code", "phone", "email",
                   "vat_registration_no"],
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
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    let create = rt.block_on(run(&config, &connectors, &tryton, &state_path));
    assert_eq!(create.created, n as u64, "every contact got a customer");
    std::fs::write(dir.path().join("crm/contacts.csv"), contacts(n, 1)).unwrap();
    let update = rt.block_on(run(&config, &connectors, &tryton, &state_path));
    assert_eq!(update.updated, n as u64, "every customer was updated");
    let idle = rt.block_on(run(&config, &connectors, &tryton, &state_path));
    assert_eq!(idle.writes, 0, "nothing left to write");

    println!("N = {n} partners, trytond on 127.0.0.1 (SQLite), batch_size 100");
    println!(
        "{:<8} {:>7} {:>9} {:>12} {:>12} {:>9} {:>16}",
        "run", "records", "total s", "Tryton s", "Tandem s", "RPC calls", "calls per record"
    );
    for (name, m) in [("create", &create), ("update", &update), ("idle", &idle)] {
        // Records created or updated in Tryton (the contacts are written to the file).
        let records = m.created + m.updated;
        let per = if records == 0 {
            "-".to_owned()
        } else {
            format!("{:.3}", m.calls as f64 / records as f64)
        };
        let tandem = m.wall.saturating_sub(m.wait);
        println!(
            "{:<8} {:>7} {:>9.2} {:>7.2} ({:>2.0}%) {:>7.2} ({:>2.0}%) {:>9} {:>16}",
            name,
            m.created + m.updated,
            m.wall.as_secs_f64(),
            m.wait.as_secs_f64(),
            100.0 * m.wait.as_secs_f64() / m.wall.as_secs_f64(),
            tandem.as_secs_f64(),
            100.0 * tandem.as_secs_f64() / m.wall.as_secs_f64(),
            m.calls,
            per
        );
    }
}
