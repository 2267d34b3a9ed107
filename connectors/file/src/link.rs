//! Data files that are symbolic links: read through and written through to the file
//! they point to, so the link stays a link and its target gets every update.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use crate::error::FileError;

/// Opens a data file for reading; `None` when there is no file at `path`. A symbolic
/// link to a missing file is an error, not an empty file: it usually means a share that
/// is not mounted, and an empty listing would read as "every record was deleted".
pub(crate) fn open(path: &Path) -> Result<Option<File>, FileError> {
    match File::open(path) {
        Ok(file) => Ok(Some(file)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => match dangling(path) {
            Some(error) => Err(error),
            None => Ok(None),
        },
        Err(e) => Err(FileError::read(path, e)),
    }
}

/// The file a write of `path` replaces: `path` itself, or the file at the end of its
/// chain of links. Replacing the link instead would leave the real file without the
/// update.
pub(crate) fn target(path: &Path) -> Result<PathBuf, FileError> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => fs::canonicalize(path).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                dangling(path).unwrap_or_else(|| FileError::write(path, path, e))
            } else {
                FileError::write(path, path, e)
            }
        }),
        _ => Ok(path.to_owned()),
    }
}

/// The error for `path` when it is a link whose target is missing.
fn dangling(path: &Path) -> Option<FileError> {
    let target = fs::read_link(path).ok()?;
    Some(FileError::DanglingLink {
        path: path.to_owned(),
        target,
    })
}
