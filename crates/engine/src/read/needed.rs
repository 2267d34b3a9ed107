//! Records a run needs whatever their connectors send (R17, R18).

use std::collections::{BTreeSet, HashSet};

use tandem_connector::Connector;
use tandem_model::EntityKind;
use tandem_state::{Side, StateStore};
use tracing::info;

use super::{ScopeRead, read_error, record_hash};
use crate::error::EngineError;
use crate::pending::Pending;
use crate::plan::Directives;
use crate::relation::Relations;

/// Records a run needs whether or not they changed: named by an operator, or with
/// work left over from an earlier run (an intent a run cut short, a create or link to
/// try again, a record marked to be looked at again).
pub(crate) struct Needed {
    /// Per relation, account ids.
    pub accounts: Vec<HashSet<String>>,
    pub contacts: HashSet<String>,
    /// The records of links a run left unfinished and the accounts creates started from
    /// (R18): a complete read that does not return one means it is gone, although no
    /// hash of it may ever have been stored.
    pub linked_accounts: Vec<HashSet<String>>,
    pub linked_contacts: HashSet<String>,
}

impl Needed {
    pub(crate) fn of(
        relations: &Relations,
        directives: &Directives,
        state: &dyn StateStore,
        pending: &Pending,
    ) -> Result<Needed, EngineError> {
        let mut needed = Needed {
            accounts: vec![HashSet::new(); relations.relations.len()],
            contacts: HashSet::new(),
            linked_accounts: vec![HashSet::new(); relations.relations.len()],
            linked_contacts: HashSet::new(),
        };
        let mut account = |code: &str, id: &str| {
            if let Some(r) = relations.index_of(code) {
                needed.accounts[r].insert(id.to_owned());
            }
        };
        for (code, _, a) in &directives.link {
            account(code, a);
        }
        for (code, a) in &directives.create_contact {
            account(code, a);
        }
        let links = state.links_with_intent()?;
        for link in &links {
            account(&link.code, &link.account_id);
        }
        for link in &links {
            if let Some(r) = relations.index_of(&link.code) {
                needed.linked_accounts[r].insert(link.account_id.clone());
            }
        }
        needed
            .linked_contacts
            .extend(links.iter().map(|l| l.contact_id.clone()));
        // The account a create started from: gone if a complete read lacks it (no hash
        // of it may be stored yet).
        let creates = pending.creates.iter().filter(|p| !p.parked);
        for p in creates.clone().filter(|p| p.side == Side::Contact) {
            if let Some(r) = relations.index_of(&p.code) {
                needed.linked_accounts[r].insert(p.source_id.clone());
            }
        }
        // A contact still to lose a code (R9) is read until the write lands.
        let losing = state.codes_lost()?.into_iter().map(|(_, contact)| contact);
        needed.contacts.extend(losing);
        for p in creates.clone().filter(|p| p.side == Side::Contact) {
            account(&p.code, &p.source_id);
        }
        for p in pending.links.iter().filter(|p| !p.parked) {
            account(&p.code, &p.account_id);
        }
        // The record a create sent with its id made, found again by it (R18).
        for p in creates.clone() {
            match (&p.record_id, p.side) {
                (Some(id), Side::Account) => account(&p.code, id),
                (Some(id), Side::Contact) => {
                    needed.contacts.insert(id.clone());
                }
                (None, _) => {}
            }
        }
        needed.contacts.extend(
            (directives.link.iter().map(|(_, c, _)| c))
                .chain(directives.create.iter().map(|(_, c)| c))
                .chain(directives.unlink.iter().map(|(_, c)| c))
                .chain(links.iter().map(|l| &l.contact_id))
                .chain(
                    creates
                        .filter(|p| p.side == Side::Account)
                        .map(|p| &p.source_id),
                )
                .chain(
                    pending
                        .refused
                        .iter()
                        .filter(|p| !p.parked)
                        .map(|p| &p.contact_id),
                )
                .chain(
                    pending
                        .links
                        .iter()
                        .filter(|p| !p.parked)
                        .map(|p| &p.contact_id),
                )
                .cloned(),
        );
        Ok(needed)
    }

