//! `tandem-bench`: generates partner data and measures Tandem's runs on it.
//!
//! `tandem-bench run --n 100000` generates N contacts and N accounts into a temporary
//! folder and measures, each phase in a child process of its own (so peak memory is the
//! phase's own): parsing the CSV files alone, the initial sync, storing the initial
//! sync's state rows alone (`state-floor`), a second sync with no
//! change (which skips the unchanged files), the same with every file read
//! (`--full-read`), an incremental run with k changes through a change-reading
//! (in-memory) connector over a state holding the links of the initial sync, and the
//! sync that recovers from an initial sync cut short (`recovery`: the initial sync of a
//! fresh copy of the data aborts in a child process at a failpoint, the next sync is
//! measured and must end with the contacts and links of the uninterrupted one).

mod generate;

// The `tandem` binary's allocator and its settings, so the figures are the binary's.
#[path = "../../cli/src/allocator.rs"]
mod allocator;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use serde::{Deserialize, Serialize};
use tandem_connector::Connector;
use tandem_connector::memory::MemoryConnector;
use tandem_connector_file::{FileConnector, Format};
use tandem_engine::{ContactsConfig, Engine, MatchTier, RelationConfig, Relations, SyncConfig};
use tandem_model::{EntityKind, Value};
use tandem_state::{LockMode, PgState, SqliteState, StateStore};

#[derive(Debug, Parser)]
#[command(
    name = "tandem-bench",
    about = "Measures Tandem on generated partner data"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Writes a data set, its tandem.toml and its size (`n`) into a folder.
    Generate {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 10_000)]
        n: usize,
        /// Puts each file's rows in a random (but fixed) order instead of id order, as
        /// an export sorted by anything else would have them.
        #[arg(long)]
        shuffled: bool,
    },
    /// Generates a data set and measures every phase; prints a table (or JSON).
    Run {
        /// Partners per side; several sizes may be given.
        #[arg(long, num_args = 1.., default_values_t = [10_000usize])]
        n: Vec<usize>,
        /// Changes in the incremental run, spread over both sides.
        #[arg(long, default_value_t = 1_000)]
        k: usize,
        /// Measures every phase this many times, each on freshly generated data, and
        /// reports the fastest (a shared machine's noise only ever adds time).
        #[arg(long, default_value_t = 1)]
        runs: usize,
        /// The phases to measure, in the runner's order (default: all). `recovery` is
        /// checked against `initial`, and `parse-synced` parses the files `initial`
        /// left, so both need it.
        #[arg(long, num_args = 1.., value_parser = clap::builder::PossibleValuesParser::new(PHASES.iter().copied()))]
        phases: Vec<String>,
        /// Where `recovery` cuts the initial sync short (`TANDEM_FAILPOINT`, `name[:n]`).
        #[arg(long, default_value = "before_contact_create")]
        failpoint: String,
        /// The state store: an SQLite file per data set, or a database per data set on
        /// a PostgreSQL server the runner starts (`eval "$(bash scripts/sql-env)"`
        /// first). `state-floor` measures SQLite only.
        #[arg(long, value_enum, default_value_t = StateKind::Sqlite)]
        state: StateKind,
        /// Measures on files whose rows are in a random (but fixed) order.
        #[arg(long)]
        shuffled: bool,
        #[arg(long)]
        json: bool,
    },
    /// One phase, measured in this process (used by `run`).
    #[command(hide = true)]
    Phase {
        name: String,
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 1_000)]
        k: usize,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum StateKind {
    Sqlite,
    Postgres,
}

/// Where a data set's state lives: `state-url` in its folder names a PostgreSQL
/// database; without it, the SQLite file `.tandem/state.db`.
const STATE_URL_FILE: &str = "state-url";
/// The database of the incremental phase's own state (PostgreSQL runs).
const INCREMENTAL_STATE_URL_FILE: &str = "incremental-state-url";

/// The state of the data set in `dir`, in the store the runner chose.
fn open_state(dir: &Path, mode: LockMode) -> anyhow::Result<Box<dyn StateStore>> {
    match std::fs::read_to_string(dir.join(STATE_URL_FILE)) {
        Ok(url) => Ok(Box::new(PgState::open_url(url.trim(), mode)?)),
        Err(_) => Ok(Box::new(SqliteState::open(
            &dir.join(".tandem/state.db"),
            mode,
        )?)),
    }
}

/// Gives the data set in `dir` fresh PostgreSQL databases on `server`, when there is
/// one: its state's and the incremental phase's.
fn place_state(
    dir: &Path,
    server: Option<&tandem_test_databases::PostgresServer>,
) -> anyhow::Result<()> {
    if let Some(server) = server {
        std::fs::write(dir.join(STATE_URL_FILE), server.create_database())?;
        std::fs::write(
            dir.join(INCREMENTAL_STATE_URL_FILE),
            server.create_database(),
        )?;
    }
    Ok(())
}

