//! The JSON messages of the plugin boundary. They do not depend on how they travel:
//! today through the C function table of [`crate::abi`], later possibly as lines on a
//! child process's stdin and stdout.
//!
//! ```text
//! describe          -> {"name":"tandem-connector-file-plugin","version":"0.1.0",
//!                       "abi_version":1,"type_name":"file","tandem_plugin_version":"0.1.0"}
//! init              <- {"settings":{"path":"data"},"base_dir":"/etc/tandem"}
//!                   -> {"ok":null} | {"err":{"error":"config","message":"..."}}
//! call              <- {"call":"info"}
//!                   -> {"ok":{"name":"...","version":"...","capabilities":{...}}}
//!                   <- {"call":"check"}                 -> {"ok":null}
//!                   <- {"call":"read","kind":"customer","cursor":null}
//!                   -> {"ok":{"records":[...],"listing":"full","cursor":null,"has_more":false}}
//!                   <- {"call":"write","kind":"customer","ops":[{"op":"delete","id":"C1","version":null}]}
//!                   -> {"ok":[{"ok":{"id":"C1","version":null,"modified_at":null}}]}
//!                   -> {"err":{"error":"fatal","message":"plugin panicked: ..."}}
//! ```

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use tandem_connector::{Capabilities, ConnectorError, Cursor, WriteOp, WriteOutcome, Written};
use tandem_model::EntityKind;

/// What a plugin says about itself before any connector is built.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Description {
    /// The package that exported the plugin.
    pub name: String,
    pub version: String,
    pub abi_version: u32,
    /// The factory's `type_name`.
    pub type_name: String,
    /// The `tandem-plugin` the plugin was built with.
    pub tandem_plugin_version: String,
}

/// Builds a connector: its settings and the folder relative paths resolve against
/// (the config file's folder, [`tandem_connector::BuildContext::base_dir`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Init {
    pub settings: serde_json::Value,
    pub base_dir: PathBuf,
}

/// One call on a built connector, answered by a [`Reply`] of the type named per
/// variant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "call", rename_all = "snake_case")]
pub enum Request {
    /// -> [`InstanceInfo`]
    Info,
    /// -> `()` (`null`)
    Check,
    /// -> [`tandem_connector::Page`]
    Read {
        kind: EntityKind,
        cursor: Option<Cursor>,
    },
    /// -> `Vec<Reply<Written>>`, one per op, in op order
    Write { kind: EntityKind, ops: Vec<WriteOp> },
}

/// A built connector's answer to [`Request::Info`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceInfo {
    pub name: String,
    pub version: String,
    pub capabilities: Capabilities,
}

/// The answer to any message: `{"ok": value}` or `{"err": ConnectorError}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply<T> {
    Ok(T),
    Err(ConnectorError),
}

impl<T> From<Result<T, ConnectorError>> for Reply<T> {
    fn from(result: Result<T, ConnectorError>) -> Reply<T> {
        match result {
            Ok(value) => Reply::Ok(value),
            Err(error) => Reply::Err(error),
        }
    }
}

impl<T> From<Reply<T>> for Result<T, ConnectorError> {
    fn from(reply: Reply<T>) -> Result<T, ConnectorError> {
        match reply {
            Reply::Ok(value) => Ok(value),
            Reply::Err(error) => Err(error),
        }
    }
}

/// The outcomes of a write as they travel.
pub fn outcomes_to_replies(outcomes: Vec<WriteOutcome>) -> Vec<Reply<Written>> {
    outcomes.into_iter().map(Reply::from).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use tandem_connector::{Listing, Page};
    use tandem_model::{Fields, Record, Value};

    #[test]
    fn requests_are_plain_json() {
        let read = Request::Read {
            kind: EntityKind::Customer,
            cursor: Some(Cursor("c1".into())),
        };
        assert_eq!(
            serde_json::to_value(&read).unwrap(),
            json!({"call": "read", "kind": "customer", "cursor": "c1"})
        );
        assert_eq!(
            serde_json::to_value(Request::Info).unwrap(),
            json!({"call": "info"})
        );
        let back: Request = serde_json::from_value(json!({"call": "check"})).unwrap();
        assert_eq!(back, Request::Check);
    }

    #[test]
    fn replies_carry_typed_errors() {
        let reply: Reply<()> = Reply::Err(ConnectorError::Conflict { id: "C1".into() });
        let json = serde_json::to_value(&reply).unwrap();
        assert_eq!(json, json!({"err": {"error": "conflict", "id": "C1"}}));
        assert_eq!(serde_json::from_value::<Reply<()>>(json).unwrap(), reply);
        assert_eq!(
            serde_json::to_value(Reply::Ok(())).unwrap(),
            json!({"ok": null})
        );
    }

    #[test]
    fn pages_survive_the_trip() {
        let mut fields = Fields::new();
        fields.set("name", Value::text("Acme"));
        fields.set("x_score", Value::Number(0.1 + 0.2));
        let page = Page {
            records: vec![Record::new(EntityKind::Customer, "C1", fields)],
            listing: Listing::Full,
            cursor: None,
            has_more: false,
        };
        let json = serde_json::to_vec(&Reply::Ok(page.clone())).unwrap();
        let back: Reply<Page> = serde_json::from_slice(&json).unwrap();
        assert_eq!(back, Reply::Ok(page));
    }
}
