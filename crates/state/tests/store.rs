//! What every state store does when opened by a command: the runs a command reads
//! back, a state not made yet, and a sync beside readers, run on the store
//! `TANDEM_TEST_STATE_URL` chooses (a SQLite file by default, a fresh PostgreSQL
//! database in `scripts/test`'s second pass). The rest of the store contract runs on
//! both stores at once beside each store (`src/sqlite/tests.rs`, `both_stores!`).

use serde_json::json;
use tandem_model::{Fields, Timestamp};
use tandem_state::testsupport::TestState;
use tandem_state::{
    Access, Interaction, Link, LockMode, StateBatch, StateError, StateStore, StoreKind,
};

/// Opens the test's state to write it, as a sync does.
fn open(place: &TestState) -> Box<dyn StateStore> {
    place.open(LockMode::Exclusive)
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

fn run_entry(run_id: Option<i64>, contact_id: &str) -> Interaction {
    Interaction {
        id: 0,
        at: Timestamp(0),
        run_id,
        contact_id: contact_id.into(),
        code: "CUST".into(),
        account_id: Some("K1".into()),
        action: "linked".into(),
        source: "match".into(),
        details: json!({ "by": "match", "tier": 1 }).into(),
    }
}

#[test]
fn a_run_lists_its_own_entries_and_counts_them_past_the_limit() {
    let place = TestState::new();
    let mut state = open(&place);
    let first = state.begin_run("sync").unwrap();
    let second = state.begin_run("sync").unwrap();
    state
        .commit(StateBatch {
            interactions: vec![
                run_entry(Some(first), "C1"),
                run_entry(None, "C9"),
                run_entry(Some(second), "C2"),
                run_entry(Some(second), "C3"),
                run_entry(Some(second), "C4"),
            ],
            ..StateBatch::default()
        })
        .unwrap();
    let (entries, total) = state.run_interactions(second, 2).unwrap();
    let contacts: Vec<&str> = entries.iter().map(|e| e.contact_id.as_str()).collect();
    assert_eq!(contacts, ["C2", "C3"], "oldest first, at most the limit");
    assert_eq!(total, 3);
    assert_eq!(state.run_interactions(first, 10).unwrap().1, 1);
    assert_eq!(state.run(second).unwrap().unwrap().status, "running");
    assert!(state.run(99).unwrap().is_none());
}

#[test]
fn a_state_not_made_yet_reads_as_empty_and_reading_does_not_make_it() {
    let place = TestState::new();
    for access in [Access::Existing, Access::ReadOnly, Access::Existing] {
        let state = place.open_for(access).unwrap_or_else(|e| panic!("{e}"));
        assert!(!state.exists(), "{access:?}: nothing made yet");
        assert!(state.links(None).unwrap().is_empty());
        assert!(state.runs(5).unwrap().is_empty());
        assert!(state.conflicts(false).unwrap().is_empty());
        assert!(!state.writer_active());
    }
    let state = open(&place);
    assert!(state.exists(), "a sync makes the state");
    drop(state);
    let reader = place
        .open_for(Access::ReadOnly)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(reader.exists());
}

#[test]
fn a_sync_holds_the_state_alone_while_readers_see_its_commits() {
    let place = TestState::new();
    let mut sync = open(&place);
    upsert(sync.as_mut(), vec![link("CUST", "C1", "K1")]).unwrap();
    // A second sync is kept out: by the lock file, or by the lease on PostgreSQL, where
    // readers take no lock at all.
    let sqlite = place.kind() == StoreKind::Sqlite;
    let refused = place.open_for(Access::Lock(LockMode::Exclusive));
    assert!(
        matches!(
            refused,
            Err(StateError::Locked { .. } | StateError::Leased { .. })
        ),
        "a second sync while one holds the state"
    );
    for access in [Access::Lock(LockMode::Shared), Access::Existing] {
        let opened = place.open_for(access);
        assert_eq!(
            matches!(opened, Err(StateError::Locked { .. })),
            sqlite,
            "{access:?} while a sync holds the state"
        );
    }
    let reader = place
        .open_for(Access::ReadOnly)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(reader.writer_active(), "the sync is running");
    assert_eq!(reader.links(None).unwrap(), vec![link("CUST", "C1", "K1")]);
    upsert(sync.as_mut(), vec![link("CUST", "C2", "K2")]).unwrap();
    assert_eq!(
        reader.count_links("CUST").unwrap(),
        2,
        "the sync's next commit"
    );
    drop(sync);
    assert!(!reader.writer_active());

    // Readers that lock share the state, and keep a sync out.
    let first = place
        .open_for(Access::Lock(LockMode::Shared))
        .unwrap_or_else(|e| panic!("{e}"));
    let second = place
        .open_for(Access::Existing)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(first.count_links("CUST").unwrap(), 2);
    assert_eq!(second.count_links("CUST").unwrap(), 2);
    let refused = place.open_for(Access::Lock(LockMode::Exclusive));
    assert_eq!(
        matches!(refused, Err(StateError::Locked { .. })),
        sqlite,
        "on SQLite, readers that lock keep a sync out"
    );
    drop((first, second, refused));
    drop(open(&place));
}
