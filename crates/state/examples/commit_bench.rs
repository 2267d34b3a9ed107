//! Times the SQLite state on a large deployment: committing N content hashes and N
//! links (first insert, then a replacing upsert), and reading them back.
//!
//! `cargo run --release -p tandem-state --example commit_bench -- [N]` (default 1,000,000).

use std::time::Instant;

use tandem_model::{EntityKind, Fields, Timestamp, field};
use tandem_state::{Link, LockMode, Scope, SqliteState, StateBatch, StateStore};

/// Ids in a scattered order, as an external system would hand them out, so the
/// B-trees are not filled in sorted order.
fn id(prefix: &str, i: u64) -> String {
    format!("{prefix}{:010}", i.wrapping_mul(2_654_435_761) % (1 << 32))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: u64 = match std::env::args().nth(1) {
        Some(arg) => arg.parse()?,
        None => 1_000_000,
    };
    let dir = tempfile::tempdir()?;
    let mut state = SqliteState::open(&dir.path().join("state.db"), LockMode::Exclusive)?;
    let scope = Scope::new("erp", EntityKind::Customer);

    let set_hashes = (0..n).map(|i| (scope.clone(), id("K", i ^ 0x5555), i.wrapping_mul(31))).collect();
    let started = Instant::now();
    state.commit(StateBatch {
        set_hashes,
        ..StateBatch::default()
    })?;
    report("commit hashes", n, started);
    if std::env::var_os("ONLY_HASHES").is_some() { return Ok(()); }

    let links: Vec<Link> = (0..n)
        .map(|i| Link {
            code: "CUST".to_owned(),
            contact_id: id("C", i),
            account_id: id("K", i ^ 0x5555),
            baseline: Fields::new()
                .with(field::NAME, format!("Company {i}").as_str())
                .with(field::ADDRESS, format!("Main Street {i}").as_str())
                .with(field::POST_CODE, "9000")
                .with(field::CITY, "Gent")
                .with(field::PHONE, format!("+32 9 {i:07}").as_str())
                .with(field::EMAIL, format!("info@company{i}.example").as_str()),
            contact_version: Some(format!("rev-{i}")),
            account_version: Some(format!("W/\"{i}\"")),
            last_error: None,
            failure_count: 0,
            linked_at: Timestamp::now(),
            synced_at: Timestamp::now(),
        })
        .collect();
    let started = Instant::now();
    state.commit(StateBatch {
        upsert_links: links.clone(),
        ..StateBatch::default()
    })?;
    report("commit links (insert)", n, started);

    let started = Instant::now();
    state.commit(StateBatch {
        upsert_links: links,
        ..StateBatch::default()
    })?;
    report("commit links (replace)", n, started);
    if std::env::var_os("ONLY_COMMITS").is_some() { return Ok(()); }

    let started = Instant::now();
    let hashes = state.hashes(&scope)?;
    assert_eq!(hashes.len() as u64, n);
    report("load hashes", n, started);

    let contacts: Vec<String> = (0..n).map(|i| id("C", i)).collect();
    let ids: Vec<&str> = contacts.iter().map(String::as_str).collect();
    let started = Instant::now();
    assert_eq!(state.links_of_contacts(&ids)?.len() as u64, n);
    report("links_of_contacts", n, started);

    let started = Instant::now();
    assert_eq!(state.links(Some("CUST"))?.len() as u64, n);
    report("links(CUST)", n, started);
    Ok(())
}

fn report(what: &str, n: u64, started: Instant) {
    let elapsed = started.elapsed();
    println!(
        "{what:<24} {n:>9} rows  {:>7.2} s  {:>9.0} rows/s",
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64()
    );
}
