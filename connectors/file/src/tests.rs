use std::fs;

use tandem_connector::{Changes, Connector, ConnectorError, ConnectorFactory, WriteOp, Written};
use tandem_model::{EntityKind, FieldName, Fields, Record, Timestamp, Value};
use tempfile::TempDir;

use super::*;

const CONTACT: EntityKind = EntityKind::Contact;

fn folder() -> TempDir {
    tempfile::tempdir().unwrap()
}

fn csv_in(dir: &TempDir) -> FileConnector {
    FileConnector::new(dir.path().to_owned(), Format::Csv)
}

fn jsonl_in(dir: &TempDir) -> FileConnector {
    FileConnector::new(dir.path().to_owned(), Format::Jsonl)
}

fn put(dir: &TempDir, name: &str, content: impl AsRef<[u8]>) {
    fs::write(dir.path().join(name), content).unwrap();
}

fn get(dir: &TempDir, name: &str) -> String {
    fs::read_to_string(dir.path().join(name)).unwrap()
}

async fn read(c: &FileConnector, kind: EntityKind) -> Vec<Record> {
    let page = c.read(kind, None).await.unwrap();
    assert_eq!(page.listing, Listing::Full);
    assert!(!page.has_more);
    assert_eq!(page.cursor, None);
    page.records
}

async fn write(c: &FileConnector, kind: EntityKind, ops: Vec<WriteOp>) -> Vec<WriteOutcome> {
    c.write(kind, ops).await.unwrap()
}

fn changes(pairs: &[(&str, Value)]) -> Changes {
    pairs
        .iter()
        .map(|(k, v)| (FieldName::new(k), v.clone()))
        .collect()
}

fn update(id: &str, version: Option<&str>, pairs: &[(&str, Value)]) -> WriteOp {
    WriteOp::Update {
        id: id.to_owned(),
        version: version.map(str::to_owned),
        changes: changes(pairs),
    }
}

fn ok(outcome: &WriteOutcome) -> &Written {
    outcome.as_ref().unwrap()
}

/// Changes when the file is replaced: the rename brings a new inode.
#[cfg(unix)]
fn identity(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(path).unwrap().ino()
}

#[cfg(not(unix))]
fn identity(path: &Path) -> std::time::SystemTime {
    fs::metadata(path).unwrap().modified().unwrap()
}

#[tokio::test]
async fn reads_columns_in_any_order_and_subset() {
    let dir = folder();
    put(
        &dir,
        "customers.csv",
        "city,name,id\nGent,Acme,K1\n,Bolt,K2\n",
    );
    put(&dir, "vendors.csv", "id\nV1\n");
    let c = csv_in(&dir);
    let customers = read(&c, EntityKind::Customer).await;
    assert_eq!(customers.len(), 2);
    assert_eq!(customers[0].id, "K1");
    assert_eq!(customers[0].kind, EntityKind::Customer);
    assert_eq!(
        customers[0].fields,
        Fields::new().with("name", "Acme").with("city", "Gent")
    );
    // Empty cells are empty fields.
    assert_eq!(customers[1].fields, Fields::new().with("name", "Bolt"));
    assert_ne!(customers[0].version, customers[1].version);
    let vendors = read(&c, EntityKind::Vendor).await;
    assert_eq!(vendors.len(), 1);
    assert!(vendors[0].fields.is_empty());
}

#[tokio::test]
async fn fields_of_other_kinds_and_unknown_columns_are_not_exposed() {
    let dir = folder();
    put(
        &dir,
        "customers.csv",
        "id,name,iban,notes,x_rating\nK1,Acme,BE71,call first,5\n",
    );
    let records = read(&csv_in(&dir), EntityKind::Customer).await;
    assert_eq!(
        records[0].fields,
        Fields::new().with("name", "Acme").with("x_rating", "5")
    );
}

#[tokio::test]
async fn a_missing_file_is_an_empty_set() {
    let dir = folder();
    assert!(read(&csv_in(&dir), CONTACT).await.is_empty());
    assert!(
        read(&jsonl_in(&dir), EntityKind::BankAccount)
            .await
            .is_empty()
    );
    put(&dir, "vendors.csv", "");
    assert!(read(&csv_in(&dir), EntityKind::Vendor).await.is_empty());
}

