//! The JSON messages of the plugin boundary. They do not depend on how they travel:
//! through the C function table of [`crate::abi`] (`type = "plugin"`), or as lines on
//! a child process's stdin and stdout (`type = "process"`, [`Message`] and
//! [`ReplyLine`] add the request id and the message type). docs/plugin-protocol.md
//! specifies both, with a JSON Schema per message.
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
    /// The `tandem-plugin` the plugin was built with (for a process plugin: the SDK
    /// it uses, if any; optional on the wire).
    #[serde(default)]
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

// ----- over a child process's stdio -----

/// One line Tandem writes to a process plugin's stdin: `{"id": 7, "type": "call",
/// "call": "read", ...}`. Each is answered by one [`ReplyLine`] with the same id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    /// -> [`Description`]
    Describe,
    /// -> `()` (`null`); sent once, after `describe`.
    Init(Init),
    /// -> the reply type of the [`Request`].
    Call(Request),
}

/// A [`Message`] with its request id, as it travels.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Envelope<'a> {
    pub id: u64,
    #[serde(flatten)]
    pub message: &'a Message,
}

/// One line a process plugin writes to its stdout: `{"id": 7, "ok": value}` or
/// `{"id": 7, "err": {...}}`. Read in one pass, without buffering the value, so that a
/// page of many records costs one parse. Keys other than `id`, `ok` and `err` are
/// ignored.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplyLine<T> {
    /// The id of the request answered; `None` when the line has none.
    pub id: Option<u64>,
    /// `None` when the line holds neither `ok` nor `err`.
    pub reply: Option<Reply<T>>,
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for ReplyLine<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(ReplyLineVisitor(std::marker::PhantomData))
    }
}

struct ReplyLineVisitor<T>(std::marker::PhantomData<T>);

impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for ReplyLineVisitor<T> {
    type Value = ReplyLine<T>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(
            r#"a reply object {"id": <number>, "ok": <value>} or {"id": <number>, "err": <error>}"#,
        )
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        use serde::de::Error;
        let mut line = ReplyLine {
            id: None,
            reply: None,
        };
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match key.as_ref() {
                "id" => line.id = Some(map.next_value()?),
                "ok" | "err" if line.reply.is_some() => {
                    return Err(A::Error::custom(
                        "a reply holds one of `ok` and `err`, not both",
                    ));
                }
                "ok" => line.reply = Some(Reply::Ok(map.next_value()?)),
                "err" => line.reply = Some(Reply::Err(map.next_value()?)),
                _ => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        Ok(line)
    }
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

    #[test]
    fn process_messages_carry_id_and_type() {
        let read = Message::Call(Request::Read {
            kind: EntityKind::Vendor,
            cursor: None,
        });
        assert_eq!(
            serde_json::to_value(Envelope {
                id: 3,
                message: &read
            })
            .unwrap(),
            json!({"id": 3, "type": "call", "call": "read", "kind": "vendor", "cursor": null})
        );
        assert_eq!(
            serde_json::to_value(Envelope {
                id: 1,
                message: &Message::Describe
            })
            .unwrap(),
            json!({"id": 1, "type": "describe"})
        );
        let init = Message::Init(Init {
            settings: json!({"path": "erp.db"}),
            base_dir: "/etc/tandem".into(),
        });
        assert_eq!(
            serde_json::to_value(Envelope {
                id: 2,
                message: &init
            })
            .unwrap(),
            json!({"id": 2, "type": "init", "settings": {"path": "erp.db"}, "base_dir": "/etc/tandem"})
        );
        assert_eq!(
            serde_json::from_value::<Message>(json!({"type": "call", "call": "check"})).unwrap(),
            Message::Call(Request::Check)
        );
    }

    #[test]
    fn reply_lines_are_read_in_any_key_order() {
        let line: ReplyLine<()> = serde_json::from_str(r#"{"ok": null, "id": 9}"#).unwrap();
        assert_eq!(
            line,
            ReplyLine {
                id: Some(9),
                reply: Some(Reply::Ok(()))
            }
        );
        let line: ReplyLine<()> =
            serde_json::from_str(r#"{"id": 4, "err": {"error": "auth", "message": "no"}}"#)
                .unwrap();
        assert_eq!(
            line.reply,
            Some(Reply::Err(ConnectorError::Auth {
                message: "no".into()
            }))
        );
        let line: ReplyLine<()> = serde_json::from_str(r#"{"id": 4}"#).unwrap();
        assert_eq!(line.reply, None);
        assert!(
            serde_json::from_str::<ReplyLine<()>>(r#"{"id": 4, "ok": null, "err": null}"#).is_err()
        );
        assert!(serde_json::from_str::<ReplyLine<()>>("[1]").is_err());
    }
}
