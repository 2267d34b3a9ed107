//! PostgreSQL-only tests: leases and fencing, databases that are not a state, secrets
//! in messages. The store's behaviour behind the trait is tested on both stores in
//! `sqlite/tests.rs`.

use std::time::{Duration, Instant};

use serde_json::json;
use sqlx::Connection;
use tandem_model::{EntityKind, Fields, Timestamp, Value};
use tandem_test_databases::PostgresServer;

use super::schema::VERSION;
use super::*;
use crate::testing::{Place, both_stores};
use crate::transfer::{STATE_TABLES, StoredValue};
use crate::{Details, Interaction, StateBatch};

/// A server and a fresh database on it; `None` when PostgreSQL is missing outside CI.
fn database() -> Option<(PostgresServer, String)> {
    let server = PostgresServer::start()?;
    let url = server.create_database();
    Some((server, url))
}

/// Runs `sql` on its own connection to `url`, as another program would.
fn execute(url: &str, sql: &str) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut conn = PgConnection::connect(url).await.unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
            .execute(&mut conn)
            .await
            .unwrap();
    });
}

/// The first column of the first row of `sql`, as text.
fn text(url: &str, sql: &str) -> Option<String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut conn = PgConnection::connect(url).await.unwrap();
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
            .fetch_optional(&mut conn)
            .await
            .unwrap()
    })
}

fn epoch(url: &str) -> i64 {
    text(url, "SELECT epoch::text FROM leases WHERE name = 'state'")
        .unwrap()
        .parse()
        .unwrap()
}

