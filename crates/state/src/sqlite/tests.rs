use std::collections::HashMap;

use serde_json::json;
use tandem_model::{EntityKind, Fields, Timestamp};
use tempfile::TempDir;

use super::*;

fn temp() -> (TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    (dir, path)
}

fn open(path: &Path) -> SqliteState {
    SqliteState::open(path, LockMode::Exclusive).unwrap()
}

fn link(code: &str, contact: &str, account: &str) -> Link {
    Link {
        code: code.to_owned(),
        contact_id: contact.to_owned(),
        account_id: account.to_owned(),
        baseline: Fields::new().with("name", format!("Name of {contact}").as_str()),
        contact_version: Some(format!("cv-{contact}")),
        account_version: None,
        last_error: None,
        failure_count: 0,
        linked_at: Timestamp(1_700_000_000_000),
        synced_at: Timestamp(1_700_000_000_500),
    }
}

fn upsert(state: &mut SqliteState, links: Vec<Link>) -> Result<(), StateError> {
    state.commit(StateBatch {
        upsert_links: links,
        ..StateBatch::default()
    })
}

fn version(path: &Path) -> i64 {
    let conn = Connection::open(path).unwrap();
    user_version(&conn).unwrap()
}

#[test]
fn migrations_apply_on_a_fresh_file_and_reopening_is_a_no_op() {
    let (dir, _) = temp();
    let nested = dir.path().join("a/b/state.db");
    let mut state = open(&nested);
    assert_eq!(state.path(), nested);
    upsert(&mut state, vec![link("CUST", "C1", "K1")]).unwrap();
    drop(state);
    assert_eq!(version(&nested), MIGRATIONS.len() as i64);

    let state = open(&nested);
    assert_eq!(state.count_links("CUST").unwrap(), 1);
    let journal: String = state
        .conn
        .pragma_query_value(None, "journal_mode", |row| row.get(0))
        .unwrap();
    assert_eq!(journal, "wal");
    drop(state);
    assert_eq!(version(&nested), MIGRATIONS.len() as i64);
}

#[test]
fn a_newer_schema_is_refused() {
    let (_dir, path) = temp();
    drop(open(&path));
    let too_new = MIGRATIONS.len() as i64 + 1;
    Connection::open(&path)
        .unwrap()
        .pragma_update(None, "user_version", too_new)
        .unwrap();
    let err = SqliteState::open(&path, LockMode::Shared).unwrap_err();
    assert!(
        matches!(err, StateError::TooNew { found, known, .. }
            if found == too_new && known == MIGRATIONS.len() as i64),
        "{err}"
    );
    assert!(err.to_string().contains(&path.display().to_string()));
}

#[test]
fn a_file_that_is_not_a_database_is_a_clear_open_error() {
    let (_dir, path) = temp();
    fs::write(
        &path,
        "this is not sqlite, just some text that is long enough".repeat(20),
    )
    .unwrap();
    let err = SqliteState::open(&path, LockMode::Exclusive).unwrap_err();
    assert!(matches!(err, StateError::Open { .. }), "{err}");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
}

#[test]
fn an_exclusive_lock_refuses_every_other_open() {
    let (_dir, path) = temp();
    let held = open(&path);
    for mode in [LockMode::Exclusive, LockMode::Shared] {
        let err = SqliteState::open(&path, mode).unwrap_err();
        assert!(matches!(err, StateError::Locked { .. }), "{err}");
        let message = err.to_string();
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(message.contains(".lock"), "{message}");
    }
    drop(held);
    drop(open(&path));
}

#[test]
fn shared_locks_coexist_and_keep_exclusive_out() {
    let (_dir, path) = temp();
    let first = SqliteState::open(&path, LockMode::Shared).unwrap();
    let second = SqliteState::open(&path, LockMode::Shared).unwrap();
    assert_eq!(first.count_links("CUST").unwrap(), 0);
    assert_eq!(second.count_links("CUST").unwrap(), 0);
    let err = SqliteState::open(&path, LockMode::Exclusive).unwrap_err();
    assert!(matches!(err, StateError::Locked { .. }), "{err}");
    drop(first);
    drop(second);
    drop(open(&path));
}