    /// For the matcher of partitioned runs: the linked records another partition found
    /// deleted and marked to be looked at again (`Cut::forgets`: their unlink is the
    /// matcher's). They are read (by id, from a change-reading connector) and gone if a
    /// complete read lacks them. The matcher may never have remembered them: a link
    /// whose intent another partition settled left the record's hash in that
    /// partition's scope alone, and the link then outlived its record.
    pub(crate) fn marked_by_others(
        &mut self,
        relations: &Relations,
        state: &dyn StateStore,
        partition: crate::Partition,
    ) -> Result<(), EngineError> {
        let marked = |connector: &str, kind: EntityKind| -> Result<Vec<String>, EngineError> {
            let own = partition.scope(connector, kind);
            let mut ids = Vec::new();
            for scope in relations.scopes_of(connector, kind) {
                if scope != own {
                    ids.extend(state.rechecks(&scope)?);
                }
            }
            Ok(ids)
        };
        for (r, relation) in relations.relations.iter().enumerate() {
            let ids = marked(&relation.connector, relation.kind)?;
            let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
            for link in state.links_of_accounts(&relation.code, &ids)? {
                self.accounts[r].insert(link.account_id.clone());
                self.linked_accounts[r].insert(link.account_id);
            }
        }
        let ids = marked(&relations.contacts_connector, EntityKind::Contact)?;
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        for link in state.links_of_contacts(&ids)? {
            self.contacts.insert(link.contact_id.clone());
            self.linked_contacts.insert(link.contact_id);
        }
        Ok(())
    }
}

/// Marks as deleted the records of `known` that a complete read did not return: a full
/// listing that completed, or a read by id, holds every one that exists (R16).
pub(crate) fn gone_if_missing(read: &mut ScopeRead, known: &HashSet<String>) {
    if read.stats.skipped {
        return;
    }
    for id in known {
        if !read.records.contains_key(id) && read.deleted.insert(id.clone()) {
            read.stats.deleted += 1;
        }
    }
}

/// A change-reading connector sends what changed; the records the run needs beyond
/// that (`wanted`, and those marked to be looked at again) are read by id. A full
/// listing already held every record there is.
///
/// With `rechecks_gone`, a record marked to be looked at again that the connector no
/// longer has is deleted: a partition keeps a deleted record so marked until the
/// matcher unlinks it, and the change that said it was deleted is behind its cursor.
pub(crate) async fn fetch_missing(
    state: &dyn StateStore,
    connector: &dyn Connector,
    read: &mut ScopeRead,
    wanted: &HashSet<String>,
    rechecks_gone: bool,
) -> Result<(), EngineError> {
    if !connector.capabilities().incremental || read.stats.skipped {
        return Ok(());
    }
    let rechecks = state.rechecks(&read.scope)?;
    let missing: BTreeSet<&str> = wanted
        .iter()
        .chain(&rechecks)
        .map(String::as_str)
        .filter(|id| !read.records.contains_key(id) && !read.deleted.contains(*id))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let ids: Vec<&str> = missing.into_iter().collect();
    let (connector_name, kind) = (read.stats.connector.clone(), read.scope.kind);
    let records = connector
        .read_ids(kind, &ids)
        .await
        .map_err(read_error(&connector_name, kind))?;
    let stored = state.hashes_of(&read.scope, &ids)?;
    info!(
        connector = connector_name,
        kind = kind.plural(),
        asked = ids.len(),
        found = records.len(),
        "read by id: records the run needs"
    );
    if rechecks_gone {
        let found: HashSet<&str> = records.iter().map(|r| r.id.as_str()).collect();
        let marked: HashSet<&str> = rechecks.iter().map(String::as_str).collect();
        let gone = (ids.iter()).filter(|id| marked.contains(*id) && !found.contains(*id));
        let gone: Vec<String> = gone.map(|id| (*id).to_owned()).collect();
        read.stats.deleted += gone.len() as u64;
        read.deleted.extend(gone);
    }
    for record in &records {
        let hash = record_hash(&record.fields, record.version.as_deref());
        let change = super::Change::of(stored.get(&record.id).copied(), hash);
        let keys = super::match_keys(&record.fields, &read.key_fields);
        let seen = super::Seen::read(hash, keys, change);
        read.hashes.insert(&record.id, seen);
    }
    read.records.extend(records);
    read.stats.in_play = read.records.len() as u64;
    Ok(())
}
