//! The environment: the snapshot the config reads, and the `TANDEM__...` overrides.
//!
//! The config crate's [`config::Environment`] source finds the overrides (prefix
//! `TANDEM`, separator `__`), but it lowercases every key and keeps only "the
//! environment" as a value's origin, and it knows nothing of Tandem's keys. So each
//! key it finds is resolved here before it becomes a layer:
//!
//! - its variable is found again, so that every message names it;
//! - relation codes and connector names are matched against the file's, whatever
//!   their case (`TANDEM__RELATIONS__CUST__...` is `[relations.CUST]`); one the file
//!   does not have is refused: the environment changes a deployment, it does not add
//!   relations or connectors to it;
//! - a key Tandem does not know is refused, naming the variable;
//! - the text is turned into the type the key expects (Tandem's own keys), or the
//!   type of the file's value (a connector's settings).

use std::collections::BTreeMap;
use std::ffi::OsString;

use config::Source as _;

use super::{ConfigError, Origin};

/// The prefix of environment variables that override config keys, as the config
/// crate's environment source is given it.
const PREFIX: &str = "TANDEM";
/// The separator between the prefix and the key, and between key segments.
const SEPARATOR: &str = "__";

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
    pub(super) fn get(&self, name: &str) -> Result<Option<String>, String> {
        match self.vars.get(name) {
            None => Ok(None),
            Some(value) => value
                .clone()
                .into_string()
                .map(Some)
                .map_err(|_| format!("environment variable `{name}` is not valid UTF-8")),
        }
    }

    /// The variables the environment source reads (`TANDEM__...`, any case).
    fn overrides(&self) -> impl Iterator<Item = (&str, &OsString)> {
        let prefix = format!("{PREFIX}{SEPARATOR}");
        self.vars
            .iter()
            .filter(move |(k, _)| {
                k.get(..prefix.len())
                    .is_some_and(|p| p.eq_ignore_ascii_case(&prefix))
            })
            .map(|(k, v)| (k.as_str(), v))
    }
}

/// One `TANDEM__...` variable, resolved onto a key of the config.
#[derive(Clone, PartialEq)]
pub(super) struct Override {
    /// The variable, as it is spelt in the environment.
    pub var: String,
    /// The key it sets, with the file's spelling of codes and names.
    pub path: Vec<String>,
    pub value: toml::Value,
}

/// Shows the variable and the key, never the value: it may be a password.
impl std::fmt::Debug for Override {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} -> {}", self.var, self.key())
    }
}

impl Override {
    /// The key it sets, e.g. `relations.CUST.conflict`.
    pub fn key(&self) -> String {
        self.path.join(".")
    }
}

/// Every override in `env`, resolved against the file's table; the variables that
/// cannot be applied are errors, one each, and are left out.
pub(super) fn overrides(env: &Env, file: &toml::Table) -> (Vec<Override>, Vec<ConfigError>) {
    let mut errors = Vec::new();
    let mut texts = config::Map::new();
    let mut vars: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for (var, value) in env.overrides() {
        match value.to_str() {
            Some(text) => {
                texts.insert(var.to_owned(), text.to_owned());
                vars.entry(source_key(var)).or_default().push(var);
            }
            None => errors.push(env_error(var, None, "is not valid UTF-8".to_owned())),
        }
    }
    let collected = config::Environment::with_prefix(PREFIX)
        .separator(SEPARATOR)
        .source(Some(texts))
        .collect()
        // It fails only on a value that is not UTF-8, and those were left out above.
        .unwrap_or_default();
    let mut found = Vec::new();
    for (key, vars) in vars {
        let Some(value) = collected.get(&key) else {
            continue;
        };
        if let [first, second, ..] = vars[..] {
            let message = format!("sets the same key as {second}; keep one of them");
            errors.push(env_error(first, None, message));
            continue;
        }
        let text = value.clone().into_string().unwrap_or_default();
        match resolve(vars[0], &text, file) {
            Ok(found_override) => found.push(found_override),
            Err(e) => errors.push(e),
        }
    }
    (found, errors)
}

