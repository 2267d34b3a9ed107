use std::collections::HashMap;

use serde_json::json;
use tandem_model::{EntityKind, Fields, Timestamp, Value};
use tempfile::TempDir;

use super::*;
use crate::testing::both_stores;

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
        parked: false,
        linked_at: Timestamp(1_700_000_000_000),
        synced_at: Timestamp(1_700_000_000_500),
        intent: None,
    }
}

fn upsert(state: &mut dyn StateStore, links: Vec<Link>) -> Result<(), StateError> {
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

/// Opens `path` expecting [`StateError::NotAState`]; checks the message and that the
/// file was left exactly as it was.
fn refused(path: &Path, mode: LockMode, reason: &str) {
    let before = fs::read(path).unwrap();
    let err = SqliteState::open(path, mode).unwrap_err();
    assert!(matches!(err, StateError::NotAState { .. }), "{err}");
    let message = err.to_string();
    for part in [
        &path.display().to_string(),
        "is not a Tandem state",
        reason,
        "Restore it from a backup",
        "delete it",
    ] {
        assert!(message.contains(part), "{part:?} not in: {message}");
    }
    assert_eq!(fs::read(path).unwrap(), before, "the file is untouched");
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    assert!(!Path::new(&wal).exists(), "no write-ahead log was started");
}

#[test]
fn a_file_that_is_not_a_database_is_refused_and_left_alone() {
    let (_dir, path) = temp();
    fs::write(
        &path,
        "this is not sqlite, just some text that is long enough".repeat(20),
    )
    .unwrap();
    refused(&path, LockMode::Exclusive, "not an SQLite database");
    refused(&path, LockMode::Shared, "not an SQLite database");
}

#[test]
fn an_empty_state_file_is_refused_and_left_alone() {
    let (_dir, path) = temp();
    fs::write(&path, "").unwrap();
    refused(&path, LockMode::Exclusive, "empty (0 bytes)");
    // Read-only commands too.
    let err = SqliteState::open_existing(&path, LockMode::Shared).unwrap_err();
    assert!(matches!(err, StateError::NotAState { .. }), "{err}");
    assert_eq!(fs::metadata(&path).unwrap().len(), 0);
}

#[test]
fn another_programs_database_is_refused_and_left_alone() {
    let (_dir, path) = temp();
    {
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL);")
            .unwrap();
    }
    refused(
        &path,
        LockMode::Exclusive,
        "another program (tables invoices)",
    );

    // A schema version without Tandem's tables is not a Tandem state either.
    let (_dir2, path) = temp();
    {
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("CREATE TABLE links (x);").unwrap();
        conn.pragma_update(None, "user_version", 2).unwrap();
    }
    refused(&path, LockMode::Exclusive, "lacks Tandem's tables");
}

#[test]
fn an_sqlite_file_without_tables_becomes_a_new_state() {
    let (_dir, path) = temp();
    {
        // A valid SQLite file (a header page) holding nothing.
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("CREATE TABLE t (x); DROP TABLE t; VACUUM;")
            .unwrap();
    }
    assert!(fs::metadata(&path).unwrap().len() > 0);
    let mut state = open(&path);
    upsert(&mut state, vec![link("CUST", "C1", "K1")]).unwrap();
    drop(state);
    assert_eq!(version(&path), MIGRATIONS.len() as i64);
}

#[test]
fn a_new_state_is_created_whole_and_leaves_no_temporary_file() {
    let (dir, path) = temp();
    drop(open(&path));
    assert_eq!(version(&path), MIGRATIONS.len() as i64);
    let mut names: Vec<String> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["state.db", "state.db.lock"]);
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

both_stores!(links_round_trip_with_baseline_and_versions, |place| {
    let mut state = place.open();
    let mut full = link("CUST", "C1", "K1");
    full.baseline = Fields::new()
        .with("name", "Acme")
        .with("city", "Gent")
        .with("x_rating", Value::Number(3.5));
    full.account_version = Some("etag-7".into());
    full.last_error = Some("timeout".into());
    full.failure_count = 2;
    upsert(&mut *state, vec![full.clone(), link("VEND", "C2", "V1")]).unwrap();
    drop(state);

    let state = place.open();
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
});

both_stores!(r2_account_has_at_most_one_contact_per_code, |place| {
    let mut state = place.open();
    upsert(&mut *state, vec![link("CUST", "C1", "K1")]).unwrap();

    let err = upsert(&mut *state, vec![link("CUST", "C2", "K1")]).unwrap_err();
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
    upsert(&mut *state, vec![link("CUST", "C3", "K3")]).unwrap();
    let err = upsert(&mut *state, vec![link("CUST", "C3", "K1")]).unwrap_err();
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
    upsert(&mut *state, vec![link("VEND", "C2", "K1")]).unwrap();

    // One contact may be customer, vendor and bank account at once.
    upsert(
        &mut *state,
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
});

both_stores!(
    upsert_replaces_the_link_of_the_same_code_and_contact,
    |place| {
        let mut state = place.open();
        upsert(&mut *state, vec![link("CUST", "C1", "K1")]).unwrap();
        // The same link again is not a conflict with itself.
        upsert(&mut *state, vec![link("CUST", "C1", "K1")]).unwrap();

        let mut changed = link("CUST", "C1", "K2");
        changed.baseline = Fields::new().with("name", "Renamed");
        changed.contact_version = Some("cv-2".into());
        changed.failure_count = 1;
        upsert(&mut *state, vec![changed.clone()]).unwrap();
        assert_eq!(state.links(None).unwrap(), vec![changed]);
        assert!(state.links_of_accounts("CUST", &["K1"]).unwrap().is_empty());
        assert_eq!(state.count_links("CUST").unwrap(), 1);
    }
);

both_stores!(delete_links_removes_only_the_named_links, |place| {
    let mut state = place.open();
    upsert(
        &mut *state,
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
});

both_stores!(hashes_are_kept_per_scope, |place| {
    let mut state = place.open();
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
        StoredHashes::from_iter([("1".into(), u64::MAX), ("2".into(), 2)])
    );
    assert_eq!(
        state.hashes(&vendors).unwrap(),
        StoredHashes::from_iter([("1".into(), 10)])
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
        StoredHashes::from_iter([("2".into(), 3)])
    );
    assert_eq!(
        state.hashes(&vendors).unwrap(),
        StoredHashes::from_iter([("1".into(), 10)])
    );
    assert_eq!(
        state.hashes(&erp).unwrap(),
        StoredHashes::from_iter([("1".into(), 20)])
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
        StoredHashes::from_iter([("2".into(), 4)])
    );
});

both_stores!(cursors_are_kept_per_scope, |place| {
    let mut state = place.open();
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
    let state = place.open();
    assert_eq!(state.cursor(&contacts).unwrap().as_deref(), Some("page-2"));
    assert_eq!(state.cursor(&customers).unwrap().as_deref(), Some("42"));
    assert_eq!(
        state
            .cursor(&Scope::new("crm", EntityKind::Customer))
            .unwrap(),
        None
    );
});

both_stores!(runs_are_listed_newest_first, |place| {
    let mut state = place.open();
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
});

both_stores!(lookups_by_many_ids_are_chunked, |place| {
    let mut state = place.open();
    let links: Vec<Link> = (0..2_345)
        .map(|i| link("CUST", &format!("C{i:05}"), &format!("K{i:05}")))
        .collect();
    upsert(&mut *state, links.clone()).unwrap();
    // Every third contact is a vendor too.
    let vendors: Vec<Link> = (0..2_345)
        .step_by(3)
        .map(|i| link("VEND", &format!("C{i:05}"), &format!("V{i:05}")))
        .collect();
    upsert(&mut *state, vendors).unwrap();

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
});

both_stores!(a_failing_batch_leaves_nothing_applied, |place| {
    let mut state = place.open();
    let scope = Scope::new("files", EntityKind::Customer);
    upsert(
        &mut *state,
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
            interactions: vec![interaction("C1", "linked", json!({}))],
            upsert_conflicts: vec![conflict("CUST", "C1", "phone", "1", "2")],
            upsert_pending: vec![pending("CUST", "account", "C9")],
            set_companies: vec![("P1".into(), Some("C1".into()))],
            ..StateBatch::default()
        })
        .unwrap_err();
    assert!(matches!(err, StateError::AccountTaken { .. }), "{err}");
    assert_eq!(
        state.links(None).unwrap(),
        vec![link("CUST", "C1", "K1"), link("CUST", "C2", "K2")]
    );
    assert!(state.hashes(&scope).unwrap().is_empty());
    assert_eq!(state.cursor(&scope).unwrap(), None);
    assert!(state.interactions("C1", 10).unwrap().is_empty());
    assert!(state.conflicts(false).unwrap().is_empty());
    assert!(state.pending_creates().unwrap().is_empty());
    assert_eq!(state.company_of("P1").unwrap(), None);

    // The store stays usable after a rolled-back batch.
    upsert(&mut *state, vec![link("CUST", "C3", "K3")]).unwrap();
    assert_eq!(state.count_links("CUST").unwrap(), 3);
});

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

fn interaction(contact: &str, action: &str, details: serde_json::Value) -> Interaction {
    Interaction {
        // Ignored: the store assigns ids.
        id: 999,
        at: Timestamp(1_700_000_001_000),
        run_id: Some(7),
        contact_id: contact.to_owned(),
        code: "CUST".to_owned(),
        account_id: Some(format!("K-{contact}")),
        action: action.to_owned(),
        source: "contact".to_owned(),
        details: details.into(),
    }
}