#[test]
fn urls_resolve_against_the_base_folder() {
    let (dir, _) = temp();
    let state =
        SqliteState::open_url("sqlite://data/state.db", dir.path(), LockMode::Exclusive).unwrap();
    assert_eq!(state.path(), dir.path().join("data/state.db"));
    assert!(dir.path().join("data/state.db").exists());
    drop(state);

    let absolute = dir.path().join("abs.db");
    let url = format!("sqlite://{}", absolute.display());
    let state = SqliteState::open_url(&url, Path::new("/nowhere"), LockMode::Exclusive).unwrap();
    assert_eq!(state.path(), absolute);

    for url in [
        "postgres://tandem:hunter2@db/tandem",
        "state.db",
        "sqlite://",
        "sqlite:x.db",
    ] {
        let err = SqliteState::open_url(url, dir.path(), LockMode::Shared).unwrap_err();
        assert!(
            matches!(err, StateError::UnsupportedUrl { .. }),
            "{url}: {err}"
        );
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }
}

#[test]
fn links_round_trip_with_baseline_and_versions() {
    let (_dir, path) = temp();
    let mut state = open(&path);
    let mut full = link("CUST", "C1", "K1");
    full.baseline = Fields::new()
        .with("name", "Acme")
        .with("city", "Gent")
        .with("x_rating", tandem_model::Value::Number(3.5));
    full.account_version = Some("etag-7".into());
    full.last_error = Some("timeout".into());
    full.failure_count = 2;
    upsert(&mut state, vec![full.clone(), link("VEND", "C2", "V1")]).unwrap();
    drop(state);

    let state = open(&path);
    assert_eq!(
        state.links_of_contacts(&["C1"]).unwrap(),
        vec![full.clone()]
    );
    assert_eq!(
        state.links_of_accounts("CUST", &["K1"]).unwrap(),
        vec![full.clone()]
    );
    assert!(state.links_of_accounts("VEND", &["K1"]).unwrap().is_empty());
    assert_eq!(state.links(Some("CUST")).unwrap(), vec![full.clone()]);
    assert_eq!(
        state.links(None).unwrap(),
        vec![full, link("VEND", "C2", "V1")]
    );
    let (contacts, accounts) = state.linked_ids("VEND").unwrap();
    assert_eq!(contacts, HashSet::from(["C2".to_owned()]));
    assert_eq!(accounts, HashSet::from(["V1".to_owned()]));
}

