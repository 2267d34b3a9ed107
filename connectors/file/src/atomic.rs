//! Replacing a file so that readers see either the old or the new content, never a mix,
//! and the new file is the old one's equal: same place (through symbolic links), same
//! mode, same owner and group.

use std::fs::{self, File, Metadata, OpenOptions};
use std::io;
use std::path::Path;

use tandem_connector::ConnectorError;
use tempfile::NamedTempFile;

use crate::error::{FileError, folder};
use crate::link;

/// Writes the new content of `path` to a new temporary file beside the file it replaces
/// (so the rename stays on one file system), gives it the old file's mode, owner and
/// group, syncs it and renames it over the old file. A symbolic link at `path` is
/// followed: its target is replaced and the link stays.
///
/// Returns the fingerprint of what was written ([`crate::fingerprint_of`]): the file's
/// as it was put in place, not read back (a read after the rename could take in a
/// change someone else made meanwhile, and cost a second pass over the file).
pub(crate) fn replace(
    path: &Path,
    write: impl FnOnce(&mut Fingerprinting<'_>) -> io::Result<()>,
) -> Result<String, ConnectorError> {
    let target = link::target(path)?;
    let original = match fs::metadata(&target) {
        Ok(meta) => Some(meta),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(FileError::write(path, &target, e).into()),
    };
    let result = temp_beside(&target, original.as_ref()).and_then(|mut tmp| {
        let mut out = Fingerprinting {
            file: tmp.as_file_mut(),
            hasher: xxhash_rust::xxh3::Xxh3::new(),
            len: 0,
        };
        write(&mut out)?;
        let written = crate::fingerprint_of(out.len, out.hasher.digest());
        if let Some(original) = &original {
            keep_owner_and_mode(tmp.as_file(), original)?;
        }
        tmp.as_file().sync_all()?;
        // On failure the temporary file is dropped, which removes it.
        tmp.persist(&target).map_err(|e| e.error)?;
        Ok(written)
    });
    let written = result.map_err(|e| FileError::write(path, &target, e))?;
    sync_folder(folder(&target));
    Ok(written)
}

/// The new file, hashed as it is written.
pub(crate) struct Fingerprinting<'f> {
    file: &'f mut File,
    hasher: xxhash_rust::xxh3::Xxh3,
    len: u64,
}

impl Fingerprinting<'_> {
    /// The bytes written so far.
    pub(crate) fn written(&self) -> u64 {
        self.len
    }
}

impl io::Write for Fingerprinting<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// A new file with a random name in the folder of `target`, created exclusively
/// (`create_new`, O_EXCL): an existing file or link of that name is never opened,
/// followed or truncated. Hidden and ending in `.tmp`, so nobody takes it for a data
/// file. Its errors do not carry its random name, so that the same failure reads the
/// same on every run (R17 parks a record after the same error twice).
fn temp_beside(target: &Path, original: Option<&Metadata>) -> io::Result<NamedTempFile> {
    let name = target.file_name().unwrap_or_default().to_string_lossy();
    let prefix = format!(".{name}.");
    tempfile::Builder::new()
        .prefix(&prefix)
        .suffix(".tmp")
        .make_in(folder(target), |path| {
            let mut options = OpenOptions::new();
            options.write(true).create_new(true);
            // A new data file gets the mode any new file gets (0666 less the umask). A
            // replacement stays private to its owner (0600) until it takes the old mode.
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                options.mode(if original.is_some() { 0o600 } else { 0o666 });
            }
            #[cfg(not(unix))]
            let _ = original;
            options.open(path)
        })
}

/// Gives `file` the owner, group and mode of `original`. The owner first: changing
/// it may clear set-id bits of the mode. Only a privileged process (root) may give a
/// file to another user; any other keeps the group where it may, and the mode always,
/// so a private file stays private.
#[cfg(unix)]
fn keep_owner_and_mode(file: &File, original: &Metadata) -> io::Result<()> {
    use std::os::unix::fs::{MetadataExt, fchown};
    let (uid, gid) = (original.uid(), original.gid());
    let owned = fchown(file, Some(uid), Some(gid)).or_else(|e| match e.kind() {
        io::ErrorKind::PermissionDenied => fchown(file, None, Some(gid)),
        _ => Err(e),
    });
    match owned {
        Err(e) if e.kind() != io::ErrorKind::PermissionDenied => return Err(e),
        _ => {}
    }
    file.set_permissions(original.permissions())
}

#[cfg(not(unix))]
fn keep_owner_and_mode(file: &File, original: &Metadata) -> io::Result<()> {
    file.set_permissions(original.permissions())
}

/// Makes the rename durable. Best effort: the new content is already in place, so a
/// failure here must not report the write as failed.
pub(crate) fn sync_folder(folder: &Path) {
    #[cfg(unix)]
    let _ = File::open(folder).and_then(|f| f.sync_all());
    #[cfg(not(unix))]
    let _ = folder;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporary_files_are_new_hidden_and_random_beside_the_target() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("customers.csv");
        let first = temp_beside(&target, None).unwrap();
        let second = temp_beside(&target, None).unwrap();
        for tmp in [&first, &second] {
            assert_eq!(tmp.path().parent(), Some(dir.path()));
            let name = tmp.path().file_name().unwrap().to_string_lossy();
            assert!(name.starts_with(".customers.csv."), "{name}");
            assert!(name.ends_with(".tmp"), "{name}");
        }
        assert_ne!(first.path(), second.path());
    }

    #[test]
    fn a_failed_write_leaves_the_file_and_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("customers.csv");
        fs::write(&target, "id\nK1\n").unwrap();
        let err = replace(&target, |file| {
            io::Write::write_all(file, b"id\n")?;
            Err(io::Error::other("disk full"))
        })
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "cannot write {}: disk full; the file was left as it was; check that Tandem \
                 may create files in {} and that the disk has room, then run again",
                target.display(),
                dir.path().display()
            )
        );
        assert_eq!(fs::read_to_string(&target).unwrap(), "id\nK1\n");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