/// What one phase cost.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Measure {
    phase: String,
    n: usize,
    wall_s: f64,
    cpu_s: f64,
    peak_rss_mib: f64,
    /// Records read (parse) or written (syncs).
    records: u64,
    /// Incremental only: the peak resident memory of the measured run above what the
    /// process held before it (the in-memory connectors hold the data set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    run_rss_growth_mib: Option<f64>,
    /// Incremental only: anonymous memory (heap, SQLite's page cache) held at the end
    /// of the run above what was held before it; file pages mapped by SQLite excluded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    run_anon_growth_mib: Option<f64>,
    /// Incremental only: bytes the measured run wrote through write calls (`wchar` of
    /// /proc/self/io): the state's pages into SQLite's write-ahead log, as the
    /// in-memory connectors write no file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    run_written_kib: Option<f64>,
    /// The floors only: the CPU seconds of the timed part, without loading what it
    /// stores or writes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    timed_cpu_s: Option<f64>,
    /// Initial and recovery only: what the sync left (checked by the runner).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    outcome: Option<Outcome>,
    /// Recovery only: the wall time of the run that was cut short, until it aborted
    /// (measured by the runner around the child process).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    crashed_wall_s: Option<f64>,
}

/// What a sync left: the contacts in the file, the links and the pending creates in
/// the state. A recovered initial sync must leave what the uninterrupted one left.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Outcome {
    contacts: u64,
    links: u64,
    pending: u64,
}

fn main() -> anyhow::Result<()> {
    allocator::keep_freed_memory();
    match Cli::parse().command {
        Cmd::Generate { out, n, shuffled } => {
            // With its size in `n`, as `phase <name> --dir` reads it.
            generate_into(&out, n, Order::of(shuffled))?;
            let order = if shuffled { ", rows shuffled," } else { "" };
            println!(
                "wrote {n} contacts and {n} accounts{order} to {}",
                out.display()
            );
            Ok(())
        }
        Cmd::Run {
            n,
            k,
            runs,
            phases,
            failpoint,
            state,
            shuffled,
            json,
        } => {
            let mut phases = selected(phases)?;
            let server = match state {
                StateKind::Sqlite => None,
                StateKind::Postgres => {
                    phases.retain(|p| *p != "state-floor");
                    Some(tandem_test_databases::PostgresServer::start().context(
                        "PostgreSQL is not installed here: run `eval \"$(bash scripts/sql-env)\"` first",
                    )?)
                }
            };
            let order = Order::of(shuffled);
            let all = run(
                &n,
                k,
                runs.max(1),
                &phases,
                &failpoint,
                order,
                server.as_ref(),
            )?;
            if !json {
                println!("state: {state:?}; rows: {}", order.label());
            }
            report(&all, json)
        }
        Cmd::Phase { name, dir, k } => {
            // Resident memory over time, to see which step holds the peak:
            // TANDEM_BENCH_RSS_EVERY_MS=500 prints it on stderr every half second.
            if let Some(every) = std::env::var("TANDEM_BENCH_RSS_EVERY_MS")
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
            {
                std::thread::spawn(move || {
                    loop {
                        std::thread::sleep(std::time::Duration::from_millis(every));
                        eprintln!(
                            "rss {} {:.0} MiB",
                            std::time::SystemTime::now()
                                .duration_since(std::time::UNIX_EPOCH)
                                .map_or(0.0, |d| d.as_secs_f64()),
                            rss_mib("VmRSS:")
                        );
                    }
                });
            }
            // The engine's progress and step timings, on stderr, when RUST_LOG asks.
            if let Ok(filter) = std::env::var("RUST_LOG") {
                tracing_subscriber::fmt()
                    .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                    .with_writer(std::io::stderr)
                    .init();
            }
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (wall_s, records) = runtime.block_on(phase(&name, &dir, k))?;
            let (cpu_s, peak_rss_mib) = process_usage();
            let n = std::fs::read_to_string(dir.join("n"))?.trim().parse()?;
            let m = Measure {
                phase: name,
                n,
                wall_s,
                cpu_s,
                peak_rss_mib,
                records,
                run_rss_growth_mib: RUN_RSS_GROWTH_MIB.with(std::cell::Cell::get),
                run_anon_growth_mib: RUN_ANON_GROWTH_MIB.with(std::cell::Cell::get),
                run_written_kib: RUN_WRITTEN_KIB.with(std::cell::Cell::get),
                timed_cpu_s: TIMED_CPU_S.with(std::cell::Cell::get),
                outcome: None,
                crashed_wall_s: None,
            };
            println!("{}", serde_json::to_string(&m)?);
            Ok(())
        }
    }
}

const PHASES: &[&str] = &[
    "parse",
    "initial",
    "recovery",
    "state-floor",
    "parse-synced",
    "write-floor",
    "second",
    "second-full",
    "incremental",
];

