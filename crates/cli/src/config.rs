//! `tandem.toml`: reading it, layering the environment over it, and checking it
//! (DESIGN.md section 4).
//!
//! Loading goes in steps:
//!
//! 1. the file is parsed as TOML (a syntax error carries the line and column);
//! 2. every `TANDEM__SECTION__KEY[__SUBKEY...]` environment variable is resolved onto
//!    a key ([`env`]): one the file has, or one Tandem knows;
//! 3. the config crate merges the two layers, the environment on top ([`layers`]);
//! 4. `${VAR}` in every string is replaced from the environment, and URLs with a
//!    password in them are refused ([`expand`]);
//! 5. each section is deserialised on its own, then connector types, references and
//!    the engine's own checks run.
//!
//! A mistake does not stop the steps that do not depend on it: every mistake found is
//! reported, each with where it was made (the file and line, or the environment
//! variable) and the key. Never a value: settings may hold passwords.

mod env;
mod expand;
mod layers;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use tandem_connector::{BuildContext, Connector, ConnectorError, Registry};
use tandem_engine::{ContactsConfig, RelationConfig, SyncConfig};

use crate::service::config::ServiceConfig;

pub use self::env::Env;
use self::layers::Sources;

/// The `[sync]` section.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// The share (0 to 1) of a scope's known records a full listing may delete; more,
    /// or an empty listing where records are known, stops the run (R16).
    #[serde(default = "default_max_delete_share")]
    pub max_delete_share: f64,
    /// Contacts with links (hubs) a sync plans and carries out at a time: its plan is
    /// held one range at a time. None: all at once.
    #[serde(default)]
    pub hubs_per_range: Option<u64>,
    /// The memory a sync may take: its hubs per range are worked out from it once the
    /// records are read and matched. None: no budget.
    #[serde(default)]
    pub memory_budget: Option<ByteSize>,
    /// Where a sync with a memory budget keeps the records it read, in an unnamed
    /// file mapped into memory; relative to the config file's folder. None: the
    /// system's temporary folder.
    #[serde(default)]
    pub spill_folder: Option<PathBuf>,
}

