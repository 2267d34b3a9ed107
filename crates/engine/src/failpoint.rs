//! Crash injection for the crash-consistency tests (issue: a run cut short at any
//! write point must be finished by the next run, with no duplicate and no loss).
//!
//! `TANDEM_FAILPOINT=<name>[:<n>]` makes the process abort, as a crash would, the
//! `n`-th time (default 1st) it passes the point `name`; `<name>[:<n>]:stop` makes it
//! stop itself there (SIGSTOP) until it is sent SIGCONT, as a stalled process would (a
//! suspended VM, a long pause): the workers' test uses it to stall a worker between two
//! writes to systems. Unset, a failpoint costs one relaxed atomic load.
//!
//! In-process tests (the model test of the engine) use [`arm_panic`] instead: the point
//! panics rather than aborting, the test catches the panic, drops the state and opens
//! it again, as a new process would. The hook is process-global (nextest runs every
//! test in a process of its own).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

/// Every failpoint of a sync, in the order a run passes them (in a plan made whole,
/// `after_intent_commit` comes with the first creates, before their links are stored).
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
    action: Action,
}

/// What an armed point does when reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Abort,
    Stop,
}

fn armed() -> Option<&'static Armed> {
    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            let spec = std::env::var("TANDEM_FAILPOINT").ok()?;
            let (spec, action) = match spec.strip_suffix(":stop") {
                Some(spec) => (spec.to_owned(), Action::Stop),
                None => (spec, Action::Abort),
            };
            let (name, nth) = match spec.split_once(':') {
                Some((name, n)) => (name.to_owned(), n.parse().unwrap_or(1)),
                None => (spec, 1),
            };
            Some(Armed {
                name,
                nth,
                seen: AtomicUsize::new(0),
                action,
            })
        })
        .as_ref()
}

/// The point armed by [`arm_panic`]: its name, which pass panics, passes seen.
static PANIC_AT: Mutex<Option<(String, usize, usize)>> = Mutex::new(None);
/// Whether [`PANIC_AT`] is set: an unarmed failpoint takes no lock.
static PANIC_ARMED: AtomicBool = AtomicBool::new(false);

fn panic_at() -> std::sync::MutexGuard<'static, Option<(String, usize, usize)>> {
    PANIC_AT.lock().unwrap_or_else(|e| e.into_inner())
}

/// Test hook: the `nth` (from 1) pass through the point `name` panics, once, instead
/// of aborting the process. Replaces any point armed before.
pub fn arm_panic(name: &str, nth: usize) {
    *panic_at() = Some((name.to_owned(), nth.max(1), 0));
    PANIC_ARMED.store(true, Ordering::SeqCst);
}

/// Test hook: undoes [`arm_panic`] (a point that panicked is disarmed already).
pub fn disarm() {
    *panic_at() = None;
    PANIC_ARMED.store(false, Ordering::SeqCst);
}

/// Aborts the process here if `TANDEM_FAILPOINT` names this point; panics if
/// [`arm_panic`] armed it.
pub fn hit(name: &str) {
    if PANIC_ARMED.load(Ordering::Relaxed) {
        let mut armed = panic_at();
        if let Some((point, nth, seen)) = armed.as_mut()
            && point == name
        {
            *seen += 1;
            if *seen == *nth {
                *armed = None;
                PANIC_ARMED.store(false, Ordering::SeqCst);
                drop(armed);
                panic!("failpoint {name} reached: panicking as a crash would");
            }
        }
    }
    if let Some(armed) = armed()
        && armed.name == name
        && armed.seen.fetch_add(1, Ordering::Relaxed) + 1 == armed.nth
    {
        match armed.action {
            Action::Abort => {
                eprintln!("failpoint {name} reached: aborting as a crash would");
                std::process::abort();
            }
            Action::Stop => {
                eprintln!("failpoint {name} reached: stopping as a stalled process would");
                stop_this_process();
            }
        }
    }
}

/// Sends this process SIGSTOP through `kill` (the workspace has no unsafe code for
/// `raise`); it resumes here on SIGCONT.
fn stop_this_process() {
    let pid = std::process::id().to_string();
    let _ = std::process::Command::new("kill")
        .args(["-s", "STOP", &pid])
        .status();
}