/// The phases asked for, in the runner's order; all of them when none is named.
fn selected(asked: Vec<String>) -> anyhow::Result<Vec<&'static str>> {
    let phases: Vec<&'static str> = PHASES
        .iter()
        .copied()
        .filter(|p| asked.is_empty() || asked.iter().any(|a| a == p))
        .collect();
    if phases.contains(&"recovery") && !phases.contains(&"initial") {
        bail!("`recovery` is checked against `initial`: select both");
    }
    if phases.contains(&"parse-synced") && !phases.contains(&"initial") {
        bail!("`parse-synced` parses the files `initial` left: select both");
    }
    if phases.contains(&"write-floor") && !phases.contains(&"initial") {
        bail!("`write-floor` writes the rows of the files `initial` left: select both");
    }
    Ok(phases)
}

/// Measures every phase of every size `runs` times; keeps the fastest of each.
fn run(
    sizes: &[usize],
    k: usize,
    runs: usize,
    phases: &[&str],
    failpoint: &str,
    order: Order,
    server: Option<&tandem_test_databases::PostgresServer>,
) -> anyhow::Result<Vec<Measure>> {
    let mut all: Vec<Measure> = Vec::new();
    for &n in sizes {
        for run in 1..=runs {
            // Every run starts from the same generated data (the generator is
            // deterministic) and an empty state.
            let dir = tempfile::tempdir()?;
            eprintln!("generating N = {n} (run {run} of {runs}) ...");
            generate_into(dir.path(), n, order)?;
            place_state(dir.path(), server)?;
            let mut reference = None;
            for &name in phases {
                eprintln!("  {name} ...");
                let m = match name {
                    "recovery" => recovery(dir.path(), k, failpoint, reference, server)?,
                    _ => run_phase(name, dir.path(), k)?,
                };
                eprintln!("    {:.2} s", m.wall_s);
                if name == "initial" {
                    reference = m.outcome;
                }
                keep_fastest(&mut all, m);
            }
        }
    }
    Ok(all)
}

/// The order of the rows in the files generated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Order {
    ById,
    Shuffled,
}

impl Order {
    fn of(shuffled: bool) -> Order {
        if shuffled {
            Order::Shuffled
        } else {
            Order::ById
        }
    }

    fn label(self) -> &'static str {
        match self {
            Order::ById => "in id order",
            Order::Shuffled => "shuffled",
        }
    }
}

/// Where a data set says its rows were shuffled (read by `recovery`, which generates
/// the same data again).
const SHUFFLED_FILE: &str = "shuffled";

fn generate_into(dir: &Path, n: usize, order: Order) -> anyhow::Result<()> {
    generate::generate(dir, n, generate::Shares::default())?;
    if order == Order::Shuffled {
        generate::shuffle_rows(dir)?;
        std::fs::write(dir.join(SHUFFLED_FILE), "")?;
    }
    std::fs::write(dir.join("n"), n.to_string())?;
    Ok(())
}

fn keep_fastest(all: &mut Vec<Measure>, m: Measure) {
    match all.iter_mut().find(|b| b.n == m.n && b.phase == m.phase) {
        Some(best) if best.wall_s <= m.wall_s => {}
        Some(best) => *best = m,
        None => all.push(m),
    }
}