fn link(contact: &str, account: &str) -> Link {
    Link {
        code: "CUST".to_owned(),
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

fn links(links: Vec<Link>) -> StateBatch {
    StateBatch {
        upsert_links: links,
        ..StateBatch::default()
    }
}

#[test]
fn a_live_lease_refuses_another_writer_and_names_its_holder() {
    let Some((_server, url)) = database() else {
        return;
    };
    let mut holder = PgState::open_url(&url, LockMode::Exclusive).unwrap();
    let err = PgState::open_url(&url, LockMode::Exclusive).unwrap_err();
    assert!(matches!(err, StateError::Leased { .. }), "{err}");
    let message = err.to_string();
    let pid = format!("pid {}", std::process::id());
    for part in [
        pid.as_str(),
        "expires at",
        " UTC",
        "in use by another tandem process",
    ] {
        assert!(message.contains(part), "{part:?} not in: {message}");
    }
    // Readers take no lease, and see what the holder commits.
    let reader = PgState::open_url(&url, LockMode::Shared).unwrap();
    holder.commit(links(vec![link("C1", "K1")])).unwrap();
    assert_eq!(reader.count_links("CUST").unwrap(), 1);

    // Dropped, the holder lets the lease go at once, and the next one gets a higher
    // epoch.
    drop(holder);
    let next = PgState::open_url(&url, LockMode::Exclusive).unwrap();
    assert_eq!(epoch(&url), 2);
    assert_eq!(next.count_links("CUST").unwrap(), 1);
}

/// A sync killed on this machine leaves its lease behind; the next sync takes it at
/// once (a higher epoch) instead of waiting for it to expire. A live holder, or one of
/// another machine or pid namespace, keeps it.
#[test]
fn the_lease_of_a_process_that_died_here_is_taken_at_once() {
    let Some((_server, url)) = database() else {
        return;
    };
    drop(PgState::open_url(&url, LockMode::Exclusive).unwrap());
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let ours = lease::owner();
    let me = format!("pid {}", std::process::id());
    let left_by = |pid: u32, suffix: &str| {
        let owner = ours.replacen(&me, &format!("pid {pid}"), 1);
        let owner = match suffix {
            "" => owner,
            other => format!("{}{other}]", &owner[..owner.rfind('[').unwrap() + 1]),
        };
        execute(
            &url,
            &format!(
                "UPDATE leases SET owner = '{owner}', expires_at = now() + interval '1 hour'
                 WHERE name = 'state'"
            ),
        );
    };
    left_by(dead, "");
    let before = epoch(&url);
    let next = PgState::open_url(&url, LockMode::Exclusive).unwrap();
    assert_eq!(epoch(&url), before + 1, "taken over, with a higher epoch");
    drop(next);

    // Another boot (or pid namespace): its pid means nothing here.
    left_by(dead, "boot elsewhere, pid:[1]");
    let err = PgState::open_url(&url, LockMode::Exclusive).unwrap_err();
    assert!(matches!(err, StateError::Leased { .. }), "{err}");
    // A live process of this machine (this test's parent, say).
    left_by(std::os::unix::process::parent_id(), "");
    let err = PgState::open_url(&url, LockMode::Exclusive).unwrap_err();
    assert!(matches!(err, StateError::Leased { .. }), "{err}");
}

#[test]
fn an_expired_lease_is_taken_over_and_its_old_holder_can_write_nothing() {
    let Some((_server, url)) = database() else {
        return;
    };
    let mut stalled = PgState::open_url(&url, LockMode::Exclusive).unwrap();
    let run = stalled.begin_run("sync").unwrap();
    assert_eq!(epoch(&url), 1);
    // The holder stalls past its lease (its thread would have renewed it).
    execute(
        &url,
        "UPDATE leases SET expires_at = now() - interval '1 second'",
    );

    let mut taker = PgState::open_url(&url, LockMode::Exclusive).unwrap();
    assert_eq!(epoch(&url), 2, "taken over with the next epoch");
    taker.commit(links(vec![link("C1", "K1")])).unwrap();

    // The stalled holder wakes up: each write fails, and applies nothing.
    let err = stalled
        .commit(StateBatch {
            upsert_links: vec![link("C2", "K2")],
            interactions: vec![Interaction {
                id: 0,
                at: Timestamp(1),
                run_id: Some(run),
                contact_id: "C2".into(),
                code: "CUST".into(),
                account_id: Some("K2".into()),
                action: "linked".into(),
                source: "match".into(),
                details: Details::of(&json!({})),
            }],
            ..StateBatch::default()
        })
        .unwrap_err();
    assert!(
        matches!(&err, StateError::LeaseLost { name, epoch, .. } if name == "state" && *epoch == 1),
        "{err}"
    );
    assert!(err.to_string().contains("nothing was written"), "{err}");
    assert!(matches!(
        stalled.finish_run(run, "ok", &json!({})),
        Err(StateError::LeaseLost { .. })
    ));
    assert!(matches!(
        stalled.begin_run("sync"),
        Err(StateError::LeaseLost { .. })
    ));
    assert_eq!(
        taker.links(None).unwrap(),
        vec![link("C1", "K1")],
        "nothing of the stalled holder's batch"
    );
    assert!(taker.interactions("C2", 10).unwrap().is_empty());
    assert_eq!(taker.runs(5).unwrap()[0].status, "running");

    // Dropping the old holder leaves the new holder's lease alone.
    drop(stalled);
    let err = PgState::open_url(&url, LockMode::Exclusive).unwrap_err();
    assert!(matches!(err, StateError::Leased { .. }), "{err}");
}

#[test]
fn the_store_renews_its_lease_while_it_is_idle() {
    let Some((_server, url)) = database() else {
        return;
    };
    // Renewed every 700 ms: a renewal may come 1.4 s late before the lease expires.
    let ttl = Duration::from_millis(2_100);
    let mut holder = PgState::open_url_with_ttl(&url, LockMode::Exclusive, ttl).unwrap();
    // Two lifetimes and more without a call: only the store's thread keeps the lease.
    std::thread::sleep(ttl * 5 / 2);
    let err = PgState::open_url_with_ttl(&url, LockMode::Exclusive, ttl).unwrap_err();
    assert!(matches!(err, StateError::Leased { .. }), "{err}");
    holder.commit(links(vec![link("C1", "K1")])).unwrap();
    assert_eq!(epoch(&url), 1);
}

#[test]
fn a_holder_taken_over_is_told_before_it_writes_to_a_system() {
    let Some((_server, url)) = database() else {
        return;
    };
    let ttl = Duration::from_millis(1_000);
    let stalled = PgState::open_url_with_ttl(&url, LockMode::Exclusive, ttl).unwrap();
    // What the engine asks while the store itself is busy storing.
    let check = stalled.lease_check();
    // Idle for longer than its lease: its thread renewed it, the engine may write.
    std::thread::sleep(ttl * 2);
    stalled.confirm_lease().unwrap();
    check.confirm().unwrap();
    // Stalled past its lease, which another process took over (as a claim does: the
    // next epoch, another owner). Done in SQL: an expired row left to a claim would be
    // renewed first by the holder's own thread, which renews every third of a second.
    execute(
        &url,
        "UPDATE leases SET owner = 'another process', epoch = epoch + 1,
             expires_at = now() + interval '1 minute'",
    );
    // Its last renewal is older than half a lifetime: the server is asked, and says no.
    std::thread::sleep(ttl * 6 / 10);
    let err = stalled.confirm_lease().unwrap_err();
    assert!(
        matches!(&err, StateError::LeaseLost { name, epoch, .. } if name == "state" && *epoch == 1),
        "{err}"
    );
    // The handle answers the same, from another thread.
    let err = std::thread::spawn(move || check.confirm())
        .join()
        .unwrap()
        .unwrap_err();
    assert!(matches!(&err, StateError::LeaseLost { .. }), "{err}");
    // A handle kept does not keep the store's thread from ending with the store.
    let kept = stalled.lease_check();
    drop(stalled);
    assert!(kept.confirm().is_err(), "the store is gone");
    // A store that holds no lease has nothing to lose.
    let reader = PgState::open_url(&url, LockMode::Shared).unwrap();
    reader.confirm_lease().unwrap();
    reader.lease_check().confirm().unwrap();
}

#[test]
fn a_lost_connection_fails_one_call_and_the_next_connects_again() {
    let Some((_server, url)) = database() else {
        return;
    };
    let mut state = PgState::open_url(&url, LockMode::Exclusive).unwrap();
    state.commit(links(vec![link("C1", "K1")])).unwrap();
    // An administrator ends the store's session.
    execute(
        &url,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE application_name = 'tandem state'",
    );
    let err = state.count_links("CUST").unwrap_err();
    assert!(matches!(err, StateError::Postgres { .. }), "{err}");
    // The lease is a row, not the session's: still held, and the writes go on.
    assert_eq!(state.count_links("CUST").unwrap(), 1);
    state.commit(links(vec![link("C2", "K2")])).unwrap();
    assert_eq!(state.count_links("CUST").unwrap(), 2);
    assert_eq!(epoch(&url), 1);
}

#[test]
fn a_database_of_another_program_is_refused_and_left_alone() {
    let Some((server, url)) = database() else {
        return;
    };
    execute(
        &url,
        "CREATE TABLE invoices (id BIGINT PRIMARY KEY, total DOUBLE PRECISION);
         INSERT INTO invoices VALUES (1, 9.5);",
    );
    for mode in [LockMode::Exclusive, LockMode::Shared] {
        let err = PgState::open_url(&url, mode).unwrap_err();
        assert!(matches!(err, StateError::NotAState { .. }), "{err}");
        let message = err.to_string();
        for part in [
            "is not a Tandem state",
            "another program",
            "invoices",
            "nothing was changed",
        ] {
            assert!(message.contains(part), "{part:?} not in: {message}");
        }
    }
    let tables = text(
        &url,
        "SELECT string_agg(table_name::text, ',') FROM information_schema.tables
         WHERE table_schema = 'public'",
    );
    assert_eq!(tables.as_deref(), Some("invoices"), "no table was added");

    // A database with Tandem's version table but not its tables is refused too.
    let other = server.create_database();
    execute(
        &other,
        "CREATE TABLE schema_version (version BIGINT NOT NULL); INSERT INTO schema_version VALUES (8);",
    );
    let err = PgState::open_url(&other, LockMode::Exclusive).unwrap_err();
    assert!(
        matches!(&err, StateError::NotAState { reason, .. } if reason.contains("lacks")),
        "{err}"
    );
}

#[test]
fn a_newer_schema_is_refused() {
    let Some((_server, url)) = database() else {
        return;
    };
    drop(PgState::open_url(&url, LockMode::Exclusive).unwrap());
    assert_eq!(
        text(&url, "SELECT version::text FROM schema_version"),
        Some(VERSION.to_string())
    );
    // Opening again is a no-op.
    drop(PgState::open_url(&url, LockMode::Exclusive).unwrap());
    assert_eq!(
        text(&url, "SELECT count(*)::text FROM schema_version").as_deref(),
        Some("1")
    );
    execute(
        &url,
        &format!("UPDATE schema_version SET version = {}", VERSION + 1),
    );
    let err = PgState::open_url(&url, LockMode::Shared).unwrap_err();
    assert!(
        matches!(
            err,
            StateError::TooNew {
                found,
                known: VERSION,
                ..
            } if found == VERSION + 1
        ),
        "{err}"
    );
    assert!(err.to_string().contains("127.0.0.1"), "{err}");
}

#[test]
fn a_password_never_shows_in_an_error() {
    let secret = "hunter2-not-shown";
    let refused_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let urls = [
        format!("postgres://tandem:{secret}@127.0.0.1:{refused_port}/state"),
        format!("postgresql://tandem@127.0.0.1:{refused_port}/state?password={secret}"),
        format!("postgres://tandem:{secret}@127.0.0.1:{refused_port}/state?sslmode=bogus"),
        format!("mysql://tandem:{secret}@127.0.0.1/state"),
    ];
    for url in &urls {
        let err = PgState::open_url(url, LockMode::Exclusive).unwrap_err();
        for shown in [err.to_string(), format!("{err:?}")] {
            assert!(!shown.contains(secret), "{shown}");
        }
    }
    // A live server refusing the database: its message passes, the password does not.
    let Some((server, _)) = database() else {
        return;
    };
    let url = format!(
        "postgres://tandem:{secret}@127.0.0.1:{}/missing",
        server.port
    );
    let err = PgState::open_url(&url, LockMode::Exclusive).unwrap_err();
    let message = err.to_string();
    assert!(message.contains("missing"), "{message}");
    assert!(message.contains("tandem:***@"), "{message}");
    assert!(!message.contains(secret) && !format!("{err:?}").contains(secret));
}

#[test]
fn redacted_urls_hide_the_password_in_the_user_part_and_in_parameters() {
    assert_eq!(
        redact("postgres://u:secret@db:5432/state?password=other&sslmode=require"),
        "postgres://u:***@db:5432/state?password=***&sslmode=require"
    );
    assert_eq!(redact("postgresql://db/state"), "postgresql://db/state");
}

// A first sync's worth in one batch: 100k links with baselines, 100k log rows (two
// entries each) and 200k hashes. The time is printed, for comparing the stores.
both_stores!(a_first_sync_sized_batch_is_stored_and_read_back, |place| {
    const N: usize = 100_000;
    let mut state = place.open();
    let scope = Scope::new("erp", EntityKind::Customer);
    let contacts = Scope::new("crm", EntityKind::Contact);
    let mut batch = StateBatch::default();
    for i in 0..N {
        let (contact, account) = (format!("C{i:06}"), format!("K{i:06}"));
        let mut l = link(&contact, &account);
        l.baseline = l
            .baseline
            .with("email", format!("c{i}@example.org").as_str())
            .with("city", "Gent")
            .with("x_rating", Value::Number(i as f64));
        batch.upsert_links.push(l);
        for action in ["linked", "updated"] {
            batch.interactions.push(Interaction {
                id: 0,
                at: Timestamp(1_700_000_000_000),
                run_id: Some(1),
                contact_id: contact.clone(),
                code: "CUST".into(),
                account_id: Some(account.clone()),
                action: action.into(),
                source: "match".into(),
                details: Details::of(&json!({ "tier": 1 })),
            });
        }
        batch.set_hash_with_keys(scope.clone(), account, i as u64 + 1, 7);
        batch.set_hash_with_keys(contacts.clone(), contact, i as u64 + 2, 0);
    }
    let expected_links = batch.upsert_links.clone();
    let started = Instant::now();
    state.commit(batch).unwrap();
    let committed = started.elapsed();
    let started = Instant::now();
    let read = state.links(Some("CUST")).unwrap();
    let hashes = state.hashes(&scope).unwrap();
    let contact_hashes = state.hashes(&contacts).unwrap();
    let read_back = started.elapsed();
    let store = match place {
        Place::Sqlite(_) => "SQLite",
        Place::Postgres { .. } => "PostgreSQL",
    };
    println!(
        "{store}: committed {N} links, {N} log rows and {} hashes in {committed:.2?}; read \
         them back in {read_back:.2?}",
        2 * N
    );
    assert_eq!(read, expected_links);
    assert_eq!(state.count_links("CUST").unwrap(), N as u64);
    assert_eq!(hashes.len(), N);
    assert_eq!(hashes["K000041"], 42);
    assert_eq!(contact_hashes.len(), N);
    let log = state.interactions("C099999", 10).unwrap();
    let actions: Vec<&str> = log.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["linked", "updated"]);
    assert_eq!(log[1].id, 2 * N as i64, "ids in order, two entries per row");
    assert_eq!(
        state
            .match_keys_of(&scope, &["K000001", "K099999"])
            .unwrap()
            .len(),
        2
    );
});

/// Every table of `from`, exported and imported into `to`.
fn copy(from: &PgState, to: &mut PgState) -> u64 {
    let mut copied = 0;
    for table in STATE_TABLES.iter().map(|t| t.name) {
        let mut rows = Vec::new();
        let n = from
            .export_table(table, &mut |row| {
                rows.push(row);
                Ok(())
            })
            .unwrap();
        assert_eq!(n as usize, rows.len(), "{table}");
        copied += n;
        to.import_rows(table, rows).unwrap();
    }
    copied
}

#[test]
fn a_state_is_copied_table_by_table_and_reads_the_same() {
    let Some((server, from_url)) = database() else {
        return;
    };
    let mut from = PgState::open_url(&from_url, LockMode::Exclusive).unwrap();
    let run = from.begin_run("sync").unwrap();
    let scope = Scope::new("erp", EntityKind::Customer);
    let mut with_intent = link("C2", "K2");
    with_intent.intent = Some(crate::Intent {
        contact: vec![("phone".into(), Value::text("old"))],
        account: Vec::new(),
    });
    let mut batch = links(vec![link("C3", "K3"), link("C1", "K1"), with_intent]);
    batch.set_hash_with_keys(scope.clone(), "K1".into(), u64::MAX, 99);
    batch.set_hashes.push((scope.clone(), "K2".into(), 0));
    batch.set_cursors.push((scope.clone(), "cursor-1".into()));
    batch
        .set_fingerprints
        .push((scope.clone(), Some("fp".into())));
    batch
        .set_ambiguities
        .push(("CUST".into(), json!([["C1", "C2"]])));
    for action in ["linked", "updated"] {
        batch.interactions.push(Interaction {
            id: 0,
            at: Timestamp(5),
            run_id: Some(run),
            contact_id: "C1".into(),
            code: "CUST".into(),
            account_id: Some("K1".into()),
            action: action.into(),
            source: "match".into(),
            details: Details::of(&json!({ "action": action })),
        });
    }
    batch.upsert_conflicts.push(ConflictEntry {
        id: 0,
        code: "CUST".into(),
        contact_id: "C1".into(),
        account_id: "K1".into(),
        field: "phone".into(),
        base: Value::text("1"),
        contact_value: Value::text("2"),
        account_value: Value::text("3"),
        opened_at: Timestamp(6),
        run_id: Some(run),
        resolution: None,
        closed_at: None,
    });
    batch.set_companies.push(("P1".into(), Some("C1".into())));
    batch
        .unlinked_pairs
        .push(("CUST".into(), "C9".into(), "K9".into(), true));
    batch.intent_batches.push(crate::IntentBatch {
        run_id: run,
        // A later part of the run: copied with its part.
        part: 3,
        links: vec![link("C4", "K4")],
    });
    from.commit(batch).unwrap();
    from.finish_run(run, "partial", &json!({ "updated": 1 }))
        .unwrap();

    let to_url = server.create_database();
    let mut to = PgState::open_url(&to_url, LockMode::Exclusive).unwrap();
    assert!(copy(&from, &mut to) > 10);
    assert_eq!(to.links(None).unwrap(), from.links(None).unwrap());
    assert_eq!(
        to.links(None).unwrap().len(),
        4,
        "with the intent batch's link"
    );
    assert_eq!(
        to.links_with_intent().unwrap(),
        from.links_with_intent().unwrap()
    );
    assert_eq!(to.count_links("CUST").unwrap(), 3);
    assert_eq!(to.hashes(&scope).unwrap(), from.hashes(&scope).unwrap());
    assert_eq!(to.match_keys_of(&scope, &["K1"]).unwrap()["K1"], 99);
    assert_eq!(to.rechecks(&scope).unwrap(), ["K2"]);
    assert_eq!(to.cursor(&scope).unwrap().as_deref(), Some("cursor-1"));
    assert_eq!(to.fingerprint(&scope).unwrap().as_deref(), Some("fp"));
    assert_eq!(to.ambiguities("CUST").unwrap(), Some(json!([["C1", "C2"]])));
    assert_eq!(
        to.interactions("C1", 10).unwrap(),
        from.interactions("C1", 10).unwrap()
    );
    assert_eq!(to.conflicts(false).unwrap(), from.conflicts(false).unwrap());
    assert_eq!(to.runs(10).unwrap(), from.runs(10).unwrap());
    assert_eq!(to.company_of("P1").unwrap().as_deref(), Some("C1"));
    assert_eq!(to.unlinked_pairs("CUST").unwrap().len(), 1);
    // Ids given after the copy are above the copied ones.
    assert!(to.begin_run("sync").unwrap() > run);

    // Rows come in primary-key order, columns in the schema's.
    let mut contacts = Vec::new();
    from.export_table("links", &mut |row| {
        contacts.push(row[1].clone());
        assert_eq!(row.len(), 12);
        assert!(matches!(row[3], StoredValue::Blob(_)), "the baseline");
        Ok(())
    })
    .unwrap();
    let text = |s: &str| StoredValue::Text(s.to_owned());
    assert_eq!(contacts, [text("C1"), text("C2"), text("C3")]);

    // Pages follow each other by key: a table of several pages comes whole.
    let mut many = StateBatch::default();
    for i in 0..12_345 {
        many.set_hashes.push((scope.clone(), format!("H{i:05}"), 1));
    }
    from.commit(many).unwrap();
    let mut ids = Vec::new();
    let n = from
        .export_table("record_hashes", &mut |row| {
            ids.push(row[1].clone());
            // The store may be used while it exports.
            assert!(from.count_links("CUST").is_ok());
            Ok(())
        })
        .unwrap();
    assert_eq!(n, 12_347);
    let mut sorted = ids.clone();
    sorted.sort_by_key(|v| format!("{v:?}"));
    assert_eq!(ids, sorted, "in key order");
    sorted.dedup();
    assert_eq!(sorted.len(), ids.len(), "no row twice");

    // A stop asked for by the caller ends the export with its error.
    let err = from
        .export_table("links", &mut |_| {
            Err(StateError::Corrupt {
                what: "the target".into(),
                message: "full".into(),
            })
        })
        .unwrap_err();
    assert!(err.to_string().contains("full"), "{err}");
    assert_eq!(from.count_links("CUST").unwrap(), 3, "the store goes on");

    let err = from.export_table("leases", &mut |_| Ok(())).unwrap_err();
    assert!(err.to_string().contains("has no table `leases`"), "{err}");
}

#[test]
fn a_json_baseline_of_an_older_sqlite_state_is_imported_in_the_binary_form() {
    let Some((_server, url)) = database() else {
        return;
    };
    let mut state = PgState::open_url(&url, LockMode::Exclusive).unwrap();
    let text = |s: &str| StoredValue::Text(s.to_owned());
    let row = |baseline: StoredValue| {
        vec![
            text("CUST"),
            text("C1"),
            text("K1"),
            baseline,
            StoredValue::Null,
            StoredValue::Null,
            StoredValue::Null,
            StoredValue::Integer(0),
            StoredValue::Integer(1),
            StoredValue::Integer(2),
            StoredValue::Integer(0),
            StoredValue::Null,
        ]
    };
    state
        .import_rows("links", vec![row(text(r#"{"name":"Acme","city":"Gent"}"#))])
        .unwrap();
    let links = state.links(None).unwrap();
    assert_eq!(
        links[0].baseline,
        Fields::new().with("name", "Acme").with("city", "Gent")
    );
    // A value of the wrong kind is named, and nothing is stored.
    let err = state
        .import_rows("links", vec![row(StoredValue::Real(1.5))])
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("column baseline of row 1 imported into links"),
        "{err}"
    );
}

#[test]
fn a_malformed_baseline_or_conflict_value_names_its_row() {
    let Some((_server, url)) = database() else {
        return;
    };
    let mut state = PgState::open_url(&url, LockMode::Exclusive).unwrap();
    state.commit(links(vec![link("C1", "K1")])).unwrap();
    execute(&url, "UPDATE links SET baseline = '\\x7b6e6f74'::bytea");
    let err = state.links(None).unwrap_err();
    assert!(matches!(err, StateError::Corrupt { .. }), "{err}");
    let message = err.to_string();
    assert!(
        message.contains("CUST") && message.contains("C1"),
        "{message}"
    );

    execute(
        &url,
        "INSERT INTO conflicts (code, contact_id, account_id, field, base, contact_value,
                                account_value, opened_at)
         VALUES ('CUST', 'C1', 'K1', 'phone', '\"1\"', '\"2\"', '{\"x\": 1}', 0)",
    );
    let err = state.conflicts(false).unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("conflict 1") && message.contains("account value"),
        "{message}"
    );
}

/// `tandem run --worker` with partitions: each partition's lease is one worker's, beside
/// the other partitions' of the same count; the whole state's lease and partitions of
/// another count exclude them, both ways, naming the holder.
#[test]
fn partitions_exclude_the_whole_state_and_another_cut_but_not_each_other() {
    let Some((_server, url)) = database() else {
        return;
    };
    let first = PgState::open_partition(&url, "partition 0/2", LEASE_TTL).unwrap();
    let second = PgState::open_partition(&url, "partition 1/2", LEASE_TTL).unwrap();
    let refused = |result: Result<PgState, StateError>, named: &str| match result {
        Err(StateError::Leased { name, .. }) => assert_eq!(name, named),
        other => panic!("not refused for {named}: {:?}", other.map(|_| ())),
    };
    refused(
        PgState::open_partition(&url, "partition 0/2", LEASE_TTL),
        "partition 0/2",
    );
    refused(
        PgState::open_partition(&url, "partition 2/3", LEASE_TTL),
        "partition 0/2",
    );
    let whole = PgState::open_url(&url, LockMode::Exclusive);
    assert!(
        matches!(&whole, Err(StateError::Leased { name, .. }) if name.starts_with("partition "))
    );
    // The refused ones let their own leases go: the state is free once both leave.
    drop((first, second));
    let whole = PgState::open_url(&url, LockMode::Exclusive).unwrap();
    refused(
        PgState::open_partition(&url, "partition 1/2", LEASE_TTL),
        "state",
    );
    drop(whole);
    drop(PgState::open_partition(&url, "partition 1/2", LEASE_TTL).unwrap());
}

/// A partition's run ends only the runs of its own partition that died (and those of
/// a holder of the whole state), and takes up only their intents: another partition's
/// run going on is left alone, its intents are not taken for those of a crash (R18).
#[test]
fn a_partition_takes_up_the_intents_of_its_own_dead_runs_only() {
    let Some((_server, url)) = database() else {
        return;
    };
    let mut first = PgState::open_partition(&url, "partition 0/2", LEASE_TTL).unwrap();
    let mut second = PgState::open_partition(&url, "partition 1/2", LEASE_TTL).unwrap();
    let going_on = second.begin_run("sync, partition 1/2").unwrap();
    let mut batch = StateBatch::default();
    batch.intent_batches.push(crate::IntentBatch {
        run_id: going_on,
        part: 0,
        links: vec![link("C4", "K4")],
    });
    second.commit(batch).unwrap();

    let own = first.begin_run("sync, partition 0/2").unwrap();
    assert_eq!(first.unpack_intents().unwrap(), 0);
    assert!(first.links_with_intent().unwrap().is_empty());
    let runs = first.runs(10).unwrap();
    let status = |id: i64| runs.iter().find(|r| r.id == id).unwrap().status.clone();
    let mode = |id: i64| runs.iter().find(|r| r.id == id).unwrap().mode.clone();
    assert_eq!(status(going_on), "running");
    assert_eq!(mode(own), "sync, partition 0/2");
    assert_eq!(mode(going_on), "sync, partition 1/2");

    // The second partition's worker dies; the next one ends its run and takes it up.
    drop(second);
    let mut next = PgState::open_partition(&url, "partition 1/2", LEASE_TTL).unwrap();
    let after = next.begin_run("sync, partition 1/2").unwrap();
    assert_eq!(next.unpack_intents().unwrap(), 1);
    let runs = next.runs(10).unwrap();
    let status = |id: i64| runs.iter().find(|r| r.id == id).unwrap().status.clone();
    assert_eq!(status(going_on), "interrupted");
    assert_eq!(status(own), "running", "the first partition's run goes on");
    assert_eq!(status(after), "running");
    first.finish_run(own, "ok", &json!({})).unwrap();
}

/// Workers of two partitions append to the interaction log side by side: every entry
/// gets an id of its own.
#[test]
fn two_partitions_append_to_the_log_side_by_side() {
    let Some((_server, url)) = database() else {
        return;
    };
    let entries = |contact: &str| StateBatch {
        interactions: (0..200)
            .map(|i| Interaction {
                id: 0,
                at: Timestamp(1_700_000_000_000 + i),
                run_id: None,
                contact_id: format!("{contact}{i}"),
                code: "CUST".to_owned(),
                account_id: None,
                action: "updated".to_owned(),
                source: "contact".to_owned(),
                details: Details::of(&json!({})),
            })
            .collect(),
        ..StateBatch::default()
    };
    let writers: Vec<_> = ["partition 0/2", "partition 1/2"]
        .into_iter()
        .map(|lease| {
            let (url, batch) = (url.clone(), entries(lease));
            std::thread::spawn(move || {
                let mut state = PgState::open_partition(&url, lease, LEASE_TTL).unwrap();
                for _ in 0..10 {
                    state.commit(batch.clone()).unwrap();
                }
            })
        })
        .collect();
    for writer in writers {
        writer.join().unwrap();
    }
    let count = text(&url, "SELECT count(*)::text FROM interactions").unwrap();
    assert_eq!(count, "4000");
}

/// A state of version 8, the first PostgreSQL schema, made as that release made it:
/// opened, it gets migration 9 (creates written down as one record per batch) and
/// keeps every row it held.
#[test]
fn a_version_8_state_is_migrated_and_keeps_its_rows() {
    let Some((_server, url)) = database() else {
        return;
    };
    execute(&url, schema::SCHEMA);
    execute(
        &url,
        "INSERT INTO schema_version (version) VALUES (8);
         INSERT INTO links (code, contact_id, account_id, baseline, linked_at, synced_at)
         VALUES ('CUST', 'C1', 'K1', '\\x', 1, 2);
         INSERT INTO link_counts (code, links) VALUES ('CUST', 1);
         INSERT INTO pending_creates (code, side, source_id, fields, run_id, error,
                                      failure_count, parked, updated_at)
         VALUES ('CUST', 'contact', 'K2', '{\"name\":\"Acme\"}', 1, 'refused', 1, 0, 5);",
    );
    let mut state = PgState::open_url(&url, LockMode::Exclusive).unwrap();
    assert_eq!(
        text(&url, "SELECT max(version)::text FROM schema_version"),
        Some(VERSION.to_string())
    );
    assert_eq!(state.count_links("CUST").unwrap(), 1);
    let pending = state.pending_creates().unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].source_id, "K2");
    assert_eq!(pending[0].error.as_deref(), Some("refused"));
    // The new table takes a batch, which reads in place of the row of the same key.
    let mut retried = pending[0].clone();
    retried.error = None;
    retried.run_id = Some(2);
    let mut batch = StateBatch::default();
    batch
        .pending_create_batches
        .push(crate::PendingCreateBatch {
            run_id: 2,
            part: 0,
            creates: vec![retried.clone()],
        });
    state.commit(batch).unwrap();
    assert_eq!(state.pending_creates().unwrap(), vec![retried]);
}

