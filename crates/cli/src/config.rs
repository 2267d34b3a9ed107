//! `tandem.toml`: reading it, applying environment overrides and `${VAR}` secrets,
//! and checking it (DESIGN.md section 4).
//!
//! Loading goes in fixed steps, so that each kind of mistake gets the message that
//! names it best:
//!
//! 1. the text is parsed as TOML (syntax errors carry the line and column);
//! 2. every `TANDEM__SECTION__KEY[__SUBKEY...]` environment variable sets that key;
//! 3. `${VAR}` in every string value is replaced from the environment;
//! 4. the table is deserialised into [`ConfigFile`] (unknown keys are errors that
//!    name their path);
//! 5. connector types and references are checked, then the engine's own checks run.
//!
//! Every error names the file and the key, never a value: settings may hold
//! passwords.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use tandem_connector::{BuildContext, Connector, ConnectorError, Registry};
use tandem_engine::{ContactsConfig, RelationConfig, SyncConfig};

/// The prefix of environment variables that override config keys.
const ENV_PREFIX: &str = "TANDEM__";
/// The separator between key segments in an override's name.
const ENV_SEPARATOR: &str = "__";

/// The whole of `tandem.toml`, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Where Tandem keeps what it remembers between runs.
    #[serde(default)]
    pub state: StateConfig,
    /// The systems to synchronise, by a name of your choice (`[connectors.crm]`).
    #[serde(default)]
    pub connectors: BTreeMap<String, ConnectorConfig>,
    /// The contact side: which connector holds the contacts.
    pub contacts: ContactsConfig,
    /// The business relations to keep, by relation code (`[relations.CUST]`, R1).
    #[serde(default)]
    pub relations: BTreeMap<String, RelationConfig>,
    /// How a run behaves.
    #[serde(default)]
    pub sync: RunConfig,
}

/// The `[sync]` section.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// The share (0 to 1) of a scope's known records a full listing may delete; more,
    /// or an empty listing where records are known, stops the run (R16).
    #[serde(default = "default_max_delete_share")]
    pub max_delete_share: f64,
}

impl Default for RunConfig {
    fn default() -> RunConfig {
        RunConfig {
            max_delete_share: default_max_delete_share(),
        }
    }
}

fn default_max_delete_share() -> f64 {
    tandem_engine::DeleteGuard::DEFAULT_MAX_SHARE
}

/// The `[state]` section.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// The state store, `sqlite://<path>`. A relative path is taken from the config
    /// file's folder. Default: `sqlite://.tandem/state.db`.
    #[serde(default = "default_state_url")]
    pub url: String,
}

impl Default for StateConfig {
    fn default() -> StateConfig {
        StateConfig {
            url: default_state_url(),
        }
    }
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
    /// Connectors by name, each of a type the registry knows.
    pub connectors: BTreeMap<String, ConnectorConfig>,
    pub sync: SyncConfig,
    /// The `[sync]` section.
    pub run: RunConfig,
}

/// A config mistake: the file, the key (when one is to blame) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.key {
            Some(key) => write!(f, "{}: {key}: {}", self.file, self.message),
            None => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

/// The environment as the config sees it: a snapshot, so that tests can pass their
/// own without touching the process environment.
#[derive(Debug, Clone, Default)]
pub struct Env {
    vars: BTreeMap<String, OsString>,
}

impl Env {
    /// The process environment. Variables whose names are not UTF-8 cannot be named
    /// in a config, so they are left out.
    pub fn from_process() -> Env {
        Env {
            vars: std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v)))
                .collect(),
        }
    }

    #[cfg(test)]
    pub fn from_pairs(pairs: &[(&str, &str)]) -> Env {
        Env {
            vars: pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), OsString::from(v)))
                .collect(),
        }
    }

    /// The value of `name`; an error message when it is set but not UTF-8.
    fn get(&self, name: &str) -> Result<Option<String>, String> {
        match self.vars.get(name) {
            None => Ok(None),
            Some(value) => value
                .clone()
                .into_string()
                .map(Some)
                .map_err(|_| format!("environment variable `{name}` is not valid UTF-8")),
        }
    }

    /// The override variables, in name order so that the result does not depend on
    /// the order of the environment.
    fn overrides(&self) -> impl Iterator<Item = &str> {
        self.vars
            .range(ENV_PREFIX.to_owned()..)
            .map(|(k, _)| k.as_str())
            .take_while(|k| k.starts_with(ENV_PREFIX))
    }
}