/// Runs one phase in a child process of its own and reads its report; the initial
/// sync's report carries what it left.
fn run_phase(name: &str, dir: &Path, k: usize) -> anyhow::Result<Measure> {
    let out = Command::new(std::env::current_exe()?)
        .args(["phase", name, "--dir"])
        .arg(dir)
        .args(["--k", &k.to_string()])
        .env_remove("TANDEM_FAILPOINT")
        .output()?;
    if !out.status.success() {
        bail!(
            "phase {name} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut m: Measure = serde_json::from_slice(&out.stdout).context("a phase's report")?;
    if matches!(name, "initial" | "recovery") {
        m.outcome = Some(outcome(dir)?);
    }
    Ok(m)
}

/// The initial sync of a fresh copy of the data, cut short at `failpoint` in a child
/// process (which aborts, as a crash would), then the next sync, measured. It must
/// leave what the uninterrupted initial sync left (`reference`): no duplicate contact,
/// no lost link, no pending create.
fn recovery(
    dir: &Path,
    k: usize,
    failpoint: &str,
    reference: Option<Outcome>,
    server: Option<&tandem_test_databases::PostgresServer>,
) -> anyhow::Result<Measure> {
    let copy = dir.join("recovery");
    let n = std::fs::read_to_string(dir.join("n"))?.trim().parse()?;
    let order = Order::of(dir.join(SHUFFLED_FILE).exists());
    generate_into(&copy, n, order)?;
    place_state(&copy, server)?;
    let crashed_wall_s = crash(&copy, failpoint)?;
    let mut m = run_phase("recovery", &copy, k)?;
    m.crashed_wall_s = Some(crashed_wall_s);
    let reference = reference.context("`recovery` runs after `initial`")?;
    if m.outcome != Some(reference) {
        bail!(
            "the recovered sync left {:?}, the uninterrupted one {reference:?}",
            m.outcome
        );
    }
    Ok(m)
}

/// Runs the initial sync in a child process that must abort at `failpoint`; returns
/// the wall time until it did.
fn crash(dir: &Path, failpoint: &str) -> anyhow::Result<f64> {
    use std::os::unix::process::ExitStatusExt;
    const SIGABRT: i32 = 6;
    let started = Instant::now();
    let out = Command::new(std::env::current_exe()?)
        .args(["phase", "initial", "--dir"])
        .arg(dir)
        .env("TANDEM_FAILPOINT", failpoint)
        .output()?;
    let wall = started.elapsed().as_secs_f64();
    let name = failpoint.split(':').next().unwrap_or(failpoint);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.signal() != Some(SIGABRT)
        || !stderr.contains(&format!("failpoint {name} reached"))
    {
        bail!(
            "the initial sync did not abort at {failpoint} ({}):\n{stderr}",
            out.status
        );
    }
    Ok(wall)
}

/// Reads a full listing of `kind` page by page, handing each page's records to `each`;
/// returns how many there were. A big file is listed a page at a time.
async fn each_page(
    connector: &FileConnector,
    kind: EntityKind,
    mut each: impl FnMut(Vec<tandem_model::Record>),
) -> anyhow::Result<u64> {
    let (mut records, mut cursor) = (0, None);
    loop {
        let page = connector.read(kind, cursor.as_ref()).await?;
        records += page.records.len() as u64;
        each(page.records);
        if !page.has_more {
            return Ok(records);
        }
        cursor = page.cursor;
    }
}

/// What the sync in `dir` left (see [`Outcome`]).
fn outcome(dir: &Path) -> anyhow::Result<Outcome> {
    let runtime = tokio::runtime::Builder::new_current_thread().build()?;
    let crm = FileConnector::new(dir.join("crm"), Format::Csv);
    let contacts = runtime.block_on(each_page(&crm, EntityKind::Contact, |_| {}))?;
    let state = open_state(dir, LockMode::Shared)?;
    Ok(Outcome {
        contacts,
        links: state.count_links("CUST")? + state.count_links("VEND")?,
        pending: state.pending_creates()?.len() as u64,
    })
}

fn report(all: &[Measure], json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(all)?);
    } else {
        print_phases(all);
        print_floors(all);
        print_writes(all);
        print_recoveries(all);
    }
    Ok(())
}

fn print_phases(all: &[Measure]) {
    println!(
        "| N | phase | wall s | CPU s | peak RSS MiB | run's own RSS MiB | run's own heap MiB | records | vs parse |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|---:|---:|");
    for m in all {
        // The runs after the initial sync read the files it left (more contacts, all
        // rewritten): held against the parse of those files when it was measured.
        let reads_synced = matches!(m.phase.as_str(), "second" | "second-full");
        let parse = all
            .iter()
            .find(|p| p.n == m.n && reads_synced && p.phase == "parse-synced")
            .or_else(|| all.iter().find(|p| p.n == m.n && p.phase == "parse"));
        let vs_parse = parse.map_or_else(
            || "-".to_owned(),
            |p| format!("{:.1}x", m.wall_s / p.wall_s),
        );
        println!(
            "| {} | {} | {:.2} | {:.2} | {:.0} | {} | {} | {} | {vs_parse} |",
            m.n,
            m.phase,
            m.wall_s,
            m.cpu_s,
            m.peak_rss_mib,
            m.run_rss_growth_mib
                .map_or_else(|| "-".to_owned(), |g| format!("{g:.0}")),
            m.run_anon_growth_mib
                .map_or_else(|| "-".to_owned(), |g| format!("{g:.0}")),
            m.records,
        );
    }
}

/// The initial sync's floor: parsing the files, storing its state rows and writing
/// its files' rows, each by itself. Their sum is the least wall time of work done one
/// after the other; their CPU over two cores the least with both busy throughout.
fn print_floors(all: &[Measure]) {
    let find = |n: usize, phase: &str| all.iter().find(|m| m.n == n && m.phase == phase);
    let floors: Vec<[&Measure; 3]> = (all.iter())
        .filter(|m| m.phase == "parse")
        .filter_map(|p| Some([p, find(p.n, "state-floor")?, find(p.n, "write-floor")?]))
        .collect();
    if floors.is_empty() {
        return;
    }
    println!();
    println!(
        "| N | parse + state-floor + write-floor wall s | vs parse | their CPU s | CPU over 2 cores vs parse |"
    );
    println!("|---:|---:|---:|---:|---:|");
    for [parse, state, write] in floors {
        let wall = parse.wall_s + state.wall_s + write.wall_s;
        let cpu: f64 = [parse, state, write]
            .iter()
            .map(|m| m.timed_cpu_s.unwrap_or(m.cpu_s))
            .sum();
        println!(
            "| {} | {:.2} + {:.2} + {:.2} = {wall:.2} | {:.1}x | {cpu:.2} | {:.1}x |",
            parse.n,
            parse.wall_s,
            state.wall_s,
            write.wall_s,
            wall / parse.wall_s,
            cpu / 2.0 / parse.wall_s,
        );
    }
}