#[tokio::test]
async fn a_missing_folder_is_an_error_not_an_empty_set() {
    let dir = folder();
    let missing = dir.path().join("nowhere");
    let c = FileConnector::new(missing.clone(), Format::Csv);
    let err = c.check().await.unwrap_err();
    assert!(matches!(err, ConnectorError::Config { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&missing.display().to_string()),
        "{err}"
    );
    assert!(err.to_string().contains("does not exist"), "{err}");
    assert!(c.read(CONTACT, None).await.is_err());
    assert!(c.write(CONTACT, vec![]).await.is_err());
}

#[tokio::test]
async fn check_reports_the_first_broken_file() {
    let dir = folder();
    put(&dir, "contacts.csv", "id,name\nC1,Ann\n");
    let c = csv_in(&dir);
    c.check().await.unwrap();
    put(&dir, "vendors.csv", "id,name\nV1\n");
    let err = c.check().await.unwrap_err().to_string();
    assert!(err.contains("vendors.csv line 2"), "{err}");
}

#[tokio::test]
async fn unknown_columns_survive_update_create_and_delete_byte_for_byte() {
    let dir = folder();
    let original = "id,notes,name,legacy\n\
                    C1,\"  spaced, \"\"quoted\"\"\nand multi-line  \",Ann,\u{e9}t\u{e9}\n\
                    C2,keep me,Bob,  x  \n\
                    C3,gone,Cy,y\n";
    put(&dir, "contacts.csv", original);
    let c = csv_in(&dir);
    let before = read(&c, CONTACT).await;
    let outcomes = write(
        &c,
        CONTACT,
        vec![
            update("C1", None, &[("name", Value::text("Anna"))]),
            WriteOp::create(Fields::new().with("name", "Dee")),
            WriteOp::Delete {
                id: "C3".into(),
                version: None,
            },
        ],
    )
    .await;
    assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");

    let mut reader = ::csv::Reader::from_path(dir.path().join("contacts.csv")).unwrap();
    let rows: Vec<Vec<String>> = reader
        .records()
        .map(|r| r.unwrap().iter().map(str::to_owned).collect())
        .collect();
    assert_eq!(
        reader.headers().unwrap(),
        vec!["id", "notes", "name", "legacy"]
    );
    assert_eq!(
        rows,
        vec![
            vec![
                "C1",
                "  spaced, \"quoted\"\nand multi-line  ",
                "Anna",
                "\u{e9}t\u{e9}"
            ],
            vec!["C2", "keep me", "Bob", "  x  "],
            vec!["C4", "", "Dee", ""],
        ]
    );
    // The untouched row reads back at its old version.
    let after = read(&c, CONTACT).await;
    assert_eq!(after[1].fields, Fields::new().with("name", "Bob"));
    assert_eq!(after[1].version, before[1].version);
}

#[tokio::test]
async fn versions_cover_unknown_columns() {
    let dir = folder();
    put(&dir, "contacts.csv", "id,name,notes\nC1,Ann,a\n");
    let c = csv_in(&dir);
    let before = read(&c, CONTACT).await[0].version.clone();
    put(&dir, "contacts.csv", "id,name,notes\nC1,Ann,b\n");
    let after = read(&c, CONTACT).await[0].version.clone();
    assert!(before.is_some());
    assert_ne!(before, after);
}

#[tokio::test]
async fn written_versions_match_what_a_read_returns() {
    for format in [Format::Csv, Format::Jsonl] {
        let dir = folder();
        let c = FileConnector::new(dir.path().to_owned(), format);
        let created = write(
            &c,
            CONTACT,
            vec![WriteOp::create(Fields::new().with("name", "Ann"))],
        )
        .await;
        let created = ok(&created[0]).clone();
        assert_eq!(read(&c, CONTACT).await[0].version, created.version);
        let updated = write(
            &c,
            CONTACT,
            vec![update(
                &created.id,
                created.version.as_deref(),
                &[("city", Value::text("Gent"))],
            )],
        )
        .await;
        let updated = ok(&updated[0]);
        assert_ne!(updated.version, created.version);
        assert_eq!(
            read(&c, CONTACT).await[0].version,
            updated.version,
            "{format:?}"
        );
    }
}

#[tokio::test]
async fn a_new_column_goes_last_and_leaves_other_versions_alone() {
    let dir = folder();
    put(&dir, "contacts.csv", "id,name\nC1,Ann\nC2,Bob\n");
    let c = csv_in(&dir);
    let before = read(&c, CONTACT).await;
    write(
        &c,
        CONTACT,
        vec![update("C1", None, &[("x_rating", Value::Number(5.0))])],
    )
    .await;
    assert_eq!(
        get(&dir, "contacts.csv"),
        "id,name,x_rating\nC1,Ann,5\nC2,Bob,\n"
    );
    let after = read(&c, CONTACT).await;
    assert_eq!(after[1].version, before[1].version);
    assert_ne!(after[0].version, before[0].version);
    // Null clears a cell.
    write(
        &c,
        CONTACT,
        vec![update("C1", None, &[("name", Value::Null)])],
    )
    .await;
    assert_eq!(
        get(&dir, "contacts.csv"),
        "id,name,x_rating\nC1,,5\nC2,Bob,\n"
    );
}

#[tokio::test]
async fn jsonl_round_trip_keeps_types_and_unknown_keys() {
    let dir = folder();
    put(
        &dir,
        "contacts.jsonl",
        concat!(
            r#"{"id":"C1","name":"Ann","x_vip":true,"x_score":4.5,"x_since":{"date":"2020-02-01"},"business_relations":["CUST","VEND"],"email":null,"crm":{"deep":[1,2]}}"#,
            "\n\n",
            r#"{"id": "C2", "name": "Bob",   "note": "keep   spacing"}"#,
            "\r\n",
        ),
    );
    let c = jsonl_in(&dir);
    let records = read(&c, CONTACT).await;
    assert_eq!(records.len(), 2);
    let expected = Fields::new()
        .with("name", "Ann")
        .with("x_vip", Value::Bool(true))
        .with("x_score", Value::Number(4.5))
        .with("x_since", Value::date("2020-02-01").unwrap())
        .with(
            "business_relations",
            Value::list(vec!["CUST".into(), "VEND".into()]),
        );
    assert_eq!(records[0].fields, expected);

    let outcomes = write(
        &c,
        CONTACT,
        vec![
            update(
                "C1",
                records[0].version.as_deref(),
                &[("x_score", Value::Number(5.0)), ("x_vip", Value::Null)],
            ),
            WriteOp::create(
                Fields::new()
                    .with("name", "Cy")
                    .with("x_vip", Value::Bool(false)),
            ),
        ],
    )
    .await;
    assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
    let text = get(&dir, "contacts.jsonl");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines,
        vec![
            r#"{"id":"C1","business_relations":["CUST","VEND"],"crm":{"deep":[1,2]},"email":null,"name":"Ann","x_score":5,"x_since":{"date":"2020-02-01"}}"#,
            // Untouched rows are written back as they were.
            r#"{"id": "C2", "name": "Bob",   "note": "keep   spacing"}"#,
            r#"{"id":"C3","name":"Cy","x_vip":false}"#,
        ]
    );
    let again = read(&c, CONTACT).await;
    assert_eq!(again[1].version, records[1].version);
    assert_eq!(again[0].fields.get("x_score"), Some(&Value::Number(5.0)));
    assert_eq!(again[0].fields.get("x_vip"), None);
    assert_eq!(again[2].fields.get("x_vip"), Some(&Value::Bool(false)));
}

#[tokio::test]
async fn malformed_jsonl_names_file_and_line() {
    let dir = folder();
    let c = jsonl_in(&dir);
    let path = dir.path().join("vendors.jsonl");
    for (content, message) in [
        ("{\"id\":\"V1\"}\n{\"id\":\"V2\",\n", "line 2: invalid JSON"),
        (
            "{\"id\":\"V1\"}\n\n[1]\n",
            "line 3: invalid type: sequence, expected a JSON object",
        ),
        ("{\"name\":\"x\"}\n", "line 1: no `id`"),
        ("{\"id\":\"V1\",\"name\":{\"x\":1}}\n", "line 1: `name`:"),
        (
            "{\"id\":\"V1\"}\n{\"id\":\"V1\"}\n",
            "line 2: duplicate id `V1` (first on line 1)",
        ),
        (
            "{\"id\":\"V1\",\"modified_at\":\"soon\"}\n",
            "line 1: `modified_at`:",
        ),
    ] {
        fs::write(&path, content).unwrap();
        let err = c.read(EntityKind::Vendor, None).await.unwrap_err();
        assert!(matches!(err, ConnectorError::Fatal { .. }), "{err:?}");
        let expected = format!("{} {message}", path.display());
        assert!(err.to_string().starts_with(&expected), "{err} / {expected}");
        // A write refuses the file too and leaves it as it is.
        let create = WriteOp::create(Fields::new().with("name", "x"));
        assert!(c.write(EntityKind::Vendor, vec![create]).await.is_err());
        assert_eq!(fs::read_to_string(&path).unwrap(), content);
    }
}