/// The `run:part` of every intent batch of the state at `url`, in the order stored.
fn intent_parts(url: &str) -> String {
    text(
        url,
        "SELECT coalesce(string_agg(run_id || ':' || part, ' ' ORDER BY id), '')
         FROM intent_batches",
    )
    .unwrap()
}

/// A run in ranges clears the intents of one range by its part (R18): the rows of the
/// run's later parts, and of other runs, stay; several pairs clear in one commit.
#[test]
fn r18_intent_batches_are_cleared_by_part_and_a_later_part_stays() {
    let Some((_server, url)) = database() else {
        return;
    };
    let mut state = PgState::open_url(&url, LockMode::Exclusive).unwrap();
    let with_intent = |contact: &str, account: &str| Link {
        intent: Some(crate::Intent {
            contact: vec![("phone".into(), Value::text("old"))],
            account: Vec::new(),
        }),
        ..link(contact, account)
    };
    let batch = |run_id, part, links| crate::IntentBatch {
        run_id,
        part,
        links,
    };
    state
        .commit(StateBatch {
            intent_batches: vec![
                batch(7, 1, vec![with_intent("C1", "K1")]),
                batch(7, 2, vec![with_intent("C2", "K2")]),
                batch(8, 1, vec![with_intent("C3", "K3")]),
                batch(8, 2, vec![with_intent("C4", "K4")]),
            ],
            ..StateBatch::default()
        })
        .unwrap();
    assert_eq!(intent_parts(&url), "7:1 7:2 8:1 8:2");

    state
        .commit(StateBatch {
            clear_intent_batches: vec![(7, 1)],
            ..links(vec![link("C1", "K1")])
        })
        .unwrap();
    assert_eq!(intent_parts(&url), "7:2 8:1 8:2");
    state
        .commit(StateBatch {
            clear_intent_batches: vec![(8, 1), (8, 2), (9, 0)],
            ..StateBatch::default()
        })
        .unwrap();
    assert_eq!(intent_parts(&url), "7:2");
    assert_eq!(
        state.links_with_intent().unwrap(),
        vec![with_intent("C2", "K2")]
    );

    // Cut short: the next run takes up range 2's intents.
    drop(state);
    let mut state = PgState::open_url(&url, LockMode::Exclusive).unwrap();
    assert_eq!(state.unpack_intents().unwrap(), 1);
    assert_eq!(intent_parts(&url), "");
    assert_eq!(
        state.links(None).unwrap(),
        vec![link("C1", "K1"), with_intent("C2", "K2")]
    );
}