/// What the incremental runs wrote into the state, per change carried.
fn print_writes(all: &[Measure]) {
    let runs: Vec<(&Measure, f64)> = (all.iter())
        .filter_map(|m| Some((m, m.run_written_kib?)))
        .collect();
    if runs.is_empty() {
        return;
    }
    println!();
    println!("| N | incremental: state written KiB | per record written KiB |");
    println!("|---:|---:|---:|");
    for (m, kib) in runs {
        let per = kib / m.records.max(1) as f64;
        println!("| {} | {kib:.0} | {per:.1} |", m.n);
    }
}

/// The recovering sync next to the uninterrupted initial sync of the same N.
fn print_recoveries(all: &[Measure]) {
    let pairs: Vec<(&Measure, &Measure)> = all
        .iter()
        .filter(|m| m.phase == "recovery")
        .filter_map(|r| {
            let initial = all.iter().find(|i| i.n == r.n && i.phase == "initial")?;
            Some((initial, r))
        })
        .collect();
    if pairs.is_empty() {
        return;
    }
    println!();
    println!(
        "| N | aborted after s | wall s, recovery / initial | ratio | CPU s, recovery / initial | peak RSS MiB, recovery / initial | contacts, links left (both) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---|");
    for (i, r) in pairs {
        let left = r.outcome.map_or_else(
            || "-".to_owned(),
            |o| format!("{}, {}", o.contacts, o.links),
        );
        println!(
            "| {} | {:.2} | {:.2} / {:.2} | {:.2}x | {:.2} / {:.2} | {:.0} / {:.0} | {left} |",
            r.n,
            r.crashed_wall_s.unwrap_or(0.0),
            r.wall_s,
            i.wall_s,
            r.wall_s / i.wall_s,
            r.cpu_s,
            i.cpu_s,
            r.peak_rss_mib,
            i.peak_rss_mib,
        );
    }
}

/// CPU seconds and peak resident memory (MiB) of this process, from /proc.
fn process_usage() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name: utime and stime are the 12th and 13th.
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let cpu = (ticks(11) + ticks(12)) / 100.0;
    (cpu, rss_mib("VmHWM:"))
}

fn relations(connector: &str) -> anyhow::Result<Relations> {
    let tiers = vec![
        MatchTier::Fields(vec!["vat_registration_no".into()]),
        MatchTier::Fields(vec!["email".into()]),
        MatchTier::Fields(vec!["name".into(), "post_code".into()]),
    ];
    let mut map = std::collections::BTreeMap::new();
    for (code, kind) in [("CUST", EntityKind::Customer), ("VEND", EntityKind::Vendor)] {
        map.insert(
            code.to_owned(),
            RelationConfig {
                create_contacts: true,
                match_tiers: tiers.clone(),
                ..RelationConfig::new(kind, connector)
            },
        );
    }
    let config = SyncConfig::new(
        ContactsConfig {
            connector: "crm".into(),
            preserve: None,
        },
        map,
    )?;
    Ok(Relations::from_config(&config))
}

fn file_connectors(dir: &Path) -> HashMap<String, Arc<dyn Connector>> {
    let mut map: HashMap<String, Arc<dyn Connector>> = HashMap::new();
    map.insert(
        "crm".into(),
        Arc::new(FileConnector::new(dir.join("crm"), Format::Csv)),
    );
    map.insert(
        "erp".into(),
        Arc::new(FileConnector::new(dir.join("erp"), Format::Csv)),
    );
    map
}

/// `TANDEM_BENCH_HUBS_PER_RANGE`: the hubs a sync plans and writes at a time, as
/// `[sync] hubs_per_range` sets it (`whole`: the plan in one piece).
fn hubs_per_range() -> anyhow::Result<Option<usize>> {
    match std::env::var("TANDEM_BENCH_HUBS_PER_RANGE").ok().as_deref() {
        None => Ok(None),
        Some("whole") => Ok(Some(usize::MAX)),
        Some(n) => Ok(Some(n.parse().with_context(|| {
            format!("TANDEM_BENCH_HUBS_PER_RANGE: `{n}` is no number of hubs (or `whole`)")
        })?)),
    }
}

