//! The pure planning core: from what was read and what the state remembers, decide
//! every write, link and unlink of a run. No IO; `tandem plan` prints this and `tandem
//! sync` applies it, so both report the same actions.
//!
//! The contact is the hub (R7): for each contact, all its links are merged at once.
//! Per shared field, each side's value is compared with the link's baseline (R14): a
//! side *changed* the field when its value differs from the baseline. One change
//! wins outright; competing changes are a conflict settled by the relation's policy
//! (R15). The agreed value then goes to every side that does not have it yet.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use tandem_model::{ContactType, EntityKind, FieldName, Fields, Record, Timestamp, Value, field};
use tandem_state::Link;

use crate::config::{ConflictPolicy, InitialSide};
use crate::matching::{Ambiguity, match_records};
use crate::relation::{Relation, Relations};

/// What was read this run and what the state holds about it.
///
/// Invariant: `links` holds every link of every contact in `contacts`, of every
/// account in `accounts`, and of every contact such a link points at, so a record
/// without a link here has none under that code.
#[derive(Debug, Default)]
pub struct PlanInput {
    /// Contacts in play: changed since the last run, or unlinked under some code.
    pub contacts: BTreeMap<String, Record>,
    /// Contacts deleted (tombstones, or missing from a completed full listing).
    pub deleted_contacts: BTreeSet<String>,
    /// Per relation, in config order.
    pub accounts: Vec<AccountInput>,
    pub links: Vec<Link>,
    /// Per relation: how many links the state held before the run.
    pub link_counts: Vec<u64>,
}

#[derive(Debug, Default)]
pub struct AccountInput {
    pub records: BTreeMap<String, Record>,
    pub deleted: BTreeSet<String>,
}

/// A field's value before and after.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldChange {
    pub field: FieldName,
    pub old: Value,
    pub new: Value,
}

/// Two or more sides changed one field since the baseline (R15).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Conflict {
    pub field: FieldName,
    pub base: Value,
    /// The contact's value, when the contact changed the field.
    pub contact: Option<Value>,
    /// (code, account id, value) of each account that changed the field.
    pub accounts: Vec<(String, String, Value)>,
    /// `contact`, or the code of the relation whose account won.
    pub winner: String,
    pub value: Value,
}

/// One contact and everything that happens to it and its accounts.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HubPlan {
    pub contact_id: String,
    #[serde(skip)]
    pub contact_version: Option<String>,
    pub contact_changes: Vec<FieldChange>,
    pub pairs: Vec<PairPlan>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub conflicts: Vec<Conflict>,
    /// The contact's fields after the write, when the whole record was read (to
    /// remember its content hash).
    #[serde(skip)]
    pub contact_after: Option<Fields>,
}

/// One link of a hub: its account's writes and its new baseline.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PairPlan {
    pub code: String,
    #[serde(skip)]
    pub relation: usize,
    pub account_id: String,
    #[serde(skip)]
    pub account_version: Option<String>,
    /// For a link made this run: the 1-based match tier.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub matched_by_tier: Option<usize>,
    pub account_changes: Vec<FieldChange>,
    /// Whether this run changes either side of the pair.
    pub updated: bool,
    #[serde(skip)]
    pub baseline: Fields,
    #[serde(skip)]
    pub previous: Option<Link>,
    #[serde(skip)]
    pub account_after: Option<Fields>,
}