#[tokio::test]
async fn creates_continue_the_id_sequence() {
    let dir = folder();
    put(
        &dir,
        "contacts.csv",
        "id,name\nC0002,Ann\nC0009,Bob\nC0003,Cy\n",
    );
    let c = csv_in(&dir);
    let create = |name: &str| WriteOp::create(Fields::new().with("name", name));
    let outcomes = write(&c, CONTACT, vec![create("Dee"), create("Eve")]).await;
    assert_eq!(ok(&outcomes[0]).id, "C0010");
    assert_eq!(ok(&outcomes[1]).id, "C0011");
    assert_eq!(
        get(&dir, "contacts.csv"),
        "id,name\nC0002,Ann\nC0009,Bob\nC0003,Cy\nC0010,Dee\nC0011,Eve\n"
    );
}

#[tokio::test]
async fn creates_in_new_files_use_a_prefix_per_kind() {
    let dir = folder();
    let c = csv_in(&dir);
    let create = || WriteOp::create(Fields::new().with("name", "Acme").with("city", "Gent"));
    for (kind, id) in [
        (EntityKind::Contact, "C0001"),
        (EntityKind::Customer, "K0001"),
        (EntityKind::Vendor, "V0001"),
        (EntityKind::BankAccount, "B0001"),
    ] {
        let outcomes = write(&c, kind, vec![create(), create()]).await;
        assert_eq!(ok(&outcomes[0]).id, id);
        assert_eq!(ok(&outcomes[0]).modified_at, None);
    }
    // The header of a new file is `id` and the fields used.
    assert_eq!(
        get(&dir, "vendors.csv"),
        "id,city,name\nV0001,Gent,Acme\nV0002,Gent,Acme\n"
    );
}

#[tokio::test]
async fn a_stale_version_conflicts_and_the_other_ops_still_apply() {
    let dir = folder();
    put(&dir, "customers.csv", "id,name\nK1,Acme\nK2,Bolt\n");
    let c = csv_in(&dir);
    let records = read(&c, EntityKind::Customer).await;
    let outcomes = write(
        &c,
        EntityKind::Customer,
        vec![
            update(
                "K1",
                Some("0000000000000000"),
                &[("name", Value::text("Stale"))],
            ),
            update(
                "K2",
                records[1].version.as_deref(),
                &[("name", Value::text("Bolt NV"))],
            ),
            WriteOp::Delete {
                id: "K1".into(),
                version: Some("0000000000000000".into()),
            },
        ],
    )
    .await;
    assert_eq!(
        outcomes[0],
        Err(ConnectorError::Conflict { id: "K1".into() })
    );
    assert_eq!(ok(&outcomes[1]).id, "K2");
    assert_eq!(
        outcomes[2],
        Err(ConnectorError::Conflict { id: "K1".into() })
    );
    assert_eq!(get(&dir, "customers.csv"), "id,name\nK1,Acme\nK2,Bolt NV\n");
}

#[tokio::test]
async fn missing_ids_are_not_found() {
    let dir = folder();
    put(&dir, "customers.csv", "id,name\nK1,Acme\n");
    let before = identity(&dir.path().join("customers.csv"));
    let c = csv_in(&dir);
    let outcomes = write(
        &c,
        EntityKind::Customer,
        vec![
            update("K9", None, &[("name", Value::text("x"))]),
            WriteOp::Delete {
                id: "K8".into(),
                version: None,
            },
        ],
    )
    .await;
    assert_eq!(
        outcomes[0],
        Err(ConnectorError::NotFound { id: "K9".into() })
    );
    assert_eq!(
        outcomes[1],
        Err(ConnectorError::NotFound { id: "K8".into() })
    );
    // Nothing succeeded, so nothing was rewritten; no file is created either.
    assert_eq!(identity(&dir.path().join("customers.csv")), before);
    let outcomes = write(
        &c,
        EntityKind::Vendor,
        vec![WriteOp::Delete {
            id: "V1".into(),
            version: None,
        }],
    )
    .await;
    assert!(outcomes[0].is_err());
    assert!(!dir.path().join("vendors.csv").exists());
}

#[tokio::test]
async fn delete_removes_the_row() {
    let dir = folder();
    put(&dir, "bank_accounts.csv", "id,iban\nB1,BE1\nB2,BE2\n");
    let c = csv_in(&dir);
    let version = read(&c, EntityKind::BankAccount).await[0].version.clone();
    let outcomes = write(
        &c,
        EntityKind::BankAccount,
        vec![
            WriteOp::Delete {
                id: "B1".into(),
                version,
            },
            // Gone within the same call.
            update("B1", None, &[("iban", Value::text("BE9"))]),
        ],
    )
    .await;
    assert_eq!(
        ok(&outcomes[0]),
        &Written {
            id: "B1".into(),
            version: None,
            modified_at: None
        }
    );
    assert_eq!(
        outcomes[1],
        Err(ConnectorError::NotFound { id: "B1".into() })
    );
    assert_eq!(get(&dir, "bank_accounts.csv"), "id,iban\nB2,BE2\n");
}

#[tokio::test]
async fn rewrites_leave_no_tmp_file() {
    for format in [Format::Csv, Format::Jsonl] {
        let dir = folder();
        let c = FileConnector::new(dir.path().to_owned(), format);
        write(
            &c,
            CONTACT,
            vec![WriteOp::create(Fields::new().with("name", "Ann"))],
        )
        .await;
        write(
            &c,
            CONTACT,
            vec![update("C0001", None, &[("name", Value::text("Anna"))])],
        )
        .await;
        let names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name != lock::LOCK_FILE)
            .collect();
        assert_eq!(names, vec![format!("contacts.{}", format.extension())]);
    }
}

