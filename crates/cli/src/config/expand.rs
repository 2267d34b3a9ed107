//! `${VAR}` in config values (the config crate has no such thing), and the check that
//! no URL carries a password.

use super::{Env, Problem};

/// Replaces `${VAR}` in every string of `table`, whose keys start with `prefix`. Every
/// reference that cannot be replaced is a problem; its string is left as it was.
pub(super) fn substitute_table(
    table: &mut toml::Table,
    prefix: &str,
    env: &Env,
    problems: &mut Vec<Problem>,
) {
    for (key, value) in table.iter_mut() {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        substitute_value(value, &path, env, problems);
    }
}

fn substitute_value(value: &mut toml::Value, path: &str, env: &Env, problems: &mut Vec<Problem>) {
    match value {
        toml::Value::String(s) if s.contains('$') => match expand(s, env) {
            Ok(expanded) => *s = expanded,
            Err(message) => problems.push(Problem::new(path, message)),
        },
        toml::Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                substitute_value(item, &format!("{path}[{i}]"), env, problems);
            }
        }
        toml::Value::Table(table) => substitute_table(table, path, env, problems),
        _ => {}
    }
}

/// Replaces `${VAR}` with the variable's value; `$${` stands for a literal `${`. A
/// replaced value is not expanded again. Errors name the variable, never a value. A
/// variable that is set but empty is an error: it is a password or a path that did
/// not reach Tandem, far more often than a value meant to be empty.
pub(super) fn expand(text: &str, env: &Env) -> Result<String, String> {
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
            out.push_str(&variable(&after[..end], env)?);
            rest = &after[end + 1..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// The value of the variable `name` of a `${name}`.
fn variable(name: &str, env: &Env) -> Result<String, String> {
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
        Some(value) if value.is_empty() => Err(format!(
            "environment variable `{name}` is set but empty; give it a value, or write \
             the value in the file"
        )),
        Some(value) => Ok(value),
        None => Err(format!("environment variable `{name}` is not set")),
    }
}

/// Every `http://` or `https://` URL in `table` that has a password in it
/// (`https://user:password@host/`) is a problem. The message says where to put the
/// user and the password instead, and shows neither.
pub(super) fn find_passwords_in_urls(table: &toml::Table, problems: &mut Vec<Problem>) {
    let connectors = table.get("connectors").and_then(toml::Value::as_table);
    let mut found = Vec::new();
    for (key, value) in table {
        strings(value, key, &mut found);
    }
    for path in found {
        let message = password_message(&path, connectors);
        problems.push(Problem::new(path, message));
    }
}

/// The keys of the strings below `value` that are URLs with a password.
fn strings(value: &toml::Value, path: &str, found: &mut Vec<String>) {
    match value {
        toml::Value::String(s) if has_password(s) => found.push(path.to_owned()),
        toml::Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                strings(item, &format!("{path}[{i}]"), found);
            }
        }
        toml::Value::Table(table) => {
            for (k, v) in table {
                strings(v, &format!("{path}.{k}"), found);
            }
        }
        _ => {}
    }
}

/// What to do instead of a password in the URL at `path`: the user and password keys
/// of the connector's type.
fn password_message(path: &str, connectors: Option<&toml::Table>) -> String {
    let type_name = path
        .strip_prefix("connectors.")
        .and_then(|rest| rest.split(['.', '[']).next())
        .and_then(|name| connectors?.get(name)?.get("type")?.as_str());
    let (user, password) = match type_name {
        Some("carddav") => ("`username`", "`password`"),
        Some("tryton") => ("`user`", "`password`"),
        _ => ("the connector's user setting", "its password setting"),
    };
    format!(
        "the URL has a user name and password in it, which Tandem does not take (they \
         would show wherever the URL does); remove them from the URL and set {user} and \
         {password} = \"${{VAR}}\" instead, with the password in the environment variable VAR"
    )
}

/// Whether `text` is an `http://` or `https://` URL with a password in its authority.
fn has_password(text: &str) -> bool {
    let text = text.trim_start();
    let rest = ["http://", "https://"].iter().find_map(|scheme| {
        let head = text.get(..scheme.len())?;
        head.eq_ignore_ascii_case(scheme)
            .then(|| &text[scheme.len()..])
    });
    let Some(rest) = rest else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    authority
        .rsplit_once('@')
        .is_some_and(|(userinfo, _)| userinfo.contains(':'))
}
