use std::fs;

use serde_json::json;
use tandem_connector::{Changes, Listing, Written};
use tandem_model::{FieldName, Fields, Record, Value};
use tempfile::TempDir;

use super::*;

const K: EntityKind = EntityKind::Customer;

fn context(dir: &TempDir) -> BuildContext {
    BuildContext {
        base_dir: dir.path().to_owned(),
    }
}

async fn read_all(c: &SqliteConnector, cursor: Option<Cursor>) -> (Vec<Record>, Listing, Cursor) {
    let mut cursor = cursor;
    let mut out = Vec::new();
    loop {
        let page = c.read(K, cursor.as_ref()).await.unwrap();
        out.extend(page.records);
        cursor = page.cursor;
        if !page.has_more {
            return (out, page.listing, cursor.unwrap());
        }
    }
}

fn update(id: &str, version: Option<&str>, name: &str, value: Value) -> WriteOp {
    let mut changes = Changes::new();
    changes.insert(FieldName::new(name), value);
    WriteOp::Update {
        id: id.to_owned(),
        version: version.map(str::to_owned),
        changes,
    }
}

fn ok(outcome: &WriteOutcome) -> &Written {
    outcome.as_ref().unwrap()
}

#[tokio::test]
async fn the_factory_creates_the_file_relative_to_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let c = SqliteConnectorFactory
        .build(json!({"path": "erp.db"}), &context(&dir))
        .unwrap();
    c.check().await.unwrap();
    assert!(dir.path().join("erp.db").is_file());
    assert_eq!(SqliteConnectorFactory.type_name(), "sqlite-example");
}

#[test]
fn unknown_settings_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let err = SqliteConnectorFactory
        .build(json!({"path": "erp.db", "pth": "x"}), &context(&dir))
        .unwrap_err();
    assert!(matches!(err, ConnectorError::Config { .. }), "{err:?}");
    assert!(err.to_string().contains("pth"), "{err}");
    let err = SqliteConnectorFactory
        .build(json!({}), &context(&dir))
        .unwrap_err();
    assert!(err.to_string().contains("path"), "{err}");
}

#[test]
fn a_missing_folder_or_a_file_that_is_no_database_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = SqliteConnector::open(dir.path().join("nowhere/erp.db")).unwrap_err();
    assert!(matches!(err, ConnectorError::Config { .. }), "{err:?}");
    assert!(err.to_string().contains("nowhere"), "{err}");

    let path = dir.path().join("notes.db");
    fs::write(
        &path,
        "these are not the tables you are looking for, not at all",
    )
    .unwrap();
    let err = SqliteConnector::open(&path).unwrap_err();
    assert!(matches!(err, ConnectorError::Config { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "configuration error: {} is not a SQLite database",
            path.display()
        )
    );
}

#[tokio::test]
async fn seeded_records_are_listed_in_pages_then_read_as_changes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("erp.db");
    let mut db = Database::open(&path).unwrap();
    for i in 0..5 {
        db.put(K, &format!("acme-{i}"), &Fields::new().with("name", "Acme"))
            .unwrap();
    }
    let c = SqliteConnector::open(&path).unwrap().with_page_size(2);
    let (all, listing, cursor) = read_all(&c, None).await;
    assert_eq!(listing, Listing::Full);
    let ids: Vec<&str> = all.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["acme-0", "acme-1", "acme-2", "acme-3", "acme-4"]);
    assert_eq!(all[0].version.as_deref(), Some("1"));
    assert!(all[0].modified_at.is_some());

    // Nothing changed: no changes.
    let (none, listing, same) = read_all(&c, Some(cursor.clone())).await;
    assert_eq!(listing, Listing::Changes);
    assert!(none.is_empty());
    assert_eq!(same, cursor);

    // Changed outside and through the connector: each once, deletes as tombstones.
    db.remove(K, "acme-1").unwrap();
    db.put(K, "acme-3", &Fields::new().with("name", "Acme 3"))
        .unwrap();
    let out = c
        .write(
            K,
            vec![
                update("acme-3", Some("2"), "city", Value::text("Gent")),
                WriteOp::create(Fields::new().with("name", "New")),
                update("acme-3", Some("2"), "city", Value::text("Stale")),
            ],
        )
        .await
        .unwrap();
    assert_eq!(ok(&out[0]).version.as_deref(), Some("3"));
    let created = ok(&out[1]).id.clone();
    assert!(created.starts_with('K'), "{created}");
    assert_eq!(
        out[2],
        Err(ConnectorError::Conflict {
            id: "acme-3".into()
        })
    );
    let (changes, listing, _) = read_all(&c, Some(cursor)).await;
    assert_eq!(listing, Listing::Changes);
    let seen: Vec<(&str, bool)> = changes.iter().map(|r| (r.id.as_str(), r.deleted)).collect();
    assert_eq!(
        seen,
        [
            ("acme-1", true),
            ("acme-3", false),
            (created.as_str(), false)
        ]
    );
    assert_eq!(
        changes[1].fields,
        Fields::new().with("name", "Acme 3").with("city", "Gent")
    );
}