#[tokio::test]
async fn malformed_csv_names_file_and_line_and_is_left_alone() {
    let dir = folder();
    let c = csv_in(&dir);
    let path = dir.path().join("contacts.csv");
    let cases: [(&[u8], &str); 6] = [
        (
            b"id,name,city,phone,email\nC1,a,b,c,d\nC2,a,b,c,d\nC3,a,b\n",
            "line 4: expected 5 fields, found 3",
        ),
        (
            b"id,name\nC1,Ann\nC2,B\xffb\n",
            "line 3: invalid UTF-8 in column `name`",
        ),
        (b"name,city\nAnn,Gent\n", "line 1: no `id` column"),
        (b"id,name\nC1,Ann\n,Bob\n", "line 3: empty id"),
        (
            b"id,name\nC1,Ann\nC2,Bob\nC1,Cy\n",
            "line 4: duplicate id `C1` (first on line 2)",
        ),
        (
            b"id,modified_at\nC1,2024-05-01T12:00:00Z\nC2,tomorrow\n",
            "line 3: column `modified_at`:",
        ),
    ];
    for (content, message) in cases {
        fs::write(&path, content).unwrap();
        let err = c.read(CONTACT, None).await.unwrap_err();
        assert!(matches!(err, ConnectorError::Fatal { .. }), "{err:?}");
        let expected = format!("{} {message}", path.display());
        assert!(err.to_string().starts_with(&expected), "{err} / {expected}");
        let ops = vec![
            WriteOp::create(Fields::new().with("name", "x")),
            update("C1", None, &[("name", Value::text("y"))]),
        ];
        let err = c.write(CONTACT, ops).await.unwrap_err();
        assert!(err.to_string().starts_with(&expected), "{err}");
        assert_eq!(fs::read(&path).unwrap(), content);
    }
}

#[tokio::test]
async fn business_relations_are_a_list() {
    let dir = folder();
    put(
        &dir,
        "contacts.csv",
        "id,business_relations\nC1, CUST ;;VEND\nC2,\n",
    );
    put(
        &dir,
        "customers.csv",
        "id,business_relations\nK1,CUST;VEND\n",
    );
    let c = csv_in(&dir);
    let records = read(&c, CONTACT).await;
    assert_eq!(
        records[0].fields.get("business_relations"),
        Some(&Value::list(vec!["CUST".into(), "VEND".into()]))
    );
    assert!(records[1].fields.is_empty());
    // Only contacts have relations; for customers the column is unknown.
    assert!(read(&c, EntityKind::Customer).await[0].fields.is_empty());

    let relations = Value::list(vec!["BANK".into(), "CUST".into()]);
    write(
        &c,
        CONTACT,
        vec![update(
            "C2",
            None,
            &[("business_relations", relations.clone())],
        )],
    )
    .await;
    assert_eq!(
        get(&dir, "contacts.csv"),
        "id,business_relations\nC1, CUST ;;VEND\nC2,BANK;CUST\n"
    );
    assert_eq!(
        read(&c, CONTACT).await[1].fields.get("business_relations"),
        Some(&relations)
    );
}

#[tokio::test]
async fn modified_at_is_read_and_stamped() {
    let dir = folder();
    put(
        &dir,
        "contacts.csv",
        "id,name,modified_at\nC1,Ann,2024-05-01T12:00:00Z\nC2,Bob,\n",
    );
    let c = csv_in(&dir);
    let records = read(&c, CONTACT).await;
    assert_eq!(
        records[0].modified_at,
        Some(Timestamp::parse("2024-05-01T12:00:00Z").unwrap())
    );
    assert_eq!(records[1].modified_at, None);
    assert!(records[0].fields.get("modified_at").is_none());

    let before = Timestamp::now();
    let outcomes = write(
        &c,
        CONTACT,
        vec![
            update("C2", None, &[("name", Value::text("Bobby"))]),
            WriteOp::create(Fields::new().with("name", "Cy")),
        ],
    )
    .await;
    let stamp = ok(&outcomes[0]).modified_at.unwrap();
    assert!(stamp >= before);
    assert_eq!(ok(&outcomes[1]).modified_at, Some(stamp));
    let records = read(&c, CONTACT).await;
    assert_eq!(
        records[0].modified_at,
        Some(Timestamp::parse("2024-05-01T12:00:00Z").unwrap())
    );
    assert_eq!(records[1].modified_at, Some(stamp));
    assert_eq!(records[2].modified_at, Some(stamp));
}

#[tokio::test]
async fn jsonl_stamps_modified_at_when_rows_carry_it() {
    let dir = folder();
    put(
        &dir,
        "vendors.jsonl",
        "{\"id\":\"V1\",\"name\":\"Acme\",\"modified_at\":\"2024-05-01\"}\n",
    );
    let c = jsonl_in(&dir);
    let outcomes = write(
        &c,
        EntityKind::Vendor,
        vec![update("V1", None, &[("city", Value::text("Gent"))])],
    )
    .await;
    let stamp = ok(&outcomes[0]).modified_at.unwrap();
    assert_eq!(
        read(&c, EntityKind::Vendor).await[0].modified_at,
        Some(stamp)
    );
}

#[tokio::test]
async fn fields_the_kind_does_not_have_are_refused() {
    let dir = folder();
    put(&dir, "customers.csv", "id,name\nK1,Acme\n");
    let c = csv_in(&dir);
    let outcomes = write(
        &c,
        EntityKind::Customer,
        vec![
            update("K1", None, &[("iban", Value::text("BE1"))]),
            update("K1", None, &[("id", Value::text("K2"))]),
            WriteOp::create(Fields::new().with("modified_at", "now")),
        ],
    )
    .await;
    for outcome in &outcomes {
        assert!(
            matches!(outcome, Err(ConnectorError::InvalidRecord { .. })),
            "{outcome:?}"
        );
    }
    assert_eq!(get(&dir, "customers.csv"), "id,name\nK1,Acme\n");
}

#[tokio::test]
async fn a_byte_order_mark_is_not_part_of_the_header_and_is_kept() {
    let dir = folder();
    put(&dir, "contacts.csv", "\u{feff}id,name\nC1,Ann\n");
    let c = csv_in(&dir);
    assert_eq!(read(&c, CONTACT).await[0].id, "C1");
    write(
        &c,
        CONTACT,
        vec![update("C1", None, &[("name", Value::text("Anna"))])],
    )
    .await;
    assert_eq!(get(&dir, "contacts.csv"), "\u{feff}id,name\nC1,Anna\n");
}

