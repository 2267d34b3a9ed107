//! What every state store keeps and gives back: the contract of [`StateStore`], run on
//! the store `TANDEM_TEST_STATE_URL` chooses (a SQLite file by default, a fresh
//! PostgreSQL database in `scripts/test`'s second pass). What only one store does
//! (files, lock files, schema migrations) is tested beside it.

use std::collections::{HashMap, HashSet};

use serde_json::json;
use tandem_model::{EntityKind, Fields, Timestamp, Value};
use tandem_state::testsupport::TestState;
use tandem_state::{
    Access, ConflictEntry, Intent, IntentBatch, Interaction, Link, LockMode, PendingCreate,
    RefusedRequest, Scope, Side, StateBatch, StateError, StateStore,
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

fn commit(state: &mut dyn StateStore, batch: StateBatch) {
    state.commit(batch).unwrap();
}

/// What the store hands back for `entry` stored under `id`.
fn stored(mut entry: Interaction, id: i64) -> Interaction {
    entry.id = id;
    entry
}

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

#[test]
fn links_round_trip_with_baseline_and_versions() {
    let place = TestState::new();
    let mut state = open(&place);
    let mut full = link("CUST", "C1", "K1");
    full.baseline = Fields::new()
        .with("name", "Acme")
        .with("city", "Gent")
        .with("x_rating", Value::Number(3.5));
    full.account_version = Some("etag-7".into());
    full.last_error = Some("timeout".into());
    full.failure_count = 2;
    upsert(state.as_mut(), vec![full.clone(), link("VEND", "C2", "V1")]).unwrap();
    drop(state);

    let state = open(&place);
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
    let place = TestState::new();
    let mut state = open(&place);
    upsert(state.as_mut(), vec![link("CUST", "C1", "K1")]).unwrap();

    let err = upsert(state.as_mut(), vec![link("CUST", "C2", "K1")]).unwrap_err();
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
    upsert(state.as_mut(), vec![link("CUST", "C3", "K3")]).unwrap();
    let err = upsert(state.as_mut(), vec![link("CUST", "C3", "K1")]).unwrap_err();
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
    upsert(state.as_mut(), vec![link("VEND", "C2", "K1")]).unwrap();

    // One contact may be customer, vendor and bank account at once.
    upsert(
        state.as_mut(),
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
    let place = TestState::new();
    let mut state = open(&place);
    upsert(state.as_mut(), vec![link("CUST", "C1", "K1")]).unwrap();
    // The same link again is not a conflict with itself.
    upsert(state.as_mut(), vec![link("CUST", "C1", "K1")]).unwrap();

    let mut changed = link("CUST", "C1", "K2");
    changed.baseline = Fields::new().with("name", "Renamed");
    changed.contact_version = Some("cv-2".into());
    changed.failure_count = 1;
    upsert(state.as_mut(), vec![changed.clone()]).unwrap();
    assert_eq!(state.links(None).unwrap(), vec![changed]);
    assert!(state.links_of_accounts("CUST", &["K1"]).unwrap().is_empty());
    assert_eq!(state.count_links("CUST").unwrap(), 1);
}

#[test]
fn delete_links_removes_only_the_named_links() {
    let place = TestState::new();
    let mut state = open(&place);
    upsert(
        state.as_mut(),
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
    let place = TestState::new();
    let mut state = open(&place);
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
    let place = TestState::new();
    let mut state = open(&place);
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
    let state = open(&place);
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
    let place = TestState::new();
    let mut state = open(&place);
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
    let place = TestState::new();
    let mut state = open(&place);
    let links: Vec<Link> = (0..2_345)
        .map(|i| link("CUST", &format!("C{i:05}"), &format!("K{i:05}")))
        .collect();
    upsert(state.as_mut(), links.clone()).unwrap();
    // Every third contact is a vendor too.
    let vendors: Vec<Link> = (0..2_345)
        .step_by(3)
        .map(|i| link("VEND", &format!("C{i:05}"), &format!("V{i:05}")))
        .collect();
    upsert(state.as_mut(), vendors).unwrap();

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
    let place = TestState::new();
    let mut state = open(&place);
    let scope = Scope::new("files", EntityKind::Customer);
    upsert(
        state.as_mut(),
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
    upsert(state.as_mut(), vec![link("CUST", "C3", "K3")]).unwrap();
    assert_eq!(state.count_links("CUST").unwrap(), 3);
}

#[test]
fn r11_interaction_log_round_trips_oldest_first_with_a_limit() {
    let place = TestState::new();
    let mut state = open(&place);
    let details = json!({"fields": {"phone": {"old": "1", "new": "2"}}, "tier": 0});
    let entries: Vec<Interaction> = (0..5)
        .map(|i| interaction("C1", &format!("action-{i}"), json!({"n": i})))
        .collect();
    let mut other = interaction("C2", "updated", details.clone());
    other.run_id = None;
    other.account_id = None;
    commit(
        state.as_mut(),
        StateBatch {
            interactions: vec![entries[0].clone(), other.clone(), entries[1].clone()],
            ..StateBatch::default()
        },
    );
    commit(
        state.as_mut(),
        StateBatch {
            interactions: entries[2..].to_vec(),
            ..StateBatch::default()
        },
    );
    drop(state);

    let state = open(&place);
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

/// A big batch is appended several entries per statement: every entry is kept, in
/// order, with its own values.
#[test]
fn r11_a_big_batch_of_log_entries_keeps_each_in_order() {
    let place = TestState::new();
    let mut state = open(&place);
    let entries: Vec<Interaction> = (0..150)
        .map(|i| {
            let mut entry = interaction("C1", &format!("action-{i}"), json!({"n": i}));
            entry.account_id = (i % 3 != 0).then(|| format!("K{i}"));
            entry
        })
        .collect();
    commit(
        state.as_mut(),
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

#[test]
fn r15_at_most_one_open_conflict_per_pair_and_field() {
    let place = TestState::new();
    let mut state = open(&place);
    commit(
        state.as_mut(),
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
        state.as_mut(),
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
        state.as_mut(),
        StateBatch {
            upsert_conflicts: vec![again.clone()],
            ..StateBatch::default()
        },
    );
    drop(state);

    let state = open(&place);
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
}

#[test]
fn r15_a_conflict_is_resolved_then_closed_and_may_open_again() {
    let place = TestState::new();
    let mut state = open(&place);
    let first = conflict("VEND", "C1", "phone", "1", "2");
    commit(
        state.as_mut(),
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
        state.as_mut(),
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
        state.as_mut(),
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
        state.as_mut(),
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
        state.as_mut(),
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

#[test]
fn pending_creates_are_upserted_and_deleted() {
    let place = TestState::new();
    let mut state = open(&place);
    commit(
        state.as_mut(),
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
    commit(
        state.as_mut(),
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
    let state = open(&place);
    assert_eq!(
        state.pending_creates().unwrap(),
        vec![failed, pending("VEND", "account", "C2")]
    );
}

#[test]
fn r17_parked_links_round_trip() {
    let place = TestState::new();
    let mut state = open(&place);
    let mut parked_vend = link("VEND", "C1", "V1");
    parked_vend.parked = true;
    parked_vend.failure_count = 2;
    parked_vend.last_error = Some("invalid record".into());
    let mut parked_cust = link("CUST", "C2", "K2");
    parked_cust.parked = true;
    upsert(
        state.as_mut(),
        vec![
            parked_vend.clone(),
            link("CUST", "C1", "K1"),
            parked_cust.clone(),
        ],
    )
    .unwrap();
    drop(state);

    let mut state = open(&place);
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
    upsert(
        state.as_mut(),
        vec![link("VEND", "C1", "V1"), moved.clone()],
    )
    .unwrap();
    assert_eq!(state.parked_links().unwrap(), vec![moved]);
}

#[test]
fn r3_company_of_person_contacts_is_set_and_forgotten() {
    let place = TestState::new();
    let mut state = open(&place);
    commit(
        state.as_mut(),
        StateBatch {
            set_companies: vec![
                ("P1".into(), Some("CO1".into())),
                ("P2".into(), Some("CO1".into())),
            ],
            ..StateBatch::default()
        },
    );
    assert_eq!(state.company_of("P1").unwrap().as_deref(), Some("CO1"));
    commit(
        state.as_mut(),
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
    let state = open(&place);
    assert_eq!(state.company_of("P1").unwrap().as_deref(), Some("CO2"));
    assert_eq!(state.company_of("P2").unwrap(), None);
    assert_eq!(state.company_of("CO1").unwrap(), None);
}

/// Forgetting goes by chunks of ids; every contact of a big batch is forgotten, and
/// the last entry for a contact in a batch is the one that counts.
#[test]
fn r3_companies_forgotten_in_bulk_and_the_last_entry_counts() {
    let place = TestState::new();
    let mut state = open(&place);
    let people: Vec<String> = (0..1_234).map(|i| format!("P{i}")).collect();
    commit(
        state.as_mut(),
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
        state.as_mut(),
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

#[test]
fn a_run_left_running_by_a_dead_process_is_marked_interrupted() {
    let place = TestState::new();
    let mut state = open(&place);
    let done = state.begin_run("sync").unwrap();
    state.finish_run(done, "partial", &json!({})).unwrap();
    let dead = state.begin_run("sync").unwrap();
    // The process dies here: the run is never finished.
    drop(state);

    let mut state = open(&place);
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

#[test]
fn r4_pairs_unlinked_by_hand_are_remembered_until_linked_again() {
    let place = TestState::new();
    let mut state = open(&place);
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

#[test]
fn r17_refused_requests_round_trip_apart_from_creates() {
    let place = TestState::new();
    let mut state = open(&place);
    let mut parked = refused_request("VEND", "C2", "contact C1 already has a VEND link");
    parked.failure_count = 2;
    parked.parked = true;
    commit(
        state.as_mut(),
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
    let mut state = open(&place);
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
        state.as_mut(),
        StateBatch {
            delete_refused: vec![("CUST".into(), "C1".into())],
            ..StateBatch::default()
        },
    );
    assert_eq!(state.refused_requests().unwrap(), vec![parked]);
    assert_eq!(state.pending_creates().unwrap().len(), 1);
}

#[test]
fn r18_intent_batches_are_links_until_cleared_and_taken_up_by_the_next_run() {
    let place = TestState::new();
    let mut state = open(&place);
    upsert(state.as_mut(), vec![link("CUST", "C1", "K1")]).unwrap();
    let mut rewritten = with_intent(link("CUST", "C1", "K1"));
    rewritten.baseline = Fields::new().with("name", "New name");
    let batch = |links| IntentBatch { run_id: 7, links };
    commit(
        state.as_mut(),
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
    let mut state = open(&place);
    assert_eq!(state.unpack_intents().unwrap(), 2);
    assert_eq!(state.unpack_intents().unwrap(), 0, "taken up once");
    assert_eq!(state.links(None).unwrap(), expected);
    assert_eq!(state.count_links("CUST").unwrap(), 2);

    // A run that finishes clears its batches: the stored links stand.
    commit(
        state.as_mut(),
        StateBatch {
            intent_batches: vec![batch(vec![with_intent(link("CUST", "C3", "K3"))])],
            ..StateBatch::default()
        },
    );
    commit(
        state.as_mut(),
        StateBatch {
            upsert_links: vec![link("CUST", "C3", "K3")],
            clear_intent_batches: vec![7],
            ..StateBatch::default()
        },
    );
    assert_eq!(state.unpack_intents().unwrap(), 0);
    assert_eq!(
        state.links(Some("CUST")).unwrap()[2],
        link("CUST", "C3", "K3")
    );
}

#[test]
fn r2_an_intent_whose_account_was_taken_since_is_left_out() {
    let place = TestState::new();
    let mut state = open(&place);
    commit(
        state.as_mut(),
        StateBatch {
            intent_batches: vec![IntentBatch {
                run_id: 3,
                links: vec![with_intent(link("CUST", "C1", "K1"))],
            }],
            ..StateBatch::default()
        },
    );
    upsert(state.as_mut(), vec![link("CUST", "C2", "K1")]).unwrap();
    assert_eq!(state.unpack_intents().unwrap(), 0);
    let links: Vec<(String, String)> = (state.links(None).unwrap().into_iter())
        .map(|l| (l.contact_id, l.account_id))
        .collect();
    assert_eq!(links, vec![("C2".to_owned(), "K1".to_owned())]);
}

#[test]
fn match_keys_are_stored_with_a_hash_and_kept_by_a_hash_set_without_them() {
    let place = TestState::new();
    let mut state = open(&place);
    let contacts = Scope::new("crm", EntityKind::Contact);
    let customers = Scope::new("erp", EntityKind::Customer);
    let mut batch = StateBatch::default();
    batch.set_hash_with_keys(contacts.clone(), "C1".into(), 11, 101);
    batch.set_hashes.push((contacts.clone(), "C2".into(), 12));
    batch.set_hash_with_keys(contacts.clone(), "C3".into(), 13, 0);
    batch.set_hash_with_keys(customers.clone(), "C1".into(), 21, 201);
    commit(state.as_mut(), batch);
    let keys = state
        .match_keys_of(&contacts, &["C1", "C2", "C3", "C9"])
        .unwrap();
    // C2 has none, C3 an unknown one, C9 no row at all.
    assert_eq!(keys, HashMap::from([("C1".to_owned(), 101)]));
    assert_eq!(
        state.match_keys_of(&customers, &["C1"]).unwrap(),
        HashMap::from([("C1".to_owned(), 201)])
    );
    // A new hash without keys (Tandem's own write, a record to look at again) keeps
    // the keys the record was last read with; new keys replace them.
    commit(
        state.as_mut(),
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
    commit(state.as_mut(), batch);
    assert_eq!(state.match_keys_of(&contacts, &["C1"]).unwrap()["C1"], 102);
    assert_eq!(state.hashes(&contacts).unwrap()["C1"], 14);
    // A scope that never had a hash has none, and no keys.
    let vendors = Scope::new("erp", EntityKind::Vendor);
    assert!(state.hashes(&vendors).unwrap().is_empty());
    assert!(state.match_keys_of(&vendors, &["C1"]).unwrap().is_empty());
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
    for access in [
        Access::Lock(LockMode::Exclusive),
        Access::Lock(LockMode::Shared),
        Access::Existing,
    ] {
        let refused = place.open_for(access);
        assert!(
            matches!(refused, Err(StateError::Locked { .. })),
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
    assert!(matches!(refused, Err(StateError::Locked { .. })));
    drop((first, second));
    drop(open(&place));
}
