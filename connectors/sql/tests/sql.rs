//! The SQL connector against real databases: the conformance kit on PostgreSQL and
//! MariaDB (servers started per test, see `testsupport`) and SQLite (a file per test),
//! each with full listings and with the trigger-filled change table; reads by
//! `updated_at` with their overlap window; idempotent creates; conflicts.

use std::sync::Arc;

use serde_json::{Value as Json, json};
use sqlx::{AnyPool, AssertSqlSafe, Row};
use tandem_connector::testkit::{Options, UnknownField, check_conformance};
use tandem_connector::{BuildContext, Connector, ConnectorError, Listing, WriteOp};
use tandem_connector_sql::testsupport::{MariadbServer, PostgresServer};
use tandem_connector_sql::{Dialect, SqlConnector};
use tandem_model::{EntityKind, Fields, field};

/// Every canonical field of customers and contacts, each in a column of its own name.
const TEXT_COLUMNS: &[&str] = &[
    "name",
    "name_2",
    "address",
    "address_2",
    "city",
    "post_code",
    "county",
    "country_code",
    "phone",
    "mobile_phone",
    "fax",
    "email",
    "home_page",
    "vat_registration_no",
    "registration_no",
    "currency_code",
    "language_code",
    "salesperson_code",
    "territory_code",
];
const CONTACT_COLUMNS: &[&str] = &[
    "contact_type",
    "company_id",
    "first_name",
    "surname",
    "job_title",
    "business_relations",
];

fn create_table(d: Dialect, table: &str, contact: bool) -> String {
    let text = if d == Dialect::MySql {
        "VARCHAR(255)"
    } else {
        "TEXT"
    };
    let (id, number, time) = match d {
        Dialect::Postgres => ("id BIGSERIAL PRIMARY KEY", "NUMERIC", "TIMESTAMPTZ"),
        Dialect::MySql => (
            "id BIGINT AUTO_INCREMENT PRIMARY KEY",
            "DOUBLE",
            "DATETIME(6)",
        ),
        Dialect::Sqlite => ("id INTEGER PRIMARY KEY AUTOINCREMENT", "REAL", "TEXT"),
    };
    let mut columns = vec![id.to_owned()];
    let names = TEXT_COLUMNS
        .iter()
        .chain(if contact { CONTACT_COLUMNS } else { &[] });
    columns.extend(names.map(|c| format!("{c} {text}")));
    columns.push(format!("note {text}"));
    columns.push(format!("rating {number}"));
    columns.push("since DATE".into());
    // A column no mapping names: other applications' data, never touched.
    columns.push(format!("legacy_flag {text}"));
    columns.push("version INTEGER NOT NULL DEFAULT 1".into());
    columns.push(format!("updated_at {time}"));
    columns.push(format!("tandem_key {text} UNIQUE"));
    format!("CREATE TABLE {table} ({})", columns.join(", "))
}

fn mapping(contact: bool) -> Json {
    let mut map = serde_json::Map::new();
    for c in TEXT_COLUMNS
        .iter()
        .chain(if contact { CONTACT_COLUMNS } else { &[] })
    {
        map.insert((*c).to_owned(), json!(c));
    }
    map.insert("x_conformance_note".into(), json!("note"));
    map.insert("x_conformance_rating".into(), json!("rating"));
    map.insert("x_conformance_since".into(), json!("since"));
    Json::Object(map)
}

/// The settings of a connector on `customers` and `contacts`, with `extra` merged into
/// each kind.
fn settings(url: &str, extra: Json) -> Json {
    let kind = |table: &str, contact: bool| {
        let mut k = json!({"table": table, "columns": mapping(contact)});
        for (key, value) in extra.as_object().unwrap() {
            k[key] = value.clone();
        }
        k
    };
    json!({
        "url": url,
        "batch_size": 20,
        "page_size": 7,
        "kinds": {"customer": kind("customers", false), "contact": kind("contacts", true)}
    })
}

