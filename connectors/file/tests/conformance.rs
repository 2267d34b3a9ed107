//! The file connector, compiled in, against the conformance kit: CSV and JSON Lines.

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value as Json, json};
use tandem_connector::testkit::{Options, Status, check_conformance, unknown_field_with};
use tandem_connector::{BuildContext, Connector, ConnectorFactory};
use tandem_connector_file::{FileConnector, FileConnectorFactory, Format};
use tandem_model::EntityKind;

/// The column (CSV) or key (JSON Lines) another application keeps in the files.
const LEGACY: &str = "legacy_note";

fn legacy_value(id: &str) -> String {
    format!("kept for {id}, \"quoted\", with a comma")
}

fn file(folder: &Path, kind: EntityKind, format: Format) -> PathBuf {
    folder.join(format!("{}.{}", kind.plural(), format.extension()))
}

/// Adds the legacy column to a CSV file, filled on row `id` only.
fn inject_csv(path: &Path, id: &str) -> Result<(), String> {
    let mut reader = csv::Reader::from_path(path).map_err(|e| e.to_string())?;
    let mut headers = reader.headers().map_err(|e| e.to_string())?.clone();
    let column = headers.iter().position(|h| h == LEGACY);
    if column.is_none() {
        headers.push_field(LEGACY);
    }
    let id_column = headers
        .iter()
        .position(|h| h == "id")
        .ok_or("no id column")?;
    let mut rows = Vec::new();
    for row in reader.records() {
        let mut row = row.map_err(|e| e.to_string())?;
        let value = if &row[id_column] == id {
            legacy_value(id)
        } else {
            String::new()
        };
        match column {
            Some(i) if &row[id_column] == id => {
                let mut cells: Vec<String> = row.iter().map(str::to_owned).collect();
                cells[i] = value;
                row = cells.into_iter().collect();
            }
            Some(_) => {}
            None => row.push_field(&value),
        }
        rows.push(row);
    }
    let mut writer = csv::Writer::from_path(path).map_err(|e| e.to_string())?;
    writer.write_record(&headers).map_err(|e| e.to_string())?;
    for row in rows {
        writer.write_record(&row).map_err(|e| e.to_string())?;
    }
    writer.flush().map_err(|e| e.to_string())
}

fn verify_csv(path: &Path, id: &str) -> Result<(), String> {
    let mut reader = csv::Reader::from_path(path).map_err(|e| e.to_string())?;
    let headers = reader.headers().map_err(|e| e.to_string())?.clone();
    let column = headers
        .iter()
        .position(|h| h == LEGACY)
        .ok_or_else(|| format!("the column `{LEGACY}` is gone"))?;
    let id_column = headers
        .iter()
        .position(|h| h == "id")
        .ok_or("no id column")?;
    for row in reader.records() {
        let row = row.map_err(|e| e.to_string())?;
        if &row[id_column] == id {
            return match &row[column] {
                value if value == legacy_value(id) => Ok(()),
                value => Err(format!("`{LEGACY}` of {id} is now {value:?}")),
            };
        }
    }
    Err(format!("row {id} is gone"))
}

fn jsonl_lines(path: &Path) -> Result<Vec<Map<String, Json>>, String> {
    fs::read_to_string(path)
        .map_err(|e| e.to_string())?
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).map_err(|e| e.to_string()))
        .collect()
}

fn legacy_json(id: &str) -> Json {
    json!({"note": legacy_value(id), "scores": [1, 2.5, null]})
}

