//! Which relations need matching this run, and the second pass that reads their
//! unchanged unlinked records (R4).
//!
//! Unchanged unlinked records were matched when they were last read, and nothing can
//! pair them now unless something of the relation changed: an unlinked record, a
//! dropped link, an operator request, a pending create. A quiet relation keeps no
//! unchanged record in play, so a run without changes costs the reading.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use tandem_connector::Connector;
use tandem_model::{EntityKind, FieldName, field};
use tandem_state::{Link, StateStore};

use crate::pending::Pending;

use super::{ScopeRead, UNKNOWN_KEYS, add_in_play, read_more};
use crate::error::EngineError;
use crate::plan::{Directives, lists_code, may_hold};
use crate::relation::{Relation, Relations};

/// What the first pass found, as waking reads it.
pub(crate) struct FirstPass<'r> {
    pub accounts: &'r [ScopeRead],
    pub contacts: &'r ScopeRead,
    /// Links of the accounts read, by (code, contact).
    pub account_links: &'r BTreeMap<(String, String), Link>,
    /// Links of the contacts read.
    pub contact_links: &'r [Link],
    /// The stored match keys of the changed records known before.
    pub keys: &'r StoredKeys,
}

/// The match keys stored for the records a first pass found changed and known before
/// ([`super::match_keys`]), per relation's accounts and for the contacts. Such a record
/// whose keys are the same was matched with these values when it was read: its edit
/// gives matching nothing new.
#[derive(Default)]
pub(crate) struct StoredKeys {
    accounts: Vec<HashMap<String, u64>>,
    contacts: HashMap<String, u64>,
}

impl StoredKeys {
    pub(crate) fn load(
        state: &dyn StateStore,
        accounts: &[ScopeRead],
        contacts: &ScopeRead,
    ) -> Result<StoredKeys, EngineError> {
        let of = |read: &ScopeRead| -> Result<HashMap<String, u64>, EngineError> {
            if read.key_fields.is_empty() {
                return Ok(HashMap::new());
            }
            // Looked up with their hashes as read, or asked for now.
            let mut stored = HashMap::new();
            let mut unknown: Vec<&str> = Vec::new();
            for (id, _) in read.changed().filter(|(_, new)| !*new) {
                match read.stored_keys.get(id) {
                    Some(Some(keys)) => {
                        stored.insert(id.to_owned(), *keys);
                    }
                    Some(None) => {}
                    None => unknown.push(id),
                }
            }
            if !unknown.is_empty() {
                stored.extend(state.match_keys_of(&read.scope, &unknown)?);
            }
            Ok(stored)
        };
        Ok(StoredKeys {
            accounts: accounts.iter().map(of).collect::<Result<_, _>>()?,
            contacts: of(contacts)?,
        })
    }
}

/// Whether the record `id` of `read` has the match keys stored for it.
fn same_keys(read: &ScopeRead, stored: Option<&HashMap<String, u64>>, id: &str) -> bool {
    let now = read.hashes.get(id).map(|seen| seen.keys);
    now.is_some_and(|keys| keys != UNKNOWN_KEYS) && stored.and_then(|s| s.get(id)).copied() == now
}

/// The fields the match keys of contacts hash: every field a match tier of any
/// relation uses, and those that say which relations a contact may hold (R3).
pub(crate) fn contact_key_fields(relations: &Relations) -> Arc<[FieldName]> {
    let tiers = relations.relations.iter().flat_map(|r| &r.tiers);
    let mut names: Vec<FieldName> = tiers.flat_map(|t| t.fields.iter().cloned()).collect();
    names.push(FieldName::new(field::CONTACT_TYPE));
    names.push(FieldName::new(field::COMPANY_ID));
    names.sort();
    names.dedup();
    names.into()
}

/// The fields the match keys of relation `r`'s accounts hash: every field a match tier
/// of a relation reading the same scope uses.
pub(crate) fn account_key_fields(relations: &Relations, r: usize) -> Arc<[FieldName]> {
    let this = &relations.relations[r];
    let mut names: Vec<FieldName> = (relations.relations.iter())
        .filter(|other| other.connector == this.connector && other.kind == this.kind)
        .flat_map(|other| &other.tiers)
        .flat_map(|t| t.fields.iter().cloned())
        .collect();
    names.sort();
    names.dedup();
    names.into()
}

/// How much of a relation a run matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Wake {
    /// Nothing of it changed: no matching; its standing ambiguities are reported.
    Quiet,
    /// An unlinked record that was known before changed its match keys: matched, as
    /// for `Widely`, against every unlinked record of both sides, from change-reading
    /// connectors too: matched against the changes alone, a record whose counterpart
    /// did not change would match nothing, or one of two it is ambiguous with (R4).
    Changed,
    /// A new unlinked record, a delete, a request, an operator, a pending create:
    /// matched against every unlinked record, from change-reading connectors too.
    Widely,
}

/// Per relation, how much it matches this run.
pub(crate) fn wakes(
    relations: &Relations,
    directives: &Directives,
    pending: &Pending,
    read: &FirstPass<'_>,
) -> Vec<Wake> {
    relations
        .relations
        .iter()
        .enumerate()
        .map(|(r, relation)| {
            let code = relation.code.as_str();
            let by_operator = directives.link.iter().any(|(c, _, _)| c == code)
                || directives.create.iter().any(|(c, _)| c == code)
                || directives.unlink.iter().any(|(c, _)| c == code)
                || directives.create_contact.iter().any(|(c, _)| c == code);
            let pending_here = pending.active_in(code);
            let stored = read.keys.accounts.get(r);
            let accounts = account_side_wakes(code, &read.accounts[r], stored, read.account_links);
            let contacts = contact_side_wakes(relation, read);
            if by_operator || pending_here {
                Wake::Widely
            } else {
                accounts.max(contacts)
            }
        })
        .collect()
}

