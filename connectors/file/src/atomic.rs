//! Replacing a file so that readers see either the old or the new content, never a mix.

use std::ffi::OsString;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use tandem_connector::ConnectorError;

use crate::table::io_error;

/// Writes the new content of `path` to `<path>.tmp` in the same folder (so the rename
/// stays on one file system), syncs it and renames it over `path`.
pub(crate) fn replace(
    path: &Path,
    write: impl FnOnce(&mut File) -> io::Result<()>,
) -> Result<(), ConnectorError> {
    let tmp = tmp_path(path);
    let result = File::create(&tmp).and_then(|mut file| {
        write(&mut file)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, path)
    });
    if let Err(error) = result {
        // Best effort: a stale .tmp is harmless, it is truncated by the next write.
        let _ = fs::remove_file(&tmp);
        return Err(io_error("cannot write", path, error));
    }
    sync_folder(path);
    Ok(())
}

/// `<path>.tmp`, e.g. `contacts.csv.tmp`.
pub(crate) fn tmp_path(path: &Path) -> PathBuf {
    let mut name = OsString::from(path.as_os_str());
    name.push(".tmp");
    PathBuf::from(name)
}

/// Makes the rename durable. Best effort: the new content is already in place, so a
/// failure here must not report the write as failed.
fn sync_folder(path: &Path) {
    #[cfg(unix)]
    if let Some(folder) = path.parent() {
        let _ = File::open(folder).and_then(|f| f.sync_all());
    }
    #[cfg(not(unix))]
    let _ = path;
}
