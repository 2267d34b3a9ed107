use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::de::DeserializeOwned;

use crate::{Connector, ConnectorError};

/// What a factory may need besides the connector's own settings.
#[derive(Debug, Clone)]
pub struct BuildContext {
    /// The folder of the config file; relative paths in settings resolve against it.
    pub base_dir: PathBuf,
}

impl BuildContext {
    pub fn resolve(&self, path: &Path) -> PathBuf {
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.base_dir.join(path)
        }
    }
}

/// Builds connectors of one `type` from their settings (the config table of the
/// connector minus `type`, as JSON so that plugins can receive it unchanged).
pub trait ConnectorFactory: Send + Sync {
    /// The `type` value in the config, e.g. `"file"`.
    fn type_name(&self) -> &'static str;

    fn build(
        &self,
        settings: serde_json::Value,
        context: &BuildContext,
    ) -> Result<Arc<dyn Connector>, ConnectorError>;
}

/// The explicit list of connector types a binary knows.
#[derive(Default)]
pub struct Registry {
    factories: Vec<Box<dyn ConnectorFactory>>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.type_names()).finish()
    }
}

impl Registry {
    pub fn new() -> Registry {
        Registry::default()
    }

    pub fn register(&mut self, factory: Box<dyn ConnectorFactory>) -> &mut Registry {
        self.factories.push(factory);
        self
    }

    pub fn type_names(&self) -> Vec<&'static str> {
        self.factories.iter().map(|f| f.type_name()).collect()
    }

    pub fn knows(&self, type_name: &str) -> bool {
        self.factories.iter().any(|f| f.type_name() == type_name)
    }

    /// Builds a connector of `type_name`; an unknown type is a config error that lists
    /// the known ones.
    pub fn build(
        &self,
        type_name: &str,
        settings: serde_json::Value,
        context: &BuildContext,
    ) -> Result<Arc<dyn Connector>, ConnectorError> {
        let factory = self
            .factories
            .iter()
            .find(|f| f.type_name() == type_name)
            .ok_or_else(|| {
                ConnectorError::config(format!(
                    "unknown connector type `{type_name}`; this build knows: {}",
                    self.type_names().join(", ")
                ))
            })?;
        factory.build(settings, context)
    }
}

/// Deserialises a connector's settings, naming the offending key on error
/// (`unknown field `formt` at `formt`...`). Settings types should use
/// `#[serde(deny_unknown_fields)]`. Values never appear in the message: a setting may
/// be a password.
pub fn parse_settings<T: DeserializeOwned>(
    settings: serde_json::Value,
) -> Result<T, ConnectorError> {
    serde_path_to_error::deserialize(settings).map_err(|e| {
        let path = e.path().to_string();
        let message = redact_value(&e.into_inner().to_string());
        if path == "." {
            ConnectorError::config(message)
        } else {
            ConnectorError::config(format!("`{path}`: {message}"))
        }
    })
}

/// serde quotes the offending value in "invalid type: string \"hunter2\", expected
/// ..."; keep only what was expected.
fn redact_value(message: &str) -> String {
    for prefix in ["invalid type", "invalid value", "invalid length"] {
        if message.starts_with(prefix) {
            return match message.find(", expected ") {
                Some(at) => format!("{prefix}{}", &message[at..]),
                None => prefix.to_owned(),
            };
        }
    }
    message.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Capabilities, Cursor, Page, WriteOp, WriteOutcome};
    use serde::Deserialize;
    use tandem_model::EntityKind;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct NullSettings {
        #[allow(dead_code)]
        path: String,
    }

    #[derive(Debug)]
    struct NullConnector;

    #[async_trait::async_trait]
    impl Connector for NullConnector {
        fn capabilities(&self) -> Capabilities {
            Capabilities {
                kinds: vec![EntityKind::Contact],
                incremental: false,
                write: false,
                delete: false,
                max_batch: 1,
            }
        }
        async fn check(&self) -> Result<(), ConnectorError> {
            Ok(())
        }
        async fn read(&self, _: EntityKind, _: Option<&Cursor>) -> Result<Page, ConnectorError> {
            Ok(Page {
                records: vec![],
                listing: crate::Listing::Full,
                cursor: None,
                has_more: false,
            })
        }
        async fn write(
            &self,
            _: EntityKind,
            ops: Vec<WriteOp>,
        ) -> Result<Vec<WriteOutcome>, ConnectorError> {
            Ok(ops
                .iter()
                .map(|_| Err(ConnectorError::fatal("read-only")))
                .collect())
        }
    }

    struct NullFactory;

    impl ConnectorFactory for NullFactory {
        fn type_name(&self) -> &'static str {
            "null"
        }
        fn build(
            &self,
            settings: serde_json::Value,
            _: &BuildContext,
        ) -> Result<Arc<dyn Connector>, ConnectorError> {
            let _settings: NullSettings = parse_settings(settings)?;
            Ok(Arc::new(NullConnector))
        }
    }

    fn registry() -> Registry {
        let mut registry = Registry::new();
        registry.register(Box::new(NullFactory));
        registry
    }

    fn context() -> BuildContext {
        BuildContext {
            base_dir: PathBuf::from("/etc/tandem"),
        }
    }

    #[tokio::test]
    async fn builds_known_types() {
        let c = registry()
            .build("null", serde_json::json!({"path": "x"}), &context())
            .unwrap();
        assert!(c.check().await.is_ok());
    }

    #[test]
    fn unknown_type_lists_known_ones() {
        let err = registry()
            .build("ftp", serde_json::json!({}), &context())
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "configuration error: unknown connector type `ftp`; this build knows: null"
        );
    }

    #[test]
    fn unknown_setting_is_named() {
        let err = registry()
            .build(
                "null",
                serde_json::json!({"path": "x", "paht": "y"}),
                &context(),
            )
            .unwrap_err();
        assert!(err.to_string().contains("paht"), "{err}");
    }

    #[test]
    fn setting_values_are_never_quoted() {
        let err = registry()
            .build("null", serde_json::json!({"path": 12345}), &context())
            .unwrap_err()
            .to_string();
        assert!(!err.contains("12345"), "{err}");
        assert!(
            err.contains("`path`: invalid type, expected a string"),
            "{err}"
        );
    }

    #[test]
    fn relative_paths_resolve_against_the_config_folder() {
        assert_eq!(
            context().resolve(Path::new("data")),
            PathBuf::from("/etc/tandem/data")
        );
        assert_eq!(
            context().resolve(Path::new("/data")),
            PathBuf::from("/data")
        );
    }
}