/// `TANDEM_BENCH_MEMORY_BUDGET`, in MiB: the sync's memory budget (`[sync]
/// memory_budget`).
fn memory_budget() -> anyhow::Result<Option<u64>> {
    let Ok(mib) = std::env::var("TANDEM_BENCH_MEMORY_BUDGET") else {
        return Ok(None);
    };
    let mib: u64 = (mib.parse())
        .with_context(|| format!("TANDEM_BENCH_MEMORY_BUDGET: `{mib}` is no number of MiB"))?;
    Ok(Some(mib << 20))
}

/// Runs one phase; returns its wall time and the records it read or wrote.
async fn phase(name: &str, dir: &Path, k: usize) -> anyhow::Result<(f64, u64)> {
    match name {
        "parse" | "parse-synced" => {
            let started = Instant::now();
            let mut records = 0;
            for (folder, kind) in [
                ("crm", EntityKind::Contact),
                ("erp", EntityKind::Customer),
                ("erp", EntityKind::Vendor),
            ] {
                let connector = FileConnector::new(dir.join(folder), Format::Csv);
                records += each_page(&connector, kind, |_| {}).await?;
            }
            Ok((started.elapsed().as_secs_f64(), records))
        }
        "initial" | "recovery" | "second" | "second-full" => {
            let mut state = open_state(dir, LockMode::Exclusive)?;
            let mut engine = Engine::new(relations("erp")?, file_connectors(dir), &mut *state)?;
            // `second-full` reads every file although none changed (`--full-read`).
            engine.set_full_read(name == "second-full");
            if let Some(per_range) = hubs_per_range()? {
                engine.set_hubs_per_range(per_range);
                allocator::keep_freed_memory_briefly();
            }
            if let Some(budget) = memory_budget()? {
                let budget = tandem_engine::MemoryBudget::new(budget);
                engine.set_memory_budget(budget.telling(allocator::budget_step));
                allocator::keep_freed_memory_briefly();
            }
            let started = Instant::now();
            let report = engine.sync().await?;
            Ok((started.elapsed().as_secs_f64(), report.writes))
        }
        "incremental" => incremental(dir, k).await,
        "state-floor" => state_floor(dir),
        "write-floor" => write_floor(dir).await,
        other => bail!("unknown phase `{other}`"),
    }
}

/// `TANDEM_BENCH_STATE_FLOOR_PARTS`: which of the rows `state-floor` stores, a comma
/// list of `links`, `hashes` and `log` (all by default), to tell what each costs.
struct FloorParts {
    links: bool,
    hashes: bool,
    log: bool,
}

impl FloorParts {
    fn from_env() -> anyhow::Result<FloorParts> {
        let Ok(list) = std::env::var("TANDEM_BENCH_STATE_FLOOR_PARTS") else {
            return Ok(FloorParts {
                links: true,
                hashes: true,
                log: true,
            });
        };
        let mut parts = FloorParts {
            links: false,
            hashes: false,
            log: false,
        };
        for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part {
                "links" => parts.links = true,
                "hashes" => parts.hashes = true,
                "log" => parts.log = true,
                other => anyhow::bail!(
                    "TANDEM_BENCH_STATE_FLOOR_PARTS: `{other}` is none of links, hashes, log"
                ),
            }
        }
        Ok(parts)
    }

    /// Leaves out of `batch` the rows not asked for.
    fn keep(&self, batch: &mut tandem_state::StateBatch) {
        if !self.links {
            batch.upsert_links.clear();
        }
        if !self.hashes {
            batch.set_hashes.clear();
        }
        if !self.log {
            batch.interactions.clear();
        }
    }
}