#[test]
fn the_factory_resolves_paths_and_names_unknown_settings() {
    let context = BuildContext {
        base_dir: PathBuf::from("/etc/tandem"),
    };
    let factory = FileConnectorFactory;
    assert_eq!(factory.type_name(), "file");
    let built = factory
        .build(
            serde_json::json!({"path": "data", "format": "jsonl"}),
            &context,
        )
        .unwrap();
    let debug = format!("{built:?}");
    assert!(
        debug.contains("/etc/tandem/data") && debug.contains("Jsonl"),
        "{debug}"
    );

    let err = factory
        .build(
            serde_json::json!({"path": "data", "formt": "csv"}),
            &context,
        )
        .unwrap_err();
    assert!(matches!(err, ConnectorError::Config { .. }));
    assert!(err.to_string().contains("formt"), "{err}");
    let err = factory
        .build(
            serde_json::json!({"path": "data", "format": "xml"}),
            &context,
        )
        .unwrap_err();
    assert!(err.to_string().contains("xml"), "{err}");
}

#[test]
fn capabilities_are_full_listings_with_writes() {
    let c = FileConnector::new(PathBuf::from("data"), Format::default());
    let caps = c.capabilities();
    assert_eq!(caps.kinds, EntityKind::ALL.to_vec());
    assert!(!caps.incremental && caps.write && caps.delete);
    assert!(caps.max_batch >= 100_000);
    assert_eq!(
        c.file(EntityKind::BankAccount),
        PathBuf::from("data/bank_accounts.csv")
    );
}

/// The fingerprint vouched for after a write is taken from the bytes as they were
/// written, not read back: it must be the one a read of the file gives, for every
/// layout a save keeps (a byte order mark, CR LF, a big file made on several threads)
/// and for JSON Lines.
#[tokio::test]
async fn the_fingerprint_of_a_write_is_that_of_the_file_it_left() {
    let big: String = (0..60_000).map(|i| format!("C{i},Name {i}\r\n")).collect();
    let files = [
        ("contacts.csv", "\u{feff}id,name\r\nC1,Acme\r\n".to_owned()),
        ("contacts.csv", format!("id,name\r\n{big}")),
        (
            "contacts.jsonl",
            "{\"id\":\"C1\",\"name\":\"Acme\"}\n".to_owned(),
        ),
    ];
    for (name, content) in files {
        let dir = folder();
        put(&dir, name, &content);
        let c = match name.ends_with(".csv") {
            true => csv_in(&dir),
            false => jsonl_in(&dir),
        };
        let since = c.fingerprint(CONTACT).await.unwrap().unwrap();
        let ops = vec![
            WriteOp::create(Fields::new().with("name", "Beta \"quoted\", with a comma")),
            update("C1", None, &[("name", Value::text("Acme, renamed"))]),
        ];
        assert!(
            write(&c, CONTACT, ops).await.iter().all(Result::is_ok),
            "{name}"
        );
        let vouched = c
            .fingerprint_after_own_writes(CONTACT, &since)
            .await
            .unwrap();
        let read = c.fingerprint(CONTACT).await.unwrap();
        assert!(vouched.is_some(), "{name}");
        assert_eq!(vouched, read, "{name}");
    }
}

#[tokio::test]
async fn a_fingerprint_follows_the_content_and_vouches_only_for_own_writes() {
    let dir = folder();
    put(&dir, "contacts.csv", "id,name\nC1,Acme\n");
    let c = csv_in(&dir);
    let first = c.fingerprint(CONTACT).await.unwrap().unwrap();
    assert_eq!(c.fingerprint(CONTACT).await.unwrap().unwrap(), first);
    // No write: the fingerprint stands as long as nobody edits the file.
    assert_eq!(
        c.fingerprint_after_own_writes(CONTACT, &first)
            .await
            .unwrap()
            .as_deref(),
        Some(first.as_str())
    );

    // Own writes: vouched for, ending at the new content.
    let create = WriteOp::create(Fields::new().with("name", "Beta"));
    assert!(write(&c, CONTACT, vec![create.clone()]).await[0].is_ok());
    let after = c
        .fingerprint_after_own_writes(CONTACT, &first)
        .await
        .unwrap()
        .expect("only this instance wrote");
    assert_ne!(after, first);
    assert_eq!(
        c.fingerprint(CONTACT).await.unwrap().as_deref(),
        Some(after.as_str())
    );

    // Someone else's edit between the fingerprint and a write: not vouched for.
    let since = c.fingerprint(CONTACT).await.unwrap().unwrap();
    put(
        &dir,
        "contacts.csv",
        get(&dir, "contacts.csv") + "C9,Edited by hand\n",
    );
    assert!(write(&c, CONTACT, vec![create.clone()]).await[0].is_ok());
    assert_eq!(
        c.fingerprint_after_own_writes(CONTACT, &since)
            .await
            .unwrap(),
        None
    );

    // An edit after the last own write: not vouched for either.
    let since = c.fingerprint(CONTACT).await.unwrap().unwrap();
    assert!(write(&c, CONTACT, vec![create]).await[0].is_ok());
    put(
        &dir,
        "contacts.csv",
        get(&dir, "contacts.csv") + "C10,Later\n",
    );
    assert_eq!(
        c.fingerprint_after_own_writes(CONTACT, &since)
            .await
            .unwrap(),
        None
    );
    // A missing file has a fingerprint too; a missing folder is an error.
    assert_eq!(
        c.fingerprint(EntityKind::Vendor).await.unwrap().as_deref(),
        Some("none")
    );
    let gone = FileConnector::new(dir.path().join("nope"), Format::Csv);
    assert!(gone.fingerprint(CONTACT).await.is_err());
}