#[tokio::test]
async fn unmapped_data_survives_updates() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("erp.db");
    let mut db = Database::open(&path).unwrap();
    db.put(K, "K1", &Fields::new().with("name", "Acme"))
        .unwrap();
    db.set_extra(K, "K1", &json!({"crm": {"owner": "ann"}}))
        .unwrap();
    // A key in `fields` that is no field of a customer (it is a bank account's).
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute(
        "UPDATE customers SET fields = json_set(fields, '$.iban', 'BE71') WHERE id = 'K1'",
        [],
    )
    .unwrap();
    drop(conn);

    let c = SqliteConnector::open(&path).unwrap();
    let (all, _, _) = read_all(&c, None).await;
    assert_eq!(all[0].fields, Fields::new().with("name", "Acme"));
    let out = c
        .write(K, vec![update("K1", None, "name", Value::text("Acme NV"))])
        .await
        .unwrap();
    assert!(out[0].is_ok(), "{out:?}");
    assert_eq!(
        db.extra(K, "K1").unwrap(),
        Some(json!({"crm": {"owner": "ann"}}))
    );
    let conn = rusqlite::Connection::open(&path).unwrap();
    let fields: String = conn
        .query_row("SELECT fields FROM customers WHERE id = 'K1'", [], |r| {
            r.get(0)
        })
        .unwrap();
    let fields: serde_json::Value = serde_json::from_str(&fields).unwrap();
    assert_eq!(fields, json!({"name": "Acme NV", "iban": "BE71"}));
}

#[tokio::test]
async fn a_bad_row_names_the_table_and_id() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("erp.db");
    let c = SqliteConnector::open(&path).unwrap();
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute(
        "INSERT INTO customers (id, fields) VALUES ('K9', 'not json')",
        [],
    )
    .unwrap();
    let err = c.read(K, None).await.unwrap_err().to_string();
    assert!(err.contains("table customers, id K9"), "{err}");
    assert!(err.contains("`fields` is not a JSON object"), "{err}");
}

#[tokio::test]
async fn a_foreign_cursor_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let c = SqliteConnector::open(dir.path().join("erp.db")).unwrap();
    let err = c
        .read(K, Some(&Cursor("changes:5:5:".into())))
        .await
        .unwrap_err();
    assert!(matches!(err, ConnectorError::Config { .. }), "{err:?}");
}

#[tokio::test]
async fn ids_are_never_reused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("erp.db");
    let c = SqliteConnector::open(&path).unwrap();
    let create = || WriteOp::create(Fields::new().with("name", "x"));
    let first = ok(&c.write(K, vec![create()]).await.unwrap()[0]).id.clone();
    c.write(
        K,
        vec![WriteOp::Delete {
            id: first.clone(),
            version: None,
        }],
    )
    .await
    .unwrap();
    // A record made outside the connector takes the next number.
    let mut db = Database::open(&path).unwrap();
    let next = format!("K{}", first[1..].parse::<u64>().unwrap() + 2);
    db.put(K, &next, &Fields::new()).unwrap();
    let out = c.write(K, vec![create(), create()]).await.unwrap();
    let ids: Vec<&str> = out.iter().map(|o| ok(o).id.as_str()).collect();
    assert!(!ids.contains(&first.as_str()), "{ids:?}");
    assert!(!ids.contains(&next.as_str()), "{ids:?}");
    assert_ne!(ids[0], ids[1]);
}
