//! Crash injection for the crash-consistency tests (issue: a run cut short at any
//! write point must be finished by the next run, with no duplicate and no loss).
//!
//! `TANDEM_FAILPOINT=<name>[:<n>]` makes the process abort, as a crash would, the
//! `n`-th time (default 1st) it passes the point `name`. Unset, a failpoint costs one
//! relaxed atomic load.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Every failpoint of a sync, in the order a run passes them.
pub const POINTS: &[&str] = &[
    "after_unlinks",
    "before_contact_create",
    "after_contact_create",
    "after_contact_create_commit",
    "before_account_create",
    "after_account_create",
    "after_account_create_commit",
    "after_intent_commit",
    "after_contact_updates",
    "after_account_updates",
    "after_link_commit",
    "before_cursor_commit",
];

struct Armed {
    name: String,
    nth: usize,
    seen: AtomicUsize,
}

fn armed() -> Option<&'static Armed> {
    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            let spec = std::env::var("TANDEM_FAILPOINT").ok()?;
            let (name, nth) = match spec.split_once(':') {
                Some((name, n)) => (name.to_owned(), n.parse().unwrap_or(1)),
                None => (spec, 1),
            };
            Some(Armed {
                name,
                nth,
                seen: AtomicUsize::new(0),
            })
        })
        .as_ref()
}

/// Aborts the process here if `TANDEM_FAILPOINT` names this point.
pub fn hit(name: &str) {
    if let Some(armed) = armed()
        && armed.name == name
        && armed.seen.fetch_add(1, Ordering::Relaxed) + 1 == armed.nth
    {
        eprintln!("failpoint {name} reached: aborting as a crash would");
        std::process::abort();
    }
}