/// A new company contact for an account without one (R6).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ContactCreate {
    pub code: String,
    #[serde(skip)]
    pub relation: usize,
    pub account_id: String,
    #[serde(skip)]
    pub account_version: Option<String>,
    pub fields: Fields,
    /// The shared fields the new link starts from.
    #[serde(skip)]
    pub baseline: Fields,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UnlinkReason {
    /// R12: the contact is gone; the account stays.
    ContactDeleted,
    /// R13: the account is gone; the contact stays.
    AccountDeleted,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Unlink {
    pub code: String,
    pub contact_id: String,
    pub account_id: String,
    pub reason: UnlinkReason,
}

/// Per relation counts of a plan or a run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RelationCounts {
    pub code: String,
    /// Links made by match rules.
    pub linked: u64,
    /// Records created (contacts for accounts, R6).
    pub created: u64,
    /// Pairs where this run changed either side.
    pub updated: u64,
    /// Linked pairs left as they were.
    pub unchanged: u64,
    /// Links dropped because a side was deleted.
    pub unlinked: u64,
    pub conflicts: u64,
    pub ambiguous: u64,
    /// Pairs or creates whose writes failed.
    pub failed: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Plan {
    pub hubs: Vec<HubPlan>,
    pub creates: Vec<ContactCreate>,
    pub unlinks: Vec<Unlink>,
    pub ambiguous: Vec<Ambiguity>,
    pub counts: Vec<RelationCounts>,
}

impl Plan {
    /// Number of record writes the plan makes.
    pub fn write_count(&self) -> usize {
        self.creates.len()
            + self
                .hubs
                .iter()
                .map(|h| usize::from(!h.contact_changes.is_empty()) + h.pairs.iter().filter(|p| !p.account_changes.is_empty()).count())
                .sum::<usize>()
    }
}

/// Whether a contact may hold a relation of `kind` directly (R3): companies may; a
/// person without a company may be a customer; any other person resolves through its
/// company.
pub fn may_hold(contact: &Record, kind: EntityKind) -> bool {
    match ContactType::from_field(contact.fields.text(field::CONTACT_TYPE)) {
        ContactType::Company => true,
        ContactType::Person => kind == EntityKind::Customer && contact.fields.text(field::COMPANY_ID).is_none(),
    }
}

/// Plans a run. Deterministic: the same input gives the same plan.
pub fn plan(relations: &Relations, input: &PlanInput) -> Plan {
    let n = relations.relations.len();
    let mut plan = Plan {
        counts: relations
            .relations
            .iter()
            .map(|r| RelationCounts {
                code: r.code.clone(),
                ..RelationCounts::default()
            })
            .collect(),
        ..Plan::default()
    };
    let empty = AccountInput::default();
    let accounts = |r: usize| input.accounts.get(r).unwrap_or(&empty);

    // Live links by contact, and the set of linked accounts per relation. Links of
    // codes no longer configured are left alone (R1).
    let mut by_contact: BTreeMap<&str, Vec<(usize, &Link)>> = BTreeMap::new();
    let mut linked_accounts: Vec<BTreeSet<&str>> = vec![BTreeSet::new(); n];
    for link in &input.links {
        let Some(r) = relations.index_of(&link.code) else { continue };
        let reason = if input.deleted_contacts.contains(&link.contact_id) {
            Some(UnlinkReason::ContactDeleted)
        } else if accounts(r).deleted.contains(&link.account_id) {
            Some(UnlinkReason::AccountDeleted)
        } else {
            None
        };
        if let Some(reason) = reason {
            plan.unlinks.push(Unlink {
                code: link.code.clone(),
                contact_id: link.contact_id.clone(),
                account_id: link.account_id.clone(),
                reason,
            });
            plan.counts[r].unlinked += 1;
            continue;
        }
        linked_accounts[r].insert(&link.account_id);
        by_contact.entry(&link.contact_id).or_default().push((r, link));
    }

    // Match unlinked records per relation (R4); create contacts for the rest (R6).
    let mut new_links: BTreeMap<&str, Vec<(usize, &str, usize)>> = BTreeMap::new();
    for (r, relation) in relations.relations.iter().enumerate() {
        let pool_contacts: Vec<&Record> = input
            .contacts
            .values()
            .filter(|c| !c.deleted && may_hold(c, relation.kind))
            .filter(|c| !by_contact.get(c.id.as_str()).is_some_and(|links| links.iter().any(|(lr, _)| *lr == r)))
            .collect();
        let pool_accounts: Vec<&Record> = accounts(r)
            .records
            .values()
            .filter(|a| !a.deleted && !linked_accounts[r].contains(a.id.as_str()))
            .collect();
        if pool_accounts.is_empty() {
            continue;
        }
        let outcome = match_records(&relation.code, &relation.tiers, &pool_contacts, &pool_accounts);
        for (contact_id, account_id, tier) in &outcome.matches {
            let contact_id = input.contacts.get_key_value(contact_id).map(|(k, _)| k.as_str()).unwrap_or_default();
            let account_id = accounts(r).records.get_key_value(account_id).map(|(k, _)| k.as_str()).unwrap_or_default();
            new_links.entry(contact_id).or_default().push((r, account_id, *tier));
        }
        plan.counts[r].linked += outcome.matches.len() as u64;
        plan.counts[r].ambiguous += outcome.ambiguous.len() as u64;
        plan.ambiguous.extend(outcome.ambiguous);
        if relation.create_contacts {
            for account_id in outcome.unmatched_accounts {
                let account = &accounts(r).records[&account_id];
                let baseline = account.fields.project(&names(&relation.shared));
                let mut fields = baseline.clone();
                fields.set(field::CONTACT_TYPE, Value::text(ContactType::Company.as_str()));
                plan.creates.push(ContactCreate {
                    code: relation.code.clone(),
                    relation: r,
                    account_id,
                    account_version: account.version.clone(),
                    fields,
                    baseline,
                });
                plan.counts[r].created += 1;
            }
        }
    }

    // The hubs: every contact with a link or a new link that involves a record read
    // this run.
    let mut hub_ids: BTreeSet<&str> = new_links.keys().copied().collect();
    for (contact_id, links) in &by_contact {
        if input.contacts.contains_key(*contact_id)
            || links.iter().any(|(r, l)| accounts(*r).records.contains_key(&l.account_id))
        {
            hub_ids.insert(contact_id);
        }
    }
    for contact_id in hub_ids {
        let mut pairs: Vec<PairInput> = Vec::new();
        for (r, link) in by_contact.get(contact_id).into_iter().flatten() {
            pairs.push(PairInput {
                relation: *r,
                account_id: &link.account_id,
                account: accounts(*r).records.get(&link.account_id),
                link: Some(link),
                tier: None,
            });
        }
        for (r, account_id, tier) in new_links.get(contact_id).into_iter().flatten() {
            pairs.push(PairInput {
                relation: *r,
                account_id,
                account: accounts(*r).records.get(*account_id),
                link: None,
                tier: Some(*tier),
            });
        }
        pairs.sort_by_key(|p| p.relation);
        let contact = input.contacts.get(contact_id);
        if let Some(hub) = plan_hub(relations, contact_id, contact, &pairs) {
            for pair in &hub.pairs {
                let counts = &mut plan.counts[pair.relation];
                if pair.updated && pair.previous.is_some() {
                    counts.updated += 1;
                }
            }
            for conflict in &hub.conflicts {
                for pair in &pairs {
                    let code = &relations.relations[pair.relation].code;
                    if conflict.accounts.iter().any(|(c, a, _)| c == code && a == pair.account_id) {
                        plan.counts[pair.relation].conflicts += 1;
                    }
                }
            }
            plan.hubs.push(hub);
        }
    }
    for (r, counts) in plan.counts.iter_mut().enumerate() {
        let before = input.link_counts.get(r).copied().unwrap_or(0);
        counts.unchanged = before.saturating_sub(counts.updated + counts.unlinked);
    }
    plan
}

struct PairInput<'a> {
    relation: usize,
    account_id: &'a str,
    account: Option<&'a Record>,
    link: Option<&'a Link>,
    tier: Option<usize>,
}

