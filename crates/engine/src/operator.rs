//! Operator actions that need no connector: resolving a contact to its account (R10),
//! retrying parked work (R17) and deciding a manual conflict (R15). Links made or
//! dropped by hand go through a run (`Engine::sync_with`), because they write to the
//! systems.

use serde::Serialize;
use tandem_model::{EntityKind, Timestamp, Value};
use tandem_state::{ConflictEntry, Interaction, Scope, StateBatch, StateError, StateStore};

use crate::relation::Relations;
use crate::run::RECHECK;

/// The account a contact stands for under a code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Resolved {
    pub code: String,
    pub account_id: String,
    /// The contact holding the link: the contact asked about, or its company (R3).
    pub holder_id: String,
}

/// R10: the account `contact_id` stands for under `code`; a person resolves through
/// its company. `None` when there is no such relation.
pub fn resolve(
    state: &dyn StateStore,
    code: &str,
    contact_id: &str,
) -> Result<Option<Resolved>, StateError> {
    let find = |id: &str| -> Result<Option<Resolved>, StateError> {
        Ok(state
            .links_of_contacts(&[id])?
            .into_iter()
            .find(|l| l.code == code)
            .map(|l| Resolved {
                code: l.code,
                account_id: l.account_id,
                holder_id: l.contact_id,
            }))
    };
    if let Some(found) = find(contact_id)? {
        return Ok(Some(found));
    }
    match state.company_of(contact_id)? {
        Some(company) => find(&company),
        None => Ok(None),
    }
}

/// What `retry` should pick up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetryTarget {
    /// Everything parked.
    All,
    /// The pair or create of this code and contact (or, for a contact created from
    /// an account, this account).
    Record { code: String, id: String },
}

/// R17: puts parked pairs and creates back into the next run. Returns how many.
pub fn retry(
    state: &mut dyn StateStore,
    relations: &Relations,
    target: &RetryTarget,
) -> Result<usize, StateError> {
    let wanted = |code: &str, ids: &[&str]| match target {
        RetryTarget::All => true,
        RetryTarget::Record { code: c, id } => c == code && ids.contains(&id.as_str()),
    };
    let contacts = Scope::new(&relations.contacts_connector, EntityKind::Contact);
    let account_scope = |code: &str| {
        relations
            .relations
            .iter()
            .find(|r| r.code == code)
            .map(|r| Scope::new(&r.connector, r.kind))
    };
    let mut batch = StateBatch::default();
    let mut count = 0;
    for link in state.parked_links()? {
        if !wanted(&link.code, &[&link.contact_id, &link.account_id]) {
            continue;
        }
        count += 1;
        batch
            .set_hashes
            .push((contacts.clone(), link.contact_id.clone(), RECHECK));
        if let Some(scope) = account_scope(&link.code) {
            batch
                .set_hashes
                .push((scope, link.account_id.clone(), RECHECK));
        }
        batch.upsert_links.push(tandem_state::Link {
            parked: false,
            failure_count: 0,
            last_error: None,
            ..link
        });
    }
    for pending in state.pending_creates()? {
        if !pending.parked || !wanted(&pending.code, &[&pending.source_id]) {
            continue;
        }
        count += 1;
        if pending.side != "contact" {
            // Only a contact already known can have a log (R11).
            batch.interactions.push(Interaction {
                id: 0,
                at: Timestamp::now(),
                run_id: None,
                contact_id: pending.source_id.clone(),
                code: pending.code.clone(),
                account_id: None,
                action: "retried".to_owned(),
                source: "operator".to_owned(),
                details: tandem_state::LogEntry::Retried {
                    error: pending.error.clone(),
                    failures: pending.failure_count,
                }
                .details(),
            });
        }
        let scope = if pending.side == "contact" {
            account_scope(&pending.code)
        } else {
            Some(contacts.clone())
        };
        if let Some(scope) = scope {
            batch
                .set_hashes
                .push((scope, pending.source_id.clone(), RECHECK));
        }
        batch
            .delete_pending
            .push((pending.code, pending.side, pending.source_id));
    }
    state.commit(batch)?;
    Ok(count)
}

/// How to settle a manual conflict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Take {
    Contact,
    Account,
    /// A value of the operator's own (text; empty clears the field).
    Value(String),
}

/// R15: settles the open conflict `id`; the next sync writes the chosen value to both
/// sides and closes the conflict.
pub fn resolve_conflict(
    state: &mut dyn StateStore,
    relations: &Relations,
    id: i64,
    take: &Take,
) -> Result<ConflictEntry, StateError> {
    let conflict = state
        .conflicts(true)?
        .into_iter()
        .find(|c| c.id == id)
        .ok_or(StateError::UnknownConflict { id })?;
    let value = match take {
        Take::Contact => conflict.contact_value.clone(),
        Take::Account => conflict.account_value.clone(),
        Take::Value(text) => Value::text(text.clone()),
    };
    let mut batch = StateBatch::default();
    batch.resolve_conflicts.push((id, value.clone()));
    // Both records are looked at again by the next run, which applies the decision.
    batch.set_hashes.push((
        Scope::new(&relations.contacts_connector, EntityKind::Contact),
        conflict.contact_id.clone(),
        RECHECK,
    ));
    if let Some(r) = relations.relations.iter().find(|r| r.code == conflict.code) {
        batch.set_hashes.push((
            Scope::new(&r.connector, r.kind),
            conflict.account_id.clone(),
            RECHECK,
        ));
    }
    state.commit(batch)?;
    Ok(ConflictEntry {
        resolution: Some(value),
        ..conflict
    })
}