fn conflict(code: &str, contact: &str, field: &str, ours: &str, theirs: &str) -> ConflictEntry {
    ConflictEntry {
        id: 0,
        code: code.to_owned(),
        contact_id: contact.to_owned(),
        account_id: format!("K-{contact}"),
        field: field.to_owned(),
        base: Value::text("base"),
        contact_value: Value::text(ours),
        account_value: Value::text(theirs),
        opened_at: Timestamp(1_700_000_002_000),
        run_id: Some(1),
        resolution: None,
        closed_at: None,
    }
}

fn pending(code: &str, side: &str, source: &str) -> PendingCreate {
    PendingCreate {
        code: code.to_owned(),
        side: Side::parse(side).unwrap(),
        source_id: source.to_owned(),
        fields: Fields::new()
            .with("name", format!("Name of {source}").as_str())
            .with("x_terms", Value::Number(30.0)),
        run_id: Some(3),
        error: None,
        failure_count: 0,
        parked: false,
        updated_at: Timestamp(1_700_000_003_000),
        record_id: None,
    }
}

fn commit(state: &mut dyn StateStore, batch: StateBatch) {
    state.commit(batch).unwrap();
}

/// What the store hands back for `entry` stored under `id`.
fn stored(mut entry: Interaction, id: i64) -> Interaction {
    entry.id = id;
    entry
}

both_stores!(
    r11_interaction_log_round_trips_oldest_first_with_a_limit,
    |place| {
        let mut state = place.open();
        let details = json!({"fields": {"phone": {"old": "1", "new": "2"}}, "tier": 0});
        let entries: Vec<Interaction> = (0..5)
            .map(|i| interaction("C1", &format!("action-{i}"), json!({"n": i})))
            .collect();
        let mut other = interaction("C2", "updated", details.clone());
        other.run_id = None;
        other.account_id = None;
        commit(
            &mut *state,
            StateBatch {
                interactions: vec![entries[0].clone(), other.clone(), entries[1].clone()],
                ..StateBatch::default()
            },
        );
        commit(
            &mut *state,
            StateBatch {
                interactions: entries[2..].to_vec(),
                ..StateBatch::default()
            },
        );
        drop(state);

        let state = place.open();
        let all = state.interactions("C1", 100).unwrap();
        assert_eq!(all.len(), 5);
        // Ids are the store's, increasing in the order entries were appended.
        assert!(all.windows(2).all(|w| w[0].id < w[1].id), "{all:?}");
        let expected: Vec<Interaction> = entries
            .iter()
            .zip(&all)
            .map(|(entry, got)| stored(entry.clone(), got.id))
            .collect();
        assert_eq!(all, expected);

        // The three newest, still oldest first.
        assert_eq!(state.interactions("C1", 3).unwrap(), all[2..].to_vec());
        assert!(state.interactions("C1", 0).unwrap().is_empty());

        let theirs = state.interactions("C2", 10).unwrap();
        assert_eq!(theirs.len(), 1);
        assert_eq!(theirs[0], stored(other, theirs[0].id));
        assert_eq!(theirs[0].details.value(), details);
        assert!(state.interactions("nobody", 10).unwrap().is_empty());
    }
);

// A big batch is appended several entries per statement: every entry is kept, in
// order, with its own values.
both_stores!(
    r11_a_big_batch_of_log_entries_keeps_each_in_order,
    |place| {
        let mut state = place.open();
        let entries: Vec<Interaction> = (0..150)
            .map(|i| {
                let mut entry = interaction("C1", &format!("action-{i}"), json!({"n": i}));
                entry.account_id = (i % 3 != 0).then(|| format!("K{i}"));
                entry
            })
            .collect();
        commit(
            &mut *state,
            StateBatch {
                interactions: entries.clone(),
                ..StateBatch::default()
            },
        );
        let all = state.interactions("C1", 1000).unwrap();
        assert!(all.windows(2).all(|w| w[0].id < w[1].id));
        let expected: Vec<Interaction> = entries
            .into_iter()
            .zip(&all)
            .map(|(entry, got)| stored(entry, got.id))
            .collect();
        assert_eq!(all, expected);
    }
);

both_stores!(r15_at_most_one_open_conflict_per_pair_and_field, |place| {
    let mut state = place.open();
    commit(
        &mut *state,
        StateBatch {
            upsert_conflicts: vec![
                conflict("VEND", "C1", "phone", "1", "2"),
                conflict("VEND", "C1", "email", "a@x", "b@x"),
                conflict("CUST", "C1", "phone", "1", "3"),
            ],
            ..StateBatch::default()
        },
    );
    let open_ones = state.conflicts(true).unwrap();
    assert_eq!(open_ones.len(), 3);
    let phone = open_ones[0].clone();
    assert_eq!(
        phone,
        ConflictEntry {
            id: phone.id,
            ..conflict("VEND", "C1", "phone", "1", "2")
        }
    );

    commit(
        &mut *state,
        StateBatch {
            resolve_conflicts: vec![(phone.id, Value::text("2"))],
            ..StateBatch::default()
        },
    );

    // Both sides changed again before the resolution was applied: the same entry gets
    // the new values, and keeps its resolution and opening time.
    let mut again = conflict("VEND", "C1", "phone", "5", "6");
    again.account_id = "K-moved".into();
    again.base = Value::Null;
    again.opened_at = Timestamp(1_800_000_000_000);
    again.run_id = Some(2);
    commit(
        &mut *state,
        StateBatch {
            upsert_conflicts: vec![again.clone()],
            ..StateBatch::default()
        },
    );
    drop(state);

    let state = place.open();
    let all = state.conflicts(false).unwrap();
    assert_eq!(all.len(), 3);
    assert_eq!(
        all[0],
        ConflictEntry {
            id: phone.id,
            opened_at: phone.opened_at,
            resolution: Some(Value::text("2")),
            ..again
        }
    );
    assert_eq!(all[1..], open_ones[1..]);
});

both_stores!(
    r15_a_conflict_is_resolved_then_closed_and_may_open_again,
    |place| {
        let mut state = place.open();
        let first = conflict("VEND", "C1", "phone", "1", "2");
        commit(
            &mut *state,
            StateBatch {
                upsert_conflicts: vec![first.clone(), conflict("VEND", "C2", "phone", "3", "4")],
                ..StateBatch::default()
            },
        );
        let ids: Vec<i64> = state
            .conflicts(true)
            .unwrap()
            .iter()
            .map(|c| c.id)
            .collect();

        // Resolving to an empty value (clear the field) is a resolution, not "none".
        commit(
            &mut *state,
            StateBatch {
                resolve_conflicts: vec![(ids[0], Value::Null)],
                ..StateBatch::default()
            },
        );
        assert_eq!(
            state.conflicts(true).unwrap()[0].resolution,
            Some(Value::Null)
        );

        let closed_at = Timestamp(1_700_000_009_000);
        commit(
            &mut *state,
            StateBatch {
                close_conflicts: vec![
                    ("VEND".into(), "C1".into(), "phone".into(), closed_at),
                    // Nothing open there: not an error.
                    ("VEND".into(), "C1".into(), "email".into(), closed_at),
                ],
                ..StateBatch::default()
            },
        );
        let open_ones = state.conflicts(true).unwrap();
        assert_eq!(open_ones.iter().map(|c| c.id).collect::<Vec<_>>(), [ids[1]]);
        let closed = state.conflicts(false).unwrap()[0].clone();
        assert_eq!(closed.id, ids[0]);
        assert_eq!(closed.closed_at, Some(closed_at));
        assert_eq!(closed.resolution, Some(Value::Null));

        // A closed conflict cannot be resolved any more, and an unknown id is named.
        for id in [ids[0], 4242] {
            let err = state
                .commit(StateBatch {
                    interactions: vec![interaction("C1", "resolved", json!({}))],
                    resolve_conflicts: vec![(id, Value::text("x"))],
                    ..StateBatch::default()
                })
                .unwrap_err();
            assert!(
                matches!(err, StateError::UnknownConflict { id: got } if got == id),
                "{err}"
            );
            assert!(err.to_string().contains(&id.to_string()), "{err}");
        }
        // The failed batches left nothing behind.
        assert!(state.interactions("C1", 10).unwrap().is_empty());

        // The same pair and field conflicts again: a new entry, the closed one stays as it was.
        let mut second = conflict("VEND", "C1", "phone", "7", "8");
        second.opened_at = Timestamp(1_700_000_010_000);
        commit(
            &mut *state,
            StateBatch {
                upsert_conflicts: vec![second.clone()],
                ..StateBatch::default()
            },
        );
        let all = state.conflicts(false).unwrap();
        assert_eq!(all.len(), 3);
        assert_eq!(all[0], closed);
        assert!(all[2].id > ids[1]);
        assert_eq!(
            all[2],
            ConflictEntry {
                id: all[2].id,
                ..second
            }
        );
        assert_eq!(
            state
                .conflicts(true)
                .unwrap()
                .iter()
                .map(|c| c.id)
                .collect::<Vec<_>>(),
            [ids[1], all[2].id]
        );

        // Closing closes only the open one.
        commit(
            &mut *state,
            StateBatch {
                close_conflicts: vec![(
                    "VEND".into(),
                    "C1".into(),
                    "phone".into(),
                    Timestamp(1_700_000_011_000),
                )],
                ..StateBatch::default()
            },
        );
        let all = state.conflicts(false).unwrap();
        assert_eq!(all[0].closed_at, Some(closed_at));
        assert_eq!(all[2].closed_at, Some(Timestamp(1_700_000_011_000)));
    }
);