/// A new unlinked account, or a delete (linked or not: it may end an ambiguity), wakes
/// the relation widely; a changed unlinked one that was known before, for full
/// listings.
fn account_side_wakes(
    code: &str,
    read: &ScopeRead,
    stored: Option<&HashMap<String, u64>>,
    links: &BTreeMap<(String, String), Link>,
) -> Wake {
    let linked: HashSet<&str> = links
        .values()
        .filter(|l| l.code == code)
        .map(|l| l.account_id.as_str())
        .collect();
    let mut unlinked = read.changed().filter(|(id, _)| !linked.contains(id));
    if !read.deleted.is_empty() || unlinked.clone().any(|(_, new)| new) {
        Wake::Widely
    } else if unlinked.any(|(id, _)| !same_keys(read, stored, id)) {
        Wake::Changed
    } else {
        Wake::Quiet
    }
}

/// A changed contact without a link under the relation: widely when it is new, asks
/// for the relation (R5) or when a contact was deleted; for full listings when it was
/// known before, may hold the relation and its match keys changed.
fn contact_side_wakes(relation: &Relation, read: &FirstPass<'_>) -> Wake {
    let (contacts, links) = (read.contacts, read.contact_links);
    let code = relation.code.as_str();
    let linked: HashSet<&str> = links
        .iter()
        .filter(|l| l.code == code)
        .map(|l| l.contact_id.as_str())
        .collect();
    let mut wake = match contacts.deleted.is_empty() {
        true => Wake::Quiet,
        false => Wake::Widely,
    };
    let changed = contacts
        .changed()
        .filter_map(|(id, new)| Some((contacts.records.get(id)?, new)))
        .filter(|(c, _)| !linked.contains(c.id()));
    for (c, new) in changed {
        if lists_code(c, code) || (new && may_hold(c, relation.kind)) {
            return Wake::Widely;
        }
        if may_hold(c, relation.kind) && !same_keys(contacts, Some(&read.keys.contacts), c.id()) {
            wake = wake.max(Wake::Changed);
        }
    }
    wake
}

/// The connectors a second pass reads from.
pub(crate) struct Sides<'c> {
    /// Per relation, its accounts' connector.
    pub accounts: Vec<Arc<dyn Connector>>,
    pub contacts: &'c dyn Connector,
}

/// Second pass, for relations that need matching: the unchanged unlinked records the
/// first pass let go by (or did not read at all). A change-reading connector sent only
/// what changed: its unchanged unlinked records are read from a full listing too, or a
/// new or changed record on the other side could not match them (and would get a
/// duplicate, R6). Accounts `freed` (per relation: their links drop this run) count
/// as unlinked.
/// Returns the contacts read only as match candidates.
pub(crate) async fn second_pass(
    state: &dyn StateStore,
    relations: &Relations,
    sides: &Sides<'_>,
    wakes: &[Wake],
    freed: &[HashSet<String>],
    accounts: &mut [ScopeRead],
    contacts: &mut ScopeRead,
) -> Result<HashSet<String>, EngineError> {
    // Records the first pass let go by (or did not read at all), or that a
    // change-reading connector did not send.
    let again = |read: &ScopeRead, connector: &dyn Connector, wake: Wake| {
        let passed = read.stats.skipped || read.stats.records > read.records.len() as u64;
        wake != Wake::Quiet && (passed || connector.capabilities().incremental)
    };
    let mut linked_contacts: Vec<Option<HashSet<String>>> = vec![None; accounts.len()];
    for (r, relation) in relations.relations.iter().enumerate() {
        let connector = &sides.accounts[r];
        let accounts_again = again(&accounts[r], &**connector, wakes[r]);
        if !accounts_again && !again(contacts, sides.contacts, wakes[r]) {
            continue;
        }
        let (linked_here, linked_accounts) = state.linked_ids(&relation.code)?;
        linked_contacts[r] = Some(linked_here);
        if accounts_again {
            let read = &mut accounts[r];
            let more = read_more(&relation.connector, &**connector, relation.kind, |a| {
                !read.records.contains_key(&a.id)
                    && (!linked_accounts.contains(&a.id) || freed[r].contains(&a.id))
            })
            .await?;
            add_in_play(read, more);
        }
    }
    let mut match_only = HashSet::new();
    if linked_contacts.iter().any(Option::is_some) {
        let kinds: Vec<EntityKind> = relations.relations.iter().map(|r| r.kind).collect();
        let unlinked = |c: &tandem_model::Record| {
            linked_contacts.iter().zip(&kinds).any(|(linked, kind)| {
                linked
                    .as_ref()
                    .is_some_and(|l| may_hold(c, *kind) && !l.contains(&c.id))
            })
        };
        let name = &relations.contacts_connector;
        let more = read_more(name, sides.contacts, EntityKind::Contact, |c| {
            !contacts.records.contains_key(&c.id) && unlinked(c)
        })
        .await?;
        match_only.extend(more.iter().map(|c| c.id.clone()));
        add_in_play(contacts, more);
    }
    Ok(match_only)
}