#[test]
fn r2_account_has_at_most_one_contact_per_code() {
    let (_dir, path) = temp();
    let mut state = open(&path);
    upsert(&mut state, vec![link("CUST", "C1", "K1")]).unwrap();

    let err = upsert(&mut state, vec![link("CUST", "C2", "K1")]).unwrap_err();
    match &err {
        StateError::AccountTaken {
            code,
            account_id,
            contact_id,
            linked_contact,
        } => {
            assert_eq!(
                (
                    code.as_str(),
                    account_id.as_str(),
                    contact_id.as_str(),
                    linked_contact.as_str()
                ),
                ("CUST", "K1", "C2", "C1")
            );
        }
        other => panic!("expected AccountTaken, got {other}"),
    }
    let message = err.to_string();
    for part in ["CUST", "K1", "C1", "C2"] {
        assert!(message.contains(part), "{message}");
    }
    assert_eq!(
        state.links(Some("CUST")).unwrap(),
        vec![link("CUST", "C1", "K1")]
    );
    assert!(state.links_of_contacts(&["C2"]).unwrap().is_empty());

    // Nor can a contact that has another account move onto a taken one.
    upsert(&mut state, vec![link("CUST", "C3", "K3")]).unwrap();
    let err = upsert(&mut state, vec![link("CUST", "C3", "K1")]).unwrap_err();
    assert!(
        matches!(&err, StateError::AccountTaken { contact_id, linked_contact, .. }
            if contact_id == "C3" && linked_contact == "C1"),
        "{err}"
    );
    assert_eq!(
        state.links_of_contacts(&["C3"]).unwrap(),
        vec![link("CUST", "C3", "K3")]
    );
    state
        .commit(StateBatch {
            delete_links: vec![("CUST".into(), "C3".into())],
            ..StateBatch::default()
        })
        .unwrap();

    // The same account number under another code is another relation.
    upsert(&mut state, vec![link("VEND", "C2", "K1")]).unwrap();

    // One contact may be customer, vendor and bank account at once.
    upsert(
        &mut state,
        vec![
            link("CUST", "C9", "K9"),
            link("VEND", "C9", "V9"),
            link("BANK", "C9", "B9"),
        ],
    )
    .unwrap();
    let codes: Vec<String> = state
        .links_of_contacts(&["C9"])
        .unwrap()
        .into_iter()
        .map(|l| l.code)
        .collect();
    assert_eq!(codes, ["BANK", "CUST", "VEND"]);

    // Moving an account to another contact works when its old link goes in the same batch.
    state
        .commit(StateBatch {
            delete_links: vec![("CUST".into(), "C1".into())],
            upsert_links: vec![link("CUST", "C2", "K1")],
            ..StateBatch::default()
        })
        .unwrap();
    assert_eq!(
        state.links_of_accounts("CUST", &["K1"]).unwrap(),
        vec![link("CUST", "C2", "K1")]
    );
}

#[test]
fn upsert_replaces_the_link_of_the_same_code_and_contact() {
    let (_dir, path) = temp();
    let mut state = open(&path);
    upsert(&mut state, vec![link("CUST", "C1", "K1")]).unwrap();
    // The same link again is not a conflict with itself.
    upsert(&mut state, vec![link("CUST", "C1", "K1")]).unwrap();

    let mut changed = link("CUST", "C1", "K2");
    changed.baseline = Fields::new().with("name", "Renamed");
    changed.contact_version = Some("cv-2".into());
    changed.failure_count = 1;
    upsert(&mut state, vec![changed.clone()]).unwrap();
    assert_eq!(state.links(None).unwrap(), vec![changed]);
    assert!(state.links_of_accounts("CUST", &["K1"]).unwrap().is_empty());
    assert_eq!(state.count_links("CUST").unwrap(), 1);
}

#[test]
fn delete_links_removes_only_the_named_links() {
    let (_dir, path) = temp();
    let mut state = open(&path);
    upsert(
        &mut state,
        vec![
            link("CUST", "C1", "K1"),
            link("VEND", "C1", "V1"),
            link("CUST", "C2", "K2"),
        ],
    )
    .unwrap();
    state
        .commit(StateBatch {
            delete_links: vec![
                ("CUST".into(), "C1".into()),
                ("CUST".into(), "missing".into()),
            ],
            ..StateBatch::default()
        })
        .unwrap();
    assert_eq!(
        state.links(None).unwrap(),
        vec![link("CUST", "C2", "K2"), link("VEND", "C1", "V1")]
    );
}