/// A state of version 11, made as that release made it (the schema, then migrations 9
/// to 11), holding the intent batch of a run cut short: opened, it gets migration 12,
/// the batch is part 0 of its run and the next run takes it up.
#[test]
fn a_version_11_state_keeps_its_intent_batches_as_part_0() {
    let Some((_server, url)) = database() else {
        return;
    };
    execute(&url, schema::SCHEMA);
    for (_, sql) in schema::MIGRATIONS.iter().filter(|(v, _)| *v <= 11) {
        execute(&url, sql);
    }
    let mut intent = link("C1", "K1");
    intent.intent = Some(crate::Intent {
        contact: vec![("phone".into(), Value::text("old"))],
        account: Vec::new(),
    });
    let bytes: String = crate::codec::encode_links(std::slice::from_ref(&intent))
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    execute(
        &url,
        &format!(
            "INSERT INTO schema_version (version) VALUES (11);
             INSERT INTO intent_batches (run_id, links) VALUES (4, '\\x{bytes}'::bytea);"
        ),
    );
    let mut state = PgState::open_url(&url, LockMode::Exclusive).unwrap();
    assert_eq!(
        text(&url, "SELECT max(version)::text FROM schema_version"),
        Some(VERSION.to_string())
    );
    assert_eq!(intent_parts(&url), "4:0");
    assert_eq!(state.links_with_intent().unwrap(), vec![intent.clone()]);
    // Clearing another part of the run leaves it; the next run takes it up.
    state
        .commit(StateBatch {
            clear_intent_batches: vec![(4, 1)],
            ..StateBatch::default()
        })
        .unwrap();
    assert_eq!(state.unpack_intents().unwrap(), 1);
    assert_eq!(state.links(None).unwrap(), vec![intent]);
}