/// Two writes in a row start the second from the table the first saved; an edit by
/// hand in between is seen (the file is parsed again), never overwritten.
#[tokio::test]
async fn a_write_after_an_own_write_keeps_edits_made_in_between() {
    for (c, name, dir) in [
        {
            let dir = folder();
            put(&dir, "contacts.csv", "id,name\nC1,Acme\n");
            (csv_in(&dir), "contacts.csv", dir)
        },
        {
            let dir = folder();
            put(
                &dir,
                "contacts.jsonl",
                "{\"id\":\"C1\",\"name\":\"Acme\"}\n",
            );
            (jsonl_in(&dir), "contacts.jsonl", dir)
        },
    ] {
        let create = |name: &str| WriteOp::create(Fields::new().with("name", name));
        let first = write(&c, CONTACT, vec![create("Beta")]).await;
        let beta = ok(&first[0]).clone();
        // Straight after: starts from the saved table; versions stay those of a read.
        let second = write(
            &c,
            CONTACT,
            vec![update(
                &beta.id,
                beta.version.as_deref(),
                &[("city", Value::text("Gent"))],
            )],
        )
        .await;
        let read_back = read(&c, CONTACT).await;
        let beta_read = read_back.iter().find(|r| r.id == beta.id).unwrap();
        assert_eq!(beta_read.version, ok(&second[0]).version, "{name}");
        assert_eq!(beta_read.fields.text("city"), Some("Gent"), "{name}");

        // A hand edit after the last write: the next write keeps it.
        let edited = get(&dir, name).replace("Acme", "Acme by hand");
        put(&dir, name, &edited);
        let third = write(&c, CONTACT, vec![create("Gamma")]).await;
        assert!(third[0].is_ok(), "{name}");
        let text = get(&dir, name);
        assert!(text.contains("Acme by hand"), "{name}: {text}");
        assert!(
            text.contains("Gamma") && text.contains("Gent"),
            "{name}: {text}"
        );
    }
}

mod safe_rewrites;

/// A contacts file of `rows` rows, with a byte order mark, CR LF line ends and quoted
/// line ends in every row: big enough to be read a page at a time.
fn big_contacts(dir: &TempDir, rows: usize, tail: &str) {
    let mut text = String::from("\u{feff}id,name,notes\r\n");
    for i in 0..rows {
        text.push_str(&format!(
            "C{i},\"Ann \"\"{i}\"\"\",\"a,\r\nb {i} {:060}\"\r\n",
            i
        ));
    }
    text.push_str(tail);
    put(dir, "contacts.csv", text);
}

/// Every page of a full listing, in order.
async fn pages(c: &FileConnector, kind: EntityKind) -> Result<Vec<Vec<Record>>, ConnectorError> {
    let mut pages = Vec::new();
    let mut cursor = None;
    loop {
        let page = c.read(kind, cursor.as_ref()).await?;
        assert_eq!(page.listing, Listing::Full);
        pages.push(page.records);
        if !page.has_more {
            assert_eq!(page.cursor, None);
            return Ok(pages);
        }
        assert!(page.cursor.is_some() && page.cursor != cursor);
        cursor = page.cursor;
    }
}

#[tokio::test]
async fn a_big_file_is_listed_a_page_at_a_time_and_its_pages_are_the_file() {
    let dir = folder();
    big_contacts(&dir, 250_000, "");
    let c = csv_in(&dir);
    let pages = pages(&c, CONTACT).await.unwrap();
    assert!(pages.len() > 1, "{} pages", pages.len());
    let paged: Vec<Record> = pages.into_iter().flatten().collect();
    let whole = csv::read(&dir.path().join("contacts.csv"), CONTACT).unwrap();
    assert_eq!(paged.len(), 250_000);
    assert!(paged == whole, "the pages differ from the file read whole");
    assert_eq!(paged[0].id, "C0");
    assert_eq!(paged[0].fields.text("name"), Some("Ann \"0\""));
}

#[tokio::test]
async fn a_duplicate_id_in_a_big_file_is_found_across_pages_on_its_line() {
    let dir = folder();
    big_contacts(&dir, 250_000, "C7,again,\r\n");
    let c = csv_in(&dir);
    let error = pages(&c, CONTACT).await.unwrap_err().to_string();
    // The lines a reader of the whole file gives those rows.
    let mut reader = ::csv::Reader::from_path(dir.path().join("contacts.csv")).unwrap();
    let lines: Vec<u64> = (reader.records())
        .map(Result::unwrap)
        .filter(|r| &r[0] == "C7")
        .map(|r| r.position().unwrap().line())
        .collect();
    assert!(error.contains(&format!("line {}:", lines[1])), "{error}");
    let first = format!("duplicate id `C7` (first on line {})", lines[0]);
    assert!(error.contains(&first), "{error}");
    // The next listing starts afresh.
    big_contacts(&dir, 250_000, "");
    assert_eq!(pages(&c, CONTACT).await.unwrap().concat().len(), 250_000);
}

#[tokio::test]
async fn a_page_asked_for_after_its_listing_started_again_is_refused() {
    let dir = folder();
    big_contacts(&dir, 250_000, "");
    let c = csv_in(&dir);
    let first = c.read(CONTACT, None).await.unwrap();
    assert!(first.has_more);
    c.read(CONTACT, None).await.unwrap();
    let stale = Cursor("piece 99 of 100".to_owned());
    let error = c.read(CONTACT, Some(&stale)).await.unwrap_err();
    assert!(error.is_retryable(), "{error}");
}

/// Every page of a full listing of `kind`.
async fn list_all(c: &FileConnector, kind: EntityKind) -> Vec<Record> {
    let mut records = Vec::new();
    let mut cursor = None;
    loop {
        let page = c.read(kind, cursor.as_ref()).await.unwrap();
        records.extend(page.records);
        if !page.has_more {
            return records;
        }
        cursor = page.cursor;
    }
}

/// A contacts file of 25,000 rows whose third row quotes a name it need not quote: a
/// rewrite writes it unquoted, a splice leaves it as it is.
fn quoted_contacts(dir: &TempDir) -> String {
    contacts_quoting_one(dir, "Gent")
}

/// [`quoted_contacts`], every row with `city`.
fn contacts_quoting_one(dir: &TempDir, city: &str) -> String {
    let mut text = String::from("id,name,city\n");
    for i in 1..=25_000 {
        match i {
            3 => text.push_str(&format!("C3,\"Acme\",{city}\n")),
            _ => text.push_str(&format!("C{i},Name {i},{city}\n")),
        }
    }
    put(dir, "contacts.csv", &text);
    text
}

/// The fingerprint the connector vouches for since `since` (its own writes alone) is
/// the file's as it is now.
async fn assert_vouches_for_the_file(c: &FileConnector, since: &str) {
    let vouched = c
        .fingerprint_after_own_writes(CONTACT, since)
        .await
        .unwrap();
    assert_eq!(vouched, c.fingerprint(CONTACT).await.unwrap());
}

