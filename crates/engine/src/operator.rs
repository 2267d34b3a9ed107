//! Operator actions that need no connector: resolving a contact to its account (R10),
//! retrying parked work (R17) and deciding a manual conflict (R15). Links made or
//! dropped by hand go through a run (`Engine::sync_with`), because they write to the
//! systems.

use serde::Serialize;
use tandem_model::{EntityKind, Timestamp, Value};
use tandem_state::{
    ConflictEntry, Interaction, Link, LogEntry, PendingCreate, PendingLink, Scope, Side,
    StateBatch, StateError, StateStore,
};

use crate::pending::Pending;
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

/// R17: puts parked pairs, creates and requests back into the next run. Returns how
/// many.
pub fn retry(
    state: &mut dyn StateStore,
    relations: &Relations,
    target: &RetryTarget,
) -> Result<usize, StateError> {
    let mut retry = Retry {
        relations,
        target,
        contacts: relations.scopes_of(&relations.contacts_connector, EntityKind::Contact),
        batch: StateBatch::default(),
        count: 0,
    };
    for link in state.parked_links()? {
        retry.link(link);
    }
    let pending = Pending::load(&*state)?;
    for create in pending.creates.into_iter().filter(|p| p.parked) {
        retry.create(create);
    }
    for request in pending.refused.into_iter().filter(|p| p.parked) {
        if retry.wanted(&request.code, &[&request.contact_id]) {
            retry.contact_again(&request.contact_id);
            let entry = LogEntry::Retried {
                error: Some(request.error),
                failures: request.failure_count,
            };
            retry.log(&request.code, &request.contact_id, &entry);
            retry
                .batch
                .delete_refused
                .push((request.code, request.contact_id));
        }
    }
    for link in pending.links.into_iter().filter(|p| p.parked) {
        if retry.wanted(&link.code, &[&link.contact_id, &link.account_id]) {
            retry.contact_again(&link.contact_id);
            retry.account_again(&link.code, &link.account_id);
            let entry = LogEntry::Retried {
                error: link.error.clone(),
                failures: link.failure_count,
            };
            retry.log(&link.code, &link.contact_id, &entry);
            let PendingLink {
                code, contact_id, ..
            } = link;
            retry.batch.delete_pending_links.push((code, contact_id));
        }
    }
    let count = retry.count;
    state.commit(retry.batch)?;
    Ok(count)
}

/// The state changes `retry` makes: each retried record is looked at again (R17).
struct Retry<'a> {
    relations: &'a Relations,
    target: &'a RetryTarget,
    /// Where the state keeps hashes of contacts: marks go to each.
    contacts: Vec<Scope>,
    batch: StateBatch,
    count: usize,
}

impl Retry<'_> {
    fn wanted(&self, code: &str, ids: &[&str]) -> bool {
        match self.target {
            RetryTarget::All => true,
            RetryTarget::Record { code: c, id } => c == code && ids.contains(&id.as_str()),
        }
    }

    fn account_scopes(&self, code: &str) -> Vec<Scope> {
        let relation = self.relations.relations.iter().find(|r| r.code == code);
        relation.map_or_else(Vec::new, |r| self.relations.scopes_of(&r.connector, r.kind))
    }

    /// Counts one retried entry and marks its contact to be read again.
    fn contact_again(&mut self, contact_id: &str) {
        self.count += 1;
        for scope in self.contacts.clone() {
            let recheck = (scope, contact_id.to_owned(), RECHECK);
            self.batch.set_hashes.push(recheck);
        }
    }

    fn account_again(&mut self, code: &str, account_id: &str) {
        for scope in self.account_scopes(code) {
            let recheck = (scope, account_id.to_owned(), RECHECK);
            self.batch.set_hashes.push(recheck);
        }
    }

    /// Only a contact already known can have a log (R11).
    fn log(&mut self, code: &str, contact_id: &str, entry: &LogEntry) {
        self.batch.interactions.push(Interaction {
            id: 0,
            at: Timestamp::now(),
            run_id: None,
            contact_id: contact_id.to_owned(),
            code: code.to_owned(),
            account_id: None,
            action: "retried".to_owned(),
            source: "operator".to_owned(),
            details: entry.details(),
        });
    }

    fn link(&mut self, link: Link) {
        if !self.wanted(&link.code, &[&link.contact_id, &link.account_id]) {
            return;
        }
        self.contact_again(&link.contact_id);
        self.account_again(&link.code, &link.account_id);
        self.batch.upsert_links.push(Link {
            parked: false,
            failure_count: 0,
            last_error: None,
            ..link
        });
    }

    fn create(&mut self, create: PendingCreate) {
        if !self.wanted(&create.code, &[&create.source_id]) {
            return;
        }
        match create.side {
            // The account it is created from is read again.
            Side::Contact => {
                self.count += 1;
                self.account_again(&create.code, &create.source_id);
            }
            Side::Account => {
                self.contact_again(&create.source_id);
                let entry = LogEntry::Retried {
                    error: create.error.clone(),
                    failures: create.failure_count,
                };
                self.log(&create.code, &create.source_id, &entry);
            }
        }
        let PendingCreate {
            code,
            side,
            source_id,
            ..
        } = create;
        self.batch.delete_pending.push((code, side, source_id));
    }
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
    for scope in relations.scopes_of(&relations.contacts_connector, EntityKind::Contact) {
        let recheck = (scope, conflict.contact_id.clone(), RECHECK);
        batch.set_hashes.push(recheck);
    }
    if let Some(r) = relations.relations.iter().find(|r| r.code == conflict.code) {
        for scope in relations.scopes_of(&r.connector, r.kind) {
            let recheck = (scope, conflict.account_id.clone(), RECHECK);
            batch.set_hashes.push(recheck);
        }
    }
    state.commit(batch)?;
    Ok(ConflictEntry {
        resolution: Some(value),
        ..conflict
    })
}
