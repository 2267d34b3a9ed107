//! The folder's write lock: an advisory lock (`flock`) on `.tandem-write.lock` in the
//! folder, held from a write's read of the file to its rename. Not the data file itself:
//! the rename replaces that file, and a process waiting on the old one would then hold
//! a lock nobody else sees.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::Path;
use std::time::{Duration, Instant};

use tandem_connector::ConnectorError;

/// The lock file's name in the folder.
pub(crate) const LOCK_FILE: &str = ".tandem-write.lock";

/// How long a write waits for another process's write to the same folder. Writes take
/// seconds at most; a lock held longer belongs to a process that is stopped.
const WAIT: Duration = Duration::from_secs(60);

/// The lock, held until dropped (closing the file releases it).
#[derive(Debug)]
pub(crate) struct FolderLock {
    _file: File,
}

impl FolderLock {
    /// Takes the folder's write lock, waiting up to a minute for another process's
    /// write; then fails with a transient error (the next run tries again).
    pub(crate) fn take(folder: &Path) -> Result<FolderLock, ConnectorError> {
        let path = folder.join(LOCK_FILE);
        let mut options = OpenOptions::new();
        options.create(true).truncate(false).write(true);
        // A link planted at the lock's name is not followed (nothing is created or
        // opened elsewhere through it): the open fails instead.
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.custom_flags(libc::O_NOFOLLOW).mode(0o600);
        }
        let file = options.open(&path).map_err(|e| {
            ConnectorError::fatal(format!(
                "cannot open the write lock {}: {e}; check that Tandem may create files \
                     in the folder, then run again",
                path.display()
            ))
        })?;
        let started = Instant::now();
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(FolderLock { _file: file }),
                Err(TryLockError::WouldBlock) if started.elapsed() < WAIT => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(TryLockError::WouldBlock) => {
                    return Err(ConnectorError::transient(format!(
                        "another process has been writing to {} for over {} s (it holds {}); \
                         the writes wait for the next run",
                        folder.display(),
                        WAIT.as_secs(),
                        path.display()
                    )));
                }
                Err(TryLockError::Error(e)) => {
                    return Err(ConnectorError::fatal(format!(
                        "cannot lock {}: {e}; the folder's file system must support file locks",
                        path.display()
                    )));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two writers of one folder, as two processes would be (each lock is its own open
    /// file): the second waits until the first lets go.
    #[test]
    fn a_second_writer_of_a_folder_waits_for_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let first = FolderLock::take(dir.path()).unwrap();
        let folder = dir.path().to_owned();
        let (took, taken) = std::sync::mpsc::channel();
        let second = std::thread::spawn(move || {
            let lock = FolderLock::take(&folder).unwrap();
            took.send(()).unwrap();
            drop(lock);
        });
        std::thread::sleep(Duration::from_millis(300));
        assert!(taken.try_recv().is_err(), "taken while the first holds it");
        drop(first);
        taken.recv_timeout(Duration::from_secs(5)).unwrap();
        second.join().unwrap();
        assert!(dir.path().join(LOCK_FILE).exists());
    }

    /// A link planted at the lock's name is refused, not followed.
    #[cfg(unix)]
    #[test]
    fn a_link_at_the_locks_name_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim.txt");
        std::os::unix::fs::symlink(&victim, dir.path().join(LOCK_FILE)).unwrap();
        let err = FolderLock::take(dir.path()).unwrap_err();
        assert!(
            err.to_string().contains("cannot open the write lock"),
            "{err}"
        );
        assert!(!victim.exists(), "nothing created through the link");
    }
}
