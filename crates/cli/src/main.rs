//! `tandem`: keeps contacts in step with customers, vendors and bank accounts.
//!
//! The binary reads `tandem.toml` ([`config`]), builds the connectors compiled into
//! it ([`registry`]), opens the state and hands everything to the engine. Reports go
//! to stdout (tables, or JSON with `--json`); progress and errors go to stderr.

mod config;
mod logging;
mod output;

use std::collections::HashMap;
use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, anyhow};
use clap::{ArgAction, CommandFactory, FromArgMatches, Parser, Subcommand};
use serde::Serialize;
use tandem_connector::{Connector, Registry};
use tandem_engine::{Engine, Relations};
use tandem_model::EntityKind;
use tandem_state::{LockMode, SqliteState, StateError};
use tracing::debug;

use crate::config::{Config, Env};

/// The connector types compiled into this binary: one cargo feature per connector
/// crate (`connector-<type>`), so a build carries only the systems it needs.
fn registry() -> Registry {
    #[allow(unused_mut, reason = "no connector feature may be enabled")]
    let mut registry = Registry::new();
    #[cfg(feature = "connector-file")]
    registry.register(Box::new(tandem_connector_file::FileConnectorFactory));
    registry
}

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  error: the config, the state or a connector failed, or the run stopped
  2  `sync` finished, but some records failed (listed in the report; they are
     retried on the next run)";

/// Keeps contacts (CRM, address book) in step with customers, vendors and bank
/// accounts (ERP).
#[derive(Debug, Parser)]
#[command(name = "tandem", version, propagate_version = true)]
struct Cli {
    /// The config file; relative paths inside it resolve from its folder.
    #[arg(
        long,
        global = true,
        env = "TANDEM_CONFIG",
        hide_env_values = true,
        default_value = "tandem.toml",
        value_name = "PATH"
    )]
    config: PathBuf,
    /// Print the report as JSON on stdout instead of tables.
    #[arg(long, global = true)]
    json: bool,
    /// More progress on stderr (-v debug, -vv trace); `sync -v` also lists the actions.
    #[arg(short, long, global = true, action = ArgAction::Count)]
    verbose: u8,
    /// Only warnings and errors on stderr.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Read every system, link, create and update records, and print what was done.
    #[command(after_help = EXIT_CODES)]
    Sync,
    /// Print what `sync` would do now, without writing to any system.
    ///
    /// Prints the counts per relation, then every link to make, contact to create,
    /// field change (old -> new), link to drop, ambiguous match and conflict.
    Plan,
    /// Check the config, open the state, and check every connector.
    ///
    /// Prints one line per check; exits with 1 when any failed.
    Check,
}

fn main() -> ExitCode {
    let cli = match parse_args() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // clap's usual 2 would read as "records failed".
            return if e.use_stderr() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    logging::init(cli.verbose, cli.quiet);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            print_error(&anyhow!(e).context("cannot start the async runtime"));
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(&cli)) {
        Ok(code) => code,
        Err(e) => {
            print_error(&e);
            ExitCode::from(1)
        }
    }
}

fn parse_args() -> Result<Cli, clap::Error> {
    let types = registry().type_names();
    let types = if types.is_empty() {
        "none".to_owned()
    } else {
        types.join(", ")
    };
    let command = Cli::command().after_help(format!(
        "{EXIT_CODES}\n\nConnector types in this build: {types}\n\
         Environment: TANDEM__SECTION__KEY=value overrides a config key; ${{VAR}} in a \
         config value is read from the environment."
    ));
    Cli::from_arg_matches(&command.try_get_matches()?)
}

async fn run(cli: &Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Sync => sync_or_plan(cli, true).await,
        Command::Plan => sync_or_plan(cli, false).await,
        Command::Check => check(cli).await,
    }
}

fn load(cli: &Cli, registry: &Registry) -> anyhow::Result<Config> {
    let config = Config::load(&cli.config, &Env::from_process(), registry)?;
    // Names only: settings may hold secrets.
    debug!(
        file = %config.shown(),
        connectors = ?config.connectors.iter().map(|(n, c)| format!("{n} ({})", c.type_name)).collect::<Vec<_>>(),
        relations = ?config.sync.relations.iter().map(|(code, _)| code.as_str()).collect::<Vec<_>>(),
        "config loaded"
    );
    Ok(config)
}

fn open_state(config: &Config, mode: LockMode) -> anyhow::Result<SqliteState> {
    SqliteState::open_url(&config.state_url, &config.base_dir, mode).map_err(|e| match e {
        // A wrong url is a config mistake; the other errors name the state file.
        StateError::UnsupportedUrl { .. } => anyhow!("{}: state.url: {e}", config.shown()),
        e => anyhow!(e),
    })
}