/// The key the config crate's environment source makes of `var`: lowercased, the
/// prefix removed, `__` turned into `.`.
fn source_key(var: &str) -> String {
    let lower = var.to_lowercase();
    lower[PREFIX.len() + SEPARATOR.len()..].replace(SEPARATOR, ".")
}

fn env_error(var: &str, key: Option<String>, message: String) -> ConfigError {
    ConfigError {
        origin: Origin::Env {
            var: var.to_owned(),
        },
        key,
        message,
    }
}

/// The type a key expects, so that the text of a variable can be read as one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Expect {
    Text,
    Bool,
    Number,
    /// An array, written in TOML: `["email", "phone"]`.
    List,
    /// An inline table, written in TOML: `{ x_payment_terms = "30D" }`.
    Table,
    /// Unknown (a connector setting the file does not have): a TOML value when the
    /// text is one (`42`, `true`, `["a"]`, `"0042"`), else the text. A setting named
    /// like a secret (`password`, `token`, ...) is text.
    Any,
}

/// The sections of the file, and the keys of the sections Tandem reads itself.
pub(super) const SECTIONS: &[&str] = &[
    "state",
    "connectors",
    "contacts",
    "relations",
    "sync",
    "service",
];
pub(super) const STATE_KEYS: &[(&str, Expect)] = &[
    ("url", Expect::Text),
    ("lease", Expect::Text),
    ("partitions", Expect::Number),
];
pub(super) const SYNC_KEYS: &[(&str, Expect)] = &[
    ("max_delete_share", Expect::Number),
    ("hubs_per_range", Expect::Number),
    ("memory_budget", Expect::Text),
    ("spill_folder", Expect::Text),
];
pub(super) const SERVICE_KEYS: &[(&str, Expect)] = &[
    ("poll_interval", Expect::Text),
    ("max_poll_interval", Expect::Text),
    ("idle_polls", Expect::Number),
    ("full_listing_interval", Expect::Text),
    ("grace_period", Expect::Text),
    ("listen", Expect::Text),
    ("token", Expect::Text),
    // `[service.connectors.<name>]`: each connector's own intervals.
    ("connectors", Expect::Table),
];
pub(super) const CONTACTS_KEYS: &[(&str, Expect)] =
    &[("connector", Expect::Text), ("preserve", Expect::List)];
pub(super) const RELATION_KEYS: &[(&str, Expect)] = &[
    ("kind", Expect::Text),
    ("connector", Expect::Text),
    ("create_contacts", Expect::Bool),
    ("match", Expect::List),
    ("conflict", Expect::Text),
    ("conflict_fields", Expect::Table),
    ("template", Expect::Table),
    ("templates", Expect::List),
    ("initial", Expect::Text),
    ("fields", Expect::List),
    ("preserve", Expect::List),
    ("match_normalise", Expect::Text),
    ("phone_region", Expect::Text),
];

/// Where `var` points and what it sets, or why it cannot be applied.
fn resolve(var: &str, text: &str, file: &toml::Table) -> Result<Override, ConfigError> {
    let segments: Vec<&str> = var[PREFIX.len() + SEPARATOR.len()..]
        .split(SEPARATOR)
        .collect();
    let fail =
        |key: Option<&[String]>, message: String| env_error(var, key.map(|k| k.join(".")), message);
    if segments.iter().any(|s| s.is_empty()) {
        return Err(fail(
            None,
            "a key segment is empty; write TANDEM__SECTION__KEY with `__` between segments"
                .to_owned(),
        ));
    }
    let (path, expect) = locate(&segments, file).map_err(|(key, m)| fail(key.as_deref(), m))?;
    if text.is_empty() {
        return Err(fail(
            Some(&path),
            "is set but empty; unset it to keep the file's value".to_owned(),
        ));
    }
    let value = coerce(text, expect).map_err(|m| fail(Some(&path), m))?;
    Ok(Override {
        var: var.to_owned(),
        path,
        value,
    })
}

type Located = (Vec<String>, Expect);
type LocateError = (Option<Vec<String>>, String);

