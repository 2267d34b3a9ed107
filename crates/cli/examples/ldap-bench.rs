//! Benchmark: the first sync of N company entries in a real OpenLDAP directory with N
//! customers in a file, as `tandem sync` runs it (LDAP connector, file connector,
//! SQLite state), then an incremental run after M entries changed in the directory.
//!
//! ```sh
//! eval "$(bash scripts/ldap-env)"
//! cargo run --release -p tandem-cli --example ldap-bench -- 10000 100
//! ```
//!
//! The N entries are loaded with `ldapadd` before the first sync (adding them through
//! the connector is not what is measured). Of the N customers, half match an entry by
//! e-mail, a quarter by name and post code, and a quarter have no entry: the first sync
//! links three quarters (each entry gets `CUST` in its businessCategory, R9: a modify)
//! and adds an entry for the rest. Then M entries get a new phone number behind
//! Tandem's back (one `ldapmodify`), and the second sync reads the changes through the
//! RFC 4533 cookie and carries them to the file. It prints the wall time of each sync,
//! the time spent in the LDAP connector's calls, and the entry writes. It also times a
//! full content-synchronisation read of the directory and a paged listing of it.

#[path = "support/timed.rs"]
mod timed;

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tandem_connector::{BuildContext, Connector, ConnectorFactory};
use tandem_connector_file::FileConnectorFactory;
use tandem_connector_ldap::LdapConnector;
use tandem_connector_ldap::testsupport::{BASE_DN, Slapd};
use tandem_engine::{ContactsConfig, RelationConfig, SyncConfig};
use tandem_model::EntityKind;
use timed::Timed;

/// Entry `i` as a company (organization) in LDIF.
fn entry(i: usize) -> String {
    format!(
        "dn: o=Bench Partner {i},{BASE_DN}\nobjectClass: organization\nobjectClass: extensibleObject\n\
         o: Bench Partner {i}\nstreet: Benchstraat {i}\nl: Gent\npostalCode: {}\nc: BE\n\
         telephoneNumber: +32 9 {:03} {:04}\nmail: partner{i}@bench.example\n\n",
        1000 + i,
        i % 1000,
        i
    )
}

/// The customers: half matching by e-mail, a quarter by name and post code, a quarter
/// without an entry.
fn customers(n: usize) -> String {
    let mut out = String::from("id,name,address,city,post_code,country_code,phone,email\n");
    for i in 0..n {
        let (name, post_code, email) = match i % 4 {
            0 | 1 => (
                format!("Customer {i}"),
                5000 + i,
                format!("partner{i}@bench.example"),
            ),
            2 => (format!("Bench Partner {i}"), 1000 + i, String::new()),
            _ => (format!("New Customer {i}"), 7000 + i, String::new()),
        };
        out.push_str(&format!(
            "K{i:05},{name},Klantenlaan {i},Gent,{post_code},BE,,{email}\n"
        ));
    }
    out
}

struct Measured {
    wall: Duration,
    ldap: Duration,
    entry_writes: u64,
    linked: u64,
    created: u64,
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
        ldap: s.in_connector,
        entry_writes: s.writes,
        linked: s.linked,
        created: s.created,
        updated: s.updated,
    }
}

