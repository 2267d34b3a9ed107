//! `tandem plugins`: the plugins the config names (`type = "plugin"` and
//! `type = "process"`) and the plugin libraries in the `plugins` folder next to the
//! config, with what each says about itself.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde::Serialize;
use tandem_connector::{BuildContext, Capabilities, ConnectorError};
use tandem_plugin::PluginInfo;

use crate::output::{row, table};
use crate::{Cli, load, print_stdout, registry};

#[derive(Debug, Serialize)]
struct Entry {
    /// The connector's name in the config; `None` for a library found in `plugins/`.
    connector: Option<String>,
    path: PathBuf,
    info: Option<PluginInfo>,
    /// Why the plugin could not be loaded or built.
    error: Option<String>,
}

/// `tandem plugins [--json]`. Exits with 1 when a plugin could not be loaded.
pub(crate) fn plugins(cli: &Cli) -> anyhow::Result<ExitCode> {
    let config = load(cli, &registry())?;
    let context = BuildContext {
        base_dir: config.base_dir.clone(),
    };
    let mut entries = Vec::new();
    for (name, connector) in &config.connectors {
        if connector.type_name == "process" {
            entries.push(process_entry(name, &connector.settings, &context));
            continue;
        }
        if connector.type_name != "plugin" {
            continue;
        }
        let path = connector
            .settings
            .get("path")
            .and_then(|p| p.as_str())
            .map(|p| context.resolve(Path::new(p)))
            .unwrap_or_default();
        let settings = serde_json::Value::Object(connector.settings.clone());
        let (info, error) = match tandem_plugin::describe_configured(settings, &context) {
            Ok(info) => (Some(info), None),
            Err(e) => (None, Some(connector_error(name, e))),
        };
        entries.push(Entry {
            connector: Some(name.clone()),
            path,
            info,
            error,
        });
    }
    let folder = config.base_dir.join("plugins");
    if folder.is_dir() {
        let configured: Vec<PathBuf> = entries
            .iter()
            .filter_map(|e| e.path.canonicalize().ok())
            .collect();
        for path in tandem_plugin::discover(&folder)? {
            if path
                .canonicalize()
                .is_ok_and(|canonical| configured.contains(&canonical))
            {
                continue;
            }
            let (info, error) = match tandem_plugin::describe(&path) {
                Ok(info) => (Some(info), None),
                Err(e) => (None, Some(e.to_string())),
            };
            entries.push(Entry {
                connector: None,
                path,
                info,
                error,
            });
        }
    }
    let failed = entries.iter().any(|e| e.error.is_some());
    if cli.json {
        crate::json::print_list("plugins", &entries)?;
    } else if entries.is_empty() {
        print_stdout(&format!(
            "No plugins: none is configured (`type = \"plugin\"` or `\"process\"`) and there is no library in {}.\n",
            folder.display()
        ))?;
    } else {
        let mut rows = vec![row(&[
            "connector",
            "name",
            "version",
            "abi",
            "type",
            "kinds",
            "capabilities",
            "path",
        ])];
        for entry in &entries {
            let connector = entry.connector.as_deref().unwrap_or("-");
            let path = entry.path.display().to_string();
            match &entry.info {
                Some(info) => {
                    let (kinds, capabilities) = match &info.capabilities {
                        Some(c) => (
                            c.kinds
                                .iter()
                                .map(ToString::to_string)
                                .collect::<Vec<_>>()
                                .join(","),
                            capabilities_text(c),
                        ),
                        None => ("?".to_owned(), "?".to_owned()),
                    };
                    rows.push(vec![
                        connector.to_owned(),
                        info.name.clone(),
                        info.version.clone(),
                        info.abi_version.to_string(),
                        info.type_name.clone(),
                        kinds,
                        capabilities,
                        path,
                    ]);
                }
                None => rows.push(vec![
                    connector.to_owned(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    path,
                ]),
            }
        }
        let mut out = String::new();
        table(&mut out, &rows);
        for entry in &entries {
            if let Some(error) = &entry.error {
                out.push_str(&format!("error: {error}\n"));
            }
        }
        print_stdout(&out)?;
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// A process connector (`type = "process"`): its child is started, describes itself
/// and is stopped again; `path` is its program.
fn process_entry(
    name: &str,
    settings: &serde_json::Map<String, serde_json::Value>,
    context: &BuildContext,
) -> Entry {
    let mut settings = settings.clone();
    settings.insert("name".to_owned(), name.into());
    let program = settings
        .get("command")
        .and_then(|c| c.get(0))
        .and_then(|p| p.as_str())
        .map(PathBuf::from)
        .unwrap_or_default();
    let (info, error) = match tandem_plugin::ProcessConnector::start(
        serde_json::Value::Object(settings),
        context,
    ) {
        Ok(connector) => {
            let description = connector.description();
            let info = PluginInfo {
                path: connector.program().to_path_buf(),
                name: description.name.clone(),
                version: description.version.clone(),
                abi_version: description.abi_version,
                type_name: description.type_name.clone(),
                tandem_plugin_version: description.tandem_plugin_version.clone(),
                capabilities: Some(connector.info().capabilities.clone()),
            };
            (Some(info), None)
        }
        Err(e) => (None, Some(connector_error(name, e))),
    };
    Entry {
        connector: Some(name.to_owned()),
        path: info.as_ref().map_or(program, |i| i.path.clone()),
        info,
        error,
    }
}

/// `incremental, write, delete, batch 500` or `full listings, batch 100`.
fn capabilities_text(c: &Capabilities) -> String {
    let mut parts = vec![
        if c.incremental {
            "incremental"
        } else {
            "full listings"
        }
        .to_owned(),
    ];
    if c.write {
        parts.push("write".to_owned());
    }
    if c.delete {
        parts.push("delete".to_owned());
    }
    parts.push(format!("batch {}", c.max_batch));
    parts.join(", ")
}

/// `connectors.<name>.<key>: message`, like the config loader says it: load errors
/// name the key they are about (`path`, `settings.<key>`) as "`key`: message".
fn connector_error(name: &str, error: ConnectorError) -> String {
    match error {
        ConnectorError::Config { message } => match message
            .strip_prefix('`')
            .and_then(|rest| rest.split_once("`: "))
        {
            Some((key, rest)) if !key.is_empty() => format!("connectors.{name}.{key}: {rest}"),
            _ => format!("connectors.{name}: {message}"),
        },
        error => format!("connectors.{name}: {error}"),
    }
}
