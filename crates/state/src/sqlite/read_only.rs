//! Reading a state while a sync writes to it: no lock, a read-only connection, and
//! SQLite's WAL, which shows a reader the last committed transaction while the writer
//! goes on. For `tandem status`, `links`, `log`, `conflicts` and `runs`.

use std::fs::{OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use super::{LockMode, MIGRATIONS, SqliteState, check_tandem_schema, url_path, user_version};
use crate::StateError;

impl SqliteState {
    /// Opens the state named by a config url for reading only, without taking its lock,
    /// so it works while a sync holds it. Every write through it fails. A missing file
    /// is an empty state in memory (no file is created); a state whose schema this
    /// binary would migrate is opened as [`SqliteState::open_url_existing`] does
    /// (shared lock, migrated), since it cannot be read as it is.
    pub fn open_url_read_only(url: &str, base_dir: &Path) -> Result<SqliteState, StateError> {
        let path = url_path(url, base_dir)?;
        if !path.exists() {
            return SqliteState::open_existing(&path, LockMode::Shared);
        }
        match SqliteState::open_read_only_at(&path)? {
            Some(state) => Ok(state),
            None => SqliteState::open_existing(&path, LockMode::Shared),
        }
    }

    /// A read-only connection to the state file at `path`, without its lock; `None`
    /// when the file's schema is not this binary's (it would have to be migrated).
    pub(super) fn open_read_only_at(path: &Path) -> Result<Option<SqliteState>, StateError> {
        let shown = path.display().to_string();
        let open_error = |e: rusqlite::Error| StateError::Open {
            path: shown.clone(),
            message: e.to_string(),
        };
        // No SQLITE_OPEN_CREATE: a file that went away in between must not come back.
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags).map_err(open_error)?;
        check_tandem_schema(&conn, &shown)?;
        if user_version(&conn).map_err(open_error)? != MIGRATIONS.len() as i64 {
            return Ok(None);
        }
        // A sync commits in batches; a reader may wait out one commit's checkpoint.
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(open_error)?;
        conn.pragma_update(None, "query_only", true)
            .map_err(open_error)?;
        conn.pragma_update(None, "mmap_size", 1 << 30)
            .map_err(open_error)?;
        conn.set_prepared_statement_cache_capacity(32);
        Ok(Some(SqliteState {
            checkpointer: None,
            conn,
            path: path.to_owned(),
            lock: None,
        }))
    }

    /// Whether another process holds the state's lock alone: a sync is running. For a
    /// state opened with [`SqliteState::open_url_read_only`], which holds no lock.
    pub(super) fn lock_held_by_writer(&self) -> bool {
        let mut lock_path = self.path.as_os_str().to_owned();
        lock_path.push(".lock");
        let Ok(file) = OpenOptions::new().read(true).open(PathBuf::from(lock_path)) else {
            // No lock file: nothing ever synced with it.
            return false;
        };
        let busy = matches!(file.try_lock_shared(), Err(TryLockError::WouldBlock));
        // Dropping the file lets a lock we took go.
        drop(file);
        busy
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StateStore;

    #[test]
    fn a_state_is_read_beside_the_sync_that_holds_it_and_never_written() {
        let dir = tempfile::tempdir().unwrap();
        let url = "sqlite://state.db";
        let mut writer = SqliteState::open_url(url, dir.path(), LockMode::Exclusive).unwrap();
        let run = writer.begin_run("sync").unwrap();

        let mut reader = SqliteState::open_url_read_only(url, dir.path()).unwrap();
        assert!(!reader.is_in_memory());
        assert!(reader.writer_active(), "the sync holds the lock");
        assert_eq!(
            reader.runs(5).unwrap()[0].id,
            run,
            "what the sync committed"
        );
        assert!(reader.begin_run("sync").is_err(), "read only");

        drop(writer);
        assert!(!reader.writer_active());
        // The lock is free: a new sync may take it while the reader is open.
        let writer = SqliteState::open_url(url, dir.path(), LockMode::Exclusive);
        assert!(writer.is_ok());
    }

    #[test]
    fn a_missing_state_is_empty_and_stays_missing() {
        let dir = tempfile::tempdir().unwrap();
        let state = SqliteState::open_url_read_only("sqlite://none.db", dir.path()).unwrap();
        assert!(state.is_in_memory());
        assert!(state.runs(5).unwrap().is_empty());
        assert!(!dir.path().join("none.db").exists());
        assert!(!state.writer_active());
    }
}