both_stores!(pending_creates_are_upserted_and_deleted, |place| {
    let mut state = place.open();
    commit(
        &mut *state,
        StateBatch {
            upsert_pending: vec![
                pending("VEND", "account", "C2"),
                pending("CUST", "contact", "K1"),
                pending("CUST", "account", "C1"),
            ],
            ..StateBatch::default()
        },
    );
    assert_eq!(
        state.pending_creates().unwrap(),
        vec![
            pending("CUST", "account", "C1"),
            pending("CUST", "contact", "K1"),
            pending("VEND", "account", "C2"),
        ]
    );

    let mut failed = pending("CUST", "contact", "K1");
    failed.fields = Fields::new().with("name", "Renamed");
    failed.error = Some("invalid record: name too long".into());
    failed.failure_count = 2;
    failed.parked = true;
    failed.run_id = None;
    failed.updated_at = Timestamp(1_700_000_004_000);
    // Sent with the id its connector let Tandem choose (R18).
    failed.record_id = Some("C-7".into());
    commit(
        &mut *state,
        StateBatch {
            upsert_pending: vec![failed.clone()],
            delete_pending: vec![
                ("CUST".into(), Side::Account, "C1".into()),
                ("CUST".into(), Side::Account, "missing".into()),
            ],
            ..StateBatch::default()
        },
    );
    drop(state);
    let state = place.open();
    assert_eq!(
        state.pending_creates().unwrap(),
        vec![failed, pending("VEND", "account", "C2")]
    );
});

both_stores!(r17_parked_links_round_trip, |place| {
    let mut state = place.open();
    let mut parked_vend = link("VEND", "C1", "V1");
    parked_vend.parked = true;
    parked_vend.failure_count = 2;
    parked_vend.last_error = Some("invalid record".into());
    let mut parked_cust = link("CUST", "C2", "K2");
    parked_cust.parked = true;
    upsert(
        &mut *state,
        vec![
            parked_vend.clone(),
            link("CUST", "C1", "K1"),
            parked_cust.clone(),
        ],
    )
    .unwrap();
    drop(state);

    let mut state = place.open();
    assert_eq!(
        state.links_of_contacts(&["C1"]).unwrap(),
        vec![link("CUST", "C1", "K1"), parked_vend.clone()]
    );
    assert_eq!(
        state.parked_links().unwrap(),
        vec![parked_cust.clone(), parked_vend]
    );

    // Retried by hand: unparked. A parked link that moves to another account keeps
    // its flag.
    let mut moved = parked_cust.clone();
    moved.account_id = "K3".into();
    upsert(&mut *state, vec![link("VEND", "C1", "V1"), moved.clone()]).unwrap();
    assert_eq!(state.parked_links().unwrap(), vec![moved]);
});

both_stores!(
    r3_company_of_person_contacts_is_set_and_forgotten,
    |place| {
        let mut state = place.open();
        assert!(!state.holds_companies().unwrap());
        commit(
            &mut *state,
            StateBatch {
                set_companies: vec![
                    ("P1".into(), Some("CO1".into())),
                    ("P2".into(), Some("CO1".into())),
                ],
                ..StateBatch::default()
            },
        );
        assert!(state.holds_companies().unwrap());
        assert_eq!(state.company_of("P1").unwrap().as_deref(), Some("CO1"));
        commit(
            &mut *state,
            StateBatch {
                set_companies: vec![
                    ("P1".into(), Some("CO2".into())),
                    ("P2".into(), None),
                    ("unknown".into(), None),
                ],
                ..StateBatch::default()
            },
        );
        drop(state);
        let state = place.open();
        assert_eq!(state.company_of("P1").unwrap().as_deref(), Some("CO2"));
        assert_eq!(state.company_of("P2").unwrap(), None);
        assert_eq!(state.company_of("CO1").unwrap(), None);
        assert!(state.holds_companies().unwrap());
        let mut state = state;
        commit(
            &mut *state,
            StateBatch {
                set_companies: vec![("P1".into(), None)],
                ..StateBatch::default()
            },
        );
        assert!(!state.holds_companies().unwrap(), "every company forgotten");
    }
);

// Forgetting goes by chunks of ids; every contact of a big batch is forgotten, and
// the last entry for a contact in a batch is the one that counts.
both_stores!(
    r3_companies_forgotten_in_bulk_and_the_last_entry_counts,
    |place| {
        let mut state = place.open();
        let people: Vec<String> = (0..1_234).map(|i| format!("P{i}")).collect();
        commit(
            &mut *state,
            StateBatch {
                set_companies: people
                    .iter()
                    .map(|p| (p.clone(), Some("CO1".to_owned())))
                    .collect(),
                ..StateBatch::default()
            },
        );
        let mut batch: Vec<(String, Option<String>)> =
            people.iter().map(|p| (p.clone(), None)).collect();
        // P7 is forgotten, then given a company again in the same batch.
        batch.push(("P7".into(), Some("CO2".into())));
        // P8 is given a company, then forgotten.
        batch.insert(0, ("P8".into(), Some("CO3".into())));
        commit(
            &mut *state,
            StateBatch {
                set_companies: batch,
                ..StateBatch::default()
            },
        );
        assert_eq!(state.company_of("P7").unwrap().as_deref(), Some("CO2"));
        for p in people.iter().filter(|p| *p != "P7") {
            assert_eq!(state.company_of(p).unwrap(), None, "{p}");
        }
    }
);

both_stores!(
    a_run_left_running_by_a_dead_process_is_marked_interrupted,
    |place| {
        let mut state = place.open();
        let done = state.begin_run("sync").unwrap();
        state.finish_run(done, "partial", &json!({})).unwrap();
        let dead = state.begin_run("sync").unwrap();
        // The process dies here: the run is never finished.
        drop(state);

        let mut state = place.open();
        assert_eq!(state.runs(1).unwrap()[0].status, "running");
        let next = state.begin_run("sync").unwrap();
        let runs = state.runs(10).unwrap();
        let status: Vec<(i64, &str)> = runs.iter().map(|r| (r.id, r.status.as_str())).collect();
        assert_eq!(
            status,
            [(next, "running"), (dead, "interrupted"), (done, "partial")]
        );
        assert_eq!(runs[1].finished_at, None);
    }
);

#[test]
fn open_url_existing_creates_nothing_when_the_state_is_missing() {
    let (dir, _) = temp();
    let mut state = SqliteState::open_url_existing("sqlite://data/state.db", dir.path()).unwrap();
    assert!(state.is_in_memory());
    assert_eq!(state.path(), dir.path().join("data/state.db"));
    assert!(state.links(None).unwrap().is_empty());
    assert!(state.conflicts(false).unwrap().is_empty());
    assert_eq!(
        state
            .cursor(&Scope::new("crm", EntityKind::Contact))
            .unwrap(),
        None
    );
    // Writes go to memory only.
    upsert(&mut state, vec![link("CUST", "C1", "K1")]).unwrap();
    assert_eq!(state.count_links("CUST").unwrap(), 1);
    drop(state);

    let top = dir.path().join("top.db");
    let state =
        SqliteState::open_url_existing(&format!("sqlite://{}", top.display()), Path::new("/x"))
            .unwrap();
    assert!(state.is_in_memory());
    drop(state);

    let left: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");

    let err = SqliteState::open_url_existing("postgres://u:hunter2@h/db", dir.path()).unwrap_err();
    assert!(matches!(err, StateError::UnsupportedUrl { .. }), "{err}");
    assert!(!err.to_string().contains("hunter2"), "{err}");
}

#[test]
fn open_url_existing_reads_an_existing_state_under_a_shared_lock() {
    let (dir, _) = temp();
    let url = "sqlite://data/state.db";
    let mut state = SqliteState::open_url(url, dir.path(), LockMode::Exclusive).unwrap();
    upsert(&mut state, vec![link("CUST", "C1", "K1")]).unwrap();
    // While a sync holds the state, read-only commands are refused at once.
    let err = SqliteState::open_url_existing(url, dir.path()).unwrap_err();
    assert!(matches!(err, StateError::Locked { .. }), "{err}");
    drop(state);

    let first = SqliteState::open_url_existing(url, dir.path()).unwrap();
    let second = SqliteState::open_url_existing(url, dir.path()).unwrap();
    assert!(!first.is_in_memory());
    assert_eq!(first.path(), dir.path().join("data/state.db"));
    assert_eq!(first.links(None).unwrap(), vec![link("CUST", "C1", "K1")]);
    assert_eq!(second.count_links("CUST").unwrap(), 1);
    let err = SqliteState::open_url(url, dir.path(), LockMode::Exclusive).unwrap_err();
    assert!(matches!(err, StateError::Locked { .. }), "{err}");
}

