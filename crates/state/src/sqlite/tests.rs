use serde_json::json;
use tandem_model::{EntityKind, Fields, Timestamp, Value};
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
        parked: false,
        linked_at: Timestamp(1_700_000_000_000),
        synced_at: Timestamp(1_700_000_000_500),
        intent: None,
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
    }
}

fn commit(state: &mut SqliteState, batch: StateBatch) {
    state.commit(batch).unwrap();
}

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

#[test]
fn migration_6_splits_pending_rows_into_creates_refusals_and_links() {
    let (_dir, path) = temp();
    {
        // A state of migration 5: refused requests are `account` rows with no fields,
        // failed new links are `link` rows whose fields name the account.
        let conn = Connection::open(&path).unwrap();
        for sql in &MIGRATIONS[..5] {
            conn.execute_batch(sql).unwrap();
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
        assert_eq!(state.hashes(&scope).unwrap()[id], hash.cast_unsigned());
    }
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
