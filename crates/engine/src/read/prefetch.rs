//! The stored hashes of the scopes read after the first, loaded on a thread of their
//! own while the scopes before them are read: at a million records a scope, loading
//! them took about as long as reading one scope's file (docs/BENCHMARKS.md). With them,
//! the connectors' fingerprints taken to decide which scopes will be read, so that
//! each is taken once.

use std::collections::HashMap;
use std::sync::mpsc::{Receiver, sync_channel};
use std::thread::JoinHandle;

use tandem_state::{Scope, StateError, StateStore, StoredHashes};
use tracing::debug;

type Loaded = (Scope, Result<StoredHashes, StateError>);

/// Hashes being loaded, scope after scope, in the order they are read.
pub(crate) struct Prefetch {
    /// The scopes asked for and not taken yet, in order.
    ahead: Vec<Scope>,
    /// Fingerprints taken ahead, by scope, until taken.
    fingerprints: HashMap<Scope, Option<String>>,
    loaded: Option<Receiver<Loaded>>,
    thread: Option<JoinHandle<()>>,
}

impl Prefetch {
    /// Loads nothing ahead: every scope's hashes are loaded in line.
    pub(crate) fn none() -> Prefetch {
        Prefetch {
            ahead: Vec::new(),
            fingerprints: HashMap::new(),
            loaded: None,
            thread: None,
        }
    }

    /// Starts loading the hashes of `scopes`, in that order, through a reader of
    /// `state` ([`StateStore::reader`]); with none, loads nothing ahead. One scope's
    /// hashes wait to be taken while the next are loaded: at most two are held.
    pub(crate) fn start(state: &dyn StateStore, scopes: Vec<Scope>) -> Prefetch {
        if scopes.is_empty() {
            return Prefetch::none();
        }
        let Some(reader) = state.reader() else {
            return Prefetch::none();
        };
        let (send, loaded) = sync_channel::<Loaded>(1);
        let ahead = scopes.clone();
        let thread = std::thread::Builder::new()
            .name("tandem-hashes".to_owned())
            .spawn(move || {
                for scope in scopes {
                    let hashes = load_stored(&*reader, &scope, "ahead");
                    // Taken no more: the reading stopped.
                    if send.send((scope, hashes)).is_err() {
                        return;
                    }
                }
            });
        match thread {
            Ok(thread) => Prefetch {
                ahead,
                fingerprints: HashMap::new(),
                loaded: Some(loaded),
                thread: Some(thread),
            },
            Err(_) => Prefetch::none(),
        }
    }

    /// Keeps the connectors' `fingerprints` taken to choose what to load ahead.
    pub(crate) fn with_fingerprints(
        mut self,
        fingerprints: HashMap<Scope, Option<String>>,
    ) -> Prefetch {
        self.fingerprints = fingerprints;
        self
    }

    /// The connector's fingerprint of `scope` if taken ahead (once: a scope read twice
    /// takes it anew the second time).
    pub(crate) fn fingerprint(&mut self, scope: &Scope) -> Option<Option<String>> {
        self.fingerprints.remove(scope)
    }

    /// The hashes of `scope` if they were loaded ahead; `None` to load them in line
    /// (not asked for ahead, or their load failed: loading in line reports why).
    /// Scopes asked for ahead but skipped are passed over.
    pub(crate) fn take(&mut self, scope: &Scope) -> Option<StoredHashes> {
        let at = self.ahead.iter().position(|s| s == scope)?;
        self.ahead.drain(..=at);
        let loaded = self.loaded.as_ref()?;
        while let Ok((next, hashes)) = loaded.recv() {
            if next != *scope {
                continue;
            }
            return match hashes {
                Ok(hashes) => Some(hashes),
                Err(e) => {
                    debug!(error = %e, "loading stored hashes ahead failed");
                    None
                }
            };
        }
        None
    }
}

/// The stored hashes of `scope`, with the time their load took at debug level (`how`:
/// ahead, or in line).
pub(crate) fn load_stored(
    state: &dyn StateStore,
    scope: &Scope,
    how: &'static str,
) -> Result<StoredHashes, StateError> {
    let started = std::time::Instant::now();
    let hashes = state.hashes(scope);
    debug!(
        connector = %scope.connector,
        kind = scope.kind.as_str(),
        how,
        records = hashes.as_ref().map_or(0, StoredHashes::len),
        ms = started.elapsed().as_millis() as u64,
        "stored hashes loaded"
    );
    hashes
}

impl Drop for Prefetch {
    /// Waits for a load under way (of a scope that was to be read).
    fn drop(&mut self) {
        drop(self.loaded.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use tandem_model::EntityKind;
    use tandem_state::{LockMode, SqliteState, StateBatch};

    use super::*;

    fn scope(connector: &str, kind: EntityKind) -> Scope {
        Scope::new(connector, kind)
    }

    #[test]
    fn hashes_loaded_ahead_are_the_stored_ones_and_taken_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut state =
            SqliteState::open(&dir.path().join("state.db"), LockMode::Exclusive).unwrap();
        let (a, b, c) = (
            scope("erp", EntityKind::Customer),
            scope("erp", EntityKind::Vendor),
            scope("crm", EntityKind::Contact),
        );
        let mut batch = StateBatch::default();
        for (n, s) in [&a, &b, &c].into_iter().enumerate() {
            for i in 0..100_u64 {
                batch
                    .set_hashes
                    .push((s.clone(), format!("R{i}"), 1 + i + 1_000 * n as u64));
            }
        }
        state.commit(batch).unwrap();
        let mut ahead = Prefetch::start(&state, vec![b.clone(), c.clone()]);
        // Not asked for ahead: loaded in line.
        assert_eq!(ahead.take(&a), None);
        // `b` skipped (not read): passed over, `c` is as stored.
        assert_eq!(ahead.take(&c), Some(state.hashes(&c).unwrap()));
        assert_eq!(ahead.take(&b), None);
    }

    #[test]
    fn a_fingerprint_taken_ahead_is_given_once() {
        let s = scope("erp", EntityKind::Customer);
        let fingerprints = HashMap::from([(s.clone(), Some("12:ab".to_owned()))]);
        let mut ahead = Prefetch::none().with_fingerprints(fingerprints);
        assert_eq!(ahead.fingerprint(&s), Some(Some("12:ab".to_owned())));
        // Read again: taken anew.
        assert_eq!(ahead.fingerprint(&s), None);
        let other = scope("crm", EntityKind::Contact);
        assert_eq!(ahead.fingerprint(&other), None);
    }

    #[test]
    fn a_state_without_a_reader_loads_nothing_ahead() {
        let dir = tempfile::tempdir().unwrap();
        let state =
            SqliteState::open_existing(&dir.path().join("none.db"), LockMode::Exclusive).unwrap();
        let s = scope("crm", EntityKind::Contact);
        let mut ahead = Prefetch::start(&state, vec![s.clone()]);
        assert!(ahead.thread.is_none());
        assert_eq!(ahead.take(&s), None);
    }
}