/// An environment variable that set a config key; named in errors about that key,
/// since the file does not show it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Override {
    var: String,
    /// The key path it set, e.g. `relations.CUST.conflict`.
    path: String,
}

impl Config {
    /// Reads, overrides, substitutes and checks the config at `path`. Connector types
    /// are checked against `registry`; the connectors are not built yet.
    pub fn load(path: &Path, env: &Env, registry: &Registry) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let err = |key: Option<String>, message: String| ConfigError {
            file: file.clone(),
            key,
            message,
        };
        let text = fs::read_to_string(path).map_err(|e| {
            let hint = if e.kind() == io::ErrorKind::NotFound {
                " (name another file with --config or TANDEM_CONFIG)"
            } else {
                ""
            };
            err(None, format!("cannot read the config file: {e}{hint}"))
        })?;
        let table = parse(&text).map_err(|message| err(None, message))?;
        let base_dir = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
            _ => PathBuf::from("."),
        };
        Config::from_table(file, base_dir, table, env, registry)
    }

    /// Steps 2 to 5 of loading, on an already parsed table.
    fn from_table(
        file: String,
        base_dir: PathBuf,
        mut table: toml::Table,
        env: &Env,
        registry: &Registry,
    ) -> Result<Config, ConfigError> {
        let err = |key: Option<String>, message: String| ConfigError {
            file: file.clone(),
            key,
            message,
        };
        let overrides = apply_overrides(&mut table, env).map_err(|message| err(None, message))?;
        // Mention the variable when a key it set is the one at fault.
        let err_at = |key: String, message: String| {
            let message = match env_source(&key, &message, &overrides) {
                Some(var) => format!("{message} (set by environment variable {var})"),
                None => message,
            };
            err(Some(key), message)
        };
        substitute_table(&mut table, "", env).map_err(|(key, message)| err_at(key, message))?;

        let parsed: ConfigFile = serde_path_to_error::deserialize(toml::Value::Table(table))
            .map_err(|e| {
                let path = e.path().to_string();
                let message = e.into_inner().message().to_owned();
                match unknown_field_parent(&path, &message) {
                    Some("") => err(None, message),
                    Some(parent) => err_at(parent.to_owned(), message),
                    None => err_at(path, message),
                }
            })?;

        for (name, connector) in &parsed.connectors {
            if !registry.knows(&connector.type_name) {
                let known = registry.type_names();
                let known = if known.is_empty() {
                    "none (it was built without connector features)".to_owned()
                } else {
                    known.join(", ")
                };
                return Err(err_at(
                    format!("connectors.{name}.type"),
                    format!(
                        "unknown connector type `{}`; this build knows: {known}",
                        connector.type_name
                    ),
                ));
            }
        }
        let references =
            std::iter::once(("contacts.connector".to_owned(), &parsed.contacts.connector)).chain(
                parsed
                    .relations
                    .iter()
                    .map(|(code, r)| (format!("relations.{code}.connector"), &r.connector)),
            );
        for (key, name) in references {
            if !parsed.connectors.contains_key(name) {
                return Err(err_at(
                    key,
                    format!("no connector named `{name}` under [connectors]"),
                ));
            }
        }

        let share = parsed.sync.max_delete_share;
        if !(0.0..=1.0).contains(&share) {
            return Err(err_at(
                "sync.max_delete_share".to_owned(),
                "must be a number from 0 to 1: the share of a kind's known records one run \
                 may delete, e.g. 0.5 for half"
                    .to_owned(),
            ));
        }
        let ConfigFile {
            state,
            connectors,
            contacts,
            relations,
            sync: run,
        } = parsed;
        let sync = SyncConfig::new(contacts, relations).map_err(|e| err_at(e.key, e.message))?;
        Ok(Config {
            file: PathBuf::from(&file),
            base_dir,
            state_url: state.url,
            connectors,
            sync,
            run,
        })
    }

    /// The config file, for messages.
    pub fn shown(&self) -> String {
        self.file.display().to_string()
    }

    /// Builds one connector; the error names the file and the connector's key.
    pub fn build_connector(
        &self,
        name: &str,
        registry: &Registry,
    ) -> Result<Arc<dyn Connector>, ConfigError> {
        let connector = &self.connectors[name];
        let context = BuildContext {
            base_dir: self.base_dir.clone(),
        };
        let settings = serde_json::Value::Object(connector.settings.clone());
        registry
            .build(&connector.type_name, settings, &context)
            .map_err(|e| {
                let (key, message) = settings_error(name, e);
                ConfigError {
                    file: self.shown(),
                    key: Some(key),
                    message,
                }
            })
    }
}

