//! Operator commands that change only the state, for the next sync to act on:
//! `retry` (R17) and `conflicts resolve` (R15). They hold the exclusive lock, like
//! `sync`, so they never interleave with a run.

use std::process::ExitCode;

use anyhow::anyhow;
use serde_json::json;
use tandem_engine::{Relations, RetryTarget, Take};
use tandem_state::{LockMode, StateError};

use crate::inspect::kind_name;
use crate::output::{plural, show};
use crate::{Cli, configured, load, open_state, print_stdout, registry};

/// `tandem retry [--all | <CODE> <ID>]`.
pub(crate) fn retry(cli: &Cli, target: &RetryTarget) -> anyhow::Result<ExitCode> {
    let config = load(cli, &registry())?;
    if let RetryTarget::Record { code, .. } = target {
        configured(&config, code)?;
    }
    let mut state = open_state(&config, LockMode::Exclusive)?;
    let relations = Relations::from_config(&config.sync).with_partitions(config.state_partitions);
    let count = tandem_engine::retry(state.as_mut(), &relations, target)?;
    if let RetryTarget::Record { code, id } = target
        && count == 0
    {
        return Err(anyhow!(
            "nothing parked for {code} {id}; `tandem status` lists what is parked"
        ));
    }
    if cli.json {
        crate::json::print(&json!({ "retried": count }))?;
    } else if count == 0 {
        print_stdout("Nothing is parked; nothing to retry.\n")?;
    } else {
        print_stdout(&format!(
            "Put back {}; the next `tandem sync` tries again.\n",
            plural(
                count as u64,
                "parked pair or create",
                "parked pairs and creates"
            )
        ))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `tandem conflicts resolve <ID> --take contact|account|<value>`.
pub(crate) fn resolve_conflict(cli: &Cli, id: i64, take: &str) -> anyhow::Result<ExitCode> {
    let config = load(cli, &registry())?;
    let take = match take {
        "contact" => Take::Contact,
        "account" => Take::Account,
        value => Take::Value(value.to_owned()),
    };
    let mut state = open_state(&config, LockMode::Exclusive)?;
    let relations = Relations::from_config(&config.sync).with_partitions(config.state_partitions);
    let entry = match tandem_engine::resolve_conflict(state.as_mut(), &relations, id, &take) {
        Ok(entry) => entry,
        Err(e @ StateError::UnknownConflict { .. }) => return Err(anyhow!(e)),
        Err(e) => return Err(anyhow!(e).context("cannot record the decision")),
    };
    if cli.json {
        crate::json::print(&entry)?;
        return Ok(ExitCode::SUCCESS);
    }
    let value = entry
        .resolution
        .as_ref()
        .map_or_else(|| "(empty)".to_owned(), show);
    let kind = kind_name(&config, &entry.code);
    print_stdout(&format!(
        "Conflict {id} ({} contact {} / {kind} {}, field {}): the next `tandem sync` writes {value} \
         to both the contact and the {kind}, and closes the conflict.\n",
        entry.code, entry.contact_id, entry.account_id, entry.field
    ))?;
    Ok(ExitCode::SUCCESS)
}