/// The key that `segments` names (with the file's spelling) and the type it expects.
fn locate(segments: &[&str], file: &toml::Table) -> Result<Located, LocateError> {
    let section = segments[0].to_lowercase();
    let rest = &segments[1..];
    let keys = match section.as_str() {
        "state" => STATE_KEYS,
        "sync" => SYNC_KEYS,
        "service" => SERVICE_KEYS,
        "contacts" => CONTACTS_KEYS,
        "relations" | "connectors" => return locate_named(&section, rest, file),
        _ => {
            return Err((
                None,
                format!(
                    "Tandem has no config section `{section}`; the sections are {}",
                    SECTIONS.join(", ")
                ),
            ));
        }
    };
    let table = file.get(&section).and_then(toml::Value::as_table);
    locate_key(vec![section], rest, keys, table)
}

/// A key of `[relations.<CODE>]` or `[connectors.<name>]`: the code or name must be
/// one the file has.
fn locate_named(section: &str, rest: &[&str], file: &toml::Table) -> Result<Located, LocateError> {
    let what = if section == "relations" {
        "relation"
    } else {
        "connector"
    };
    let Some(segment) = rest.first() else {
        return Err((
            Some(vec![section.to_owned()]),
            format!(
                "names the section; name a key in it, e.g. TANDEM__{}__<NAME>__<KEY>",
                section.to_uppercase()
            ),
        ));
    };
    let named = file.get(section).and_then(toml::Value::as_table);
    let Some((name, table)) = named.and_then(|t| find_key(t, segment)) else {
        return Err((
            None,
            format!(
                "the config file has no {what} `{segment}` (the environment changes the \
                 {section} the file has, it does not add one): add [{section}.{segment}] \
                 to the file"
            ),
        ));
    };
    let path = vec![section.to_owned(), name];
    if rest.len() == 1 {
        return Err((
            Some(path),
            format!(
                "names a {what}; name one of its keys, e.g. {}__<KEY>",
                segment.to_uppercase()
            ),
        ));
    }
    match (section, table.as_table()) {
        ("relations", table) => locate_key(path, &rest[1..], RELATION_KEYS, table),
        (_, Some(table)) => locate_setting(path, &rest[1..], Some(table)),
        (_, None) => Err((Some(path), "is not a table in the config file".to_owned())),
    }
}

/// A key of one of Tandem's own tables, checked against `keys`. Below a key that
/// expects a table (`template`, `conflict_fields`) any key may be set.
fn locate_key(
    mut path: Vec<String>,
    rest: &[&str],
    keys: &[(&str, Expect)],
    table: Option<&toml::Table>,
) -> Result<Located, LocateError> {
    let Some(segment) = rest.first() else {
        return Err((Some(path), "names a section; name a key in it".to_owned()));
    };
    let key = segment.to_lowercase();
    let Some(&(key, expect)) = keys.iter().find(|(k, _)| *k == key) else {
        let known: Vec<String> = keys.iter().map(|(k, _)| format!("`{k}`")).collect();
        let message = format!("unknown key `{key}`, expected one of {}", known.join(", "));
        return Err((Some(path), message));
    };
    path.push(key.to_owned());
    match (expect, rest.len()) {
        (_, 1) => Ok((path, expect)),
        (Expect::Table, _) => {
            let inner = table
                .and_then(|t| t.get(key))
                .and_then(toml::Value::as_table);
            // Field names and values, or policies: text unless the file has another type.
            let (path, expect) = locate_setting(path, &rest[1..], inner)?;
            Ok((
                path,
                if expect == Expect::Any {
                    Expect::Text
                } else {
                    expect
                },
            ))
        }
        _ => Err((
            Some(path.clone()),
            format!(
                "is {}, not a table: it has no key `{}`",
                describe(expect),
                rest[1].to_lowercase()
            ),
        )),
    }
}

