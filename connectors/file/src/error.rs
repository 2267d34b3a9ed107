//! Errors about the data files: what is wrong, where, and what to do next.
//!
//! A broken file stops the run before Tandem writes anything, so every message ends with
//! the step that lets the next run go through.

use std::io;
use std::path::{Path, PathBuf};

use tandem_connector::ConnectorError;

/// The next step for a line that cannot be read.
pub(crate) const FIX_LINE: &str = "fix the line or remove it, then run again";
/// The next step for a bad header row.
pub(crate) const FIX_HEADER: &str = "fix the header row, then run again";
/// The next step for an id used twice.
pub(crate) const FIX_DUPLICATE: &str =
    "give one of the two rows another id or remove it, then run again";

#[derive(Debug, thiserror::Error)]
pub(crate) enum FileError {
    #[error("{} line {line}: {problem}; {next}", path.display())]
    Line {
        path: PathBuf,
        line: u64,
        problem: String,
        next: &'static str,
    },
    #[error(
        "{} is a symbolic link to {}, which does not exist; restore the file it points to \
         (or mount the share it is on) or replace the link with the file, then run again",
        path.display(), target.display()
    )]
    DanglingLink { path: PathBuf, target: PathBuf },
    #[error(
        "cannot read {}: {source}; check that it is a file Tandem may read, then run again",
        path.display()
    )]
    Read { path: PathBuf, source: io::Error },
    /// `target` is the file a write replaces: `path`, or the file `path` links to.
    #[error(
        "cannot write {}{}: {source}; the file was left as it was; check that Tandem may \
         create files in {} and that the disk has room, then run again",
        path.display(), link_text(path, target), folder(target).display()
    )]
    Write {
        path: PathBuf,
        target: PathBuf,
        source: io::Error,
    },
}

impl FileError {
    pub(crate) fn read(path: &Path, source: io::Error) -> FileError {
        FileError::Read {
            path: path.to_owned(),
            source,
        }
    }

    /// An error writing `path`, which replaces the file `target` (`path` itself or the
    /// file it links to).
    pub(crate) fn write(path: &Path, target: &Path, source: io::Error) -> FileError {
        FileError::Write {
            path: path.to_owned(),
            target: target.to_owned(),
            source,
        }
    }
}

/// ` (a link to <target>)` when a write goes through a link.
fn link_text(path: &Path, target: &Path) -> String {
    if path == target {
        String::new()
    } else {
        format!(" (a link to {})", target.display())
    }
}

/// The folder a file is in, `.` for a bare file name.
pub(crate) fn folder(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

impl From<FileError> for ConnectorError {
    fn from(error: FileError) -> ConnectorError {
        ConnectorError::fatal(error.to_string())
    }
}

/// An error about one line of a file that fixing or removing the line cures.
pub(crate) fn line_error(
    path: &Path,
    line: u64,
    problem: impl std::fmt::Display,
) -> ConnectorError {
    FileError::Line {
        path: path.to_owned(),
        line,
        problem: problem.to_string(),
        next: FIX_LINE,
    }
    .into()
}

/// An error about the header row (line 1).
pub(crate) fn header_error(path: &Path, problem: impl std::fmt::Display) -> ConnectorError {
    FileError::Line {
        path: path.to_owned(),
        line: 1,
        problem: problem.to_string(),
        next: FIX_HEADER,
    }
    .into()
}
