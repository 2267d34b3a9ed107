//! `tandem migrate --from URL --to URL`: moves a deployment's state into another
//! store (SQLite to PostgreSQL, or to another SQLite file), every table row for row,
//! then checks the copy table by table (`tandem_state::transfer`).

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, anyhow};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use tandem_state::transfer::{self, TableCopied};
use tandem_state::{LockMode, StateError, StateStore, redact_url};

use crate::logging::LogFormat;
use crate::{Cli, UsageError, json, print_stdout};

/// Which end of the copy a url names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Source,
    Target,
}

/// The report of `tandem migrate --json`.
#[derive(Debug, Serialize)]
struct Report {
    /// The urls, passwords hidden.
    from: String,
    to: String,
    /// Rows copied, per table in the order copied.
    tables: Vec<TableRows>,
    /// Rows copied in all.
    rows: u64,
}

#[derive(Debug, Serialize)]
struct TableRows {
    table: &'static str,
    rows: u64,
}

pub fn migrate(cli: &Cli, from: &str, to: &str) -> anyhow::Result<ExitCode> {
    let from_shown = redact_url(from);
    let to_shown = redact_url(to);
    let base_dir = std::env::current_dir().context("cannot read the current folder")?;
    if same_store(from, to, &base_dir) {
        return Err(anyhow!(UsageError(format!(
            "--from and --to name the same state ({from_shown}); give a new state to copy into"
        ))));
    }
    let source = open_for_migrate(from, &base_dir, End::Source)
        .map_err(|e| open_error(e, End::Source, &from_shown))?;
    let mut target = open_for_migrate(to, &base_dir, End::Target)
        .map_err(|e| open_error(e, End::Target, &to_shown))?;

    let mut progress = TableProgress::new(cli);
    let copied = transfer::copy_state(&*source, &mut *target, &mut |table, rows| {
        progress.update(table, rows);
    });
    progress.finish();
    let copied = copied.with_context(|| format!("cannot migrate {from_shown} to {to_shown}"))?;

    let report = Report {
        from: from_shown,
        to: to_shown,
        rows: copied.iter().map(|t| t.rows).sum(),
        tables: copied
            .iter()
            .map(|&TableCopied { table, rows }| TableRows { table, rows })
            .collect(),
    };
    if cli.json {
        json::print(&report)?;
    } else {
        print_stdout(&summary(&report))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Opens the state a url names for `tandem migrate`: the one place that knows which
/// stores there are. The source must exist and is held alone, so that no sync
/// changes it during the copy; the target is created when missing. Both are brought
/// to this tandem's schema. A relative sqlite path is taken from `base_dir`.
fn open_for_migrate(
    url: &str,
    base_dir: &Path,
    end: End,
) -> Result<Box<dyn StateStore>, StateError> {
    if end == End::Source
        && let Some(path) = sqlite_path(url, base_dir)
        && !path.exists()
    {
        return Err(StateError::Open {
            path: path.display().to_string(),
            message: "no such file; --from names the state to copy, which must exist".to_owned(),
        });
    }
    if end == End::Source && !tandem_state::open_url_existing(url, base_dir)?.exists() {
        return Err(StateError::Open {
            path: redact_url(url),
            message: "it holds no Tandem state; --from names the state to copy, which must \
                      exist"
                .to_owned(),
        });
    }
    tandem_state::open_url(url, base_dir, LockMode::Exclusive)
}

/// The file of a `sqlite://` url; `None` for any other url.
fn sqlite_path(url: &str, base_dir: &Path) -> Option<PathBuf> {
    const SCHEME: &str = "sqlite://";
    url.get(..SCHEME.len())
        .filter(|scheme| scheme.eq_ignore_ascii_case(SCHEME))
        .map(|_| base_dir.join(&url[SCHEME.len()..]))
}

/// Whether both urls name one store: the same text, or the same SQLite file.
fn same_store(from: &str, to: &str, base_dir: &Path) -> bool {
    if from == to {
        return true;
    }
    let file = |url| sqlite_path(url, base_dir).map(|p| p.canonicalize().unwrap_or(p));
    matches!((file(from), file(to)), (Some(a), Some(b)) if a == b)
}

/// An error opening one end, naming its url and what to do.
fn open_error(error: StateError, end: End, shown: &str) -> anyhow::Error {
    let what = match end {
        End::Source => "the source state",
        End::Target => "the target state",
    };
    let advice = match (&error, end) {
        (StateError::Locked { .. } | StateError::Leased { .. }, End::Source) => {
            "; stop the service (`tandem run`) and any scheduled `tandem sync` first: no sync \
             may run while its state is copied"
        }
        (StateError::Locked { .. } | StateError::Leased { .. }, End::Target) => {
            "; no tandem may use it while it is filled"
        }
        _ => "",
    };
    anyhow::Error::new(error).context(format!("cannot open {what} {shown}{advice}"))
}

/// What `tandem migrate` prints for people.
fn summary(report: &Report) -> String {
    let width = report
        .tables
        .iter()
        .map(|t| t.table.len())
        .max()
        .unwrap_or(0);
    let mut out = format!(
        "Copied {} rows in {} tables from {} to {}; every table checked (rows and checksum).\n",
        report.rows,
        report.tables.len(),
        report.from,
        report.to
    );
    for t in &report.tables {
        out.push_str(&format!("  {:<width$}  {:>10}\n", t.table, t.rows));
    }
    out.push_str(&format!(
        "Next: set [state] url = \"{}\" in the config, then start tandem again.\n",
        report.to
    ));
    out
}

/// Rows copied per table on stderr: a spinner per table on a terminal, a line per
/// chunk otherwise; nothing with --quiet.
struct TableProgress {
    mode: ProgressMode,
    table: String,
}

enum ProgressMode {
    Quiet,
    Lines,
    Bar(Option<ProgressBar>),
}

impl TableProgress {
    fn new(cli: &Cli) -> TableProgress {
        let plain_logs = cli.log_format == LogFormat::Plain;
        let mode = if cli.quiet {
            ProgressMode::Quiet
        } else if crate::progress::wanted(cli.quiet, plain_logs) {
            ProgressMode::Bar(None)
        } else {
            ProgressMode::Lines
        };
        TableProgress {
            mode,
            table: String::new(),
        }
    }

    fn update(&mut self, table: &str, rows: u64) {
        let new_table = self.table != table;
        if new_table {
            table.clone_into(&mut self.table);
        }
        match &mut self.mode {
            ProgressMode::Quiet => {}
            // A line per chunk: empty tables print none (the summary lists them).
            ProgressMode::Lines if rows > 0 => {
                let line = format!("copied {rows} rows of {table}\n");
                let _ = io::stderr().write_all(line.as_bytes());
            }
            ProgressMode::Lines => {}
            ProgressMode::Bar(bar) => {
                if new_table {
                    // The summary lists every table: a finished bar need not stay.
                    if let Some(done) = bar.take() {
                        done.finish_and_clear();
                    }
                    let spinner = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
                    spinner.set_style(
                        ProgressStyle::with_template("{spinner} copying {msg}: {human_pos} rows")
                            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                    );
                    spinner.set_message(table.to_owned());
                    spinner.enable_steady_tick(Duration::from_millis(120));
                    *bar = Some(spinner);
                }
                if let Some(bar) = bar {
                    bar.set_position(rows);
                }
            }
        }
    }

    fn finish(&mut self) {
        if let ProgressMode::Bar(Some(bar)) = &mut self.mode {
            bar.finish_and_clear();
        }
    }
}