fn names(list: &[FieldName]) -> Vec<&str> {
    list.iter().map(FieldName::as_str).collect()
}

/// Merges one contact with all its pairs. `None` when nothing is to be done.
fn plan_hub(relations: &Relations, contact_id: &str, contact: Option<&Record>, pairs: &[PairInput]) -> Option<HubPlan> {
    let rel = |p: &PairInput| -> &Relation { &relations.relations[p.relation] };
    let universe: BTreeSet<&FieldName> = pairs.iter().flat_map(|p| rel(p).shared.iter()).collect();
    // The contact's stored version: when it was not read, the newest link's.
    let contact_version = match contact {
        Some(c) => c.version.clone(),
        None => pairs
            .iter()
            .filter_map(|p| p.link)
            .max_by_key(|l| l.synced_at)
            .and_then(|l| l.contact_version.clone()),
    };
    let contact_modified = contact.and_then(|c| c.modified_at);

    let mut contact_changes = Vec::new();
    let mut account_changes: Vec<Vec<FieldChange>> = vec![Vec::new(); pairs.len()];
    let mut baselines: Vec<Fields> = vec![Fields::new(); pairs.len()];
    let mut sourced: Vec<bool> = vec![false; pairs.len()];
    let mut conflicts = Vec::new();

    for f in universe {
        let name = f.as_str();
        let involved: Vec<usize> = (0..pairs.len()).filter(|&i| rel(&pairs[i]).shared.contains(f)).collect();
        let base = |i: usize| -> &Value { pairs[i].link.map(|l| l.baseline.value(name)).unwrap_or(&Value::Null) };
        let account_value = |i: usize| -> Value {
            match pairs[i].account {
                Some(a) => a.fields.value(name).clone(),
                // Not read this run, so unchanged since it was synchronised.
                None => base(i).clone(),
            }
        };
        let contact_value: Value = match contact {
            Some(c) => c.fields.value(name).clone(),
            None => involved
                .iter()
                .find(|&&i| pairs[i].link.is_some())
                .map(|&i| base(i).clone())
                .unwrap_or(Value::Null),
        };
        let contact_owns = relations.contact_preserve.contains(f);
        let owner_pairs: Vec<usize> = involved.iter().copied().filter(|&i| rel(&pairs[i]).preserve.contains(f)).collect();

        let value = if contact_owns {
            contact_value.clone()
        } else if let Some(&owner) = owner_pairs.first() {
            account_value(owner)
        } else {
            // Step 1: the contact and its existing links, a three-way merge.
            let existing: Vec<usize> = involved.iter().copied().filter(|&i| pairs[i].link.is_some()).collect();
            let contact_changed = contact.is_some() && existing.iter().any(|&i| &contact_value != base(i));
            let proposals: Vec<(usize, Value)> = existing
                .iter()
                .map(|&i| (i, account_value(i)))
                .filter(|(i, v)| v != base(*i))
                .collect();
            let mut value = contact_value.clone();
            // Competing changes are a conflict; the same change made on several sides is not.
            let mut proposed = proposals.iter().map(|(_, v)| v).chain(contact_changed.then_some(&contact_value));
            let first = proposed.next();
            let agreed = proposed.all(|v| Some(v) == first);
            if agreed {
                if let Some((i, v)) = proposals.first() {
                    value = v.clone();
                    sourced[*i] = true;
                }
            } else {
                let newest = |candidates: &[&(usize, Value)]| -> (usize, Value) {
                    let mut best = candidates[0];
                    for c in &candidates[1..] {
                        let m = pairs[c.0].account.and_then(|a| a.modified_at);
                        let best_m = pairs[best.0].account.and_then(|a| a.modified_at);
                        if m > best_m {
                            best = c;
                        }
                    }
                    best.clone()
                };
                let winner = if contact_changed {
                    let beating: Vec<&(usize, Value)> = proposals
                        .iter()
                        .filter(|(i, v)| {
                            v != &contact_value
                                && account_beats_contact(
                                    rel(&pairs[*i]).conflict,
                                    pairs[*i].account.and_then(|a| a.modified_at),
                                    contact_modified,
                                )
                        })
                        .collect();
                    if beating.is_empty() { None } else { Some(newest(&beating)) }
                } else {
                    Some(newest(&proposals.iter().collect::<Vec<_>>()))
                };
                let winner_name = match &winner {
                    Some((i, v)) => {
                        value = v.clone();
                        sourced[*i] = true;
                        rel(&pairs[*i]).code.clone()
                    }
                    None => "contact".to_owned(),
                };
                conflicts.push(Conflict {
                    field: f.clone(),
                    base: existing.first().map(|&i| base(i).clone()).unwrap_or(Value::Null),
                    contact: contact_changed.then(|| contact_value.clone()),
                    accounts: proposals
                        .iter()
                        .map(|(i, v)| (rel(&pairs[*i]).code.clone(), pairs[*i].account_id.to_owned(), v.clone()))
                        .collect(),
                    winner: winner_name,
                    value: value.clone(),
                });
            }
            // Step 2: new links start from the contact's values or the account's (R4);
            // an empty value never overwrites a filled one.
            for &i in involved.iter().filter(|&&i| pairs[i].link.is_none()) {
                let a = account_value(i);
                let take_account = match rel(&pairs[i]).initial {
                    InitialSide::Contact => value.is_empty() && !a.is_empty(),
                    InitialSide::Account => !a.is_empty(),
                };
                if take_account && a != value {
                    value = a;
                    sourced[i] = true;
                }
            }
            value
        };

        if !contact_owns && value != contact_value {
            contact_changes.push(FieldChange {
                field: f.clone(),
                old: contact_value.clone(),
                new: value.clone(),
            });
        }
        for &i in &involved {
            let a = account_value(i);
            let owns = owner_pairs.contains(&i);
            if !owns && value != a {
                account_changes[i].push(FieldChange {
                    field: f.clone(),
                    old: a.clone(),
                    new: value.clone(),
                });
            }
            baselines[i].set(f.clone(), if owns { a } else { value.clone() });
        }
    }

    let contact_after = contact.map(|c| {
        let mut fields = c.fields.clone();
        for change in &contact_changes {
            fields.set(change.field.clone(), change.new.clone());
        }
        fields
    });
    let mut out_pairs = Vec::new();
    for (i, p) in pairs.iter().enumerate() {
        let changes = std::mem::take(&mut account_changes[i]);
        let updated = !changes.is_empty() || (sourced[i] && !contact_changes.is_empty());
        let account_version = match p.account {
            Some(a) => a.version.clone(),
            None => p.link.and_then(|l| l.account_version.clone()),
        };
        let baseline = std::mem::take(&mut baselines[i]);
        let unchanged_link = p.link.is_some_and(|l| {
            l.baseline == baseline
                && l.account_version == account_version
                && (contact.is_none() || l.contact_version == contact_version)
                && l.failure_count == 0
        });
        if p.tier.is_none() && !updated && contact_changes.is_empty() && unchanged_link {
            continue;
        }
        let account_after = p.account.map(|a| {
            let mut fields = a.fields.clone();
            for change in &changes {
                fields.set(change.field.clone(), change.new.clone());
            }
            fields
        });
        out_pairs.push(PairPlan {
            code: rel(p).code.clone(),
            relation: p.relation,
            account_id: p.account_id.to_owned(),
            account_version,
            matched_by_tier: p.tier,
            account_changes: changes,
            updated,
            baseline,
            previous: p.link.cloned(),
            account_after,
        });
    }
    if out_pairs.is_empty() && contact_changes.is_empty() {
        return None;
    }
    Some(HubPlan {
        contact_id: contact_id.to_owned(),
        contact_version,
        contact_changes,
        pairs: out_pairs,
        conflicts,
        contact_after,
    })
}

fn account_beats_contact(policy: ConflictPolicy, account: Option<Timestamp>, contact: Option<Timestamp>) -> bool {
    match policy {
        ConflictPolicy::ContactWins => false,
        ConflictPolicy::AccountWins => true,
        ConflictPolicy::Newest => matches!((account, contact), (Some(a), Some(c)) if a > c),
    }
}