/// A write of a few rows right after a full listing splices the file: the rows it
/// touches are written anew, every other byte stays (the unneeded quotes of `C3`
/// too), and the fingerprint vouched for is the file's.
#[tokio::test]
async fn a_few_rows_written_after_a_listing_are_spliced_into_the_file() {
    let dir = folder();
    let text = quoted_contacts(&dir);
    let c = csv_in(&dir);
    let since = c.fingerprint(CONTACT).await.unwrap().unwrap();
    assert_eq!(list_all(&c, CONTACT).await.len(), 25_000);
    let ops = vec![
        update(
            "C5",
            None,
            &[("name", Value::text("Renamed, with a comma"))],
        ),
        WriteOp::Delete {
            id: "C7".into(),
            version: None,
        },
        WriteOp::create(Fields::new().with("name", "New")),
    ];
    let outcomes = write(&c, CONTACT, ops).await;
    assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
    assert_eq!(ok(&outcomes[2]).id, "C25001");
    let expected = text
        .replace("C5,Name 5,Gent\n", "C5,\"Renamed, with a comma\",Gent\n")
        .replace("C7,Name 7,Gent\n", "")
        + "C25001,New,\n";
    assert_eq!(get(&dir, "contacts.csv"), expected);
    assert_vouches_for_the_file(&c, &since).await;
}

/// [`quoted_contacts`] with rows of about 120 bytes (3 MB: big enough to be scanned).
fn long_quoted_contacts(dir: &TempDir) -> String {
    contacts_quoting_one(dir, &"x".repeat(100))
}

/// A write of a few rows to a big file this run did not list (a scope skipped because
/// it did not change) finds its rows by a scan and splices them in: every other byte
/// stays. Many rows written go the full way, streamed: every other byte stays too.
#[tokio::test]
async fn a_few_rows_written_to_a_file_not_listed_are_spliced_into_it() {
    let dir = folder();
    let text = long_quoted_contacts(&dir);
    let c = csv_in(&dir);
    let since = c.fingerprint(CONTACT).await.unwrap().unwrap();
    let ops = vec![update("C5", None, &[("name", Value::text("Renamed"))])];
    assert!(write(&c, CONTACT, ops).await.iter().all(Result::is_ok));
    let expected = text.replace("C5,Name 5,", "C5,Renamed,");
    assert_eq!(
        get(&dir, "contacts.csv"),
        expected,
        "spliced: C3 keeps its quotes"
    );
    assert_vouches_for_the_file(&c, &since).await;

    // One op per row of a tenth of the file: not a few, not scanned.
    let since = c.fingerprint(CONTACT).await.unwrap().unwrap();
    let ops = (1..=2_500)
        .map(|i| {
            update(
                &format!("C{}", i * 10),
                None,
                &[("name", Value::text("Many"))],
            )
        })
        .collect();
    assert!(write(&c, CONTACT, ops).await.iter().all(Result::is_ok));
    // Streamed the full way: the rows no op names keep their bytes too.
    let expected: String = (expected.split_inclusive('\n'))
        .map(|line| match line.split_once(',') {
            Some((id, rest)) if id[1..].parse::<u32>().is_ok_and(|n| n % 10 == 0) => {
                let (_, city) = rest.split_once(',').unwrap();
                format!("{id},Many,{city}")
            }
            _ => line.to_owned(),
        })
        .collect();
    assert_eq!(get(&dir, "contacts.csv"), expected);
    assert_vouches_for_the_file(&c, &since).await;
}

/// A file edited by someone else after the listing is not spliced: the write reads it
/// anew and keeps the edit.
#[tokio::test]
async fn a_file_edited_after_its_listing_is_rewritten_with_the_edit() {
    let dir = folder();
    let text = quoted_contacts(&dir);
    let c = csv_in(&dir);
    c.fingerprint(CONTACT).await.unwrap();
    list_all(&c, CONTACT).await;
    put(
        &dir,
        "contacts.csv",
        text.clone() + "C30000,Added by hand,Gent\n",
    );
    let ops = vec![update("C5", None, &[("city", Value::text("Brugge"))])];
    assert!(write(&c, CONTACT, ops).await.iter().all(Result::is_ok));
    // Not spliced by the stale index: streamed, the edit kept, every other byte too.
    let expected =
        text.replace("\nC5,Name 5,Gent\n", "\nC5,Name 5,Brugge\n") + "C30000,Added by hand,Gent\n";
    assert_eq!(get(&dir, "contacts.csv"), expected);
}

#[tokio::test]
async fn a_write_to_a_file_with_a_repeated_id_is_refused_on_its_line_and_changes_nothing() {
    let dir = folder();
    let content = "id,name\nC1,Ann\nC2,Bob\nC1,Ann again\n";
    put(&dir, "contacts.csv", content);
    let c = csv_in(&dir);
    let ops = vec![update("C2", None, &[("name", Value::text("Bea"))])];
    let error = c.write(CONTACT, ops).await.unwrap_err().to_string();
    assert!(error.contains("line 4:"), "{error}");
    assert!(
        error.contains("duplicate id `C1` (first on line 2)"),
        "{error}"
    );
    assert_eq!(get(&dir, "contacts.csv"), content);
}

/// A connector that writes CSV files of any size through a journal.
fn journaling_in(dir: &TempDir) -> FileConnector {
    csv_in(dir).journaling_from(0)
}

const TWO: &str = "id,name,city\nC1,Acme,Gent\nC2,Beta,Gent\n";

fn city(id: &str, city: &str) -> WriteOp {
    update(id, None, &[("city", Value::text(city))])
}

/// A run's start on `c`: the fingerprint taken and the contacts listed, which leaves
/// the index a journal begins from.
async fn run_start(c: &FileConnector) -> String {
    let since = c.fingerprint(CONTACT).await.unwrap().unwrap();
    read(c, CONTACT).await;
    since
}

fn journal_of_contacts(dir: &TempDir) -> PathBuf {
    dir.path().join(".contacts.csv.tandem-journal")
}

#[tokio::test]
async fn a_big_file_is_written_through_a_journal_and_folded_before_it_is_read() {
    let dir = folder();
    put(&dir, "contacts.csv", TWO);
    let c = journaling_in(&dir);
    let since = run_start(&c).await;
    assert!(
        ok(&write(&c, CONTACT, vec![city("C2", "Brugge")]).await[0])
            .version
            .is_some()
    );
    // The file as it was; the write beside it.
    assert_eq!(get(&dir, "contacts.csv"), TWO);
    assert!(journal_of_contacts(&dir).exists());
    let records = read(&c, CONTACT).await;
    assert_eq!(records[1].fields.text("city"), Some("Brugge"));
    assert_eq!(
        get(&dir, "contacts.csv"),
        TWO.replace("Beta,Gent", "Beta,Brugge")
    );
    assert!(!journal_of_contacts(&dir).exists());
    // The fold counts as this instance's own write: the next run may skip the file.
    let after = c
        .fingerprint_after_own_writes(CONTACT, &since)
        .await
        .unwrap();
    assert_eq!(after, Some(c.content_fingerprint(CONTACT).unwrap()));
}