#[test]
fn hashes_are_kept_per_scope() {
    let (_dir, path) = temp();
    let mut state = open(&path);
    let files = Scope::new("files", EntityKind::Customer);
    let vendors = Scope::new("files", EntityKind::Vendor);
    let erp = Scope::new("erp", EntityKind::Customer);
    state
        .commit(StateBatch {
            set_hashes: vec![
                (files.clone(), "1".into(), u64::MAX),
                (files.clone(), "2".into(), 2),
                (vendors.clone(), "1".into(), 10),
                (erp.clone(), "1".into(), 20),
            ],
            ..StateBatch::default()
        })
        .unwrap();
    assert_eq!(
        state.hashes(&files).unwrap(),
        HashMap::from([("1".to_owned(), u64::MAX), ("2".to_owned(), 2)])
    );
    assert_eq!(
        state.hashes(&vendors).unwrap(),
        HashMap::from([("1".to_owned(), 10)])
    );

    state
        .commit(StateBatch {
            delete_hashes: vec![(files.clone(), "1".into()), (erp.clone(), "2".into())],
            set_hashes: vec![(files.clone(), "2".into(), 3)],
            ..StateBatch::default()
        })
        .unwrap();
    assert_eq!(
        state.hashes(&files).unwrap(),
        HashMap::from([("2".to_owned(), 3)])
    );
    assert_eq!(
        state.hashes(&vendors).unwrap(),
        HashMap::from([("1".to_owned(), 10)])
    );
    assert_eq!(
        state.hashes(&erp).unwrap(),
        HashMap::from([("1".to_owned(), 20)])
    );
    assert!(
        state
            .hashes(&Scope::new("other", EntityKind::Contact))
            .unwrap()
            .is_empty()
    );

    // Deletes run before sets, so a batch can drop and re-add the same record.
    state
        .commit(StateBatch {
            delete_hashes: vec![(files.clone(), "2".into())],
            set_hashes: vec![(files.clone(), "2".into(), 4)],
            ..StateBatch::default()
        })
        .unwrap();
    assert_eq!(
        state.hashes(&files).unwrap(),
        HashMap::from([("2".to_owned(), 4)])
    );
}

#[test]
fn cursors_are_kept_per_scope() {
    let (_dir, path) = temp();
    let mut state = open(&path);
    let contacts = Scope::new("crm", EntityKind::Contact);
    let customers = Scope::new("erp", EntityKind::Customer);
    assert_eq!(state.cursor(&contacts).unwrap(), None);
    state
        .commit(StateBatch {
            set_cursors: vec![
                (contacts.clone(), "page-1".into()),
                (customers.clone(), "42".into()),
            ],
            ..StateBatch::default()
        })
        .unwrap();
    state
        .commit(StateBatch {
            set_cursors: vec![(contacts.clone(), "page-2".into())],
            ..StateBatch::default()
        })
        .unwrap();
    drop(state);
    let state = open(&path);
    assert_eq!(state.cursor(&contacts).unwrap().as_deref(), Some("page-2"));
    assert_eq!(state.cursor(&customers).unwrap().as_deref(), Some("42"));
    assert_eq!(
        state
            .cursor(&Scope::new("crm", EntityKind::Customer))
            .unwrap(),
        None
    );
}

#[test]
fn runs_are_listed_newest_first() {
    let (_dir, path) = temp();
    let mut state = open(&path);
    let first = state.begin_run("sync").unwrap();
    state
        .finish_run(first, "ok", &json!({"updated": 3}))
        .unwrap();
    let second = state.begin_run("sync").unwrap();
    assert!(second > first);

    let runs = state.runs(10).unwrap();
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[0].id, second);
    assert_eq!(runs[0].status, "running");
    assert_eq!(runs[0].finished_at, None);
    assert_eq!(runs[0].summary, serde_json::Value::Null);
    assert_eq!(runs[1].id, first);
    assert_eq!(runs[1].mode, "sync");
    assert_eq!(runs[1].status, "ok");
    assert_eq!(runs[1].summary, json!({"updated": 3}));
    assert!(runs[1].finished_at.unwrap() >= runs[1].started_at);

    assert_eq!(state.runs(1).unwrap().len(), 1);
    let err = state.finish_run(999, "ok", &json!({})).unwrap_err();
    assert!(err.to_string().contains("end of a run"), "{err}");
}