/// Adds a nested legacy key to line `id`; the other lines stay as they are.
fn inject_jsonl(path: &Path, id: &str) -> Result<(), String> {
    let mut out = String::new();
    for line in fs::read_to_string(path).map_err(|e| e.to_string())?.lines() {
        let mut object: Map<String, Json> =
            serde_json::from_str(line).map_err(|e| e.to_string())?;
        if object.get("id") == Some(&Json::String(id.to_owned())) {
            object.insert(LEGACY.to_owned(), legacy_json(id));
            out.push_str(&Json::Object(object).to_string());
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    fs::write(path, out).map_err(|e| e.to_string())
}

fn verify_jsonl(path: &Path, id: &str) -> Result<(), String> {
    let object = jsonl_lines(path)?
        .into_iter()
        .find(|o| o.get("id") == Some(&Json::String(id.to_owned())))
        .ok_or_else(|| format!("line {id} is gone"))?;
    match object.get(LEGACY) {
        Some(value) if *value == legacy_json(id) => Ok(()),
        other => Err(format!("`{LEGACY}` of {id} is now {other:?}")),
    }
}

fn options(connector: &FileConnector, format: Format) -> Options {
    let folder = connector.folder();
    let (a, b) = (folder.to_owned(), folder.to_owned());
    let flushed = connector.clone();
    let unknown_field = match format {
        // Another application edits the file as a run left it: with the writes a
        // journal held put in (a run does at its end).
        Format::Csv => unknown_field_with(
            move |kind, id| {
                flushed.flush().map_err(|e| e.to_string())?;
                inject_csv(&file(&a, kind, format), id)
            },
            move |kind, id| verify_csv(&file(&b, kind, format), id),
        ),
        Format::Jsonl => unknown_field_with(
            move |kind, id| inject_jsonl(&file(&a, kind, format), id),
            move |kind, id| verify_jsonl(&file(&b, kind, format), id),
        ),
    };
    Options {
        unknown_field: Some(unknown_field),
        ..Options::default()
    }
}

async fn conforms(format: Format, journal_from: u64) {
    let dir = tempfile::tempdir().unwrap();
    // A file with records, and columns, the kit does not know.
    let seed = match format {
        Format::Csv => "id,name,notes\nK1,Acme,call first\n",
        Format::Jsonl => "{\"id\":\"K1\",\"name\":\"Acme\",\"notes\":\"call first\"}\n",
    };
    let customers = file(dir.path(), EntityKind::Customer, format);
    fs::write(&customers, seed).unwrap();
    let connector = FileConnector::new(dir.path().to_owned(), format).journaling_from(journal_from);
    let report = check_conformance(&connector, &options(&connector, format)).await;
    report.assert_passed();
    for kind in EntityKind::ALL {
        for name in [
            "round_trip_create",
            "unknown_fields",
            "invalid_field",
            "cursor",
        ] {
            assert_eq!(
                report.get(name, Some(kind)).map(|c| c.status),
                Some(Status::Passed),
                "{name} [{kind}]\n{report}"
            );
        }
    }
    // The seeded record is as it was.
    let page = connector.read(EntityKind::Customer, None).await.unwrap();
    assert_eq!(page.records.len(), 1);
    assert_eq!(page.records[0].id, "K1");
    assert!(
        fs::read_to_string(&customers)
            .unwrap()
            .contains("call first")
    );
}

#[tokio::test]
async fn the_csv_file_connector_conforms() {
    conforms(Format::Csv, u64::MAX).await;
}

/// With every write to a CSV file held in its journal until something reads the file.
#[tokio::test]
async fn the_csv_file_connector_writing_through_journals_conforms() {
    conforms(Format::Csv, 0).await;
}

#[tokio::test]
async fn the_jsonl_file_connector_conforms() {
    conforms(Format::Jsonl, u64::MAX).await;
}

#[tokio::test]
async fn the_file_connector_built_from_settings_conforms() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("erp")).unwrap();
    let connector = FileConnectorFactory
        .build(
            json!({"path": "erp", "format": "jsonl"}),
            &BuildContext {
                base_dir: dir.path().to_owned(),
            },
        )
        .unwrap();
    let options = options(
        &FileConnector::new(dir.path().join("erp"), Format::Jsonl),
        Format::Jsonl,
    );
    check_conformance(connector.as_ref(), &options)
        .await
        .assert_passed();
}