async fn sync_or_plan(cli: &Cli, sync: bool) -> anyhow::Result<ExitCode> {
    let registry = registry();
    let config = load(cli, &registry)?;
    // The lock comes first, so a second sync stops before touching any system; a
    // plan only reads, so plans may run side by side.
    let lock = if sync {
        LockMode::Exclusive
    } else {
        LockMode::Shared
    };
    let mut state = open_state(&config, lock)?;
    let mut connectors: HashMap<String, Arc<dyn Connector>> = HashMap::new();
    for name in config.connectors.keys() {
        connectors.insert(name.clone(), config.build_connector(name, &registry)?);
    }
    let relations = Relations::from_config(&config.sync);
    let started = Instant::now();
    let mut engine = Engine::new(relations.clone(), connectors, &mut state)
        .map_err(|e| anyhow!("{}: {e}", config.shown()))?;
    let report = if sync {
        engine.sync().await.context("sync failed")?
    } else {
        engine.plan().await.context("plan failed")?
    };
    let elapsed = started.elapsed();

    if cli.json {
        print_stdout(&(serde_json::to_string_pretty(&report)? + "\n"))?;
    } else {
        let actions = !sync || cli.verbose > 0;
        print_stdout(&output::report(&report, &relations, actions, elapsed))?;
    }
    let records_failed = report.failed() > 0 || !report.failures.is_empty();
    Ok(if sync && records_failed {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

/// One line of `tandem check`.
#[derive(Debug, Serialize)]
struct CheckLine {
    /// `state`, `connector`, `contacts` or `relation`.
    check: &'static str,
    /// The state file, connector name or relation code.
    name: String,
    /// What the human output shows.
    #[serde(skip)]
    label: String,
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

async fn check(cli: &Cli) -> anyhow::Result<ExitCode> {
    let registry = registry();
    let config = load(cli, &registry)?;
    let mut lines = Vec::new();

    let state = SqliteState::open_url(&config.state_url, &config.base_dir, LockMode::Shared);
    // The path only: a url may carry a password.
    let name = state
        .as_ref()
        .map(|s| s.path().display().to_string())
        .unwrap_or_else(|_| "state.url".to_owned());
    lines.push(CheckLine {
        check: "state",
        label: format!("state {name}"),
        name,
        ok: state.is_ok(),
        error: state.as_ref().err().map(ToString::to_string),
    });
    drop(state);

    let mut built: HashMap<&str, Arc<dyn Connector>> = HashMap::new();
    for (name, connector) in &config.connectors {
        let result = match config.build_connector(name, &registry) {
            Ok(c) => match c.check().await {
                Ok(()) => {
                    built.insert(name, c);
                    Ok(())
                }
                Err(e) => Err(e.to_string()),
            },
            Err(e) => Err(e.to_string()),
        };
        lines.push(CheckLine {
            check: "connector",
            name: name.clone(),
            label: format!("connector {name} ({})", connector.type_name),
            ok: result.is_ok(),
            error: result.err(),
        });
    }

    // What the engine will ask of each connector: that it holds the kind.
    let needs = std::iter::once((
        "contacts",
        "contacts",
        &config.sync.contacts.connector,
        EntityKind::Contact,
    ))
    .chain(
        config
            .sync
            .relations
            .iter()
            .map(|(code, r)| ("relation", code.as_str(), &r.connector, r.kind)),
    );
    for (check, name, connector, kind) in needs {
        // A connector that failed its check is reported above already.
        let Some(c) = built.get(connector.as_str()) else {
            continue;
        };
        let holds = c.capabilities().holds(kind);
        lines.push(CheckLine {
            check,
            name: name.to_owned(),
            label: match check {
                "contacts" => format!("contacts on {connector}"),
                _ => format!("relation {name}: {} on {connector}", kind.plural()),
            },
            ok: holds,
            error: (!holds)
                .then(|| format!("connector `{connector}` does not hold {}", kind.plural())),
        });
    }

    let failed = lines.iter().filter(|l| !l.ok).count();
    if cli.json {
        let json = serde_json::json!({
            "config": config.shown(),
            "ok": failed == 0,
            "checks": lines,
        });
        print_stdout(&(serde_json::to_string_pretty(&json)? + "\n"))?;
    } else {
        let mut out = String::new();
        for line in &lines {
            match &line.error {
                None => out.push_str(&format!("ok      {}\n", line.label)),
                Some(e) => out.push_str(&format!("FAILED  {}: {e}\n", line.label)),
            }
        }
        out.push_str(&match failed {
            0 => format!("\ncheck: {} is ready\n", config.shown()),
            n => format!("\ncheck: {n} of {} checks failed\n", lines.len()),
        });
        print_stdout(&out)?;
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Writes to stdout; a closed pipe (`tandem plan | head`) is not an error.
fn print_stdout(text: &str) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        result => result.context("cannot write to stdout"),
    }
}

/// `error: ...` and every cause not already part of the message above it (many
/// errors repeat their source in their own message).
fn print_error(error: &anyhow::Error) {
    let mut shown = error.to_string();
    let mut text = format!("error: {shown}\n");
    for cause in error.chain().skip(1) {
        let message = cause.to_string();
        if !shown.contains(&message) {
            text.push_str(&format!("  caused by: {message}\n"));
            shown.push_str(&message);
        }
    }
    let _ = io::stderr().write_all(text.as_bytes());
}
