//! `tandem sql install-triggers`: the change table and the triggers that record every
//! insert, update and delete of the tables read with `changes = "triggers"`.

use std::process::ExitCode;

use anyhow::{Context, anyhow};
use serde::Serialize;
use tandem_connector::BuildContext;
use tandem_connector_sql::SqlConnector;

use crate::{Cli, UsageError, load, print_stdout, registry};

/// One thing installed, for `--json`.
#[derive(Debug, Serialize)]
struct Installed {
    connector: String,
    installed: String,
}

/// Installs the triggers of every `type = "sql"` connector, or of `only`.
pub(crate) async fn install_triggers(cli: &Cli, only: Option<&str>) -> anyhow::Result<ExitCode> {
    let config = load(cli, &registry())?;
    let context = BuildContext {
        base_dir: config.base_dir.clone(),
    };
    let names: Vec<&String> = config
        .connectors
        .iter()
        .filter(|(name, c)| c.type_name == "sql" && only.is_none_or(|o| o == name.as_str()))
        .map(|(name, _)| name)
        .collect();
    if names.is_empty() {
        return Err(anyhow!(UsageError(match only {
            Some(name) => format!(
                "{} has no `type = \"sql\"` connector `{name}`",
                config.file.display()
            ),
            None => format!(
                "{} has no `type = \"sql\"` connector",
                config.file.display()
            ),
        })));
    }
    let mut text = String::new();
    let mut entries = Vec::new();
    for name in names {
        let settings = serde_json::Value::Object(config.connectors[name].settings.clone());
        let connector = SqlConnector::from_settings(settings, &context)
            .with_context(|| format!("connector {name}"))?;
        let installed = connector
            .install_triggers()
            .await
            .with_context(|| format!("connector {name}: installing the triggers"))?;
        for line in installed {
            text.push_str(&format!("{name}: installed {line}\n"));
            entries.push(Installed {
                connector: name.clone(),
                installed: line,
            });
        }
    }
    if cli.json {
        crate::json::print_list("installed", &entries)?;
    } else {
        print_stdout(&text)?;
    }
    Ok(ExitCode::SUCCESS)
}