/// A first sync lists each contact's codes (R9) in a column the file may lack: the
/// write that adds it waits in the journal as any other, the file untouched, and the
/// fold gives the file the column, every other row an empty cell in it.
#[tokio::test]
async fn a_write_adding_a_column_waits_in_the_journal_and_the_fold_adds_the_column() {
    let dir = folder();
    put(&dir, "contacts.csv", TWO);
    let c = journaling_in(&dir);
    run_start(&c).await;
    let codes = update(
        "C2",
        None,
        &[("business_relations", Value::list(vec!["CUST".into()]))],
    );
    let created = WriteOp::create(Fields::new().with("name", "Gamma"));
    let answers = write(&c, CONTACT, vec![codes, created]).await;
    assert!(answers.iter().all(Result::is_ok), "{answers:?}");
    assert_eq!(get(&dir, "contacts.csv"), TWO);
    assert!(journal_of_contacts(&dir).exists());
    // A later write within the journal's columns goes on in it.
    assert!(
        ok(&write(&c, CONTACT, vec![city("C1", "Brugge")]).await[0])
            .version
            .is_some()
    );
    let records = read(&c, CONTACT).await;
    assert_eq!(
        records[1].fields.get("business_relations"),
        Some(&Value::list(vec!["CUST".into()]))
    );
    assert_eq!(
        get(&dir, "contacts.csv"),
        "id,name,city,business_relations\nC1,Acme,Brugge,\nC2,Beta,Gent,CUST\nC3,Gamma,,\n"
    );
    assert!(!journal_of_contacts(&dir).exists());
}

/// A write that would fill a new journal by itself (a run writing the file in one
/// call) goes into the file at once; a smaller one waits in the journal. With
/// `"always"` (`journaling_from(0)`) both wait.
#[tokio::test]
async fn a_write_that_would_fill_a_journal_by_itself_goes_into_the_file_at_once() {
    let rows: String = (1..=20).map(|i| format!("C{i},Name {i},Gent\n")).collect();
    let content = format!("id,name,city\n{rows}");
    for (from, changed, waits) in [(1, 1, true), (1, 15, false), (0, 15, true)] {
        let dir = folder();
        put(&dir, "contacts.csv", &content);
        let c = csv_in(&dir).journaling_from(from);
        run_start(&c).await;
        let ops = (1..=changed)
            .map(|i| city(&format!("C{i}"), "Brugge"))
            .collect();
        assert!(write(&c, CONTACT, ops).await.iter().all(Result::is_ok));
        let case = format!("journaling from {from} bytes, {changed} of 20 rows written");
        assert_eq!(journal_of_contacts(&dir).exists(), waits, "{case}");
        assert_eq!(get(&dir, "contacts.csv") == content, waits, "{case}");
        let records = read(&c, CONTACT).await;
        let moved = records
            .iter()
            .filter(|r| r.fields.text("city") == Some("Brugge"));
        assert_eq!(moved.count(), changed, "{case}");
        assert!(!journal_of_contacts(&dir).exists(), "{case}");
    }
}

#[tokio::test]
async fn the_end_of_a_run_folds_the_journal_as_its_own_write() {
    let dir = folder();
    put(&dir, "contacts.csv", TWO);
    let c = journaling_in(&dir);
    let since = run_start(&c).await;
    write(&c, CONTACT, vec![city("C1", "Aalst")]).await;
    write(&c, CONTACT, vec![city("C2", "Brugge")]).await;
    let after = c
        .fingerprint_after_own_writes(CONTACT, &since)
        .await
        .unwrap();
    let expected = "id,name,city\nC1,Acme,Aalst\nC2,Beta,Brugge\n";
    assert_eq!(get(&dir, "contacts.csv"), expected);
    assert_eq!(after, Some(c.content_fingerprint(CONTACT).unwrap()));
}

#[tokio::test]
async fn a_connector_let_go_folds_its_journal() {
    let dir = folder();
    put(&dir, "contacts.csv", TWO);
    let c = journaling_in(&dir);
    run_start(&c).await;
    write(&c, CONTACT, vec![city("C2", "Brugge")]).await;
    assert_eq!(get(&dir, "contacts.csv"), TWO);
    drop(c);
    assert_eq!(
        get(&dir, "contacts.csv"),
        TWO.replace("Beta,Gent", "Beta,Brugge")
    );
    assert!(!journal_of_contacts(&dir).exists());
}

#[tokio::test]
async fn a_journal_a_killed_process_left_is_folded_by_the_next() {
    let dir = folder();
    put(&dir, "contacts.csv", TWO);
    let c = journaling_in(&dir);
    run_start(&c).await;
    let created = write(
        &c,
        CONTACT,
        vec![WriteOp::create(Fields::new().with("name", "Cera"))],
    )
    .await;
    assert_eq!(ok(&created[0]).id, "C3");
    // Killed: nothing of the connector runs any more, the journal stays.
    std::mem::forget(c);
    assert_eq!(get(&dir, "contacts.csv"), TWO);
    let next = csv_in(&dir);
    next.fingerprint(CONTACT).await.unwrap();
    assert_eq!(get(&dir, "contacts.csv"), format!("{TWO}C3,Cera,\n"));
    assert!(!journal_of_contacts(&dir).exists());
}

#[tokio::test]
async fn a_file_edited_while_its_journal_is_open_keeps_the_edit_and_the_writes() {
    let dir = folder();
    put(&dir, "contacts.csv", TWO);
    let c = journaling_in(&dir);
    run_start(&c).await;
    write(&c, CONTACT, vec![city("C2", "Brugge")]).await;
    // Someone edits the other row meanwhile.
    put(
        &dir,
        "contacts.csv",
        TWO.replace("Acme,Gent", "Acme NV,Gent"),
    );
    let records = read(&c, EntityKind::Contact).await;
    let names: Vec<_> = records.iter().map(|r| r.fields.text("name")).collect();
    assert_eq!(names, [Some("Acme NV"), Some("Beta")]);
    assert_eq!(records[1].fields.text("city"), Some("Brugge"));
}