#[test]
fn open_url_read_only_reads_while_a_sync_holds_the_state_and_sees_its_commits() {
    let (dir, _) = temp();
    let url = "sqlite://data/state.db";
    let missing = SqliteState::open_url_read_only(url, dir.path()).unwrap();
    assert!(missing.is_in_memory(), "a missing state is an empty one");
    drop(missing);
    assert!(!dir.path().join("data").exists(), "and nothing is created");

    let mut state = SqliteState::open_url(url, dir.path(), LockMode::Exclusive).unwrap();
    upsert(&mut state, vec![link("CUST", "C1", "K1")]).unwrap();
    let reader = SqliteState::open_url_read_only(url, dir.path()).unwrap();
    assert!(!reader.is_in_memory());
    assert_eq!(reader.links(None).unwrap(), vec![link("CUST", "C1", "K1")]);
    // The holder's next commit is seen by the open reader.
    upsert(&mut state, vec![link("CUST", "C2", "K2")]).unwrap();
    assert_eq!(reader.count_links("CUST").unwrap(), 2);
    // The lock stays the holder's alone.
    let err = SqliteState::open_url(url, dir.path(), LockMode::Exclusive);
    assert!(matches!(err, Err(StateError::Locked { .. })));
}

#[test]
fn a_version_1_state_is_migrated_and_keeps_its_links() {
    let (_dir, path) = temp();
    {
        // A state written by the first release: migration 1 only.
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(MIGRATION_1_INITIAL).unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        conn.execute(
            "INSERT INTO links (code, contact_id, account_id, baseline, contact_version, \
             account_version, last_error, failure_count, linked_at, synced_at) \
             VALUES ('CUST', 'C1', 'K1', '{\"name\":\"Name of C1\"}', 'cv-C1', NULL, NULL, 0, \
             1700000000000, 1700000000500)",
            [],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO runs (mode, started_at, status) VALUES ('sync', 1, 'ok')",
            [],
        )
        .unwrap();
    }
    assert_eq!(version(&path), 1);

    let mut state = open(&path);
    assert_eq!(state.links(None).unwrap(), vec![link("CUST", "C1", "K1")]);
    assert!(state.parked_links().unwrap().is_empty());
    assert_eq!(state.runs(10).unwrap().len(), 1);
    // The new tables are there.
    commit(
        &mut state,
        StateBatch {
            interactions: vec![interaction("C1", "linked", json!({}))],
            upsert_conflicts: vec![conflict("CUST", "C1", "phone", "1", "2")],
            upsert_pending: vec![pending("CUST", "account", "C2")],
            set_companies: vec![("P1".into(), Some("C1".into()))],
            ..StateBatch::default()
        },
    );
    assert_eq!(state.interactions("C1", 10).unwrap().len(), 1);
    assert_eq!(state.conflicts(true).unwrap().len(), 1);
    assert_eq!(state.pending_creates().unwrap().len(), 1);
    assert_eq!(state.company_of("P1").unwrap().as_deref(), Some("C1"));
    drop(state);
    assert_eq!(version(&path), MIGRATIONS.len() as i64);
}

#[test]
fn a_malformed_conflict_value_names_the_conflict() {
    let (_dir, path) = temp();
    let mut state = open(&path);
    commit(
        &mut state,
        StateBatch {
            upsert_conflicts: vec![conflict("CUST", "C1", "phone", "1", "2")],
            ..StateBatch::default()
        },
    );
    let id = state.conflicts(true).unwrap()[0].id;
    state
        .conn
        .execute("UPDATE conflicts SET account_value = '{\"x\": 1}'", [])
        .unwrap();
    let err = state.conflicts(false).unwrap_err();
    assert!(matches!(err, StateError::Corrupt { .. }), "{err}");
    let message = err.to_string();
    assert!(
        message.contains(&format!("conflict {id}")) && message.contains("account value"),
        "{message}"
    );
}

both_stores!(
    r4_pairs_unlinked_by_hand_are_remembered_until_linked_again,
    |place| {
        let mut state = place.open();
        let mut batch = StateBatch::default();
        batch
            .unlinked_pairs
            .push(("CUST".into(), "C1".into(), "K1".into(), true));
        batch
            .unlinked_pairs
            .push(("CUST".into(), "C1".into(), "K1".into(), true));
        batch
            .unlinked_pairs
            .push(("VEND".into(), "C1".into(), "V1".into(), true));
        state.commit(batch).unwrap();
        assert_eq!(
            state.unlinked_pairs("CUST").unwrap(),
            vec![("C1".to_string(), "K1".to_string())]
        );
        let mut batch = StateBatch::default();
        batch
            .unlinked_pairs
            .push(("CUST".into(), "C1".into(), "K1".into(), false));
        state.commit(batch).unwrap();
        assert!(state.unlinked_pairs("CUST").unwrap().is_empty());
        assert_eq!(state.unlinked_pairs("VEND").unwrap().len(), 1);
    }
);

fn refused_request(code: &str, contact: &str, error: &str) -> RefusedRequest {
    RefusedRequest {
        code: code.to_owned(),
        contact_id: contact.to_owned(),
        error: error.to_owned(),
        run_id: Some(4),
        failure_count: 1,
        parked: false,
        updated_at: Timestamp(1_700_000_005_000),
    }
}

both_stores!(
    r17_refused_requests_round_trip_apart_from_creates,
    |place| {
        let mut state = place.open();
        let mut parked = refused_request("VEND", "C2", "contact C1 already has a VEND link");
        parked.failure_count = 2;
        parked.parked = true;
        commit(
            &mut *state,
            StateBatch {
                upsert_refused: vec![
                    refused_request("CUST", "C1", "company ambiguous"),
                    parked.clone(),
                ],
                upsert_pending: vec![pending("CUST", "account", "C1")],
                ..StateBatch::default()
            },
        );
        drop(state);
        let mut state = place.open();
        assert_eq!(
            state.refused_requests().unwrap(),
            vec![
                refused_request("CUST", "C1", "company ambiguous"),
                parked.clone()
            ]
        );
        assert_eq!(
            state.pending_creates().unwrap().len(),
            1,
            "a create of the same contact stays apart"
        );
        commit(
            &mut *state,
            StateBatch {
                delete_refused: vec![("CUST".into(), "C1".into())],
                ..StateBatch::default()
            },
        );
        assert_eq!(state.refused_requests().unwrap(), vec![parked]);
        assert_eq!(state.pending_creates().unwrap().len(), 1);
    }
);