/// A key below a table whose keys Tandem does not know (a connector's settings): an
/// existing key whatever its case, or else a new key, lowercased. It expects the
/// type of the file's value.
fn locate_setting(
    mut path: Vec<String>,
    rest: &[&str],
    table: Option<&toml::Table>,
) -> Result<Located, LocateError> {
    let mut table = table;
    for (i, segment) in rest.iter().enumerate() {
        let existing = table.and_then(|t| find_key(t, segment));
        let key = existing
            .as_ref()
            .map_or_else(|| segment.to_lowercase(), |(k, _)| k.clone());
        path.push(key);
        let value = existing.map(|(_, v)| v);
        let Some(next) = rest.get(i + 1) else {
            let expect = match value {
                Some(value) => expect_of(value),
                None if is_secret_name(segment) => Expect::Text,
                None => Expect::Any,
            };
            return Ok((path, expect));
        };
        match value {
            None => table = None,
            Some(toml::Value::Table(inner)) => table = Some(inner),
            Some(value) => {
                let message = format!(
                    "is {} in the config file, not a table: it has no key `{}`",
                    describe(expect_of(value)),
                    next.to_lowercase()
                );
                return Err((Some(path), message));
            }
        }
    }
    unreachable!("`rest` is not empty")
}

/// The key of `table` that `segment` names: the same spelling first, else the one key
/// that differs only in case.
fn find_key<'a>(table: &'a toml::Table, segment: &str) -> Option<(String, &'a toml::Value)> {
    if let Some(value) = table.get(segment) {
        return Some((segment.to_owned(), value));
    }
    let mut matches = table
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case(segment));
    match (matches.next(), matches.next()) {
        (Some((k, v)), None) => Some((k.clone(), v)),
        _ => None,
    }
}

/// Whether a setting named `name` holds a secret, which is text even when it is all
/// digits: read as a number, a connector's "expected a string" would show it.
fn is_secret_name(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ["password", "token", "secret", "key"]
        .iter()
        .any(|word| name.contains(word))
}

fn expect_of(value: &toml::Value) -> Expect {
    match value {
        toml::Value::String(_) | toml::Value::Datetime(_) => Expect::Text,
        toml::Value::Integer(_) | toml::Value::Float(_) => Expect::Number,
        toml::Value::Boolean(_) => Expect::Bool,
        toml::Value::Array(_) => Expect::List,
        toml::Value::Table(_) => Expect::Table,
    }
}

fn describe(expect: Expect) -> &'static str {
    match expect {
        Expect::Text => "text",
        Expect::Bool => "true or false",
        Expect::Number => "a number",
        Expect::List => "a list",
        Expect::Table => "a table",
        Expect::Any => "a value",
    }
}

/// The value `text` stands for when the key expects `expect`. Messages never repeat
/// the text: it may be a password.
pub(super) fn coerce(text: &str, expect: Expect) -> Result<toml::Value, String> {
    let toml = || text.parse::<toml::Value>().ok();
    match expect {
        Expect::Text => Ok(toml::Value::String(text.to_owned())),
        Expect::Bool if text.eq_ignore_ascii_case("true") => Ok(toml::Value::Boolean(true)),
        Expect::Bool if text.eq_ignore_ascii_case("false") => Ok(toml::Value::Boolean(false)),
        Expect::Bool => Err("expects true or false".to_owned()),
        Expect::Number => match (text.trim().parse::<i64>(), text.trim().parse::<f64>()) {
            (Ok(i), _) => Ok(toml::Value::Integer(i)),
            (_, Ok(f)) => Ok(toml::Value::Float(f)),
            _ => Err("expects a number, e.g. 0.25".to_owned()),
        },
        Expect::List => match toml() {
            Some(value @ toml::Value::Array(_)) => Ok(value),
            _ => Err(r#"expects a list in TOML syntax, e.g. [["email"], ["name", "post_code"]] or ["phone"]"#.to_owned()),
        },
        Expect::Table => match toml() {
            Some(value @ toml::Value::Table(_)) => Ok(value),
            _ => Err(r#"expects an inline table in TOML syntax, e.g. { x_payment_terms = "30D" }"#.to_owned()),
        },
        Expect::Any => Ok(match toml() {
            Some(toml::Value::Datetime(_)) | None => toml::Value::String(text.to_owned()),
            Some(value) => value,
        }),
    }
}