/// The key an error is about: for "unknown field `x`" the table that holds `x` (the
/// path ends with the unknown key itself), `""` for the top level or the root.
fn unknown_field_parent<'a>(path: &'a str, message: &str) -> Option<&'a str> {
    if path == "." {
        return Some("");
    }
    let field = message.strip_prefix("unknown field `")?.split('`').next()?;
    if path == field {
        Some("")
    } else {
        path.strip_suffix(field)?.strip_suffix('.')
    }
}

/// Parses the text of the file. A syntax error keeps toml's message and position but
/// not its excerpt of the file, which could show a secret.
fn parse(text: &str) -> Result<toml::Table, String> {
    text.parse::<toml::Table>().map_err(|e| match e.span() {
        Some(span) => {
            let (line, column) = line_column(text, span.start);
            format!("line {line}, column {column}: {}", e.message())
        }
        None => e.message().to_owned(),
    })
}

/// 1-based line and column (in characters) of byte `offset`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..text.floor_char_boundary(offset)];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
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

/// Applies every `TANDEM__A__B__C=value` to the key `a.b.c`. A segment matches an
/// existing key whatever its case; a new key is lowercased. The value is read as a
/// TOML value when it is one (`true`, `42`, `["a", "b"]`), else taken as text; a key
/// that already holds text keeps text, so a password of digits stays a string.
fn apply_overrides(table: &mut toml::Table, env: &Env) -> Result<Vec<Override>, String> {
    let mut applied = Vec::new();
    for var in env.overrides() {
        let segments: Vec<&str> = var[ENV_PREFIX.len()..].split(ENV_SEPARATOR).collect();
        if segments.iter().any(|s| s.is_empty()) {
            return Err(format!(
                "environment variable {var}: a key segment is empty; write \
                 TANDEM__SECTION__KEY with `__` between segments"
            ));
        }
        let text = env.get(var)?.unwrap_or_default();
        let (last, parents) = segments.split_last().expect("split yields one segment");
        let mut path: Vec<String> = Vec::with_capacity(segments.len());
        let mut current = &mut *table;
        for segment in parents {
            let key = existing_key(current, segment);
            path.push(key.clone());
            current = match current
                .entry(key)
                .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            {
                toml::Value::Table(t) => t,
                _ => {
                    return Err(format!(
                        "environment variable {var}: `{}` is not a table, so it has no key `{}`",
                        path.join("."),
                        segments[path.len()].to_lowercase()
                    ));
                }
            };
        }
        let key = existing_key(current, last);
        path.push(key.clone());
        let value = override_value(text, current.get(&key));
        current.insert(key, value);
        applied.push(Override {
            var: var.to_owned(),
            path: path.join("."),
        });
    }
    Ok(applied)
}

/// The key of `table` that `segment` names: an existing one, compared
/// case-insensitively (an exact match first), or else the segment lowercased.
fn existing_key(table: &toml::Table, segment: &str) -> String {
    if table.contains_key(segment) {
        return segment.to_owned();
    }
    table
        .keys()
        .find(|k| k.eq_ignore_ascii_case(segment))
        .cloned()
        .unwrap_or_else(|| segment.to_lowercase())
}

