//! `--json` output: every command prints one JSON object on stdout, with a
//! `format_version` (docs/json-output.md documents each command's object, with a
//! JSON Schema). Lists are an object too, the list under a key, so that they carry
//! the version. Errors are a JSON object on stdout as well, with the same exit code.

use serde::Serialize;
use serde_json::json;
use tandem_state::StateError;

use crate::config::ConfigErrors;
use crate::print_stdout;

/// Bumped when a field is removed or changes meaning; new fields do not bump it.
pub const FORMAT_VERSION: u32 = 1;

/// `body`'s fields after `format_version`; `body` must serialize as an object.
#[derive(Serialize)]
struct Versioned<'a, T: ?Sized> {
    format_version: u32,
    #[serde(flatten)]
    body: &'a T,
}

/// Prints `body`, an object, with the format version.
pub fn print(body: &(impl Serialize + ?Sized)) -> anyhow::Result<()> {
    let versioned = Versioned {
        format_version: FORMAT_VERSION,
        body,
    };
    print_stdout(&(serde_json::to_string_pretty(&versioned)? + "\n"))
}

/// Prints a list as `{"format_version": 1, "<key>": [...]}`.
pub fn print_list(key: &str, items: &impl Serialize) -> anyhow::Result<()> {
    let mut body = serde_json::Map::new();
    body.insert(key.to_owned(), serde_json::to_value(items)?);
    print(&body)
}

/// The error object: `{"format_version":1,"error":{"message":...,"causes":[...],"hint":...}}`.
pub fn error_value(error: &anyhow::Error) -> serde_json::Value {
    let message = error.to_string();
    let causes: Vec<String> = error
        .chain()
        .skip(1)
        .map(ToString::to_string)
        .filter(|c| !message.contains(c.as_str()))
        .collect();
    let mut inner = json!({ "message": message });
    if !causes.is_empty() {
        inner["causes"] = json!(causes);
    }
    if let Some(hint) = hint(error) {
        inner["hint"] = json!(hint);
    }
    json!({ "format_version": FORMAT_VERSION, "error": inner })
}

/// Prints [`error_value`] on stdout; a failure to print is not reported (the error
/// is on stderr already).
pub fn print_error(error: &anyhow::Error) {
    if let Ok(text) = serde_json::to_string_pretty(&error_value(error)) {
        let _ = print_stdout(&(text + "\n"));
    }
}

/// What to do about the errors that have one answer.
fn hint(error: &anyhow::Error) -> Option<&'static str> {
    for cause in error.chain() {
        if let Some(e) = cause.downcast_ref::<StateError>() {
            return match e {
                StateError::Locked { .. } | StateError::Leased { .. } => Some(
                    "another tandem command is writing to this state; wait for it to \
                     finish (read-only commands such as `tandem status` work meanwhile)",
                ),
                StateError::NotAState { .. } => {
                    Some("point state.url at a Tandem state, or at a file that does not exist yet")
                }
                _ => None,
            };
        }
        if cause.is::<ConfigErrors>() {
            return Some("fix the config file; `tandem check` lists every mistake at once");
        }
    }
    None
}

/// A usage error (clap's) as the same JSON object, for `--json` callers.
pub fn usage_error_value(error: &clap::Error) -> serde_json::Value {
    let text = error.to_string();
    // clap's text: `error: <message>\n\n<usage>...\n\nFor more information, try '--help'.`
    let message = text
        .lines()
        .next()
        .unwrap_or_default()
        .trim_start_matches("error: ")
        .to_owned();
    json!({
        "format_version": FORMAT_VERSION,
        "error": {
            "message": message,
            "hint": "`tandem --help` lists the commands and options",
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_keep_their_causes_and_a_hint_where_there_is_one() {
        let locked = anyhow::Error::new(StateError::Locked {
            path: "/x/state.db".into(),
        })
        .context("sync failed");
        let value = error_value(&locked);
        assert_eq!(value["format_version"], 1);
        assert_eq!(value["error"]["message"], "sync failed");
        assert!(
            value["error"]["causes"][0]
                .as_str()
                .unwrap()
                .contains("/x/state.db")
        );
        assert!(
            value["error"]["hint"]
                .as_str()
                .unwrap()
                .contains("tandem status")
        );
        let plain = error_value(&anyhow::anyhow!("no such relation"));
        assert_eq!(plain["error"], json!({ "message": "no such relation" }));
    }
}
