//! `tandem`: keeps contacts in step with customers, vendors and bank accounts.
//!
//! The binary reads `tandem.toml` ([`config`]), builds the connectors compiled into
//! it ([`registry`]), opens the state and hands everything to the engine. Reports go
//! to stdout (tables, or JSON with `--json`); progress and errors go to stderr.

mod allocator;
mod config;
mod conformance;
mod docs;
mod init;
mod inspect;
mod json;
mod logging;
mod migrate;
mod operator;
mod output;
#[cfg(feature = "plugins")]
mod plugins;
mod progress;
mod runs;
mod service;
#[cfg(feature = "connector-sql")]
mod sql;
mod web;

use std::collections::HashMap;
use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, anyhow};
use clap::{ArgAction, ArgGroup, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use serde::Serialize;
use tandem_connector::{Connector, Registry};
use tandem_engine::{Directives, Engine, EngineError, Relations, RetryTarget};
use tandem_model::EntityKind;
use tandem_state::{LockMode, StateError, StateStore};
use tracing::debug;

use crate::config::{Config, ConfigErrors, Env};
use crate::logging::LogFormat;
use crate::progress::{Bars, Interrupted};

/// The connector types compiled into this binary: one cargo feature per connector
/// crate (`connector-<type>`), so a build carries only the systems it needs.
fn registry() -> Registry {
    #[allow(unused_mut, reason = "no connector feature may be enabled")]
    let mut registry = Registry::new();
    #[cfg(feature = "connector-file")]
    registry.register(Box::new(tandem_connector_file::FileConnectorFactory));
    #[cfg(feature = "connector-tryton")]
    registry.register(Box::new(tandem_connector_tryton::TrytonConnectorFactory));
    #[cfg(feature = "connector-carddav")]
    registry.register(Box::new(tandem_connector_carddav::CarddavConnectorFactory));
    #[cfg(feature = "connector-business-central")]
    registry.register(Box::new(
        tandem_connector_business_central::BusinessCentralConnectorFactory,
    ));
    #[cfg(feature = "connector-hubspot")]
    registry.register(Box::new(tandem_connector_hubspot::HubSpotConnectorFactory));
    #[cfg(feature = "connector-ldap")]
    registry.register(Box::new(tandem_connector_ldap::LdapConnectorFactory));
    #[cfg(feature = "connector-sql")]
    registry.register(Box::new(tandem_connector_sql::SqlConnectorFactory));
    #[cfg(feature = "plugins")]
    registry.register(Box::new(tandem_plugin::PluginFactory));
    #[cfg(feature = "plugins")]
    registry.register(Box::new(tandem_plugin::ProcessFactory));
    registry
}

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  error: the config, the state or a connector failed, or the run stopped
  2  usage error: an unknown command or option, a missing argument (and for
     `plan --detailed-exitcode`: the plan has changes)
  3  `sync` (or `link`, `unlink`, `create`) finished, but some records failed
     (listed in the report; they are retried on the next run, and parked after
     the same error twice until `tandem retry`)";

/// The exit code of a sync whose records failed (R17); 2 is clap's usage error.
const EXIT_RECORDS_FAILED: u8 = 3;

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
    /// The form of the log lines on stderr: `plain` for people, `json` for log
    /// collectors (one object a line, with timestamp, level, target, message, run id,
    /// connector, kind, ...).
    #[arg(
        long,
        global = true,
        value_enum,
        default_value_t,
        value_name = "FORMAT"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Read every system, link, create and update records, and print what was done.
    ///
    /// A file that did not change since the end of the last sync (same content hash)
    /// is not read again; --full-read reads everything anyway.
    #[command(after_help = EXIT_CODES)]
    Sync {
        /// Read every system completely, even what did not change since the last sync.
        #[arg(long)]
        full_read: bool,
        /// Carry out deletes found by full listings even beyond [sync] max_delete_share,
        /// or when a listing is empty (R16).
        #[arg(long)]
        allow_deletes: bool,
    },
    /// Sync continuously: poll every connector, sync what changed, serve health,
    /// metrics and a status page (docs/guide/service.md).
    ///
    /// Holds the state until it stops. SIGTERM or Ctrl-C lets the run in flight finish
    /// and exits 0; a second signal stops the run at the next safe point.
    Run {
        /// Run as one of several workers sharing a PostgreSQL state, on this host or
        /// others: one holds the state and syncs, the others stand by and take over
        /// within [state] lease when it dies or stalls (docs/configuration.md).
        #[arg(long)]
        worker: bool,
    },
    /// Print what `sync` would do now, without writing to any system.
    ///
    /// Prints the counts per relation, then every link to make (+), record to create
    /// (+), field change (~, old -> new), link to drop (-), ambiguous match, refused
    /// request and conflict; in colour on a terminal (not with NO_COLOR). Never creates
    /// a state file.
    #[command(after_help = EXIT_CODES)]
    Plan {
        /// Read every system completely, even what did not change since the last sync.
        #[arg(long)]
        full_read: bool,
        /// Plan deletes found by full listings even beyond [sync] max_delete_share, or
        /// when a listing is empty (R16).
        #[arg(long)]
        allow_deletes: bool,
        /// List every action; without it, a plan lists its first 200 and counts the rest.
        #[arg(long)]
        all: bool,
        /// Exit with 2 when the plan has changes (writes, unlinks or conflicts), 0 when it
        /// has none, 1 on errors: for scripts, as `terraform plan` does.
        #[arg(long)]
        detailed_exitcode: bool,
    },
    /// Check the config, open the state, and check every connector.
    ///
    /// Prints one line per check; exits with 1 when any failed.
    Check,
    /// Link a contact to an existing account under a relation code (R4), then sync.
    ///
    /// The pair starts from the relation's `initial` side. Refused (exit 1, nothing
    /// written) when the contact already has a link under the code or the account
    /// already has a contact (R2), or either record does not exist.
    #[command(after_help = EXIT_CODES)]
    Link {
        /// The relation code, e.g. CUST.
        code: String,
        contact_id: String,
        account_id: String,
    },
    /// Drop a contact's link under a relation code, then sync. Both records stay.
    #[command(after_help = EXIT_CODES)]
    Unlink {
        /// The relation code, e.g. CUST.
        code: String,
        contact_id: String,
    },
    /// Create an account for a contact (R5), then sync.
    ///
    /// Like a contact whose business-relation field lists the code: the contact is
    /// matched first, and gets a new account from the relation's template when
    /// nothing matches. A person asks on behalf of its company (R3).
    #[command(after_help = EXIT_CODES)]
    Create {
        /// The relation code, e.g. CUST.
        code: String,
        /// The contact that asks for the relation.
        #[arg(long, value_name = "CONTACT_ID")]
        contact: String,
    },
    /// Create a contact for an account without one (R6), then sync.
    ///
    /// Works for any relation, also one that does not number contacts, and for an
    /// account whose contact was deleted, which otherwise gets no new contact (R12).
    /// Refused (exit 1, nothing written) when the account has a contact or does not
    /// exist.
    #[command(name = "create-contact", after_help = EXIT_CODES)]
    CreateContact {
        /// The relation code, e.g. CUST.
        code: String,
        /// The account that gets a contact.
        #[arg(long, value_name = "ACCOUNT_ID")]
        account: String,
    },
    /// List the links in the state, of one relation code or all.
    Links {
        /// Only the links of this relation code.
        code: Option<String>,
        /// `table` (default), `csv` or `json` (the same as --json).
        #[arg(long, value_enum)]
        format: Option<Format>,
    },
    /// Print the account a contact stands for under a code (R10).
    ///
    /// A person resolves through its company. Exits with 1 when there is none.
    Resolve { contact_id: String, code: String },
    /// Print a contact's interaction log (R11), oldest first.
    Log {
        contact_id: String,
        /// At most this many entries, the newest.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// List the open conflicts of the `manual` policy (R15), or settle one.
    Conflicts {
        #[command(subcommand)]
        command: Option<ConflictsCommand>,
    },
    /// Put parked pairs and creates back into the next sync (R17).
    ///
    /// A pair or create that failed twice with the same error is parked: left alone
    /// until retried with this command. `tandem status` lists them.
    #[command(group(ArgGroup::new("target").required(true).args(["all", "code"])))]
    Retry {
        /// Everything parked.
        #[arg(long, conflicts_with_all = ["code", "id"])]
        all: bool,
        /// The relation code of the pair or create to retry.
        #[arg(requires = "id")]
        code: Option<String>,
        /// Its contact id (or account id, for a contact created from an account).
        id: Option<String>,
    },
    /// Show the last runs, parked pairs and creates, open conflicts and pending creates.
    ///
    /// Works while a sync runs (it reads the state without taking its lock).
    Status,
    /// List the recent runs, or show what one run did to which records.
    Runs {
        #[command(subcommand)]
        command: Option<RunsCommand>,
        /// At most this many runs, the newest.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Move the state into another store: every link, baseline, log entry, conflict and
    /// parked record, then check the copy table by table.
    ///
    /// Stop the service first: the source is held alone, and the command fails at once
    /// when a sync holds it. The target is created when missing and must be empty.
    /// Relative sqlite paths resolve from the current folder. Afterwards, point
    /// [state] url at the target (docs/configuration.md).
    Migrate {
        /// The state to copy, e.g. sqlite://.tandem/state.db.
        #[arg(long, value_name = "URL")]
        from: String,
        /// The new, empty state to fill, e.g. postgres://tandem@db.example/tandem.
        #[arg(long, value_name = "URL")]
        to: String,
    },
    /// Write a commented starter config for the chosen connector types.
    ///
    /// Writes the file named by --config (default `tandem.toml`); refuses to overwrite
    /// an existing file.
    Init {
        /// Where the contacts live: `file`, `carddav`, `ldap` or `plugin`.
        #[arg(long, value_enum, default_value_t = init::ContactsType::File)]
        contacts: init::ContactsType,
        /// Where the customers, vendors and bank accounts live: `file`, `tryton` or
        /// `plugin`.
        #[arg(long, value_enum, default_value_t = init::AccountsType::File)]
        accounts: init::AccountsType,
    },
    /// Print a shell completion script on stdout.
    ///
    /// bash: `tandem completions bash > ~/.local/share/bash-completion/completions/tandem`;
    /// zsh: `tandem completions zsh > ~/.zfunc/_tandem`; fish: `tandem completions fish
    /// > ~/.config/fish/completions/tandem.fish`.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff) on stdout: `tandem man | man -l -`.
    Man,
    /// List the plugins: those the config names (`type = "plugin"` or `"process"`) and the libraries
    /// in the `plugins` folder next to it, with name, version, ABI, kinds and
    /// capabilities.
    ///
    /// Exits with 1 when a plugin cannot be loaded (the error says why).
    #[cfg(feature = "plugins")]
    Plugins,
    /// Run the connector conformance kit against a configured connector (compiled
    /// in, plugin or process) and print which contract rules hold.
    ///
    /// The kit writes through the connector: point it at a scratch system. Records
    /// already there are left alone; every record it creates is deleted again.
    /// Exits with 1 when a rule does not hold.
    Conformance {
        /// The connector's name in the config (`[connectors.NAME]`).
        #[arg(long, value_name = "NAME")]
        connector: String,
        /// Exercise only this kind (repeatable); default every kind it holds.
        #[arg(long = "kind", value_name = "KIND")]
        kinds: Vec<EntityKind>,
        /// The size of the batch written in one call (capped by the connector's).
        #[arg(long, default_value_t = 50, value_name = "N")]
        max_batch: usize,
        /// The connector stores any field name, so writes naming a field that is
        /// neither canonical nor `x_` need not be refused.
        #[arg(long)]
        any_field_name: bool,
    },
    /// Database tables (`type = "sql"` connectors): `tandem sql install-triggers`.
    #[cfg(feature = "connector-sql")]
    Sql {
        #[command(subcommand)]
        command: SqlCommand,
    },
}

#[cfg(feature = "connector-sql")]
#[derive(Debug, Subcommand)]
enum SqlCommand {
    /// Create the change table and, on every table read with `changes = "triggers"`,
    /// the triggers that record its inserts, updates and deletes (docs/connectors/sql.md).
    ///
    /// Safe to run again: existing triggers are replaced. Needs a database user allowed
    /// to create tables and triggers.
    InstallTriggers {
        /// Only this connector; default: every `type = "sql"` connector.
        #[arg(long)]
        connector: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum ConflictsCommand {
    /// Settle an open conflict; the next sync writes the chosen value to both sides.
    Resolve {
        /// The conflict's id, as `tandem conflicts` lists it.
        id: i64,
        /// `contact`, `account`, or a value of your own (`""` clears the field).
        #[arg(long, value_name = "contact|account|VALUE", allow_hyphen_values = true)]
        take: String,
    },
}

#[derive(Debug, Subcommand)]
enum RunsCommand {
    /// The records a run touched (from the interaction log), and its failures.
    Show {
        /// The run's id, as `tandem runs` lists it.
        id: i64,
        /// At most this many records.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
}

/// The output format of `tandem links`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Table,
    Csv,
    Json,
}

fn main() -> ExitCode {
    allocator::keep_freed_memory();
    let cli = match parse_args() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            if e.use_stderr() && std::env::args().any(|a| a == "--json") {
                let _ = print_stdout(&format!("{:#}\n", json::usage_error_value(&e)));
            }
            // 2 for usage errors, 0 for --help and --version: clap's convention.
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
        }
    };
    let engine_command = cli.command.engine_command();
    let bars = engine_command
        .filter(|_| progress::wanted(cli.quiet, cli.log_format == LogFormat::Plain))
        .map(|_| Bars::on_stderr());
    logging::init(cli.verbose, cli.quiet, cli.log_format, bars.clone());
    if let Some(what) = engine_command {
        let json_logs = cli.log_format == LogFormat::Json;
        progress::stop_on_ctrl_c(bars.clone(), what, json_logs);
    }
    // `run` answers signals and HTTP on two worker threads while a run computes.
    let runtime = match &cli.command {
        Command::Run { .. } => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build(),
        _ => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
    }
    .context("cannot start the async runtime");
    let result = runtime.and_then(|runtime| runtime.block_on(run(&cli)));
    if let Some(bars) = &bars {
        bars.clear();
    }
    match result {
        Ok(code) => code,
        Err(e) => {
            print_error(&e);
            if cli.json {
                json::print_error(&e);
            }
            // Options that clap cannot tell apart are usage errors too.
            ExitCode::from(if e.is::<UsageError>() { 2 } else { 1 })
        }
    }
}

/// A mistake on the command line that clap's rules do not catch: exit 2, like
/// clap's own.
#[derive(Debug)]
struct UsageError(String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

impl Command {
    /// For commands that run the engine: what Ctrl-C interrupts. They show progress
    /// bars on a terminal.
    fn engine_command(&self) -> Option<Interrupted> {
        match self {
            Command::Sync { .. }
            | Command::Link { .. }
            | Command::Unlink { .. }
            | Command::Create { .. }
            | Command::CreateContact { .. } => Some(Interrupted::Sync),
            Command::Plan { .. } => Some(Interrupted::Plan),
            _ => None,
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

/// The command line as clap knows it, with the help texts of `tandem --help`: what
/// completions and the man page are made from.
fn cli_command() -> clap::Command {
    Cli::command().after_help(EXIT_CODES)
}

async fn run(cli: &Cli) -> anyhow::Result<ExitCode> {
    let directive = |d: Directives| RunMode::Sync(Some(d));
    match &cli.command {
        Command::Sync { .. } => run_engine(cli, RunMode::Sync(None)).await,
        Command::Plan { .. } => run_engine(cli, RunMode::Plan).await,
        Command::Run { worker } => service::run(cli, *worker).await,
        Command::Check => check(cli).await,
        Command::Link {
            code,
            contact_id,
            account_id,
        } => {
            let link = vec![(code.clone(), contact_id.clone(), account_id.clone())];
            run_engine(
                cli,
                directive(Directives {
                    link,
                    ..Directives::default()
                }),
            )
            .await
        }
        Command::Unlink { code, contact_id } => {
            let unlink = vec![(code.clone(), contact_id.clone())];
            run_engine(
                cli,
                directive(Directives {
                    unlink,
                    ..Directives::default()
                }),
            )
            .await
        }
        Command::Create { code, contact } => {
            let create = vec![(code.clone(), contact.clone())];
            run_engine(
                cli,
                directive(Directives {
                    create,
                    ..Directives::default()
                }),
            )
            .await
        }
        Command::CreateContact { code, account } => {
            let create_contact = vec![(code.clone(), account.clone())];
            run_engine(
                cli,
                directive(Directives {
                    create_contact,
                    ..Directives::default()
                }),
            )
            .await
        }
        Command::Links { code, format } => {
            let format = match (cli.json, format) {
                (true, Some(f)) if *f != Format::Json => {
                    return Err(anyhow!(UsageError(format!(
                        "--json and --format {} ask for different formats; give one of them",
                        match f {
                            Format::Csv => "csv",
                            _ => "table",
                        }
                    ))));
                }
                (true, _) => Format::Json,
                (false, f) => f.unwrap_or(Format::Table),
            };
            inspect::links(cli, code.as_deref(), format)
        }
        Command::Resolve { contact_id, code } => inspect::resolve(cli, contact_id, code),
        Command::Log { contact_id, limit } => inspect::log(cli, contact_id, *limit),
        Command::Conflicts { command: None } => inspect::conflicts(cli),
        Command::Conflicts {
            command: Some(ConflictsCommand::Resolve { id, take }),
        } => operator::resolve_conflict(cli, *id, take),
        Command::Retry { all, code, id } => {
            let target = match (all, code, id) {
                (true, _, _) => RetryTarget::All,
                (false, Some(code), Some(id)) => RetryTarget::Record {
                    code: code.clone(),
                    id: id.clone(),
                },
                _ => {
                    return Err(anyhow!(UsageError(
                        "give --all, or a relation code and an id".to_owned()
                    )));
                }
            };
            operator::retry(cli, &target)
        }
        Command::Status => inspect::status(cli),
        Command::Runs { command, limit } => match command {
            None => runs::list(cli, *limit),
            Some(RunsCommand::Show { id, limit }) => runs::show(cli, *id, *limit),
        },
        Command::Migrate { from, to } => migrate::migrate(cli, from, to),
        Command::Init { contacts, accounts } => init::init(cli, *contacts, *accounts),
        Command::Completions { shell } => docs::completions(*shell),
        Command::Man => docs::man(),
        #[cfg(feature = "plugins")]
        Command::Plugins => plugins::plugins(cli),
        Command::Conformance {
            connector,
            kinds,
            max_batch,
            any_field_name,
        } => {
            let request = conformance::Request {
                connector,
                kinds,
                max_batch: *max_batch,
                any_field_name: *any_field_name,
            };
            conformance::conformance(cli, &request).await
        }
        #[cfg(feature = "connector-sql")]
        Command::Sql {
            command: SqlCommand::InstallTriggers { connector },
        } => sql::install_triggers(cli, connector.as_deref()).await,
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

/// Opens the state for a command that writes: created if missing, held with `mode`.
/// Every command opens the state through `tandem_state`'s openers, which choose the
/// store by the url's scheme.
fn open_state(config: &Config, mode: LockMode) -> anyhow::Result<Box<dyn StateStore>> {
    tandem_state::open_url_with_lease(
        &config.state_url,
        &config.base_dir,
        mode,
        config.state_lease,
    )
    .map_err(|e| state_error(config, e))
}

/// Opens the state for a command that only reads: shared with other readers, and an
/// empty state when there is none yet (none is created).
fn open_state_read(config: &Config) -> anyhow::Result<Box<dyn StateStore>> {
    tandem_state::open_url_existing(&config.state_url, &config.base_dir)
        .map_err(|e| state_error(config, e))
}

/// Opens the state for a command that only looks (`status`, `links`, `log`,
/// `conflicts`, `runs`): no lock, so it works while a sync runs, and never a state
/// created.
fn open_state_inspect(config: &Config) -> anyhow::Result<Box<dyn StateStore>> {
    tandem_state::open_url_read_only(&config.state_url, &config.base_dir)
        .map_err(|e| state_error(config, e))
}

fn state_error(config: &Config, e: StateError) -> anyhow::Error {
    match e {
        // A wrong url is a config mistake; the other errors name the state.
        StateError::UnsupportedUrl { .. } => {
            anyhow!(config.error_at("state.url", e.to_string()))
        }
        e => anyhow!(e),
    }
}

/// The relation code `code`, which must be configured.
fn configured<'a>(config: &'a Config, code: &str) -> anyhow::Result<&'a str> {
    config
        .sync
        .relations
        .iter()
        .find(|(c, _)| c == code)
        .map(|(c, _)| c.as_str())
        .ok_or_else(|| {
            let known: Vec<&str> = config
                .sync
                .relations
                .iter()
                .map(|(c, _)| c.as_str())
                .collect();
            anyhow!(
                "{}: no relation `{code}` is configured (relations: {})",
                config.shown(),
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            )
        })
}

/// What an engine command does.
enum RunMode {
    /// `tandem plan`: reads, plans, writes nothing.
    Plan,
    /// `tandem sync`, or `link` / `unlink` / `create` with their request.
    Sync(Option<Directives>),
}

async fn run_engine(cli: &Cli, mode: RunMode) -> anyhow::Result<ExitCode> {
    let registry = registry();
    let config = load(cli, &registry)?;
    let sync = matches!(mode, RunMode::Sync(_));
    if let RunMode::Sync(Some(directives)) = &mode {
        let codes = directives
            .link
            .iter()
            .map(|(c, _, _)| c)
            .chain(directives.unlink.iter().map(|(c, _)| c))
            .chain(directives.create.iter().map(|(c, _)| c))
            .chain(directives.create_contact.iter().map(|(c, _)| c));
        for code in codes {
            configured(&config, code)?;
        }
    }
    // The lock comes first, so a second sync stops before touching any system; a
    // plan only reads, so plans may run side by side, and it never creates a state.
    let mut state = if sync {
        open_state(&config, LockMode::Exclusive)?
    } else {
        open_state_read(&config)?
    };
    let relations = Relations::from_config(&config.sync).with_partitions(config.state_partitions);
    let started = Instant::now();
    let built = build_connectors(&config, &registry).and_then(|connectors| {
        Engine::new(relations.clone(), connectors, state.as_mut())
            .map_err(|e| anyhow!("{}: {e}", config.shown()))
    });
    let mut engine = match built {
        Ok(engine) => engine,
        Err(e) => {
            // The engine records the runs it begins; this one stopped before.
            if sync {
                record_failed_run(state.as_mut(), &e);
            }
            return Err(e);
        }
    };
    let (full_read, allow_deletes) = match cli.command {
        Command::Sync {
            full_read,
            allow_deletes,
        }
        | Command::Plan {
            full_read,
            allow_deletes,
            ..
        } => (full_read, allow_deletes),
        _ => (false, false),
    };
    engine.set_full_read(full_read);
    engine.set_allow_deletes(allow_deletes);
    config.run.configure(&mut engine, &config.base_dir);
    let report = match mode {
        RunMode::Plan => engine.plan().await.context("plan failed")?,
        RunMode::Sync(None) => engine.sync().await.context("sync failed")?,
        RunMode::Sync(Some(directives)) => match engine.sync_with(directives).await {
            Ok(report) => report,
            Err(EngineError::Refused(message)) => {
                return Err(anyhow!(
                    "{} refused, nothing was written: {message}",
                    command_name(&cli.command)
                ));
            }
            Err(e) => return Err(anyhow!(e).context("sync failed")),
        },
    };
    let elapsed = started.elapsed();

    let (all, detailed) = match cli.command {
        Command::Plan {
            all,
            detailed_exitcode,
            ..
        } => (all, detailed_exitcode),
        _ => (true, false),
    };
    if cli.json {
        json::print(&report)?;
    } else {
        let actions = !sync || cli.verbose > 0 || !matches!(cli.command, Command::Sync { .. });
        let view = output::View {
            actions,
            // A sync lists what it did in full: it is the record of the run.
            cap: (!all).then_some(output::PLAN_CAP),
            colour: output::colour_on_stdout(),
        };
        print_stdout(&output::report(&report, &relations, view, elapsed))?;
    }
    let records_failed = report.failed() > 0 || !report.failures.is_empty();
    Ok(if sync && records_failed {
        ExitCode::from(EXIT_RECORDS_FAILED)
    } else if detailed && output::has_changes(&report) {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

/// Builds every configured connector; the settings mistakes of all of them.
fn build_connectors(
    config: &Config,
    registry: &Registry,
) -> anyhow::Result<HashMap<String, Arc<dyn Connector>>> {
    let mut connectors: HashMap<String, Arc<dyn Connector>> = HashMap::new();
    let mut errors = Vec::new();
    for name in config.connectors.keys() {
        match config.build_connector(name, registry) {
            Ok(connector) => _ = connectors.insert(name.clone(), connector),
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(connectors)
    } else {
        Err(ConfigErrors(errors).into())
    }
}

/// Records a sync that failed before the engine could begin it, so that
/// `tandem status` shows it. The run's own error is what the user needs to see, so a
/// failure to record it is not reported.
fn record_failed_run(state: &mut dyn StateStore, error: &anyhow::Error) {
    let summary = serde_json::json!({ "error": format!("{error:#}") });
    if let Ok(run) = state.begin_run("sync") {
        let _ = state.finish_run(run, "failed", &summary);
    }
}

fn command_name(command: &Command) -> &'static str {
    match command {
        Command::Link { .. } => "link",
        Command::Unlink { .. } => "unlink",
        Command::Create { .. } => "create",
        Command::CreateContact { .. } => "create-contact",
        _ => "request",
    }
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

    // Read-only: a missing state is reported as such, never created.
    let state = tandem_state::open_url_existing(&config.state_url, &config.base_dir);
    // The path, or the url without its password.
    let name = state
        .as_ref()
        .map(|s| s.location())
        .unwrap_or_else(|_| "state.url".to_owned());
    let fresh = state.as_ref().is_ok_and(|s| !s.exists());
    lines.push(CheckLine {
        check: "state",
        label: if fresh {
            format!("state {name} (not created yet; the first sync creates it)")
        } else {
            format!("state {name}")
        },
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
        json::print(&serde_json::json!({
            "config": config.shown(),
            "ok": failed == 0,
            "checks": lines,
        }))?;
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
pub(crate) fn print_stdout(text: &str) -> anyhow::Result<()> {
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
