//! The layers of a config, merged by the config crate: the file, then the
//! environment's overrides. [`Sources`] remembers where each key came from (a line of
//! the file or a variable), so that every message can name it.

use std::collections::BTreeMap;

use config::{FileFormat, Map, Source, Value, ValueKind};
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::env::Override;
use super::{ConfigError, Origin};

/// Where each key of a config was set.
#[derive(Debug, Clone, Default)]
pub(super) struct Sources {
    /// The config file, as it was named.
    file: String,
    /// Keys of the file (`relations.CUST.match[0]`) by 1-based line.
    lines: BTreeMap<String, usize>,
    /// Keys set by the environment, with the variable that set them. For a table, its
    /// keys: a table from the environment is merged into the file's.
    env: BTreeMap<String, String>,
}

impl Sources {
    /// The keys of `text`, the file named `file`, which is valid TOML.
    pub fn new(file: &str, text: &str) -> Sources {
        let mut lines = BTreeMap::new();
        if let Ok(table) = DeTable::parse(text) {
            record_table(table.get_ref(), "", text, &mut lines);
        }
        Sources {
            file: file.to_owned(),
            lines,
            env: BTreeMap::new(),
        }
    }

    /// Remembers that `o` set its key.
    pub fn record(&mut self, o: &Override) {
        self.record_value(&o.key(), &o.value, &o.var);
    }

    fn record_value(&mut self, key: &str, value: &toml::Value, var: &str) {
        match value {
            toml::Value::Table(table) if !table.is_empty() => {
                for (k, v) in table {
                    self.record_value(&format!("{key}.{k}"), v, var);
                }
            }
            _ => {
                self.env.insert(key.to_owned(), var.to_owned());
            }
        }
    }

    /// Where the value of `key` (or the nearest table holding it) was set: a variable
    /// that set it or a table above it; else its line in the file; else a variable
    /// that set a key inside it; else the line of the nearest table above it.
    pub fn origin(&self, key: &str) -> Origin {
        let env = |var: &String| Origin::Env { var: var.clone() };
        if let Some(var) = ancestors(key).find_map(|k| self.env.get(k)) {
            return env(var);
        }
        if let Some(&line) = self.lines.get(key) {
            return self.file_origin(Some(line));
        }
        let inside = self.env.iter().find(|(k, _)| is_below(k, key));
        if let Some((_, var)) = inside {
            return env(var);
        }
        let line = ancestors(key).find_map(|k| self.lines.get(k)).copied();
        self.file_origin(line)
    }

    fn file_origin(&self, line: Option<usize>) -> Origin {
        Origin::File {
            path: self.file.clone(),
            line,
        }
    }

    /// An error about `key`, from where its value was set.
    pub fn error(&self, key: &str, message: String) -> ConfigError {
        self.error_blaming(key, key, message)
    }

    /// An error about `key`, from where the value of `blamed` was set.
    pub fn error_blaming(&self, key: &str, blamed: &str, message: String) -> ConfigError {
        ConfigError {
            origin: self.origin(blamed),
            key: (!key.is_empty()).then(|| key.to_owned()),
            message,
        }
    }
}

/// `key`, then each key that holds it: `a.b[0]`, `a.b`, `a`.
fn ancestors(key: &str) -> impl Iterator<Item = &str> {
    std::iter::successors(Some(key), |k| {
        let cut = k.rfind(['.', '['])?;
        Some(&k[..cut])
    })
    .filter(|k| !k.is_empty())
}

/// Whether `key` is inside `table` (`a.b.c` or `a.b[0]` inside `a.b`).
pub(super) fn is_below(key: &str, table: &str) -> bool {
    key.strip_prefix(table)
        .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
}

fn record_table(
    table: &DeTable<'_>,
    prefix: &str,
    text: &str,
    lines: &mut BTreeMap<String, usize>,
) {
    for (key, value) in table {
        let path = if prefix.is_empty() {
            key.get_ref().to_string()
        } else {
            format!("{prefix}.{}", key.get_ref())
        };
        lines.insert(path.clone(), line_column(text, key.span().start).0);
        record_value(value, &path, text, lines);
    }
}

fn record_value(
    value: &Spanned<DeValue<'_>>,
    path: &str,
    text: &str,
    lines: &mut BTreeMap<String, usize>,
) {
    match value.get_ref() {
        DeValue::Table(table) => record_table(table, path, text, lines),
        DeValue::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let path = format!("{path}[{i}]");
                lines.insert(path.clone(), line_column(text, item.span().start).0);
                record_value(item, &path, text, lines);
            }
        }
        _ => {}
    }
}

/// 1-based line and column (in characters) of byte `offset`.
pub(super) fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..text.floor_char_boundary(offset)];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// The overrides, as a source of the config crate: one nested table, so that the
/// crate merges it into the file's tables key by key.
#[derive(Clone)]
struct EnvLayer(Map<String, Value>);

/// Keys only: values may be passwords.
impl std::fmt::Debug for EnvLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("EnvLayer").field(&self.0.keys()).finish()
    }
}

impl Source for EnvLayer {
    fn clone_into_box(&self) -> Box<dyn Source + Send + Sync> {
        Box::new(self.clone())
    }

    fn collect(&self) -> Result<Map<String, Value>, config::ConfigError> {
        Ok(self.0.clone())
    }
}

impl EnvLayer {
    fn new(overrides: &[Override]) -> EnvLayer {
        let mut root = Map::new();
        for o in overrides {
            let (last, parents) = o.path.split_last().expect("a key has a segment");
            let mut table = &mut root;
            for segment in parents {
                let entry = table
                    .entry(segment.clone())
                    .or_insert_with(|| Value::new(Some(&o.var), Map::<String, Value>::new()));
                // Another variable set this key to a value: these keys replace it, as
                // the config crate does.
                if !matches!(entry.kind, ValueKind::Table(_)) {
                    *entry = Value::new(Some(&o.var), Map::<String, Value>::new());
                }
                let ValueKind::Table(inner) = &mut entry.kind else {
                    unreachable!("made a table just above")
                };
                table = inner;
            }
            table.insert(last.clone(), to_config(&o.value, &o.var));
        }
        EnvLayer(root)
    }
}

fn to_config(value: &toml::Value, origin: &String) -> Value {
    let kind = match value {
        toml::Value::String(s) => ValueKind::String(s.clone()),
        toml::Value::Integer(i) => ValueKind::I64(*i),
        toml::Value::Float(f) => ValueKind::Float(*f),
        toml::Value::Boolean(b) => ValueKind::Boolean(*b),
        toml::Value::Datetime(d) => ValueKind::String(d.to_string()),
        toml::Value::Array(items) => {
            ValueKind::Array(items.iter().map(|v| to_config(v, origin)).collect())
        }
        toml::Value::Table(table) => ValueKind::Table(
            table
                .iter()
                .map(|(k, v)| (k.clone(), to_config(v, origin)))
                .collect(),
        ),
    };
    Value::new(Some(origin), kind)
}

/// The file's text with the overrides on top, as one table. `text` is valid TOML.
pub(super) fn merge(text: &str, overrides: &[Override]) -> Result<toml::Table, String> {
    config::Config::builder()
        .add_source(config::File::from_str(text, FileFormat::Toml))
        .add_source(EnvLayer::new(overrides))
        .build()
        .and_then(config::Config::try_deserialize::<toml::Table>)
        // Not the error's text: it may quote the file.
        .map_err(|_| "the config file and the environment could not be merged".to_owned())
}