/// A size, written with its unit: `"512 MiB"`, `"1.5 GiB"`, `"800MB"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// Units by name, lower case: binary (`KiB`, ...) and decimal (`kB`, ...).
    const UNITS: [(&'static str, u64); 9] = [
        ("b", 1),
        ("kib", 1 << 10),
        ("mib", 1 << 20),
        ("gib", 1 << 30),
        ("tib", 1 << 40),
        ("kb", 1_000),
        ("mb", 1_000_000),
        ("gb", 1_000_000_000),
        ("tb", 1_000_000_000_000),
    ];

    pub fn parse(text: &str) -> Result<ByteSize, String> {
        let wrong = || {
            format!(
                "`{text}` is not a size: write a number and a unit, e.g. \"512 MiB\" or \"2 GiB\" \
                 (units: B, KiB, MiB, GiB, TiB, kB, MB, GB, TB)"
            )
        };
        let text = text.trim();
        let split = text
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(wrong)?;
        let (number, unit) = text.split_at(split);
        let number: f64 = number.parse().map_err(|_| wrong())?;
        let unit = unit.trim().to_ascii_lowercase();
        let (_, scale) = (Self::UNITS.iter())
            .find(|(name, _)| *name == unit)
            .ok_or_else(wrong)?;
        let bytes = number * *scale as f64;
        match bytes.is_finite() && bytes < u64::MAX as f64 {
            // Whole bytes: a fraction of a byte means nothing here.
            true => Ok(ByteSize(bytes as u64)),
            false => Err(wrong()),
        }
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<ByteSize, D::Error> {
        let text = String::deserialize(deserializer)?;
        ByteSize::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl Default for RunConfig {
    fn default() -> RunConfig {
        RunConfig {
            max_delete_share: default_max_delete_share(),
            hubs_per_range: None,
            memory_budget: None,
            spill_folder: None,
        }
    }
}

impl RunConfig {
    /// Gives `engine` this section's settings, for `tandem sync` and the service alike;
    /// relative paths are taken from `base_dir`, the config file's folder.
    pub fn configure(&self, engine: &mut tandem_engine::Engine<'_>, base_dir: &Path) {
        engine.set_max_delete_share(self.max_delete_share);
        // Ranges are for short memory: freed memory is kept for the next range only.
        if let Some(per_range) = self.hubs_per_range {
            engine.set_hubs_per_range(usize::try_from(per_range).unwrap_or(usize::MAX));
            crate::allocator::keep_freed_memory_briefly();
        }
        if let Some(ByteSize(bytes)) = self.memory_budget {
            let budget = tandem_engine::MemoryBudget::new(bytes);
            engine.set_memory_budget(budget.telling(crate::allocator::budget_step));
            crate::allocator::keep_freed_memory_briefly();
        }
        if let Some(folder) = self.spill_folder_in(base_dir) {
            engine.set_spill_folder(folder);
        }
    }
}

impl RunConfig {
    /// `spill_folder`, a relative one taken from `base_dir` (the config file's folder).
    pub fn spill_folder_in(&self, base_dir: &Path) -> Option<PathBuf> {
        (self.spill_folder.as_ref()).map(|folder| base_dir.join(folder))
    }
}

fn default_max_delete_share() -> f64 {
    tandem_engine::DeleteGuard::DEFAULT_MAX_SHARE
}

/// The `[state]` section.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// The state store, chosen by the scheme (`tandem_state::open_url`):
    /// `sqlite://<path>`, a relative path taken from the config file's folder, or
    /// `postgres://...`. Default: `sqlite://.tandem/state.db`.
    #[serde(default = "default_state_url")]
    pub url: String,
    /// How long a PostgreSQL state's lease lasts without renewal: how soon a standby
    /// worker takes over from one that died elsewhere or stalled. Renewed every third
    /// of it. Default 30s; at least 3s.
    #[serde(default = "default_lease", deserialize_with = "duration")]
    pub lease: std::time::Duration,
    /// Into how many partitions `tandem run --worker` cuts the work, each run by one
    /// worker at a time (a PostgreSQL state only). Default 1: one worker syncs, the
    /// others stand by.
    #[serde(default = "default_partitions")]
    pub partitions: u32,
}

impl Default for StateConfig {
    fn default() -> StateConfig {
        StateConfig {
            url: default_state_url(),
            lease: default_lease(),
            partitions: default_partitions(),
        }
    }
}

fn default_partitions() -> u32 {
    1
}

/// The most partitions `[state] partitions` may ask for: each is a lease, a run of its
/// own and a copy of the state's record hashes.
pub const MAX_PARTITIONS: u32 = 64;

fn default_lease() -> std::time::Duration {
    tandem_state::LEASE_TTL
}

/// The shortest `[state] lease`: renewed every third of it, a shorter one would be lost
/// to one slow answer of the database.
pub const MIN_LEASE: std::time::Duration = std::time::Duration::from_secs(3);

/// A duration written as `"30s"`, `"5m"`, `"1h 30m"`, `"250ms"`.
pub(crate) fn duration<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<std::time::Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    humantime::parse_duration(text.trim()).map_err(|e| {
        serde::de::Error::custom(format!(
            "`{text}` is not a duration ({e}); write e.g. \"30s\", \"5m\" or \"1h\""
        ))
    })
}

fn default_state_url() -> String {
    "sqlite://.tandem/state.db".to_owned()
}

/// One `[connectors.<name>]` section.
#[derive(Deserialize)]
pub struct ConnectorConfig {
    /// The connector type, e.g. `file`; `tandem --help` lists the types of this build.
    #[serde(rename = "type")]
    pub type_name: String,
    /// Every other key: the connector's own settings, handed to it as JSON (the
    /// connector checks them). May hold secrets, so never printed.
    #[serde(flatten)]
    pub settings: serde_json::Map<String, serde_json::Value>,
}

/// Shows setting names only: values may be passwords.
impl fmt::Debug for ConnectorConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectorConfig")
            .field("type_name", &self.type_name)
            .field("settings", &self.settings.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// A loaded and checked config.
#[derive(Debug)]
pub struct Config {
    /// The config file, as it was named (used in messages).
    pub file: PathBuf,
    /// The folder of the config file: relative paths in it resolve from here.
    pub base_dir: PathBuf,
    pub state_url: String,
    /// `[state] lease`: the lifetime of a PostgreSQL state's lease.
    pub state_lease: std::time::Duration,
    /// `[state] partitions`: into how many partitions workers cut the work.
    pub state_partitions: u32,
    /// Connectors by name, each of a type the registry knows.
    pub connectors: BTreeMap<String, ConnectorConfig>,
    pub sync: SyncConfig,
    /// The `[sync]` section.
    pub run: RunConfig,
    /// The `[service]` section (`tandem run`).
    pub service: ServiceConfig,
    /// Where each key was set, for messages about it.
    sources: Sources,
}

/// Where a config value was set.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Origin {
    /// The config file, at a line when one is to blame.
    File { path: String, line: Option<usize> },
    /// An environment variable, `TANDEM__...` (an override).
    Env { var: String },
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File { path, line: None } => write!(f, "{path}"),
            Origin::File {
                path,
                line: Some(line),
            } => write!(f, "{path}:{line}"),
            Origin::Env { var } => write!(f, "environment variable {var}"),
        }
    }
}

