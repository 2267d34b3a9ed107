//! `tandem conformance --connector NAME`: the conformance kit of
//! `tandem_connector::testkit` against a configured connector (compiled in, a plugin
//! library or a child process), so that a connector's author can test it without
//! writing Rust. It writes through the connector and deletes what it created.

use std::process::ExitCode;

use anyhow::anyhow;
use serde::Serialize;
use tandem_connector::testkit::{Options, Report, Status, check_conformance};
use tandem_model::EntityKind;

use crate::{Cli, UsageError, load, print_stdout, registry};

/// What `tandem conformance` was asked to exercise.
#[derive(Debug)]
pub(crate) struct Request<'a> {
    pub connector: &'a str,
    pub kinds: &'a [EntityKind],
    pub max_batch: usize,
    pub any_field_name: bool,
}

#[derive(Debug, Serialize)]
struct Check {
    name: &'static str,
    kind: Option<EntityKind>,
    status: &'static str,
    message: String,
}

#[derive(Debug, Serialize)]
struct Summary<'a> {
    connector: &'a str,
    passed: bool,
    counts: Counts,
    checks: Vec<Check>,
}

#[derive(Debug, Serialize)]
struct Counts {
    passed: usize,
    failed: usize,
    skipped: usize,
}

/// Runs the kit; exits with 1 when a contract rule does not hold.
pub(crate) async fn conformance(cli: &Cli, request: &Request<'_>) -> anyhow::Result<ExitCode> {
    let registry = registry();
    let config = load(cli, &registry)?;
    if !config.connectors.contains_key(request.connector) {
        let known: Vec<&str> = config.connectors.keys().map(String::as_str).collect();
        return Err(anyhow!(UsageError(format!(
            "connector `{}` is not in {}; it names: {}",
            request.connector,
            config.shown(),
            known.join(", ")
        ))));
    }
    let connector = config.build_connector(request.connector, &registry)?;
    let options = Options {
        kinds: (!request.kinds.is_empty()).then(|| request.kinds.to_vec()),
        max_batch: request.max_batch,
        refuses_unknown_names: !request.any_field_name,
        ..Options::default()
    };
    let report = check_conformance(connector.as_ref(), &options).await;
    drop(connector);
    let summary = summary(request.connector, &report);
    if cli.json {
        crate::json::print(&summary)?;
    } else {
        print_stdout(&format!(
            "Conformance of connector {}:\n{report}\n",
            request.connector
        ))?;
    }
    Ok(if summary.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn summary<'a>(connector: &'a str, report: &Report) -> Summary<'a> {
    let count = |s| report.checks.iter().filter(|c| c.status == s).count();
    Summary {
        connector,
        passed: report.passed(),
        counts: Counts {
            passed: count(Status::Passed),
            failed: count(Status::Failed),
            skipped: count(Status::Skipped),
        },
        checks: report
            .checks
            .iter()
            .map(|c| Check {
                name: c.name,
                kind: c.kind,
                status: match c.status {
                    Status::Passed => "passed",
                    Status::Failed => "failed",
                    Status::Skipped => "skipped",
                },
                message: c.message.clone(),
            })
            .collect(),
    }
}