#[test]
fn migration_6_splits_pending_rows_into_creates_refusals_and_links() {
    let (_dir, path) = temp();
    {
        // A state of migration 5: refused requests are `account` rows with no fields,
        // failed new links are `link` rows whose fields name the account.
        let conn = Connection::open(&path).unwrap();
        for migration in &MIGRATIONS[..5] {
            conn.execute_batch(migration.sql).unwrap();
        }
        conn.pragma_update(None, "user_version", 5).unwrap();
        let insert = |side: &str, source: &str, fields: &str, error: Option<&str>, parked: bool| {
            conn.execute(
                "INSERT INTO pending_creates (code, side, source_id, fields, run_id, error, \
                 failure_count, parked, updated_at) VALUES ('CUST', ?1, ?2, ?3, 7, ?4, 2, ?5, 1700000000000)",
                params![side, source, fields, error, parked],
            )
            .unwrap();
        };
        insert("contact", "K1", r#"{"name":"Acme"}"#, None, false);
        insert(
            "account",
            "C1",
            r#"{"name":"Beta"}"#,
            Some("timeout"),
            false,
        );
        insert("account", "C2", "{}", Some("company ambiguous"), true);
        insert(
            "link",
            "C3",
            r#"{"account_id":"K3","by":"match","tier":"2"}"#,
            Some("503"),
            false,
        );
        insert(
            "link",
            "C4",
            r#"{"account_id":"K4","by":"operator"}"#,
            None,
            true,
        );
    }
    let state = open(&path);
    let creates: Vec<(Side, String)> = state
        .pending_creates()
        .unwrap()
        .into_iter()
        .map(|p| (p.side, p.source_id))
        .collect();
    assert_eq!(
        creates,
        vec![
            (Side::Account, "C1".to_owned()),
            (Side::Contact, "K1".to_owned())
        ]
    );
    let refused = state.refused_requests().unwrap();
    assert_eq!(refused.len(), 1);
    assert_eq!(
        (
            refused[0].contact_id.as_str(),
            refused[0].error.as_str(),
            refused[0].parked
        ),
        ("C2", "company ambiguous", true)
    );
    let links: Vec<(String, String, LinkedBy, bool)> = state
        .pending_links()
        .unwrap()
        .into_iter()
        .map(|l| (l.contact_id, l.account_id, l.by, l.parked))
        .collect();
    assert_eq!(
        links,
        vec![
            ("C3".into(), "K3".into(), LinkedBy::Match { tier: 2 }, false),
            ("C4".into(), "K4".into(), LinkedBy::Operator, true),
        ]
    );
}

fn with_intent(mut link: Link) -> Link {
    link.intent = Some(tandem_state_intent());
    link
}

fn tandem_state_intent() -> Intent {
    Intent {
        contact: vec![("phone".into(), Value::text("old"))],
        account: Vec::new(),
    }
}

both_stores!(
    r18_intent_batches_are_links_until_cleared_and_taken_up_by_the_next_run,
    |place| {
        let mut state = place.open();
        upsert(&mut *state, vec![link("CUST", "C1", "K1")]).unwrap();
        let mut rewritten = with_intent(link("CUST", "C1", "K1"));
        rewritten.baseline = Fields::new().with("name", "New name");
        let batch = |links| IntentBatch {
            run_id: 7,
            part: 0,
            links,
        };
        commit(
            &mut *state,
            StateBatch {
                intent_batches: vec![
                    batch(vec![rewritten.clone()]),
                    batch(vec![with_intent(link("CUST", "C2", "K2"))]),
                ],
                ..StateBatch::default()
            },
        );
        // Read as the links they will be: what `tandem links` and the next run see.
        let expected = vec![rewritten.clone(), with_intent(link("CUST", "C2", "K2"))];
        assert_eq!(state.links(None).unwrap(), expected);
        assert_eq!(state.links_with_intent().unwrap(), expected);
        assert!(state.links(Some("VEND")).unwrap().is_empty());

        // Cut short: the next run takes them up as link rows.
        drop(state);
        let mut state = place.open();
        assert_eq!(state.unpack_intents().unwrap(), 2);
        assert_eq!(state.unpack_intents().unwrap(), 0, "taken up once");
        assert_eq!(state.links(None).unwrap(), expected);
        assert_eq!(state.count_links("CUST").unwrap(), 2);

        // A run that finishes clears its batches: the stored links stand.
        commit(
            &mut *state,
            StateBatch {
                intent_batches: vec![batch(vec![with_intent(link("CUST", "C3", "K3"))])],
                ..StateBatch::default()
            },
        );
        commit(
            &mut *state,
            StateBatch {
                upsert_links: vec![link("CUST", "C3", "K3")],
                clear_intent_batches: vec![(7, 0)],
                ..StateBatch::default()
            },
        );
        assert_eq!(state.unpack_intents().unwrap(), 0);
        assert_eq!(
            state.links(Some("CUST")).unwrap()[2],
            link("CUST", "C3", "K3")
        );
    }
);

// A run stores the record of its next batch of creates while the batch before is
// being linked: that commit clears its own part, and the next batch's record stays,
// read as pending creates and made pending rows by the next run if this one is cut
// short (R18): the creates it sent are found again, not sent twice.
both_stores!(
    r18_create_batches_are_cleared_by_part_and_a_later_part_stays,
    |place| {
        let mut state = place.open();
        let batch = |part, creates| PendingCreateBatch {
            run_id: 7,
            part,
            creates,
        };
        let second = pending("CUST", "contact", "K2");
        commit(
            &mut *state,
            StateBatch {
                pending_create_batches: vec![
                    batch(1, vec![pending("CUST", "contact", "K1")]),
                    batch(2, vec![second.clone()]),
                ],
                ..StateBatch::default()
            },
        );
        // Batch 1's creates are linked and its record cleared; batch 2's stays. A pair
        // with no batch changes nothing.
        commit(
            &mut *state,
            StateBatch {
                clear_pending_create_batches: vec![(7, 1), (8, 2)],
                ..StateBatch::default()
            },
        );
        assert_eq!(state.pending_creates().unwrap(), vec![second.clone()]);
        // Cut short: the next run makes batch 2's record pending rows.
        drop(state);
        let mut state = place.open();
        state.unpack_intents().unwrap();
        assert_eq!(state.pending_creates().unwrap(), vec![second.clone()]);
        commit(
            &mut *state,
            StateBatch {
                clear_pending_create_batches: vec![(7, 2)],
                ..StateBatch::default()
            },
        );
        assert_eq!(
            state.pending_creates().unwrap(),
            vec![second],
            "rows by now"
        );
    }
);

// A run in ranges stores the intents of range k+1 while the links of range k are
// still being stored: range k's commit clears its own part, and range k+1's intents
// stay, read as links and taken up by the next run if this one is cut short (R18).
both_stores!(
    r18_intent_batches_are_cleared_by_part_and_a_later_part_stays,
    |place| {
        let mut state = place.open();
        let batch = |run_id, part, links| IntentBatch {
            run_id,
            part,
            links,
        };
        let first = with_intent(link("CUST", "C1", "K1"));
        let second = with_intent(link("CUST", "C2", "K2"));
        commit(
            &mut *state,
            StateBatch {
                intent_batches: vec![batch(7, 1, vec![first]), batch(7, 2, vec![second.clone()])],
                ..StateBatch::default()
            },
        );
        // Range 1's links are stored and its intents cleared; range 2's stay.
        commit(
            &mut *state,
            StateBatch {
                upsert_links: vec![link("CUST", "C1", "K1")],
                clear_intent_batches: vec![(7, 1)],
                ..StateBatch::default()
            },
        );
        assert_eq!(state.links_with_intent().unwrap(), vec![second.clone()]);
        assert_eq!(
            state.links(None).unwrap(),
            vec![link("CUST", "C1", "K1"), second.clone()]
        );

        // Several pairs clear in one commit, and only their own parts: another run's
        // batch of the same part, and a pair with no batch, change nothing else.
        commit(
            &mut *state,
            StateBatch {
                intent_batches: vec![
                    batch(8, 1, vec![with_intent(link("VEND", "C3", "V3"))]),
                    batch(8, 2, vec![with_intent(link("VEND", "C4", "V4"))]),
                ],
                ..StateBatch::default()
            },
        );
        commit(
            &mut *state,
            StateBatch {
                clear_intent_batches: vec![(8, 1), (8, 2), (9, 0), (7, 3)],
                ..StateBatch::default()
            },
        );
        assert_eq!(state.links_with_intent().unwrap(), vec![second.clone()]);

        // Cut short: the next run takes up range 2's intents as link rows.
        drop(state);
        let mut state = place.open();
        assert_eq!(state.unpack_intents().unwrap(), 1);
        assert_eq!(state.unpack_intents().unwrap(), 0, "taken up once");
        assert_eq!(
            state.links(None).unwrap(),
            vec![link("CUST", "C1", "K1"), second]
        );
        assert_eq!(state.count_links("CUST").unwrap(), 2);
        assert_eq!(state.count_links("VEND").unwrap(), 0);
    }
);

both_stores!(
    r2_an_intent_whose_account_was_taken_since_is_left_out,
    |place| {
        let mut state = place.open();
        commit(
            &mut *state,
            StateBatch {
                intent_batches: vec![IntentBatch {
                    run_id: 3,
                    part: 0,
                    links: vec![with_intent(link("CUST", "C1", "K1"))],
                }],
                ..StateBatch::default()
            },
        );
        upsert(&mut *state, vec![link("CUST", "C2", "K1")]).unwrap();
        assert_eq!(state.unpack_intents().unwrap(), 0);
        let links: Vec<(String, String)> = (state.links(None).unwrap().into_iter())
            .map(|l| (l.contact_id, l.account_id))
            .collect();
        assert_eq!(links, vec![("C2".to_owned(), "K1".to_owned())]);
    }
);

/// A state written by the build before migration 8 (`tests/fixtures/state-v7.db`, see
/// the README there): links with JSON baselines, a log of 18 entries, an operator
/// unlink, an open manual conflict and the JSON intent batch of a run cut short.
fn v7_fixture() -> (TempDir, PathBuf) {
    let (dir, path) = temp();
    fs::write(&path, include_bytes!("../../tests/fixtures/state-v7.db")).unwrap();
    (dir, path)
}

/// (code, contact, account, baseline) of each link; (id, contact, action) of each
/// log entry.
type V7Contents = (
    Vec<(String, String, String, Fields)>,
    Vec<(i64, String, String)>,
);

/// What the v7 file holds, read with plain SQL before anything migrates it.
fn v7_contents(path: &Path) -> V7Contents {
    let conn = Connection::open(path).unwrap();
    assert_eq!(user_version(&conn).unwrap(), 7);
    let links = conn
        .prepare(
            "SELECT code, contact_id, account_id, baseline FROM links ORDER BY code, contact_id",
        )
        .unwrap()
        .query_map([], |row| {
            let baseline: String = row.get(3)?;
            Ok((
                row.get(0)?,
                row.get(1)?,
                row.get(2)?,
                serde_json::from_str(&baseline).unwrap(),
            ))
        })
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let log = conn
        .prepare("SELECT id, contact_id, action FROM interactions ORDER BY id")
        .unwrap()
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    (links, log)
}

#[test]
fn migration_8_keeps_every_baseline_unlink_conflict_log_entry_and_intent_of_a_v7_state() {
    let (_dir, path) = v7_fixture();
    let (old_links, old_log) = v7_contents(&path);
    assert_eq!(old_links.len(), 7);
    assert_eq!(old_log.len(), 18);
    let old_hashes: Vec<(String, String, String, i64)> = Connection::open(&path)
        .unwrap()
        .prepare("SELECT connector, kind, id, hash FROM record_hashes ORDER BY 1, 2, 3")
        .unwrap()
        .query_map([], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(old_hashes.len() > 10, "{old_hashes:?}");

    let mut state = open(&path);
    assert_eq!(version(&path), MIGRATIONS.len() as i64);
    // Every stored link with its baseline; the cut-short run's batch shows C0002's link
    // with its intent in place of the stored one, as before.
    let links = state.links(None).unwrap();
    let keys: Vec<(String, String, String, Fields)> = links
        .iter()
        .map(|l| {
            (
                l.code.clone(),
                l.contact_id.clone(),
                l.account_id.clone(),
                l.baseline.clone(),
            )
        })
        .collect();
    for (old, new) in old_links.iter().zip(&keys) {
        assert_eq!(old.0, new.0);
        assert_eq!(old.1, new.1);
        assert_eq!(old.2, new.2);
        if old.1 != "C0002" || old.0 != "CUST" {
            assert_eq!(old.3, new.3, "{} {}", old.0, old.1);
        }
    }
    let in_flight = links
        .iter()
        .find(|l| l.code == "CUST" && l.contact_id == "C0002")
        .unwrap();
    assert!(in_flight.intent.is_some(), "{in_flight:?}");
    assert_eq!(in_flight.baseline.text("address"), Some("Rue Haute 46"));
    assert_eq!(state.count_links("CUST").unwrap(), 4);
    assert_eq!(state.count_links("VEND").unwrap(), 2);
    assert_eq!(state.count_links("BANK").unwrap(), 1);
    assert_eq!(
        state.unlinked_pairs("CUST").unwrap(),
        vec![("C0004".to_owned(), "K0004".to_owned())]
    );
    let conflicts = state.conflicts(true).unwrap();
    assert_eq!(conflicts.len(), 1);
    assert_eq!(conflicts[0].base, Value::text("+49 40 123456"));
    // Every log entry, with its id.
    let mut log = Vec::new();
    for contact in ["C0001", "C0002", "C0003", "C0004", "C0006", "C0007"] {
        for entry in state.interactions(contact, 100).unwrap() {
            log.push((entry.id, entry.contact_id, entry.action));
        }
    }
    log.sort();
    assert_eq!(log, old_log);

    // Every content hash, under its scope.
    for (connector, kind, id, hash) in &old_hashes {
        let kind = EntityKind::ALL
            .into_iter()
            .find(|k| k.as_str() == kind)
            .unwrap();
        let scope = Scope::new(connector, kind);
        let stored = state.hashes_of(&scope, &[id.as_str()]).unwrap();
        assert_eq!(
            stored.get(id),
            Some(&hash.cast_unsigned()),
            "{connector} {id}"
        );
        assert_eq!(
            state.hashes(&scope).unwrap()[id.as_str()],
            hash.cast_unsigned()
        );
    }
    // The cut-short run's batch is part 0 of its run (migration 12).
    let part: i64 = state
        .conn
        .query_row("SELECT part FROM intent_batches", [], |row| row.get(0))
        .unwrap();
    assert_eq!(part, 0);
    // The intents are taken up as before, and new rows are in the compact form.
    assert_eq!(state.unpack_intents().unwrap(), 1);
    assert_eq!(state.links_with_intent().unwrap().len(), 1);
    assert_eq!(state.count_links("CUST").unwrap(), 4);
    let kind: String = state
        .conn
        .query_row(
            "SELECT typeof(baseline) FROM links WHERE code = 'CUST' AND contact_id = 'C0002'",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(kind, "blob");
    assert_eq!(state.links(None).unwrap(), links);
    // New log entries come after the old ones.
    commit(
        &mut state,
        StateBatch {
            interactions: vec![interaction("C0001", "updated", json!({}))],
            ..StateBatch::default()
        },
    );
    assert_eq!(state.interactions("C0001", 1).unwrap()[0].id, 19);
}

#[test]
fn entries_of_one_pair_share_a_row_and_read_back_as_they_were() {
    let (_dir, path) = temp();
    let mut state = open(&path);
    let at = |action: &str, contact: &str| Interaction {
        contact_id: contact.into(),
        ..interaction(contact, action, json!({ "action": action }))
    };
    let entries = vec![
        at("created", "C1"),
        at("linked", "C1"),
        at("updated", "C1"),
        at("linked", "C2"),
        at("updated", "C2"),
        at("linked", "C3"),
    ];
    commit(
        &mut state,
        StateBatch {
            interactions: entries.clone(),
            ..StateBatch::default()
        },
    );
    let rows: i64 = state
        .conn
        .query_row("SELECT COUNT(*) FROM interactions", [], |row| row.get(0))
        .unwrap();
    assert_eq!(rows, 4, "C1: two rows, C2 one, C3 one");
    let mut read = Vec::new();
    for contact in ["C1", "C2", "C3"] {
        read.extend(state.interactions(contact, 10).unwrap());
    }
    read.sort_by_key(|e| e.id);
    let ids: Vec<i64> = read.iter().map(|e| e.id).collect();
    assert_eq!(ids, vec![1, 2, 3, 4, 5, 6]);
    for (stored, made) in read.iter().zip(&entries) {
        assert_eq!(
            Interaction {
                id: stored.id,
                ..made.clone()
            },
            *stored
        );
    }
    // The newest entries only, when fewer are asked for.
    let last = state.interactions("C1", 2).unwrap();
    let actions: Vec<&str> = last.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, vec!["linked", "updated"]);
    let run = read[0].run_id.unwrap();
    let (entries, total) = state.run_interactions(run, 3).unwrap();
    assert_eq!(total, 6);
    assert_eq!(entries.len(), 3);
    // The next batch goes on after the second entry of the last row.
    commit(
        &mut state,
        StateBatch {
            interactions: vec![at("unlinked", "C3")],
            ..StateBatch::default()
        },
    );
    assert_eq!(state.interactions("C3", 10).unwrap()[1].id, 7);
}

both_stores!(
    match_keys_are_stored_with_a_hash_and_kept_by_a_hash_set_without_them,
    |place| {
        let mut state = place.open();
        let contacts = Scope::new("crm", EntityKind::Contact);
        let customers = Scope::new("erp", EntityKind::Customer);
        let mut batch = StateBatch::default();
        batch.set_hash_with_keys(contacts.clone(), "C1".into(), 11, 101);
        batch.set_hashes.push((contacts.clone(), "C2".into(), 12));
        batch.set_hash_with_keys(contacts.clone(), "C3".into(), 13, 0);
        batch.set_hash_with_keys(customers.clone(), "C1".into(), 21, 201);
        commit(&mut *state, batch);
        let keys = state
            .match_keys_of(&contacts, &["C1", "C2", "C3", "C9"])
            .unwrap();
        // C2 has none, C3 an unknown one, C9 no row at all.
        assert_eq!(keys, HashMap::from([("C1".to_owned(), 101)]));
        // Both in one lookup: the same.
        assert_eq!(
            state
                .hashes_and_keys_of(&contacts, &["C1", "C2", "C3", "C9"])
                .unwrap(),
            HashMap::from([
                ("C1".to_owned(), (11, Some(101))),
                ("C2".to_owned(), (12, None)),
                ("C3".to_owned(), (13, None)),
            ])
        );
        assert!(
            state
                .hashes_and_keys_of(&Scope::new("erp", EntityKind::Vendor), &["C1"])
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            state.match_keys_of(&customers, &["C1"]).unwrap(),
            HashMap::from([("C1".to_owned(), 201)])
        );
        // A new hash without keys (Tandem's own write, a record to look at again) keeps
        // the keys the record was last read with; new keys replace them.
        commit(
            &mut *state,
            StateBatch {
                set_hashes: vec![(contacts.clone(), "C1".into(), 0)],
                ..StateBatch::default()
            },
        );
        assert_eq!(state.match_keys_of(&contacts, &["C1"]).unwrap()["C1"], 101);
        assert!(state.has_rechecks(&contacts).unwrap());
        assert_eq!(state.rechecks(&contacts).unwrap(), vec!["C1".to_owned()]);
        assert!(!state.has_rechecks(&customers).unwrap());
        let mut batch = StateBatch::default();
        batch.set_hash_with_keys(contacts.clone(), "C1".into(), 14, 102);
        commit(&mut *state, batch);
        assert_eq!(state.match_keys_of(&contacts, &["C1"]).unwrap()["C1"], 102);
        assert_eq!(state.hashes(&contacts).unwrap()["C1"], 14);
        // A scope that never had a hash has none, and no keys.
        let vendors = Scope::new("erp", EntityKind::Vendor);
        assert!(state.hashes(&vendors).unwrap().is_empty());
        assert!(state.match_keys_of(&vendors, &["C1"]).unwrap().is_empty());
    }
);

both_stores!(
    a_big_batch_of_hashes_with_repeats_stores_what_one_hash_at_a_time_would,
    |place| {
        let mut state = place.open();
        let contacts = Scope::new("crm", EntityKind::Contact);
        let customers = Scope::new("erp", EntityKind::Customer);
        // More rows than one statement takes, over two scopes, with ids set twice in
        // the batch (the later wins) and hashes set without keys (the keys stay).
        let mut batch = StateBatch::default();
        let mut hashes: HashMap<(bool, String), u64> = HashMap::new();
        let mut keys: HashMap<(bool, String), u64> = HashMap::new();
        for i in 0..300_u64 {
            let customer = i % 3 == 0;
            let scope = if customer { &customers } else { &contacts };
            let id = format!("R{:03}", i % 130);
            let hash = 1_000 + i;
            if i % 4 == 0 {
                batch.set_hashes.push((scope.clone(), id.clone(), hash));
            } else {
                batch.set_hash_with_keys(scope.clone(), id.clone(), hash, 5_000 + i);
                keys.insert((customer, id.clone()), 5_000 + i);
            }
            hashes.insert((customer, id), hash);
        }
        commit(&mut *state, batch);
        for (customer, scope) in [(false, &contacts), (true, &customers)] {
            let stored: HashMap<String, u64> = (state.hashes(scope).unwrap().into_iter())
                .map(|(id, hash)| (id.into(), hash))
                .collect();
            let expected: HashMap<String, u64> = (hashes.iter())
                .filter(|((c, _), _)| *c == customer)
                .map(|((_, id), hash)| (id.clone(), *hash))
                .collect();
            assert_eq!(stored, expected);
            let ids: Vec<&str> = expected.keys().map(String::as_str).collect();
            let expected_keys: HashMap<String, u64> = (keys.iter())
                .filter(|((c, _), _)| *c == customer)
                .map(|((_, id), key)| (id.clone(), *key))
                .collect();
            assert_eq!(state.match_keys_of(scope, &ids).unwrap(), expected_keys);
        }
    }
);

both_stores!(
    r2_a_big_batch_of_links_new_refreshed_and_moved_stores_what_one_at_a_time_would,
    |place| {
        let mut state = place.open();
        let first: Vec<Link> = (0..100)
            .map(|i| link("CUST", &format!("C{i:03}"), &format!("K{i:03}")))
            .collect();
        upsert(&mut *state, first.clone()).unwrap();
        assert_eq!(state.count_links("CUST").unwrap(), 100);
        // 40 refreshed, 10 moved to accounts no one holds, 80 new: more than one
        // statement's worth, mixed.
        let mut expected: std::collections::BTreeMap<String, Link> = first
            .into_iter()
            .map(|l| (l.contact_id.clone(), l))
            .collect();
        let mut batch = Vec::new();
        for i in 0..130 {
            let mut l = match i {
                0..40 => link("CUST", &format!("C{i:03}"), &format!("K{i:03}")),
                40..50 => link("CUST", &format!("C{i:03}"), &format!("M{i:03}")),
                _ => link("CUST", &format!("N{i:03}"), &format!("L{i:03}")),
            };
            l.baseline = Fields::new().with("phone", format!("+32 {i}"));
            expected.insert(l.contact_id.clone(), l.clone());
            batch.push(l);
        }
        upsert(&mut *state, batch).unwrap();
        assert_eq!(state.count_links("CUST").unwrap(), 180);
        assert_eq!(
            state.links(Some("CUST")).unwrap(),
            expected.values().cloned().collect::<Vec<_>>()
        );
        // One new link of many takes an account held by another contact: the batch is
        // refused, naming that link, and none of it is stored.
        let taken: Vec<Link> = (0..70)
            .map(|i| match i {
                50 => link("CUST", "X050", "K007"),
                _ => link("CUST", &format!("X{i:03}"), &format!("Y{i:03}")),
            })
            .collect();
        let err = upsert(&mut *state, taken).unwrap_err();
        match err {
            StateError::AccountTaken {
                contact_id,
                linked_contact,
                ..
            } => assert_eq!(
                (contact_id.as_str(), linked_contact.as_str()),
                ("X050", "C007")
            ),
            other => panic!("{other}"),
        }
        assert_eq!(state.count_links("CUST").unwrap(), 180);
        assert_eq!(state.links(Some("CUST")).unwrap().len(), 180);
    }
);

/// Commits reach the database file while the writer holds the state, though far
/// below the writer's own checkpoint threshold: copied by the checkpointer's thread.
#[test]
fn a_writers_commits_are_copied_into_the_database_file_beside_it() {
    let (_dir, path) = temp();
    let mut state = open(&path);
    let before = fs::metadata(&path).unwrap().len();
    let scope = Scope::new("crm", EntityKind::Contact);
    let mut batch = StateBatch::default();
    for i in 0..20_000 {
        batch
            .set_hashes
            .push((scope.clone(), format!("C{i:06}"), i + 1));
    }
    state.commit(batch).unwrap();
    let wal = fs::metadata(path.with_extension("db-wal")).unwrap().len();
    assert!(
        wal < 16_384 * 4096,
        "{wal} bytes of WAL reach the writer's own threshold"
    );
    let waited = std::time::Instant::now();
    while fs::metadata(&path).unwrap().len() <= before {
        assert!(
            waited.elapsed() < Duration::from_secs(10),
            "the database file did not grow from {before} bytes"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(state.hashes(&scope).unwrap().len(), 20_000);
    // Closing waits for the thread, then checkpoints the rest; the state reopens whole.
    drop(state);
    assert_eq!(open(&path).hashes(&scope).unwrap().len(), 20_000);
}

/// A state opened to read only starts no checkpointer.
#[test]
fn a_shared_holder_starts_no_checkpointer() {
    let (_dir, path) = temp();
    drop(open(&path));
    let shared = SqliteState::open(&path, LockMode::Shared).unwrap();
    assert!(shared.checkpointer.is_none());
    assert!(open_in_memory_has_no_checkpointer());
}

fn open_in_memory_has_no_checkpointer() -> bool {
    let (_dir, path) = temp();
    SqliteState::open_existing(&path, LockMode::Exclusive)
        .unwrap()
        .checkpointer
        .is_none()
}

both_stores!(
    r18_creates_written_down_as_one_record_read_as_pending_until_cleared_or_taken_up,
    |place| {
        let mut state = place.open();
        let mut failed = pending("CUST", "contact", "K1");
        failed.error = Some("refused".into());
        failed.failure_count = 1;
        commit(
            &mut *state,
            StateBatch {
                upsert_pending: vec![failed.clone(), pending("CUST", "contact", "K2")],
                ..StateBatch::default()
            },
        );
        // A run about to send K1 again and K3: they read in place of the rows.
        let mut retried = failed.clone();
        retried.error = None;
        retried.run_id = Some(5);
        retried.record_id = Some("K-3".into());
        let sending = vec![retried.clone(), pending("VEND", "account", "C3")];
        commit(
            &mut *state,
            StateBatch {
                pending_create_batches: vec![PendingCreateBatch {
                    run_id: 5,
                    part: 1,
                    creates: sending.clone(),
                }],
                ..StateBatch::default()
            },
        );
        let expected = vec![
            retried.clone(),
            pending("CUST", "contact", "K2"),
            pending("VEND", "account", "C3"),
        ];
        assert_eq!(state.pending_creates().unwrap(), expected);
        // Cleared by the run once it stored what they came to: the rows show again.
        commit(
            &mut *state,
            StateBatch {
                clear_pending_create_batches: vec![(5, 1)],
                ..StateBatch::default()
            },
        );
        assert_eq!(
            state.pending_creates().unwrap(),
            vec![failed.clone(), pending("CUST", "contact", "K2")]
        );
        // A run cut short leaves its record; the next makes it pending rows.
        commit(
            &mut *state,
            StateBatch {
                pending_create_batches: vec![PendingCreateBatch {
                    run_id: 6,
                    part: 0,
                    creates: sending,
                }],
                ..StateBatch::default()
            },
        );
        state.unpack_intents().unwrap();
        assert_eq!(state.pending_creates().unwrap(), expected);
        commit(
            &mut *state,
            StateBatch {
                clear_pending_create_batches: vec![(6, 0)],
                delete_pending: vec![("VEND".into(), Side::Account, "C3".into())],
                ..StateBatch::default()
            },
        );
        assert_eq!(
            state.pending_creates().unwrap(),
            vec![retried, pending("CUST", "contact", "K2")]
        );
    }
);

/// A state written by the build before migration 9 (`tests/fixtures/state-v8.db`, see
/// the README there): 7 links, a log, an operator unlink, an open manual conflict and
/// the pending row of a create a crash cut short.
#[test]
fn migration_9_keeps_every_link_log_entry_conflict_unlink_and_pending_create_of_a_v8_state() {
    let (_dir, path) = temp();
    fs::write(&path, include_bytes!("../../tests/fixtures/state-v8.db")).unwrap();
    let conn = Connection::open(&path).unwrap();
    assert_eq!(user_version(&conn).unwrap(), 8);
    // A row may hold a second entry of its pair, whose id is one above the row's.
    let old_log: Vec<(i64, String, String)> = conn
        .prepare(
            "SELECT id, contact_id, action FROM interactions
             UNION ALL SELECT id + 1, contact_id, next_action FROM interactions
             WHERE next_action IS NOT NULL ORDER BY 1",
        )
        .unwrap()
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(old_log.len(), 18);
    let old_links: Vec<(String, String, String)> = conn
        .prepare("SELECT code, contact_id, account_id FROM links ORDER BY code, contact_id")
        .unwrap()
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    drop(conn);

    let mut state = open(&path);
    assert_eq!(version(&path), MIGRATIONS.len() as i64);
    let links: Vec<(String, String, String)> = (state.links(None).unwrap().into_iter())
        .map(|l| (l.code, l.contact_id, l.account_id))
        .collect();
    assert_eq!(links, old_links);
    assert_eq!(state.count_links("CUST").unwrap(), 4);
    let mut log = Vec::new();
    for contact in ["C0001", "C0002", "C0003", "C0004", "C0006", "C0007"] {
        for entry in state.interactions(contact, 100).unwrap() {
            log.push((entry.id, entry.contact_id, entry.action));
        }
    }
    log.sort();
    assert_eq!(log, old_log);
    assert_eq!(state.conflicts(true).unwrap().len(), 1);
    assert_eq!(
        state.unlinked_pairs("CUST").unwrap(),
        vec![("C0004".to_owned(), "K0004".to_owned())]
    );
    // The create the crash cut short is still pending, and stays so once taken up.
    let pending = state.pending_creates().unwrap();
    assert_eq!(pending.len(), 1, "{pending:?}");
    let cut_short = &pending[0];
    assert_eq!(
        (
            cut_short.code.as_str(),
            cut_short.side,
            cut_short.source_id.as_str()
        ),
        ("VEND", Side::Contact, "V0099")
    );
    assert_eq!(
        (cut_short.run_id, cut_short.error.as_deref()),
        (Some(4), None)
    );
    assert_eq!(state.unpack_intents().unwrap(), 0);
    assert_eq!(state.pending_creates().unwrap(), pending);
    // The new table takes the next run's creates.
    let mut retried = cut_short.clone();
    retried.run_id = Some(5);
    commit(
        &mut state,
        StateBatch {
            pending_create_batches: vec![PendingCreateBatch {
                run_id: 5,
                part: 0,
                creates: vec![retried.clone()],
            }],
            ..StateBatch::default()
        },
    );
    assert_eq!(state.pending_creates().unwrap(), vec![retried]);
}

#[test]
fn migration_10_packs_every_content_hash_of_a_v9_state_with_its_match_keys() {
    let (_dir, path) = temp();
    // (scope, id, hash, match keys) as a state of migration 9 holds them: more rows than
    // a page takes, rechecks (hash 0), keys unknown (NULL or 0) and known.
    let mut rows: Vec<(i64, String, i64, Option<i64>)> = Vec::new();
    for n in 0..150 {
        let keys = match n % 3 {
            0 => None,
            1 => Some(0),
            _ => Some(-7 * n),
        };
        let hash = if n % 40 == 0 { 0 } else { i64::MIN + n };
        rows.push((1, format!("C{n:04}"), hash, keys));
    }
    rows.push((2, "K1".to_owned(), 5, Some(9)));
    {
        let conn = Connection::open(&path).unwrap();
        for migration in &MIGRATIONS[..9] {
            conn.execute_batch(migration.sql).unwrap();
        }
        conn.pragma_update(None, "user_version", 9).unwrap();
        conn.execute_batch(
            "INSERT INTO scopes (id, connector, kind) VALUES (1, 'crm', 'contact'), (2, 'erp', 'customer');",
        )
        .unwrap();
        for (scope, id, hash, keys) in &rows {
            conn.execute(
                "INSERT INTO record_hashes (scope, id, hash, match_keys) VALUES (?1, ?2, ?3, ?4)",
                params![scope, id, hash, keys],
            )
            .unwrap();
        }
    }
    let state = open(&path);
    assert_eq!(version(&path), MIGRATIONS.len() as i64);
    let gone: i64 = state
        .conn
        .query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE name = 'record_hashes'",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(gone, 0);
    let mut exported_rows = Vec::new();
    state
        .export_table("record_hashes", &mut |row| {
            exported_rows.push(row);
            Ok(())
        })
        .unwrap();
    let exported: Vec<(i64, String, i64, Option<i64>)> = exported_rows
        .into_iter()
        .map(|row| match &row[..] {
            [
                StoredValue::Integer(scope),
                StoredValue::Text(id),
                StoredValue::Integer(hash),
                keys,
            ] => (
                *scope,
                id.clone(),
                *hash,
                match keys {
                    StoredValue::Integer(k) => Some(*k),
                    _ => None,
                },
            ),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(exported, rows);
    let contacts = Scope::new("crm", EntityKind::Contact);
    let hashes: HashMap<String, u64> = (state.hashes(&contacts).unwrap().into_iter())
        .map(|(id, hash)| (id.into(), hash))
        .collect();
    assert_eq!(hashes.len(), 150);
    let ids: Vec<&str> = rows.iter().map(|r| r.1.as_str()).collect();
    assert_eq!(state.hashes_of(&contacts, &ids).unwrap(), hashes);
    let keys = state.match_keys_of(&contacts, &ids).unwrap();
    for (scope, id, hash, key) in &rows[..150] {
        assert_eq!(*scope, 1);
        assert_eq!(hashes[id], hash.cast_unsigned());
        // Unknown keys, NULL or 0, read as none.
        assert_eq!(
            keys.get(id),
            key.filter(|k| *k != 0).map(|k| k.cast_unsigned()).as_ref()
        );
    }
    assert!(state.has_rechecks(&contacts).unwrap());
    assert_eq!(
        state.rechecks(&contacts).unwrap(),
        vec!["C0000", "C0040", "C0080", "C0120"]
    );
    let customers = Scope::new("erp", EntityKind::Customer);
    assert!(!state.has_rechecks(&customers).unwrap());
    assert_eq!(
        state.hashes(&customers).unwrap(),
        StoredHashes::from_iter([("K1".into(), 5)])
    );
}

/// A state written by the build before migration 10 (`tests/fixtures/state-v9.db`, see
/// the README there): every content hash and its match keys read the same once its
/// rows are packed into pages, and the links are untouched.
#[test]
fn migration_10_keeps_every_content_hash_and_link_of_a_v9_state() {
    let (_dir, path) = temp();
    fs::write(&path, include_bytes!("../../tests/fixtures/state-v9.db")).unwrap();
    let conn = Connection::open(&path).unwrap();
    assert_eq!(user_version(&conn).unwrap(), 9);
    // (connector, kind, id, hash, match keys)
    let old_hashes: Vec<(String, String, String, i64, Option<i64>)> = conn
        .prepare(
            "SELECT s.connector, s.kind, r.id, r.hash, r.match_keys FROM record_hashes r \
             JOIN scopes s ON s.id = r.scope ORDER BY 1, 2, 3",
        )
        .unwrap()
        .query_map([], |row| {
            Ok((
                row.get(0)?,
                row.get(1)?,
                row.get(2)?,
                row.get(3)?,
                row.get(4)?,
            ))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(old_hashes.len() >= 10, "{old_hashes:?}");
    let old_links: i64 = conn
        .query_row("SELECT COUNT(*) FROM links", [], |row| row.get(0))
        .unwrap();
    drop(conn);

    let state = open(&path);
    assert_eq!(version(&path), MIGRATIONS.len() as i64);
    assert_eq!(state.links(None).unwrap().len() as i64, old_links);
    for (connector, kind, id, hash, keys) in &old_hashes {
        let kind = EntityKind::ALL
            .into_iter()
            .find(|k| k.as_str() == kind)
            .unwrap();
        let scope = Scope::new(connector, kind);
        let ids = [id.as_str()];
        assert_eq!(
            state.hashes_of(&scope, &ids).unwrap().get(id),
            Some(&hash.cast_unsigned()),
            "{connector} {id}"
        );
        assert_eq!(
            state.hashes(&scope).unwrap()[id.as_str()],
            hash.cast_unsigned()
        );
        assert_eq!(
            state.match_keys_of(&scope, &ids).unwrap().get(id).copied(),
            keys.filter(|k| *k != 0).map(i64::cast_unsigned),
            "{connector} {id}"
        );
    }
}

/// A state written by the build before migration 12 (`tests/fixtures/state-v11.db`,
/// see the README there): a second run, cut short once it stored its intents, left the
/// intent batch of C0002's new address. Migrated, the batch is part 0 of its run, read
/// as the link it will be, left by the clearing of another part, and taken up.
#[test]
fn migration_12_keeps_the_intent_batch_of_a_run_cut_short_in_a_v11_state() {
    let (_dir, path) = temp();
    fs::write(&path, include_bytes!("../../tests/fixtures/state-v11.db")).unwrap();
    let conn = Connection::open(&path).unwrap();
    assert_eq!(user_version(&conn).unwrap(), 11);
    let old_batches: Vec<i64> = conn
        .prepare("SELECT run_id FROM intent_batches ORDER BY id")
        .unwrap()
        .query_map([], |row| row.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(old_batches, [2]);
    let old_links: Vec<(String, String, String)> = conn
        .prepare("SELECT code, contact_id, account_id FROM links ORDER BY code, contact_id")
        .unwrap()
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(old_links.len(), 7);
    drop(conn);

    let mut state = open(&path);
    assert_eq!(version(&path), MIGRATIONS.len() as i64);
    let parts: Vec<(i64, i64)> = state
        .conn
        .prepare("SELECT run_id, part FROM intent_batches ORDER BY id")
        .unwrap()
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(parts, [(2, 0)]);
    let address = |link: &Link| link.baseline.get("address").cloned();
    let in_flight = state.links_with_intent().unwrap();
    assert_eq!(in_flight.len(), 1, "{in_flight:?}");
    assert_eq!(
        (in_flight[0].code.as_str(), in_flight[0].contact_id.as_str()),
        ("CUST", "C0002")
    );
    assert_eq!(address(&in_flight[0]), Some(Value::text("Rue Haute 47")));
    let links = state.links(None).unwrap();
    let keys: Vec<(String, String, String)> = (links.iter())
        .map(|l| (l.code.clone(), l.contact_id.clone(), l.account_id.clone()))
        .collect();
    assert_eq!(keys, old_links);

    // Clearing another part of the run leaves it; the next run takes it up.
    commit(
        &mut state,
        StateBatch {
            clear_intent_batches: vec![(2, 1)],
            ..StateBatch::default()
        },
    );
    assert_eq!(state.unpack_intents().unwrap(), 1);
    assert_eq!(state.unpack_intents().unwrap(), 0, "taken up once");
    assert_eq!(state.links(None).unwrap(), links);
    assert_eq!(state.count_links("CUST").unwrap(), 5);
    let stored = state.links(Some("CUST")).unwrap();
    let c0002 = stored.iter().find(|l| l.contact_id == "C0002").unwrap();
    assert_eq!(address(c0002), Some(Value::text("Rue Haute 47")));
}

/// A batch committed and given back is the batch sent, stored as `commit` stores it:
/// the engine drops it on the thread that built it.
#[test]
fn a_batch_committed_and_given_back_is_stored_and_comes_back_whole() {
    let (_dir, path) = temp();
    let mut state = open(&path);
    let batch = StateBatch {
        upsert_links: vec![link("CUST", "C1", "K1"), link("CUST", "C2", "K2")],
        ..StateBatch::default()
    };
    let back = state.commit_and_return(batch.clone()).unwrap();
    assert_eq!(back, batch);
    let stored = state.links_of_contacts(&["C1", "C2"]).unwrap();
    assert_eq!(stored, batch.upsert_links);
}