fn override_value(text: String, existing: Option<&toml::Value>) -> toml::Value {
    if matches!(existing, Some(toml::Value::String(_))) {
        return toml::Value::String(text);
    }
    match text.parse::<toml::Value>() {
        Ok(value) => value,
        Err(_) => toml::Value::String(text),
    }
}

/// The override that set `key`, or a key inside it, or (for an unknown field error
/// about `key`) the field named in `message`.
fn env_source<'a>(key: &str, message: &str, overrides: &'a [Override]) -> Option<&'a str> {
    overrides
        .iter()
        .find(|o| {
            key == o.path
                || key
                    .strip_prefix(o.path.as_str())
                    .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
                || o.path
                    .strip_prefix(key)
                    .and_then(|rest| rest.strip_prefix('.'))
                    .is_some_and(|field| message.contains(&format!("field `{field}`")))
        })
        .map(|o| o.var.as_str())
}

type SubstError = (String, String);

fn substitute_table(table: &mut toml::Table, prefix: &str, env: &Env) -> Result<(), SubstError> {
    for (key, value) in table.iter_mut() {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        substitute_value(value, &path, env)?;
    }
    Ok(())
}

fn substitute_value(value: &mut toml::Value, path: &str, env: &Env) -> Result<(), SubstError> {
    match value {
        toml::Value::String(s) if s.contains('$') => {
            *s = expand(s, env).map_err(|message| (path.to_owned(), message))?;
        }
        toml::Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                substitute_value(item, &format!("{path}[{i}]"), env)?;
            }
        }
        toml::Value::Table(table) => substitute_table(table, path, env)?,
        _ => {}
    }
    Ok(())
}