fn connector(settings: Json) -> Arc<SqlConnector> {
    let context = BuildContext {
        base_dir: std::env::temp_dir(),
    };
    Arc::new(SqlConnector::from_settings(settings, &context).expect("valid settings"))
}

async fn execute(pool: &AnyPool, sql: &str) {
    sqlx::raw_sql(AssertSqlSafe(sql.to_owned()))
        .execute(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

async fn make_tables(c: &SqlConnector) {
    let d = c.dialect();
    execute(c.pool(), &create_table(d, "customers", false)).await;
    execute(c.pool(), &create_table(d, "contacts", true)).await;
}

/// `legacy_flag`, a column the connector does not map, set behind its back and checked
/// after an update through it.
struct LegacyFlag {
    pool: AnyPool,
    dialect: Dialect,
}

impl LegacyFlag {
    fn table(kind: EntityKind) -> &'static str {
        if kind == EntityKind::Contact {
            "contacts"
        } else {
            "customers"
        }
    }
}

#[async_trait::async_trait]
impl UnknownField for LegacyFlag {
    async fn inject(&self, kind: EntityKind, id: &str) -> Result<(), String> {
        // A plain write by another application (it bumps the version as agreed).
        let sql = format!(
            "UPDATE {} SET legacy_flag = 'kept {id}', version = version + 1 WHERE id = {id}",
            Self::table(kind)
        );
        sqlx::raw_sql(AssertSqlSafe(sql))
            .execute(&self.pool)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    async fn verify(&self, kind: EntityKind, id: &str) -> Result<(), String> {
        let text = if self.dialect == Dialect::MySql {
            "CHAR"
        } else {
            "TEXT"
        };
        let sql = format!(
            "SELECT CAST(legacy_flag AS {text}) FROM {} WHERE id = {id}",
            Self::table(kind)
        );
        let row = sqlx::query(AssertSqlSafe(sql))
            .fetch_one(&self.pool)
            .await
            .map_err(|e| e.to_string())?;
        let flag: Option<String> = row.try_get(0).map_err(|e| e.to_string())?;
        match flag {
            Some(f) if f == format!("kept {id}") => Ok(()),
            other => Err(format!("legacy_flag of row {id} is {other:?}")),
        }
    }
}

async fn conforms(c: &Arc<SqlConnector>) {
    let options = Options {
        max_batch: 20,
        unknown_field: Some(Box::new(LegacyFlag {
            pool: c.pool().clone(),
            dialect: c.dialect(),
        })),
        ..Options::default()
    };
    let report = check_conformance(c.as_ref(), &options).await;
    println!("{report}");
    report.assert_passed();
}

/// Full listings, a counter version column, `updated_at` stamped, idempotency keys.
async fn conforms_with_full_listings(url: &str) {
    let c = connector(settings(
        url,
        json!({"version": "version", "updated_at": "updated_at", "idempotency_key": "tandem_key"}),
    ));
    make_tables(&c).await;
    assert!(!c.capabilities().incremental);
    conforms(&c).await;
}

/// Changes from the trigger-filled change table, deletes as tombstones.
async fn conforms_with_triggers(url: &str) {
    let c = connector(settings(
        url,
        json!({"version": "version", "changes": "triggers"}),
    ));
    make_tables(&c).await;
    let installed = c.install_triggers().await.expect("triggers install");
    assert_eq!(installed.len(), 3, "{installed:?}");
    // Installing again replaces them: still one change entry per write.
    c.install_triggers().await.expect("triggers install twice");
    assert!(c.capabilities().incremental);
    conforms(&c).await;
}

fn sqlite_url(dir: &tempfile::TempDir) -> String {
    format!("sqlite://{}/shop.db?mode=rwc", dir.path().display())
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_conforms_with_full_listings() {
    let dir = tempfile::tempdir().unwrap();
    conforms_with_full_listings(&sqlite_url(&dir)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_conforms_with_triggers() {
    let dir = tempfile::tempdir().unwrap();
    conforms_with_triggers(&sqlite_url(&dir)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_conforms_with_full_listings() {
    let Some(server) = PostgresServer::start() else {
        return;
    };
    conforms_with_full_listings(&server.url()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_conforms_with_triggers() {
    let Some(server) = PostgresServer::start() else {
        return;
    };
    conforms_with_triggers(&server.url()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_conforms_with_xmin_as_the_version() {
    let Some(server) = PostgresServer::start() else {
        return;
    };
    let c = connector(settings(&server.url(), json!({"version": "xmin"})));
    make_tables(&c).await;
    conforms(&c).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mariadb_conforms_with_full_listings() {
    let Some(server) = MariadbServer::start() else {
        return;
    };
    conforms_with_full_listings(&server.url()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mariadb_conforms_with_triggers() {
    let Some(server) = MariadbServer::start() else {
        return;
    };
    conforms_with_triggers(&server.url()).await;
}

fn customer(name: &str) -> Fields {
    Fields::new()
        .with(field::NAME, name)
        .with(field::CITY, "Gent")
}

async fn create(c: &SqlConnector, name: &str) -> String {
    let out = c
        .write(EntityKind::Customer, vec![WriteOp::create(customer(name))])
        .await
        .unwrap();
    out[0].as_ref().expect("created").id.clone()
}

/// Reads every page from `cursor`; returns the records and the last cursor.
async fn read_all(
    c: &SqlConnector,
    cursor: Option<tandem_connector::Cursor>,
) -> (
    Vec<tandem_model::Record>,
    Option<tandem_connector::Cursor>,
    Listing,
) {
    let mut cursor = cursor;
    let mut records = Vec::new();
    loop {
        let page = c.read(EntityKind::Customer, cursor.as_ref()).await.unwrap();
        records.extend(page.records);
        cursor = page.cursor;
        if !page.has_more {
            return (records, cursor, page.listing);
        }
    }
}

/// `changes = "updated_at"`: a row is read again only when it changed; rows written with
/// a time inside the overlap window before the last read (a transaction that committed
/// late) are still found; and paging through many rows with the same time ends.
async fn updated_at_changes(url: &str) {
    let c = connector(settings(
        url,
        json!({"version": "version", "updated_at": "updated_at", "changes": "updated_at", "overlap": "1h"}),
    ));
    make_tables(&c).await;
    for n in 0..10 {
        create(&c, &format!("Customer {n}")).await;
    }
    let (first, cursor, listing) = read_all(&c, None).await;
    assert_eq!(listing, Listing::Full);
    assert_eq!(first.len(), 10);
    // Nothing changed: the overlap window returns the same rows again, de-duplicated.
    let (again, cursor, listing) = read_all(&c, cursor).await;
    assert_eq!(listing, Listing::Changes);
    assert!(again.is_empty(), "unchanged rows came back: {again:?}");
    // One update through the connector, one behind its back with an older time (a late
    // commit inside the overlap window).
    let target = &first[3];
    c.write(
        EntityKind::Customer,
        vec![WriteOp::Update {
            id: target.id.clone(),
            version: target.version.clone(),
            changes: [(field::CITY.into(), "Brugge".into())].into(),
        }],
    )
    .await
    .unwrap()[0]
        .as_ref()
        .expect("updated");
    let late = &first[7];
    let older = match c.dialect() {
        Dialect::Sqlite => "strftime('%Y-%m-%d %H:%M:%f', 'now', '-10 minutes')",
        Dialect::Postgres => "now() - interval '10 minutes'",
        Dialect::MySql => "NOW(6) - INTERVAL 10 MINUTE",
    };
    execute(
        c.pool(),
        &format!(
            "UPDATE customers SET city = 'Late', version = version + 1, updated_at = {older} WHERE id = {}",
            late.id
        ),
    )
    .await;
    let (changes, cursor, _) = read_all(&c, cursor).await;
    let mut ids: Vec<&str> = changes.iter().map(|r| r.id.as_str()).collect();
    ids.sort();
    let mut want = vec![target.id.as_str(), late.id.as_str()];
    want.sort();
    assert_eq!(ids, want, "{changes:?}");
    let (quiet, _, _) = read_all(&c, cursor).await;
    assert!(quiet.is_empty(), "{quiet:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_reads_changes_by_updated_at() {
    let dir = tempfile::tempdir().unwrap();
    updated_at_changes(&sqlite_url(&dir)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_reads_changes_by_updated_at() {
    let Some(server) = PostgresServer::start() else {
        return;
    };
    updated_at_changes(&server.url()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mariadb_reads_changes_by_updated_at() {
    let Some(server) = MariadbServer::start() else {
        return;
    };
    updated_at_changes(&server.url()).await;
}

/// A create retried after its reply was lost finds the row it made instead of
/// inserting a second one.
#[tokio::test(flavor = "multi_thread")]
async fn a_retried_create_with_an_idempotency_key_makes_one_row() {
    let Some(server) = PostgresServer::start() else {
        return;
    };
    let c = connector(settings(
        &server.url(),
        json!({"version": "version", "idempotency_key": "tandem_key"}),
    ));
    make_tables(&c).await;
    let first = create(&c, "Once Ltd").await;
    let second = create(&c, "Once Ltd").await;
    assert_eq!(first, second);
    let other = create(&c, "Twice Ltd").await;
    assert_ne!(first, other);
    let (rows, _, _) = read_all(&c, None).await;
    assert_eq!(rows.len(), 2, "{rows:?}");
}

/// One bad record fails alone; the rest of the batch is written in the same
/// transaction. A stale version is a conflict and changes nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_failing_write_leaves_the_rest_of_its_batch() {
    let dir = tempfile::tempdir().unwrap();
    let c = connector(settings(&sqlite_url(&dir), json!({"version": "version"})));
    make_tables(&c).await;
    let id = create(&c, "Versioned").await;
    let stale = Some("0".to_owned());
    let out = c
        .write(
            EntityKind::Customer,
            vec![
                WriteOp::Update {
                    id: id.clone(),
                    version: stale.clone(),
                    changes: [(field::CITY.into(), "Nowhere".into())].into(),
                },
                WriteOp::create(customer("Next Ltd")),
                WriteOp::Delete {
                    id: "999999".into(),
                    version: None,
                },
            ],
        )
        .await
        .unwrap();
    assert_eq!(out[0], Err(ConnectorError::Conflict { id: id.clone() }));
    assert!(out[1].is_ok(), "{out:?}");
    assert_eq!(
        out[2],
        Err(ConnectorError::NotFound {
            id: "999999".into()
        })
    );
    let rows = c.read_ids(EntityKind::Customer, &[&id]).await.unwrap();
    assert_eq!(rows[0].fields.text(field::CITY), Some("Gent"));
    assert_eq!(rows[0].version.as_deref(), Some("1"));
}

/// A password in the URL never shows in an error.
#[tokio::test(flavor = "multi_thread")]
async fn errors_name_the_table_and_hide_the_password() {
    let Some(server) = PostgresServer::start() else {
        return;
    };
    let url = server.url().replace("tandem@", "tandem:hunter2-secret@");
    let c = connector(json!({
        "url": url,
        "kinds": {"customer": {"table": "no_such_table", "columns": {"name": "name"}}}
    }));
    let err = c.check().await.unwrap_err().to_string();
    assert!(err.contains("no_such_table"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
}

/// `changes = "triggers"` before `tandem sql install-triggers`: `check` says what to run.
#[tokio::test(flavor = "multi_thread")]
async fn check_says_to_install_the_triggers_first() {
    let dir = tempfile::tempdir().unwrap();
    let c = connector(settings(&sqlite_url(&dir), json!({"changes": "triggers"})));
    make_tables(&c).await;
    let err = c.check().await.unwrap_err();
    assert!(matches!(err, ConnectorError::Config { .. }), "{err:?}");
    assert!(
        err.to_string().contains("tandem sql install-triggers"),
        "{err}"
    );
    c.install_triggers().await.unwrap();
    c.check().await.unwrap();
}