/// A config mistake: where it was made, the key (when one is to blame) and what is
/// wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub origin: Origin,
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.key {
            Some(key) => write!(f, "{}: {key}: {}", self.origin, self.message),
            None => write!(f, "{}: {}", self.origin, self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

/// Every mistake found in a config, in the order of the file's lines, then the
/// environment's variables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    fn new(mut errors: Vec<ConfigError>) -> ConfigErrors {
        errors.sort_by(|a, b| a.origin.cmp(&b.origin));
        errors.dedup();
        ConfigErrors(errors)
    }

    fn one(origin: Origin, message: String) -> ConfigErrors {
        ConfigErrors(vec![ConfigError {
            origin,
            key: None,
            message,
        }])
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let [only] = &self.0[..] {
            return write!(f, "{only}");
        }
        write!(f, "{} mistakes in the config:", self.0.len())?;
        for error in &self.0 {
            write!(f, "\n  {error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl Config {
    /// Reads the config at `path`, layers `env` over it and checks it. Connector
    /// types are checked against `registry`; the connectors are not built yet.
    pub fn load(path: &Path, env: &Env, registry: &Registry) -> Result<Config, ConfigErrors> {
        let file = path.display().to_string();
        let text = fs::read_to_string(path).map_err(|e| {
            let hint = if e.kind() == io::ErrorKind::NotFound {
                " (name another file with --config or TANDEM_CONFIG)"
            } else {
                ""
            };
            let origin = Origin::File {
                path: file.clone(),
                line: None,
            };
            ConfigErrors::one(origin, format!("cannot read the config file: {e}{hint}"))
        })?;
        let base_dir = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
            _ => PathBuf::from("."),
        };
        Config::from_text(file, base_dir, &text, env, registry)
    }

    /// Steps 1 to 5 of loading, on the text of the file `file`.
    fn from_text(
        file: String,
        base_dir: PathBuf,
        text: &str,
        env: &Env,
        registry: &Registry,
    ) -> Result<Config, ConfigErrors> {
        let file_table = parse(text).map_err(|(line, message)| {
            let origin = Origin::File {
                path: file.clone(),
                line: Some(line),
            };
            ConfigErrors::one(origin, message)
        })?;
        let mut sources = Sources::new(&file, text);
        let (overrides, mut errors) = env::overrides(env, &file_table);
        overrides.iter().for_each(|o| sources.record(o));
        let mut table = layers::merge(text, &overrides)
            .map_err(|message| ConfigErrors(vec![sources.error("", message)]))?;

        let mut problems = Vec::new();
        expand::substitute_table(&mut table, "", env, &mut problems);
        expand::find_passwords_in_urls(&table, &mut problems);
        // A value that could not be expanded is not checked further: its mistake is
        // reported already.
        let reported: Vec<String> = problems.iter().map(|p| p.key.clone()).collect();
        let mut later = Vec::new();
        let parsed = Parsed::read(table, &mut later);
        let sync = parsed.check(registry, &mut later);
        later.retain(|p| !reported.iter().any(|r| related(r, &p.key)));
        problems.extend(later);
        errors.extend(problems.into_iter().map(|p| p.into_error(&sources)));
        match (sync, errors.is_empty()) {
            (Some(sync), true) => Ok(parsed.into_config(file, base_dir, sync, sources)),
            _ => Err(ConfigErrors::new(errors)),
        }
    }

    /// The config file, for messages.
    pub fn shown(&self) -> String {
        self.file.display().to_string()
    }

    /// An error about `key`, blamed on where its value was set.
    pub fn error_at(&self, key: &str, message: String) -> ConfigError {
        self.sources.error(key, message)
    }

    /// Builds one connector; the error names the key and where it was set.
    pub fn build_connector(
        &self,
        name: &str,
        registry: &Registry,
    ) -> Result<Arc<dyn Connector>, ConfigError> {
        let connector = &self.connectors[name];
        let context = BuildContext {
            base_dir: self.base_dir.clone(),
        };
        let mut settings = connector.settings.clone();
        // A child process's messages and log lines carry the connector's name.
        if connector.type_name == "process" {
            settings.insert("name".to_owned(), name.into());
        }
        let settings = serde_json::Value::Object(settings);
        registry
            .build(&connector.type_name, settings, &context)
            .map_err(|e| {
                let (key, message) = settings_error(name, e);
                self.sources.error(&key, message)
            })
    }
}

/// Whether one key is the other or inside it.
fn related(a: &str, b: &str) -> bool {
    a == b || layers::is_below(a, b) || layers::is_below(b, a)
}

/// A mistake at a key, found once the layers are merged.
#[derive(Debug)]
struct Problem {
    key: String,
    /// The key whose value is to blame, when it is not `key`: an unknown key is
    /// reported on the table that holds it, at its own line.
    blamed: Option<String>,
    message: String,
}

impl Problem {
    fn new(key: impl Into<String>, message: impl Into<String>) -> Problem {
        Problem {
            key: key.into(),
            blamed: None,
            message: message.into(),
        }
    }

    fn into_error(self, sources: &Sources) -> ConfigError {
        let blamed = self.blamed.as_deref().unwrap_or(&self.key);
        sources.error_blaming(&self.key, blamed, self.message)
    }
}

/// The sections of a config, each read on its own so that a mistake in one does not
/// hide those in the others. `None`: missing or not readable.
struct Parsed {
    state: Option<StateConfig>,
    run: Option<RunConfig>,
    service: Option<ServiceConfig>,
    contacts: Option<ContactsConfig>,
    connectors: BTreeMap<String, ConnectorConfig>,
    relations: BTreeMap<String, RelationConfig>,
    /// Whether every connector and relation was read.
    complete: bool,
}

impl Parsed {
    fn read(table: toml::Table, problems: &mut Vec<Problem>) -> Parsed {
        let mut parsed = Parsed {
            state: Some(StateConfig::default()),
            run: Some(RunConfig::default()),
            service: Some(ServiceConfig::default()),
            contacts: None,
            connectors: BTreeMap::new(),
            relations: BTreeMap::new(),
            complete: true,
        };
        if !table.contains_key("contacts") {
            let message = "missing section: [contacts] names the connector that holds the \
                           contacts, e.g. connector = \"crm\"";
            problems.push(Problem::new("contacts", message));
        }
        for (key, value) in table {
            match key.as_str() {
                "state" => parsed.state = read_one(value, &key, problems),
                "sync" => parsed.run = read_one(value, &key, problems),
                "service" => parsed.service = read_one(value, &key, problems),
                "contacts" => parsed.contacts = read_one(value, &key, problems),
                "connectors" => parsed.connectors = parsed.read_each(value, &key, problems),
                "relations" => parsed.relations = parsed.read_each(value, &key, problems),
                _ => {
                    let known: Vec<String> =
                        env::SECTIONS.iter().map(|s| format!("`{s}`")).collect();
                    let message = format!("unknown section, expected one of {}", known.join(", "));
                    problems.push(Problem::new(key, message));
                }
            }
        }
        parsed
    }

    /// Each entry of the table `value`, read on its own.
    fn read_each<T: DeserializeOwned>(
        &mut self,
        value: toml::Value,
        key: &str,
        problems: &mut Vec<Problem>,
    ) -> BTreeMap<String, T> {
        let toml::Value::Table(table) = value else {
            problems.push(Problem::new(
                key,
                format!("must be a table: [{key}.<name>]"),
            ));
            self.complete = false;
            return BTreeMap::new();
        };
        let mut read = BTreeMap::new();
        for (name, value) in table {
            match read_one(value, &format!("{key}.{name}"), problems) {
                Some(entry) => _ = read.insert(name, entry),
                None => self.complete = false,
            }
        }
        read
    }

    /// The checks across sections, then the engine's own; the engine's config when
    /// everything was read and passed.
    fn check(&self, registry: &Registry, problems: &mut Vec<Problem>) -> Option<SyncConfig> {
        self.check_connector_types(registry, problems);
        self.check_references(problems);
        if let Some(run) = &self.run
            && !(0.0..=1.0).contains(&run.max_delete_share)
        {
            let message = "must be a number from 0 to 1: the share of a kind's known records \
                           one run may delete, e.g. 0.5 for half";
            problems.push(Problem::new("sync.max_delete_share", message));
        }
        if let Some(run) = &self.run
            && run.hubs_per_range == Some(0)
        {
            let message = "must be at least 1: the contacts with links a sync plans and \
                           writes at a time, e.g. 100000";
            problems.push(Problem::new("sync.hubs_per_range", message));
        }
        if let Some(run) = &self.run
            && run.hubs_per_range.is_some()
            && run.memory_budget.is_some()
        {
            let message = "is set with sync.hubs_per_range: set one of them, the budget to \
                           have the ranges worked out from it, or the hubs per range alone";
            problems.push(Problem::new("sync.memory_budget", message));
        }
        if let Some(state) = &self.state
            && state.lease < MIN_LEASE
        {
            let message = format!(
                "must be at least {}: the lease is renewed every third of it, and a shorter \
                 one is lost to one slow answer of the database",
                humantime::format_duration(MIN_LEASE)
            );
            problems.push(Problem::new("state.lease", message));
        }
        if let Some(state) = &self.state
            && !(1..=MAX_PARTITIONS).contains(&state.partitions)
        {
            let message = format!(
                "must be a whole number from 1 to {MAX_PARTITIONS}: how many workers \
                 (`tandem run --worker`) share the work, each running one partition"
            );
            problems.push(Problem::new("state.partitions", message));
        }
        if let Some(state) = &self.state
            && state.partitions > 1
            && matches!(
                tandem_state::StoreKind::of_url(&state.url),
                Ok(tandem_state::StoreKind::Sqlite)
            )
        {
            let message = "above 1 needs a state on PostgreSQL (`postgres://...`): partitions \
                           are run by workers (`tandem run --worker`) that share the state; \
                           set it back to 1, or move the state with `tandem migrate` \
                           (docs/configuration.md, \"Several workers\")";
            problems.push(Problem::new("state.partitions", message));
        }
        if let Some(service) = &self.service
            && self.complete
        {
            let found = service.check(self.connectors.keys());
            problems.extend(found.into_iter().map(|(k, m)| Problem::new(k, m)));
        }
        let contacts = self.contacts.as_ref()?;
        let sync = engine_checks(contacts, &self.relations, problems)?;
        let complete =
            self.complete && self.state.is_some() && self.run.is_some() && self.service.is_some();
        complete.then_some(sync)
    }

    fn check_connector_types(&self, registry: &Registry, problems: &mut Vec<Problem>) {
        for (name, connector) in &self.connectors {
            if !registry.knows(&connector.type_name) {
                let known = registry.type_names();
                let known = if known.is_empty() {
                    "none (it was built without connector features)".to_owned()
                } else {
                    known.join(", ")
                };
                let message = format!(
                    "unknown connector type `{}`; this build knows: {known}",
                    connector.type_name
                );
                problems.push(Problem::new(format!("connectors.{name}.type"), message));
            }
        }
    }

    /// Every connector named must be configured (when the connectors were all read).
    fn check_references(&self, problems: &mut Vec<Problem>) {
        if !self.complete {
            return;
        }
        let contacts = self
            .contacts
            .iter()
            .map(|c| ("contacts.connector".to_owned(), &c.connector));
        let relations = self
            .relations
            .iter()
            .map(|(code, r)| (format!("relations.{code}.connector"), &r.connector));
        for (key, name) in contacts.chain(relations) {
            if !self.connectors.contains_key(name) {
                let message = format!("no connector named `{name}` under [connectors]");
                problems.push(Problem::new(key, message));
            }
        }
    }

    fn into_config(
        self,
        file: String,
        base_dir: PathBuf,
        sync: SyncConfig,
        sources: Sources,
    ) -> Config {
        let state = self.state.unwrap_or_default();
        Config {
            file: PathBuf::from(file),
            base_dir,
            state_url: state.url,
            state_lease: state.lease,
            state_partitions: state.partitions,
            connectors: self.connectors,
            sync,
            run: self.run.unwrap_or_default(),
            service: self.service.unwrap_or_default(),
            sources,
        }
    }
}

/// The section or entry `value` at `key`; `None` (and a problem) when it cannot be
/// read.
fn read_one<T: DeserializeOwned>(
    value: toml::Value,
    key: &str,
    problems: &mut Vec<Problem>,
) -> Option<T> {
    serde_path_to_error::deserialize(value)
        .map_err(|e| {
            let path = match e.path().to_string() {
                p if p == "." => key.to_owned(),
                p if p.starts_with('[') => format!("{key}{p}"),
                p => format!("{key}.{p}"),
            };
            let message = e.into_inner().message().to_owned();
            let problem = match unknown_field_parent(&path, &message) {
                Some(parent) => Problem {
                    key: parent.to_owned(),
                    blamed: Some(path.clone()),
                    message,
                },
                None => Problem::new(path, message),
            };
            problems.push(problem);
        })
        .ok()
}

/// The engine's checks of the contacts and of each relation on its own, so that each
/// relation's mistake is shown; then of all together, for the checks across
/// relations.
fn engine_checks(
    contacts: &ContactsConfig,
    relations: &BTreeMap<String, RelationConfig>,
    problems: &mut Vec<Problem>,
) -> Option<SyncConfig> {
    let mut check = |contacts: &ContactsConfig, relations: BTreeMap<String, RelationConfig>| {
        SyncConfig::new(contacts.clone(), relations)
            .map_err(|e| problems.push(Problem::new(e.key, e.message)))
            .ok()
    };
    let mut passed = check(contacts, BTreeMap::new()).is_some();
    let without_preserve = ContactsConfig {
        preserve: None,
        ..contacts.clone()
    };
    for (code, relation) in relations {
        let one = BTreeMap::from([(code.clone(), relation.clone())]);
        passed &= check(&without_preserve, one).is_some();
    }
    if !passed {
        return None;
    }
    check(contacts, relations.clone())
}

/// The key an error is about: for "unknown field `x`" the table that holds `x` (the
/// path ends with the unknown key itself), `""` for the top level.
fn unknown_field_parent<'a>(path: &'a str, message: &str) -> Option<&'a str> {
    let field = message.strip_prefix("unknown field `")?.split('`').next()?;
    if path == field {
        Some("")
    } else {
        path.strip_suffix(field)?.strip_suffix('.')
    }
}

/// Parses the text of the file. A syntax error keeps toml's message and line but not
/// its excerpt of the file, which could show a secret.
fn parse(text: &str) -> Result<toml::Table, (usize, String)> {
    text.parse::<toml::Table>().map_err(|e| match e.span() {
        Some(span) => {
            let (line, column) = layers::line_column(text, span.start);
            (
                line,
                format!("{} (column {column})", e.message().trim_end()),
            )
        }
        None => (1, e.message().to_owned()),
    })
}

/// A connector's settings error, moved onto the key it names: `parse_settings`
/// reports "`formt`: unknown field ..." for the settings of `crm`, which is the key
/// `connectors.crm.formt`.
fn settings_error(name: &str, error: ConnectorError) -> (String, String) {
    let key = format!("connectors.{name}");
    let ConnectorError::Config { message } = error else {
        return (key, error.to_string());
    };
    if let Some(rest) = message.strip_prefix('`')
        && let Some((path, rest)) = rest.split_once("`: ")
        && !path.is_empty()
    {
        return (format!("{key}.{path}"), rest.to_owned());
    }
    (key, message)
}