/// Replaces `${VAR}` with the variable's value; `$${` stands for a literal `${`. A
/// replaced value is not expanded again. Errors name the variable, never a value.
fn expand(text: &str, env: &Env) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(after) = tail.strip_prefix("$${") {
            out.push_str("${");
            rest = after;
        } else if let Some(after) = tail.strip_prefix("${") {
            let end = after
                .find('}')
                .ok_or("`${` without a closing `}`; write `$${` for a literal `${`")?;
            let name = &after[..end];
            let valid = name
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(format!(
                    "`${{{name}}}` is not a variable name (letters, digits and `_`); \
                     write `$${{` for a literal `${{`"
                ));
            }
            match env.get(name)? {
                Some(value) => out.push_str(&value),
                None => return Err(format!("environment variable `{name}` is not set")),
            }
            rest = &after[end + 1..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
[connectors.crm]
type = "file"
path = "crm"

[connectors.erp]
type = "file"
path = "erp"

[contacts]
connector = "crm"

[relations.CUST]
kind = "customer"
connector = "erp"
match = [["email"]]
"#;

    /// A stand-in for the file connector's factory, so these tests do not depend on
    /// the connector features the binary is built with.
    struct FileLike;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code, reason = "only the parsing matters")]
    struct FileLikeSettings {
        path: String,
        format: Option<String>,
        password: Option<String>,
    }

    impl tandem_connector::ConnectorFactory for FileLike {
        fn type_name(&self) -> &'static str {
            "file"
        }

        fn build(
            &self,
            settings: serde_json::Value,
            _: &BuildContext,
        ) -> Result<Arc<dyn Connector>, ConnectorError> {
            let _: FileLikeSettings = tandem_connector::parse_settings(settings)?;
            Err(ConnectorError::fatal("not a real connector"))
        }
    }

    fn registry() -> Registry {
        let mut registry = Registry::new();
        registry.register(Box::new(FileLike));
        registry
    }

    /// Loads `text` as if it were the file `examples/x/tandem.toml`.
    fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let table = parse(text).map_err(|message| ConfigError {
            file: "examples/x/tandem.toml".into(),
            key: None,
            message,
        })?;
        Config::from_table(
            "examples/x/tandem.toml".into(),
            PathBuf::from("examples/x"),
            table,
            &Env::from_pairs(env),
            &registry(),
        )
    }

    fn load_err(text: &str, env: &[(&str, &str)]) -> String {
        load(text, env).unwrap_err().to_string()
    }

    fn relation<'a>(config: &'a Config, code: &str) -> &'a RelationConfig {
        &config
            .sync
            .relations
            .iter()
            .find(|(c, _)| c == code)
            .unwrap()
            .1
    }

    #[test]
    fn loads_a_minimal_config_with_defaults() {
        let config = load(BASE, &[]).unwrap();
        assert_eq!(config.state_url, "sqlite://.tandem/state.db");
        assert_eq!(config.connectors["crm"].type_name, "file");
        assert_eq!(config.connectors["crm"].settings["path"], "crm");
        assert!(!config.connectors["crm"].settings.contains_key("type"));
        assert_eq!(config.sync.contacts.connector, "crm");
        assert_eq!(relation(&config, "CUST").kind.as_str(), "customer");
    }

    #[test]
    fn r16_max_delete_share_defaults_to_half_and_takes_numbers_from_0_to_1() {
        assert_eq!(load(BASE, &[]).unwrap().run.max_delete_share, 0.5);
        let config = load(&format!("{BASE}\n[sync]\nmax_delete_share = 1\n"), &[]).unwrap();
        assert_eq!(config.run.max_delete_share, 1.0);
        let config = load(BASE, &[("TANDEM__SYNC__MAX_DELETE_SHARE", "0.25")]).unwrap();
        assert_eq!(config.run.max_delete_share, 0.25);
        for bad in ["1.5", "-0.1", "nan"] {
            let e = load_err(&format!("{BASE}\n[sync]\nmax_delete_share = {bad}\n"), &[]);
            assert!(
                e.starts_with(
                    "examples/x/tandem.toml: sync.max_delete_share: must be a number from 0 to 1"
                ),
                "{e}"
            );
        }
        let e = load_err(BASE, &[("TANDEM__SYNC__MAX_DELETE_SHARE", "half")]);
        assert!(e.contains("sync.max_delete_share"), "{e}");
        assert!(e.contains("TANDEM__SYNC__MAX_DELETE_SHARE"), "{e}");
        let e = load_err(&format!("{BASE}\n[sync]\nmax_deletes = 3\n"), &[]);
        assert!(e.contains("sync: unknown field `max_deletes`"), "{e}");
    }

    #[test]
    fn env_overrides_an_existing_key_whatever_its_case() {
        let config = load(
            BASE,
            &[
                ("TANDEM__RELATIONS__CUST__CONNECTOR", "crm"),
                ("TANDEM__CONNECTORS__CRM__PATH", "elsewhere"),
            ],
        )
        .unwrap();
        assert_eq!(relation(&config, "CUST").connector, "crm");
        assert_eq!(config.connectors["crm"].settings["path"], "elsewhere");
        // No second, lowercased `crm` or `cust` entry appeared.
        assert_eq!(config.connectors.len(), 2);
        assert_eq!(config.sync.relations.len(), 1);
    }

    #[test]
    fn env_adds_a_new_key_lowercased() {
        let config = load(
            BASE,
            &[
                ("TANDEM__STATE__URL", "sqlite:///var/lib/tandem/state.db"),
                ("TANDEM__CONNECTORS__CRM__FORMAT", "jsonl"),
            ],
        )
        .unwrap();
        assert_eq!(config.state_url, "sqlite:///var/lib/tandem/state.db");
        assert_eq!(config.connectors["crm"].settings["format"], "jsonl");
    }

    #[test]
    fn env_values_parse_as_toml_values() {
        let config = load(
            BASE,
            &[
                ("TANDEM__RELATIONS__CUST__CREATE_CONTACTS", "true"),
                (
                    "TANDEM__RELATIONS__CUST__MATCH",
                    r#"[["vat_registration_no"], ["email"]]"#,
                ),
                ("TANDEM__CONNECTORS__ERP__RETRIES", "42"),
                ("TANDEM__CONNECTORS__ERP__LABEL", "plain text"),
            ],
        )
        .unwrap();
        let cust = relation(&config, "CUST");
        assert!(cust.create_contacts);
        assert_eq!(cust.match_tiers.len(), 2);
        assert_eq!(config.connectors["erp"].settings["retries"], 42);
        assert_eq!(config.connectors["erp"].settings["label"], "plain text");
    }

    #[test]
    fn env_keeps_text_keys_text() {
        let config = load(
            &BASE.replace("path = \"erp\"", "path = \"erp\"\npassword = \"x\""),
            &[("TANDEM__CONNECTORS__ERP__PASSWORD", "123456")],
        )
        .unwrap();
        assert_eq!(config.connectors["erp"].settings["password"], "123456");
    }

    #[test]
    fn env_errors_name_the_variable() {
        let e = load_err(BASE, &[("TANDEM__RELATIONS__CUST__CONFLICT", "sometimes")]);
        assert!(
            e.starts_with(
                "examples/x/tandem.toml: relations.CUST.conflict: unknown variant `sometimes`"
            ),
            "{e}"
        );
        assert!(
            e.ends_with("(set by environment variable TANDEM__RELATIONS__CUST__CONFLICT)"),
            "{e}"
        );
        let e = load_err(BASE, &[("TANDEM__RELATIONS__CUST__CONFLCIT", "newest")]);
        assert!(e.contains("unknown field `conflcit`"), "{e}");
        assert!(e.contains("TANDEM__RELATIONS__CUST__CONFLCIT"), "{e}");
        let e = load_err(BASE, &[("TANDEM__CONTACTS__CONNECTOR__X", "1")]);
        assert!(
            e.contains("TANDEM__CONTACTS__CONNECTOR__X: `contacts.connector` is not a table"),
            "{e}"
        );
        let e = load_err(BASE, &[("TANDEM__STATE____URL", "x")]);
        assert!(e.contains("a key segment is empty"), "{e}");
    }

    #[test]
    fn variables_are_substituted_in_strings() {
        let text = BASE.replace(
            "path = \"erp\"",
            "path = \"${ERP_DIR}/data\"\npassword = \"${ERP_PASSWORD}\"\nnote = \"costs $$5, literal $${HOME}\"",
        );
        let config = load(
            &text,
            &[("ERP_DIR", "/srv/erp"), ("ERP_PASSWORD", "s3cret")],
        )
        .unwrap();
        let erp = &config.connectors["erp"].settings;
        assert_eq!(erp["path"], "/srv/erp/data");
        assert_eq!(erp["password"], "s3cret");
        assert_eq!(erp["note"], "costs $$5, literal ${HOME}");
    }

    #[test]
    fn variables_set_by_env_overrides_are_substituted_too() {
        let config = load(
            BASE,
            &[
                ("TANDEM__CONNECTORS__CRM__TOKEN", "${CRM_TOKEN}"),
                ("CRM_TOKEN", "t0k"),
            ],
        )
        .unwrap();
        assert_eq!(config.connectors["crm"].settings["token"], "t0k");
    }

    #[test]
    fn a_missing_variable_names_key_and_variable() {
        let text = BASE.replace(
            "path = \"erp\"",
            "path = \"erp\"\npassword = \"${ERP_PASSWORD}\"",
        );
        assert_eq!(
            load_err(&text, &[]),
            "examples/x/tandem.toml: connectors.erp.password: environment variable `ERP_PASSWORD` is not set"
        );
        let text = BASE.replace("[[\"email\"]]", "[[\"${TIER}\"]]");
        assert_eq!(
            load_err(&text, &[]),
            "examples/x/tandem.toml: relations.CUST.match[0][0]: environment variable `TIER` is not set"
        );
        let text = BASE.replace("path = \"crm\"", "path = \"${CRM\"");
        assert!(load_err(&text, &[]).contains("connectors.crm.path: `${` without a closing `}`"));
    }

    #[test]
    fn unknown_keys_are_named_with_the_file() {
        let text = BASE.replace("match = [[\"email\"]]", "conflcit = \"newest\"");
        let e = load_err(&text, &[]);
        assert!(
            e.starts_with(
                "examples/x/tandem.toml: relations.CUST: unknown field `conflcit`, expected one of"
            ),
            "{e}"
        );
        let e = load_err(&format!("{BASE}\n[stat]\nurl = \"x\"\n"), &[]);
        assert!(
            e.starts_with("examples/x/tandem.toml: unknown field `stat`"),
            "{e}"
        );
        let e = load_err(
            &BASE.replace("kind = \"customer\"", "kind = \"client\""),
            &[],
        );
        assert!(
            e.starts_with("examples/x/tandem.toml: relations.CUST.kind: unknown variant `client`"),
            "{e}"
        );
    }

    #[test]
    fn syntax_errors_give_line_and_column_without_the_line_itself() {
        let e = load_err("[state]\nurl = \"sqlite://x\npassword = 1\n", &[]);
        assert!(
            e.starts_with("examples/x/tandem.toml: line 2, column "),
            "{e}"
        );
        assert!(!e.contains("sqlite://x"), "{e}");
    }

    #[test]
    fn unknown_connector_type_lists_the_known_ones() {
        let text = BASE.replace("type = \"file\"\npath = \"crm\"", "type = \"ftp\"");
        assert_eq!(
            load_err(&text, &[]),
            "examples/x/tandem.toml: connectors.crm.type: unknown connector type `ftp`; this build knows: file"
        );
        let text = BASE.replace("type = \"file\"\npath = \"crm\"", "path = \"crm\"");
        assert_eq!(
            load_err(&text, &[]),
            "examples/x/tandem.toml: connectors.crm: missing field `type`"
        );
    }

    #[test]
    fn missing_connector_references_are_named() {
        let text = BASE.replace("[connectors.erp]\ntype = \"file\"\npath = \"erp\"\n", "");
        assert_eq!(
            load_err(&text, &[]),
            "examples/x/tandem.toml: relations.CUST.connector: no connector named `erp` under [connectors]"
        );
        let text = BASE.replace("connector = \"crm\"", "connector = \"addressbook\"");
        assert_eq!(
            load_err(&text, &[]),
            "examples/x/tandem.toml: contacts.connector: no connector named `addressbook` under [connectors]"
        );
    }

    #[test]
    fn engine_checks_are_prefixed_with_the_file() {
        let text = BASE.replace("[[\"email\"]]", "[[\"vat_number\"]]");
        let e = load_err(&text, &[]);
        assert!(
            e.starts_with(
                "examples/x/tandem.toml: relations.CUST.match[0]: `vat_number` is not a field"
            ),
            "{e}"
        );
    }

    #[test]
    fn connector_settings_errors_are_moved_onto_their_key() {
        let text = BASE.replace(
            "path = \"crm\"",
            "path = \"crm\"\nformt = \"csv\"\npassword = \"hunter2\"",
        );
        let config = load(&text, &[]).unwrap();
        let e = config
            .build_connector("crm", &registry())
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("examples/x/tandem.toml: connectors.crm.formt: unknown field `formt`"),
            "{e}"
        );
        assert!(!format!("{config:?}").contains("hunter2"));
    }

    #[test]
    fn relative_paths_resolve_from_the_config_folder() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tandem.toml");
        fs::write(&path, BASE).unwrap();
        let config = Config::load(&path, &Env::default(), &registry()).unwrap();
        assert_eq!(config.base_dir, dir.path());
        let e =
            Config::load(&dir.path().join("nope.toml"), &Env::default(), &registry()).unwrap_err();
        assert!(e.to_string().contains("cannot read the config file"), "{e}");
        assert!(e.to_string().contains("--config"), "{e}");
    }

    #[test]
    fn line_columns_count_characters() {
        assert_eq!(line_column("ab\ncd", 0), (1, 1));
        assert_eq!(line_column("ab\ncd", 4), (2, 2));
        assert_eq!(line_column("é\nx", 3), (2, 1));
    }
}