/// What storing the initial sync's state costs by itself: the links, hashes and log
/// entries the initial sync wrote, committed again into an empty state through the
/// same state layer and in batches of the same size, with no reading, planning or
/// file writing. A floor under the initial sync's time on this machine.
fn state_floor(dir: &Path) -> anyhow::Result<(f64, u64)> {
    use tandem_model::Timestamp;
    use tandem_state::{Interaction, Scope, StateBatch, StateStore};
    const BATCH: usize = 20_000;
    let source = SqliteState::open(&dir.join(".tandem/state.db"), LockMode::Shared)?;
    let links = source.links(None)?;
    let mut hashes = Vec::new();
    for (connector, kind) in [
        ("crm", EntityKind::Contact),
        ("erp", EntityKind::Customer),
        ("erp", EntityKind::Vendor),
    ] {
        let scope = Scope::new(connector, kind);
        for (id, hash) in source.hashes(&scope)? {
            hashes.push((scope.clone(), id.into(), hash));
        }
    }
    drop(source);
    // In key order, the cheapest order for SQLite's B-trees: a floor.
    hashes.sort_unstable_by(|a, b| {
        (&a.0.connector, a.0.kind.plural(), &a.1).cmp(&(&b.0.connector, b.0.kind.plural(), &b.1))
    });
    let db = rusqlite::Connection::open(dir.join(".tandem/state.db"))?;
    // A log row holds one entry, or two of one pair (`next_action`, migration 8).
    let mut stmt = db.prepare(
        "SELECT at, run_id, contact_id, code, account_id, action, source, details, \
                next_action, next_source, next_details \
         FROM interactions ORDER BY id",
    )?;
    let details = |text: String| -> tandem_state::Details {
        serde_json::from_str::<serde_json::Value>(&text)
            .unwrap_or_default()
            .into()
    };
    let mut interactions = Vec::new();
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let first = Interaction {
            id: 0,
            at: Timestamp(row.get(0)?),
            run_id: row.get(1)?,
            contact_id: row.get(2)?,
            code: row.get(3)?,
            account_id: row.get(4)?,
            action: row.get(5)?,
            source: row.get(6)?,
            details: details(row.get(7)?),
        };
        let next: Option<String> = row.get(8)?;
        if let Some(action) = next {
            let second = Interaction {
                action,
                source: row.get::<_, Option<String>>(9)?.unwrap_or_default(),
                details: details(row.get::<_, Option<String>>(10)?.unwrap_or_default()),
                ..first.clone()
            };
            interactions.push(first);
            interactions.push(second);
        } else {
            interactions.push(first);
        }
    }
    drop(rows);
    drop(stmt);
    drop(db);
    let rows = (links.len() + hashes.len() + interactions.len()) as u64;
    let parts = FloorParts::from_env()?;
    let target = tempfile::tempdir()?;
    let mut state = SqliteState::open(&target.path().join("state.db"), LockMode::Exclusive)?;
    let (started, cpu_before) = (Instant::now(), process_usage().0);
    let (mut links, mut hashes, mut interactions) = (
        links.into_iter(),
        hashes.into_iter(),
        interactions.into_iter(),
    );
    loop {
        // Each batch as the engine makes them: links with their hashes and log entries.
        let mut batch = StateBatch {
            upsert_links: links.by_ref().take(BATCH / 5).collect(),
            set_hashes: hashes.by_ref().take(2 * BATCH / 5).collect(),
            interactions: interactions.by_ref().take(2 * BATCH / 5).collect(),
            ..StateBatch::default()
        };
        if batch.is_empty() {
            break;
        }
        parts.keep(&mut batch);
        state.commit(batch)?;
    }
    let wall = started.elapsed().as_secs_f64();
    TIMED_CPU_S.with(|c| c.set(Some(process_usage().0 - cpu_before)));
    Ok((wall, rows))
}

/// What writing the files back costs by itself: every row of the three files the
/// initial sync left, its cells taken from the records and written as CSV (the `csv`
/// crate, the files' own columns) into new files beside them, with no reading,
/// planning, splicing or syncing to the disk in the timed part. A floor under the
/// initial sync's writes, which rewrote most rows of each file.
async fn write_floor(dir: &Path) -> anyhow::Result<(f64, u64)> {
    let mut files = Vec::new();
    for (folder, kind) in [
        ("crm", EntityKind::Contact),
        ("erp", EntityKind::Customer),
        ("erp", EntityKind::Vendor),
    ] {
        let connector = FileConnector::new(dir.join(folder), Format::Csv);
        let path = connector.file(kind);
        let header = std::fs::read_to_string(&path)?
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned();
        let columns: Vec<String> = header.split(',').map(str::to_owned).collect();
        let mut records = Vec::new();
        each_page(&connector, kind, |page| records.extend(page)).await?;
        files.push((path.with_extension("floor.csv"), columns, records));
    }
    let (started, cpu_before) = (Instant::now(), process_usage().0);
    let mut rows = 0;
    for (path, columns, records) in &files {
        let mut out = csv::Writer::from_path(path)?;
        out.write_record(columns)?;
        for record in records {
            for column in columns {
                let cell = match column.as_str() {
                    "id" => std::borrow::Cow::Borrowed(record.id.as_str()),
                    name => record
                        .fields
                        .get(name)
                        .map_or(Default::default(), |v| v.cell()),
                };
                out.write_field(cell.as_ref())?;
            }
            // The fields written, the record ends.
            out.write_record(std::iter::empty::<&[u8]>())?;
            rows += 1;
        }
        out.flush()?;
    }
    let wall = started.elapsed().as_secs_f64();
    TIMED_CPU_S.with(|c| c.set(Some(process_usage().0 - cpu_before)));
    for (path, ..) in &files {
        std::fs::remove_file(path)?;
    }
    Ok((wall, rows))
}

