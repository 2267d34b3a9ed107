//! The SQLite example connector against the conformance kit.

use std::path::{Path, PathBuf};

use serde_json::json;
use tandem_connector::testkit::{Options, Status, check_conformance, unknown_field_with};
use tandem_connector::{BuildContext, ConnectorFactory};
use tandem_connector_sqlite_example::{Database, SqliteConnector, SqliteConnectorFactory};
use tandem_model::{EntityKind, Fields};

/// What another application keeps on a record: the `extra` column.
fn legacy(id: &str) -> serde_json::Value {
    json!({"legacy": {"owner": format!("owner of {id}"), "tags": [1, 2]}})
}

/// Writes `extra` behind the connector's back, through a connection of its own.
fn extra_hook(path: &Path) -> Options {
    let (inject_path, verify_path) = (path.to_owned(), path.to_owned());
    Options {
        unknown_field: Some(unknown_field_with(
            move |kind, id| {
                Database::open(&inject_path)
                    .and_then(|mut db| db.set_extra(kind, id, &legacy(id)))
                    .map_err(|e| e.to_string())
            },
            move |kind, id| {
                let extra = Database::open(&verify_path)
                    .and_then(|db| db.extra(kind, id))
                    .map_err(|e| e.to_string())?;
                match extra {
                    Some(extra) if extra == legacy(id) => Ok(()),
                    other => Err(format!("`extra` is {other:?}, not {}", legacy(id))),
                }
            },
        )),
        ..Options::default()
    }
}

fn seeded(dir: &Path) -> PathBuf {
    let path = dir.join("erp.db");
    let mut db = Database::open(&path).unwrap();
    db.put(
        EntityKind::Customer,
        "acme",
        &Fields::new().with("name", "Acme"),
    )
    .unwrap();
    db.put(
        EntityKind::Vendor,
        "bolt",
        &Fields::new().with("name", "Bolt"),
    )
    .unwrap();
    path
}

#[tokio::test]
async fn the_sqlite_connector_conforms_with_small_pages() {
    let dir = tempfile::tempdir().unwrap();
    let path = seeded(dir.path());
    let connector = SqliteConnector::open(&path).unwrap().with_page_size(7);
    let report = check_conformance(&connector, &extra_hook(&path)).await;
    report.assert_passed();
    for kind in EntityKind::ALL {
        for name in ["unknown_fields", "invalid_field", "changes", "cursor"] {
            assert_eq!(
                report.get(name, Some(kind)).map(|c| c.status),
                Some(Status::Passed),
                "{name} [{kind}]\n{report}"
            );
        }
    }
    // Only the seeded records are left.
    let page = tandem_connector::Connector::read(&connector, EntityKind::Customer, None)
        .await
        .unwrap();
    let ids: Vec<&str> = page.records.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["acme"]);
}

#[tokio::test]
async fn the_sqlite_connector_built_from_settings_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let path = seeded(dir.path());
    let connector = SqliteConnectorFactory
        .build(
            json!({"path": "erp.db"}),
            &BuildContext {
                base_dir: dir.path().to_owned(),
            },
        )
        .unwrap();
    check_conformance(connector.as_ref(), &extra_hook(&path))
        .await
        .assert_passed();
}