#[test]
fn lookups_by_many_ids_are_chunked() {
    let (_dir, path) = temp();
    let mut state = open(&path);
    let links: Vec<Link> = (0..2_345)
        .map(|i| link("CUST", &format!("C{i:05}"), &format!("K{i:05}")))
        .collect();
    upsert(&mut state, links.clone()).unwrap();
    // Every third contact is a vendor too.
    let vendors: Vec<Link> = (0..2_345)
        .step_by(3)
        .map(|i| link("VEND", &format!("C{i:05}"), &format!("V{i:05}")))
        .collect();
    upsert(&mut state, vendors).unwrap();

    // Every other id, plus unknown ids and duplicates, across several chunks.
    let mut contacts: Vec<String> = (0..2_345).step_by(2).map(|i| format!("C{i:05}")).collect();
    contacts.extend((0..700).map(|i| format!("X{i}")));
    contacts.push("C00000".into());
    contacts.reverse();
    let ids: Vec<&str> = contacts.iter().map(String::as_str).collect();
    let found = state.links_of_contacts(&ids).unwrap();
    let expected: Vec<Link> = (0..2_345)
        .step_by(2)
        .flat_map(|i| {
            let contact = format!("C{i:05}");
            let mut both = vec![link("CUST", &contact, &format!("K{i:05}"))];
            if i % 3 == 0 {
                both.push(link("VEND", &contact, &format!("V{i:05}")));
            }
            both
        })
        .collect();
    assert_eq!(found.len(), expected.len());
    assert_eq!(found, expected);

    let accounts: Vec<String> = (0..2_345).map(|i| format!("K{i:05}")).collect();
    let ids: Vec<&str> = accounts.iter().map(String::as_str).collect();
    assert_eq!(state.links_of_accounts("CUST", &ids).unwrap(), links);
    assert!(state.links_of_accounts("VEND", &ids).unwrap().is_empty());
    assert!(state.links_of_contacts(&[]).unwrap().is_empty());
}

#[test]
fn a_failing_batch_leaves_nothing_applied() {
    let (_dir, path) = temp();
    let mut state = open(&path);
    let scope = Scope::new("files", EntityKind::Customer);
    upsert(
        &mut state,
        vec![link("CUST", "C1", "K1"), link("CUST", "C2", "K2")],
    )
    .unwrap();

    let err = state
        .commit(StateBatch {
            delete_links: vec![("CUST".into(), "C2".into())],
            // C3 is fine; C4 takes C1's account and fails the batch.
            upsert_links: vec![link("CUST", "C3", "K3"), link("CUST", "C4", "K1")],
            delete_hashes: vec![],
            set_hashes: vec![(scope.clone(), "1".into(), 1)],
            set_cursors: vec![(scope.clone(), "next".into())],
        })
        .unwrap_err();
    assert!(matches!(err, StateError::AccountTaken { .. }), "{err}");
    assert_eq!(
        state.links(None).unwrap(),
        vec![link("CUST", "C1", "K1"), link("CUST", "C2", "K2")]
    );
    assert!(state.hashes(&scope).unwrap().is_empty());
    assert_eq!(state.cursor(&scope).unwrap(), None);

    // The store stays usable after a rolled-back batch.
    upsert(&mut state, vec![link("CUST", "C3", "K3")]).unwrap();
    assert_eq!(state.count_links("CUST").unwrap(), 3);
}

#[test]
fn a_malformed_baseline_names_the_link() {
    let (_dir, path) = temp();
    let mut state = open(&path);
    upsert(&mut state, vec![link("CUST", "C1", "K1")]).unwrap();
    state
        .conn
        .execute(
            "UPDATE links SET baseline = '{not json' WHERE contact_id = 'C1'",
            [],
        )
        .unwrap();
    let err = state.links(None).unwrap_err();
    assert!(matches!(err, StateError::Corrupt { .. }), "{err}");
    let message = err.to_string();
    assert!(
        message.contains("CUST") && message.contains("C1"),
        "{message}"
    );
}

#[test]
fn urls_with_passwords_are_redacted() {
    assert_eq!(
        redact_url("postgres://u:secret@host:5432/db"),
        "postgres://u:***@host:5432/db"
    );
    assert_eq!(redact_url("postgres://host/db"), "postgres://host/db");
    assert_eq!(redact_url("state.db"), "state.db");
}