/// Seeds change-reading in-memory connectors with the data set, syncs them once (not
/// measured), applies `k` changes over both sides and measures the run that follows.
async fn incremental(dir: &Path, k: usize) -> anyhow::Result<(f64, u64)> {
    let crm = Arc::new(
        MemoryConnector::new(&[EntityKind::Contact], true)
            .with_page_size(10_000)
            .with_id_prefix("MC"),
    );
    let erp = Arc::new(
        MemoryConnector::new(&[EntityKind::Customer, EntityKind::Vendor], true)
            .with_page_size(10_000)
            .with_id_prefix("MA"),
    );
    for (folder, kind, target) in [
        ("crm", EntityKind::Contact, &crm),
        ("erp", EntityKind::Customer, &erp),
        ("erp", EntityKind::Vendor, &erp),
    ] {
        let connector = FileConnector::new(dir.join(folder), Format::Csv);
        each_page(&connector, kind, |records| {
            for record in records {
                target.put(kind, &record.id, record.fields);
            }
        })
        .await?;
    }
    let mut connectors: HashMap<String, Arc<dyn Connector>> = HashMap::new();
    connectors.insert("crm".into(), crm.clone());
    connectors.insert("erp".into(), erp.clone());
    let state_dir = tempfile::tempdir()?;
    let mut state: Box<dyn StateStore> =
        match std::fs::read_to_string(dir.join(INCREMENTAL_STATE_URL_FILE)) {
            Ok(url) => Box::new(PgState::open_url(url.trim(), LockMode::Exclusive)?),
            Err(_) => Box::new(SqliteState::open(
                &state_dir.path().join("state.db"),
                LockMode::Exclusive,
            )?),
        };
    // The initial sync, then one more run: it reads back what the initial sync wrote
    // (a change-reading system reports Tandem's own writes as changes) and writes
    // nothing. Neither is measured.
    for _ in 0..2 {
        Engine::new(relations("erp")?, connectors.clone(), &mut *state)?
            .sync()
            .await?;
    }
    // k changes: half on contacts, half on accounts, spread over the data set.
    let contacts = crm.all(EntityKind::Contact);
    let customers = erp.all(EntityKind::Customer);
    for i in 0..k {
        let (target, kind, list) = if i % 2 == 0 {
            (&crm, EntityKind::Contact, &contacts)
        } else {
            (&erp, EntityKind::Customer, &customers)
        };
        let record = &list[(i * 7919) % list.len()];
        let mut fields = target
            .get(kind, &record.id)
            .map(|r| r.fields)
            .unwrap_or_default();
        fields.set("phone", Value::text(format!("+32 470 {i:06}")));
        target.put(kind, &record.id, fields);
    }
    drop((contacts, customers));
    let rss_before = rss_mib("VmRSS:");
    let anon_before = rss_mib("RssAnon:");
    let written_before = written_bytes();
    reset_peak_rss();
    perf_control("enable");
    let started = Instant::now();
    let report = Engine::new(relations("erp")?, connectors, &mut *state)?
        .sync()
        .await?;
    let wall = started.elapsed().as_secs_f64();
    perf_control("disable");
    let written = (written_bytes() - written_before) as f64 / 1024.0;
    RUN_WRITTEN_KIB.with(|w| w.set(Some(written)));
    // The connectors hold the whole data set (they stand for the external systems);
    // what the run itself needed is the peak above what was resident before it.
    RUN_RSS_GROWTH_MIB.with(|g| g.set(Some(rss_mib("VmHWM:") - rss_before)));
    // Measured while the report (with the whole plan) is still held.
    RUN_ANON_GROWTH_MIB.with(|g| g.set(Some(rss_mib("RssAnon:") - anon_before)));
    Ok((wall, report.writes))
}

thread_local! {
    static RUN_RSS_GROWTH_MIB: std::cell::Cell<Option<f64>> = const { std::cell::Cell::new(None) };
    static RUN_ANON_GROWTH_MIB: std::cell::Cell<Option<f64>> = const { std::cell::Cell::new(None) };
    static RUN_WRITTEN_KIB: std::cell::Cell<Option<f64>> = const { std::cell::Cell::new(None) };
    static TIMED_CPU_S: std::cell::Cell<Option<f64>> = const { std::cell::Cell::new(None) };
}

/// Bytes this process wrote through write calls so far (`wchar`, /proc/self/io).
fn written_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("wchar:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// A memory figure of this process from /proc/self/status, in MiB.
fn rss_mib(key: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

/// Profiles only the measured run: with `perf record -D -1 --control
/// fifo:CTL,ACK`, set `TANDEM_BENCH_PERF_CTL=CTL` and `TANDEM_BENCH_PERF_ACK=ACK`.
fn perf_control(command: &str) {
    if let Ok(ctl) = std::env::var("TANDEM_BENCH_PERF_CTL") {
        let _ = std::fs::write(ctl, format!("{command}\n"));
        if let Ok(ack) = std::env::var("TANDEM_BENCH_PERF_ACK") {
            // perf answers `ack` and keeps the fifo open: one line, not to the end.
            if let Ok(fifo) = std::fs::File::open(ack) {
                let _ = std::io::BufRead::read_line(
                    &mut std::io::BufReader::new(fifo),
                    &mut String::new(),
                );
            }
        }
    }
}

/// Resets the peak resident size (VmHWM) to the current one (Linux: `clear_refs` 5).
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}