fn ldif_file(dir: &std::path::Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    let mut f = std::fs::File::create(&path).expect("an LDIF file");
    f.write_all(text.as_bytes()).expect("written");
    path
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().map(|a| a.parse().expect("N")).unwrap_or(10_000);
    let m: usize = args.next().map(|a| a.parse().expect("M")).unwrap_or(100);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let server = Slapd::start().expect("run `eval \"$(bash scripts/ldap-env)\"` first");
    let dir = tempfile::tempdir().unwrap();
    let entries: String = (0..n).map(entry).collect();
    let started = Instant::now();
    server
        .ldapadd(&ldif_file(dir.path(), "entries.ldif", &entries))
        .expect("ldapadd");
    let load = started.elapsed();

    // Reads alone: one content synchronisation from scratch, one paged listing.
    let reader = LdapConnector::from_settings(server.settings()).unwrap();
    let started = Instant::now();
    let page = rt.block_on(reader.read(EntityKind::Contact, None)).unwrap();
    let sync_read = started.elapsed();
    assert_eq!(page.records.len(), n);
    let mut paged_settings = server.settings();
    paged_settings["sync"] = json!("paged");
    let paged = LdapConnector::from_settings(paged_settings).unwrap();
    let started = Instant::now();
    let page = rt.block_on(paged.read(EntityKind::Contact, None)).unwrap();
    let paged_read = started.elapsed();
    assert_eq!(page.records.len(), n);

    std::fs::create_dir_all(dir.path().join("erp")).unwrap();
    std::fs::write(dir.path().join("erp/customers.csv"), customers(n)).unwrap();
    let context = BuildContext {
        base_dir: dir.path().to_owned(),
    };
    let timed = Timed::around(Arc::new(
        LdapConnector::from_settings(server.settings()).unwrap(),
    ));
    let mut connectors: HashMap<String, Arc<dyn Connector>> = HashMap::new();
    connectors.insert("directory".into(), timed.clone());
    connectors.insert(
        "erp".into(),
        FileConnectorFactory
            .build(json!({"path": "erp"}), &context)
            .unwrap(),
    );
    let relation: RelationConfig = serde_json::from_value(json!({
        "kind": "customer",
        "connector": "erp",
        "create_contacts": true,
        "match": [["email"], ["name", "post_code"]],
        "fields": ["name", "address", "city", "post_code", "country_code", "phone", "email"],
    }))
    .unwrap();
    let config = SyncConfig::new(
        ContactsConfig {
            connector: "directory".into(),
            preserve: None,
        },
        BTreeMap::from([("CUST".to_owned(), relation)]),
    )
    .unwrap();
    let state_path = dir.path().join("state.db");
    let first = rt.block_on(run(&config, &connectors, &timed, &state_path));

    // M entries change behind Tandem's back.
    let changes: String = (0..m)
        .map(|i| {
            format!(
                "dn: o=Bench Partner {i},{BASE_DN}\nchangetype: modify\nreplace: telephoneNumber\ntelephoneNumber: +32 9 777 {i:04}\n\n"
            )
        })
        .collect();
    let path = ldif_file(dir.path(), "changes.ldif", &changes);
    let out = std::process::Command::new("ldapmodify")
        .args([
            "-x",
            "-H",
            &server.url(),
            "-D",
            tandem_connector_ldap::testsupport::ADMIN_DN,
            "-w",
            tandem_connector_ldap::testsupport::ADMIN_PASSWORD,
            "-f",
        ])
        .arg(&path)
        .output()
        .expect("ldapmodify");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let second = rt.block_on(run(&config, &connectors, &timed, &state_path));
    assert_eq!(second.entry_writes, 0, "nothing to write to the directory");

    println!(
        "N = {n} entries x {n} customers, slapd (mdb, syncprov) on 127.0.0.1; M = {m} changed"
    );
    println!(
        "ldapadd of the N entries: {:.1} s; content sync read of N: {:.2} s; paged listing of N: {:.2} s",
        load.as_secs_f64(),
        sync_read.as_secs_f64(),
        paged_read.as_secs_f64()
    );
    println!(
        "{:<12} {:>8} {:>7} {:>7} {:>8} {:>8} {:>13}",
        "sync", "wall s", "LDAP s", "linked", "created", "updated", "entry writes"
    );
    for (name, r) in [("first", &first), ("incremental", &second)] {
        println!(
            "{:<12} {:>8.1} {:>7.1} {:>7} {:>8} {:>8} {:>13}",
            name,
            r.wall.as_secs_f64(),
            r.ldap.as_secs_f64(),
            r.linked,
            r.created,
            r.updated,
            r.entry_writes
        );
    }
}
