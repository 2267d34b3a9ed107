//! Times the SQLite state on a large deployment: committing N content hashes and N
//! links (first as new links, then replacing them), and reading them back.
//!
//! `cargo run --release -p tandem-state --example commit_bench -- [N]` (default 1,000,000).

use std::time::Instant;

use tandem_model::{EntityKind, Fields, Timestamp, field};
use tandem_state::{Link, LockMode, Scope, SqliteState, StateBatch, StateStore};

/// The `i`th id in a scattered order, as external systems hand them out, so that
/// nothing reaches the B-trees sorted. `mix` must be odd (then no two ids collide).
fn id(prefix: &str, i: u64, mix: u64) -> String {
    format!("{prefix}{:010}", i.wrapping_mul(mix) % (1 << 32))
}

fn contact_id(i: u64) -> String {
    id("C", i, 2_654_435_761)
}

fn account_id(i: u64) -> String {
    id("K", i, 2_246_822_519)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: u64 = match std::env::args().nth(1) {
        Some(arg) => arg.parse()?,
        None => 1_000_000,
    };
    let dir = tempfile::tempdir()?;
    let mut state = SqliteState::open(&dir.path().join("state.db"), LockMode::Exclusive)?;
    let scope = Scope::new("erp", EntityKind::Customer);

    let batch = StateBatch {
        set_hashes: (0..n)
            .map(|i| (scope.clone(), account_id(i), i.wrapping_mul(31)))
            .collect(),
        ..StateBatch::default()
    };
    let started = Instant::now();
    state.commit(batch)?;
    report("commit hashes", n, started);

    let links: Vec<Link> = (0..n)
        .map(|i| Link {
            code: "CUST".to_owned(),
            contact_id: contact_id(i),
            account_id: account_id(i),
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
            parked: false,
            linked_at: Timestamp::now(),
            synced_at: Timestamp::now(),
            intent: None,
        })
        .collect();
    let batch = StateBatch {
        upsert_links: links.clone(),
        ..StateBatch::default()
    };
    let started = Instant::now();
    state.commit(batch)?;
    report("commit links (new)", n, started);

    let batch = StateBatch {
        upsert_links: links,
        ..StateBatch::default()
    };
    let started = Instant::now();
    state.commit(batch)?;
    report("commit links (replace)", n, started);

    let started = Instant::now();
    assert_eq!(state.hashes(&scope)?.len() as u64, n);
    report("hashes(scope)", n, started);

    let contacts: Vec<String> = (0..n).map(contact_id).collect();
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
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "{what:<24} {n:>9} rows {seconds:>7.2} s {:>9.0} rows/s",
        n as f64 / seconds
    );
}
