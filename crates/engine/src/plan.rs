//! The pure planning core: from what was read and what the state remembers, decide
//! every write, link and unlink of a run. No IO; `tandem plan` prints this and `tandem
//! sync` applies it, so both report the same actions.
//!
//! The contact is the hub (R7): for each contact, all its links are merged at once.
//! Per shared field, each side's value is compared with the link's baseline (R14): a
//! side *changed* the field when its value differs from the baseline. One change
//! wins outright; competing changes are a conflict settled by the relation's policy
//! (R15). The agreed value then goes to every side that does not have it yet.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use serde::Serialize;
use tandem_model::{ContactType, EntityKind, FieldName, Fields, Record, Timestamp, Value, field};
use tandem_state::{ConflictEntry, Intent, Link, PendingCreate};

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
    /// Contacts in play: changed since the last run, unlinked under some code, or
    /// needed by this run.
    pub contacts: BTreeMap<String, Record>,
    /// Contacts deleted (tombstones, or missing from a completed full listing).
    pub deleted_contacts: BTreeSet<String>,
    /// Contacts in `contacts` only as match candidates: unchanged since the last run,
    /// read again because their relation needs matching. Unless they get a new link,
    /// nothing about them is merged or reflected: both were settled when they were
    /// last read.
    pub match_only: HashSet<String>,
    /// Per relation, in config order.
    pub accounts: Vec<AccountInput>,
    pub links: Vec<Link>,
    /// Per relation: how many links the state held before the run.
    pub link_counts: Vec<u64>,
    /// Open conflicts of the `manual` policy, with their resolutions if any.
    pub conflicts: Vec<ConflictEntry>,
    /// Creates started by an earlier run and not known to have finished.
    pub pending: Vec<PendingCreate>,
    /// (code, contact, account) pairs an operator unlinked: never linked again by match
    /// rules.
    pub unlinked_pairs: Vec<(String, String, String)>,
    /// Per relation: accounts whose contact the user deleted, which get no new contact
    /// unless asked (R12 over R6).
    pub contact_deleted: Vec<HashSet<String>>,
    /// What an operator asked for on this run.
    pub directives: Directives,
}

#[derive(Debug, Default)]
pub struct AccountInput {
    pub records: BTreeMap<String, Record>,
    pub deleted: BTreeSet<String>,
}

/// Operator requests carried out by a run (`tandem link`, `create`, `unlink`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Directives {
    /// (code, contact id, account id)
    pub link: Vec<(String, String, String)>,
    /// (code, contact id)
    pub create: Vec<(String, String)>,
    /// (code, contact id)
    pub unlink: Vec<(String, String)>,
    /// (code, account id): `tandem create-contact`, a new contact for an account (R6),
    /// also for one whose contact was deleted.
    pub create_contact: Vec<(String, String)>,
}

impl Directives {
    pub fn is_empty(&self) -> bool {
        self.link.is_empty()
            && self.create.is_empty()
            && self.unlink.is_empty()
            && self.create_contact.is_empty()
    }
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
    pub policy: ConflictPolicy,
    /// `contact`, the code of the relation whose account won, or `manual` when the
    /// pair waits in the conflict queue.
    pub winner: String,
    /// The value the sides end up with (for `manual`, the contact's).
    pub value: Value,
}

/// How a link came to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "by")]
pub enum NewLink {
    /// By a match tier (1-based) (R4).
    Match { tier: usize },
    /// By `tandem link`.
    Operator,
    /// A record this deployment created in a run that was cut short, found again.
    Recovered,
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
    /// The content hash of the contact's fields after the write, when the whole
    /// record was read (remembered, so the next run sees no change). A hash, not the
    /// fields: a million hubs must not hold a second copy of every contact.
    #[serde(skip)]
    pub contact_after_hash: Option<u64>,
    /// The contact's links that are not among `pairs` (parked, or unchanged when only
    /// the contact's own fields change): a write to the contact gives them its new
    /// version too, so Tandem's own write is never taken for someone else's (R19).
    #[serde(skip)]
    pub other_links: Vec<Link>,
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
    /// For a link made this run: how.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_link: Option<NewLink>,
    pub account_changes: Vec<FieldChange>,
    /// Fields this pair's account brought to the contact.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub from_account: Vec<FieldName>,
    /// Whether this run changes either side of the pair.
    pub updated: bool,
    #[serde(skip)]
    pub baseline: Fields,
    /// The link as stored before this run; boxed, since most pairs of a big run are
    /// new links and an inline `Link` would double the size of every pair.
    #[serde(skip)]
    pub previous: Option<Box<Link>>,
    /// The content hash of the account's fields after the write, when it was read.
    #[serde(skip)]
    pub account_after_hash: Option<u64>,
    /// What this run writes to the pair, stored with `baseline` before it writes
    /// (R18); `None` when it writes nothing to either side.
    #[serde(skip)]
    pub intent: Option<Intent>,
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
    /// Asked for by `tandem create-contact`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub asked: bool,
}

/// A new account for a contact that asked for a relation and matched none (R5).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AccountCreate {
    pub code: String,
    #[serde(skip)]
    pub relation: usize,
    /// The contact that will hold the relation (a person's company, R3).
    pub contact_id: String,
    /// The person who asked, when it is not `contact_id`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requested_by: Option<String>,
    #[serde(skip)]
    pub contact_version: Option<String>,
    pub fields: Fields,
    /// The 0-based template rule used, if the relation has templates.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub template: Option<usize>,
    #[serde(skip)]
    pub baseline: Fields,
    /// The contact's side of the new link's intent (R18): the template fills it is
    /// still to receive, each empty before.
    #[serde(skip)]
    pub intent: Intent,
}

/// A request that cannot be carried out, with the reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rejection {
    pub code: String,
    pub contact_id: String,
    pub error: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UnlinkReason {
    /// R12: the contact is gone; the account stays.
    ContactDeleted,
    /// R13: the account is gone; the contact stays.
    AccountDeleted,
    /// `tandem unlink`: both stay.
    Operator,
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
    /// Links made by match rules, by an operator, or recovered.
    pub linked: u64,
    /// Records created (contacts for accounts, R6; accounts for contacts, R5).
    pub created: u64,
    /// Pairs where this run changed either side.
    pub updated: u64,
    /// Linked pairs left as they were.
    pub unchanged: u64,
    /// Links dropped because a side was deleted or an operator unlinked them.
    pub unlinked: u64,
    pub conflicts: u64,
    pub ambiguous: u64,
    /// Pairs, creates or requests that failed.
    pub failed: u64,
    /// Pairs and creates left alone after failing twice the same way (R17).
    pub parked: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Plan {
    pub hubs: Vec<HubPlan>,
    pub creates: Vec<ContactCreate>,
    pub account_creates: Vec<AccountCreate>,
    pub unlinks: Vec<Unlink>,
    pub ambiguous: Vec<Ambiguity>,
    pub rejected: Vec<Rejection>,
    pub counts: Vec<RelationCounts>,
    /// Open conflicts settled this run, as (code, contact id, field).
    #[serde(skip)]
    pub close_conflicts: Vec<(String, String, String)>,
    /// Pending creates that are done (found again, or no longer wanted), as (code,
    /// side, source id).
    #[serde(skip)]
    pub done_pending: Vec<(String, String, String)>,
}

impl Plan {
    /// Number of record writes the plan makes.
    pub fn write_count(&self) -> usize {
        self.creates.len()
            + self.account_creates.len()
            + self
                .hubs
                .iter()
                .map(|h| {
                    usize::from(!h.contact_changes.is_empty())
                        + h.pairs
                            .iter()
                            .filter(|p| !p.account_changes.is_empty())
                            .count()
                })
                .sum::<usize>()
    }
}

/// The `side` of a pending entry for a link whose first sync failed: its `fields` hold
/// `account_id`, `by` (`match` or `operator`) and `tier`.
pub const PENDING_LINK: &str = "link";

/// Whether a contact may hold a relation of `kind` directly (R3): companies may; a
/// person without a company may be a customer; any other person resolves through its
/// company.
pub fn may_hold(contact: &Record, kind: EntityKind) -> bool {
    match ContactType::from_field(contact.fields.text(field::CONTACT_TYPE)) {
        ContactType::Company => true,
        ContactType::Person => {
            kind == EntityKind::Customer && contact.fields.text(field::COMPANY_ID).is_none()
        }
    }
}

/// Whether `code` is listed in a contact's `business_relations` field, without
/// building the list (asked for every contact and relation of a run).
pub fn lists_code(contact: &Record, code: &str) -> bool {
    match contact.fields.get(field::BUSINESS_RELATIONS) {
        Some(Value::List(items)) => items.iter().any(|s| s.trim() == code),
        Some(Value::Text(text)) => text.split([';', ',']).any(|s| s.trim() == code),
        Some(_) => listed_codes(contact).iter().any(|c| c == code),
        None => false,
    }
}

/// The relation codes listed in a contact's `business_relations` field (R5, R9).
pub fn listed_codes(contact: &Record) -> Vec<String> {
    match contact.fields.get(field::BUSINESS_RELATIONS) {
        Some(Value::List(items)) => items.iter().map(|s| s.trim().to_owned()).collect(),
        Some(other) => other
            .to_cell()
            .split([';', ','])
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect(),
        None => Vec::new(),
    }
}

/// From this many hubs on, merging is spread over the machine's cores.
const PARALLEL_HUBS: usize = 20_000;

/// Plans a run. Deterministic: the same input gives the same plan.
pub fn plan(relations: &Relations, input: &PlanInput) -> Plan {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
    plan_on(relations, input, threads)
}

/// [`plan`] on at most `threads` threads.
fn plan_on(relations: &Relations, input: &PlanInput, threads: usize) -> Plan {
    let mut planner = Planner::new(relations, input);
    planner.threads = threads.max(1);
    planner.run()
}

struct Planner<'a> {
    relations: &'a Relations,
    input: &'a PlanInput,
    plan: Plan,
    /// Live links by contact (not unlinked this run), parked ones included.
    by_contact: BTreeMap<&'a str, Vec<(usize, &'a Link)>>,
    /// Per relation, the accounts with a live link.
    linked_accounts: Vec<BTreeSet<&'a str>>,
    /// Links made this run, by contact: (relation, account id, how).
    new_links: BTreeMap<&'a str, Vec<(usize, &'a str, NewLink)>>,
    /// Baselines new links start from instead of `initial`: the fields a create that
    /// was cut short sent (R18), by (relation, contact id).
    starts: HashMap<(usize, &'a str), &'a Fields>,
    /// Contacts that lose a code this run (R9, R13), with the codes.
    lost_codes: BTreeMap<&'a str, BTreeSet<String>>,
    /// Contacts that gain a code this run through a create (R5), with the codes.
    gained_codes: BTreeMap<&'a str, BTreeSet<String>>,
    /// Shared fields a template filled on an account created for a contact that had
    /// them empty: the contact gets them too (R5, R7).
    template_fills: BTreeMap<&'a str, Vec<(FieldName, Value)>>,
    /// Threads to merge hubs on, when there are many.
    threads: usize,
}

impl<'a> Planner<'a> {
    fn new(relations: &'a Relations, input: &'a PlanInput) -> Planner<'a> {
        Planner {
            relations,
            input,
            plan: Plan {
                counts: relations
                    .relations
                    .iter()
                    .map(|r| RelationCounts {
                        code: r.code.clone(),
                        ..RelationCounts::default()
                    })
                    .collect(),
                ..Plan::default()
            },
            by_contact: BTreeMap::new(),
            linked_accounts: vec![BTreeSet::new(); relations.relations.len()],
            new_links: BTreeMap::new(),
            starts: HashMap::new(),
            lost_codes: BTreeMap::new(),
            gained_codes: BTreeMap::new(),
            template_fills: BTreeMap::new(),
            threads: 1,
        }
    }

    fn accounts(&self, r: usize) -> &'a AccountInput {
        static NONE: AccountInput = AccountInput {
            records: BTreeMap::new(),
            deleted: BTreeSet::new(),
        };
        self.input.accounts.get(r).unwrap_or(&NONE)
    }

    fn run(mut self) -> Plan {
        self.unlink_and_index();
        self.operator_links();
        for r in 0..self.relations.relations.len() {
            self.match_and_create(r);
        }
        self.hubs();
        self.reflect_codes();
        self.other_links();
        self.hash_contacts_after();
        self.finish_counts();
        // A create found again is also linked now: named once.
        self.plan.done_pending.sort();
        self.plan.done_pending.dedup();
        self.plan
    }

    /// Links whose contact or account is gone, or that an operator dropped; index
    /// the rest. Links of codes no longer configured are left alone (R1).
    fn unlink_and_index(&mut self) {
        let input = self.input;
        for link in &input.links {
            let Some(r) = self.relations.index_of(&link.code) else {
                continue;
            };
            let reason = if input.deleted_contacts.contains(&link.contact_id) {
                Some(UnlinkReason::ContactDeleted)
            } else if self.accounts(r).deleted.contains(&link.account_id) {
                Some(UnlinkReason::AccountDeleted)
            } else if input
                .directives
                .unlink
                .iter()
                .any(|(code, contact)| *code == link.code && *contact == link.contact_id)
            {
                Some(UnlinkReason::Operator)
            } else {
                None
            };
            if let Some(reason) = reason {
                self.plan.unlinks.push(Unlink {
                    code: link.code.clone(),
                    contact_id: link.contact_id.clone(),
                    account_id: link.account_id.clone(),
                    reason,
                });
                self.plan.counts[r].unlinked += 1;
                if reason != UnlinkReason::ContactDeleted {
                    self.lost_codes
                        .entry(&link.contact_id)
                        .or_default()
                        .insert(link.code.clone());
                }
                continue;
            }
            self.linked_accounts[r].insert(&link.account_id);
            self.by_contact
                .entry(&link.contact_id)
                .or_default()
                .push((r, link));
        }
        for (code, contact) in &input.directives.unlink {
            if !self
                .plan
                .unlinks
                .iter()
                .any(|u| &u.code == code && &u.contact_id == contact)
            {
                self.reject(
                    code,
                    contact,
                    format!("contact {contact} has no {code} link to remove"),
                );
            }
        }
    }

    fn reject(&mut self, code: &str, contact_id: &str, error: String) {
        if let Some(r) = self.relations.index_of(code) {
            self.plan.counts[r].failed += 1;
        }
        self.plan.rejected.push(Rejection {
            code: code.to_owned(),
            contact_id: contact_id.to_owned(),
            error,
        });
    }

    fn is_linked(&self, r: usize, contact_id: &str) -> bool {
        self.by_contact
            .get(contact_id)
            .is_some_and(|links| links.iter().any(|(lr, _)| *lr == r))
            || self
                .new_links
                .get(contact_id)
                .is_some_and(|links| links.iter().any(|(lr, _, _)| *lr == r))
    }

    /// `tandem link <CODE> <contact> <account>` (R4, explicitly), and links whose first
    /// sync failed in an earlier run, tried again (R17).
    fn operator_links(&mut self) {
        let input = self.input;
        for (code, _) in &input.directives.create {
            if self.relations.index_of(code).is_none() {
                let contact = input
                    .directives
                    .create
                    .iter()
                    .find(|(c, _)| c == code)
                    .map(|(_, k)| k.clone())
                    .unwrap_or_default();
                self.reject(
                    code,
                    &contact,
                    format!("no relation `{code}` is configured"),
                );
            }
        }
        let retried: Vec<(String, String, String, NewLink)> = input
            .pending
            .iter()
            .filter(|p| p.side == PENDING_LINK && !p.parked)
            .filter_map(|p| {
                let account = p.fields.text("account_id")?.to_owned();
                let how = match p.fields.text("by") {
                    Some("operator") => NewLink::Operator,
                    _ => NewLink::Match {
                        tier: p
                            .fields
                            .text("tier")
                            .and_then(|t| t.parse().ok())
                            .unwrap_or(0),
                    },
                };
                Some((p.code.clone(), p.source_id.clone(), account, how))
            })
            .collect();
        let requested = input
            .directives
            .link
            .iter()
            .map(|(code, contact, account)| {
                (
                    code.clone(),
                    contact.clone(),
                    account.clone(),
                    NewLink::Operator,
                )
            });
        let directives = input.directives.link.len();
        for (n, (code, contact_id, account_id, how)) in requested.chain(retried).enumerate() {
            let by_operator = n < directives;
            let Some(r) = self.relations.index_of(&code) else {
                if by_operator {
                    self.reject(
                        &code,
                        &contact_id,
                        format!("no relation `{code}` is configured"),
                    );
                }
                continue;
            };
            let kind = self.relations.relations[r].kind;
            let error = match (
                input.contacts.get_key_value(&contact_id),
                self.accounts(r).records.get_key_value(&account_id),
            ) {
                (None, _) => Some(format!("contact {contact_id} not found")),
                (_, None) => Some(format!("{kind} {account_id} not found")),
                (Some((_, c)), _) if !may_hold(c, kind) => {
                    Some(match c.fields.text(field::COMPANY_ID) {
                        Some(company) => format!(
                            "contact {contact_id} is a person of company {company}: link the company, which holds the relation (R3)"
                        ),
                        None => format!(
                            "contact {contact_id} is a person without a company; {kind}s need a company contact (R3)"
                        ),
                    })
                }
                (Some(_), Some(_)) if self.is_linked(r, &contact_id) => Some(format!(
                    "contact {contact_id} already has a {code} link (R2); unlink it first"
                )),
                (Some(_), Some(_)) if self.linked_accounts[r].contains(account_id.as_str()) => {
                    Some(format!(
                        "{kind} {account_id} already belongs to another contact (R2); unlink it first"
                    ))
                }
                (Some((c, _)), Some((a, _))) => {
                    self.linked_accounts[r].insert(a);
                    self.new_links.entry(c).or_default().push((r, a, how));
                    self.plan.counts[r].linked += 1;
                    None
                }
            };
            match error {
                Some(error) if by_operator => self.reject(&code, &contact_id, error),
                // A retried link that no longer makes sense is dropped; matching decides anew.
                Some(_) => self.plan.done_pending.push((
                    code.clone(),
                    PENDING_LINK.to_owned(),
                    contact_id.clone(),
                )),
                None => {}
            }
        }
    }

    /// Match unlinked records (R4); recover creates cut short; create contacts for
    /// unmatched accounts (R6) and accounts for contacts that ask (R5).
    fn match_and_create(&mut self, r: usize) {
        self.recover(r);
        let input = self.input;
        let relation = &self.relations.relations[r];
        // A contact whose link to an account keeps failing waits for `tandem retry`.
        let waiting: BTreeSet<&str> = input
            .pending
            .iter()
            .filter(|p| p.code == relation.code && p.side == PENDING_LINK)
            .map(|p| p.source_id.as_str())
            .collect();
        let pool_contacts: Vec<&Record> = input
            .contacts
            .values()
            .filter(|c| {
                !c.deleted
                    && may_hold(c, relation.kind)
                    && !self.is_linked(r, &c.id)
                    && !waiting.contains(c.id.as_str())
            })
            .collect();
        let pool_accounts: Vec<&Record> = self
            .accounts(r)
            .records
            .values()
            .filter(|a| !a.deleted && !self.linked_accounts[r].contains(a.id.as_str()))
            .collect();
        let outcome = match_records(
            &relation.code,
            &relation.tiers,
            &pool_contacts,
            &pool_accounts,
        );
        let mut outcome = outcome;
        // Pairs an operator unlinked stay apart, whatever the match rules say.
        let apart: BTreeSet<(&str, &str)> = input
            .unlinked_pairs
            .iter()
            .filter(|(code, _, _)| *code == relation.code)
            .map(|(_, c, a)| (c.as_str(), a.as_str()))
            .collect();
        if !apart.is_empty() {
            outcome
                .matches
                .retain(|(c, a, _)| !apart.contains(&(c.as_str(), a.as_str())));
        }
        // Looked up, never walked: hash sets.
        let mut matched_contacts: crate::IdSet<&str> = crate::IdSet::default();
        let mut taken_accounts: crate::IdSet<&str> = crate::IdSet::default();
        for (contact_id, account_id, tier) in &outcome.matches {
            let (c, _) = input
                .contacts
                .get_key_value(contact_id)
                .expect("matched from the pool");
            let (a, _) = self
                .accounts(r)
                .records
                .get_key_value(account_id)
                .expect("matched from the pool");
            matched_contacts.insert(c);
            taken_accounts.insert(a);
            self.new_links
                .entry(c)
                .or_default()
                .push((r, a, NewLink::Match { tier: *tier }));
        }
        self.plan.counts[r].linked += outcome.matches.len() as u64;
        self.plan.counts[r].ambiguous += outcome.ambiguous.len() as u64;
        let ambiguous_contacts: crate::IdSet<String> = outcome
            .ambiguous
            .iter()
            .flat_map(|a| a.contact_ids.clone())
            .collect();
        self.plan.ambiguous.extend(outcome.ambiguous);

        // Creates an earlier run started: the record it created is an unlinked record
        // with exactly the fields sent, found again instead of created twice.
        let mut pending_for: BTreeMap<(&str, &str), &PendingCreate> = BTreeMap::new();
        for p in input.pending.iter().filter(|p| p.code == relation.code) {
            pending_for.insert((p.side.as_str(), p.source_id.as_str()), p);
        }
        let unmatched_accounts = outcome.unmatched_accounts;
        if !pending_for.is_empty() {
            for p in pending_for.values().filter(|p| p.side != PENDING_LINK) {
                let done = match p.side.as_str() {
                    "contact" => {
                        self.linked_accounts[r].contains(p.source_id.as_str())
                            || taken_accounts.contains(p.source_id.as_str())
                    }
                    _ => self.is_linked(r, &p.source_id),
                };
                // Its source is gone only when this run saw it deleted: a source not
                // read this run (an unchanged file that was skipped) still wants it.
                let source_deleted = match p.side.as_str() {
                    "contact" => self.accounts(r).deleted.contains(&p.source_id),
                    _ => input.deleted_contacts.contains(&p.source_id),
                };
                if done || source_deleted {
                    self.plan.done_pending.push((
                        p.code.clone(),
                        p.side.clone(),
                        p.source_id.clone(),
                    ));
                }
            }
        }

        // Contacts that ask for this relation (R5): by their business_relations field
        // or by `tandem create`. A person asks on behalf of its company (R3).
        let mut requesters: BTreeMap<&str, Option<&str>> = BTreeMap::new();
        let operator_requests: Vec<&str> = input
            .directives
            .create
            .iter()
            .filter(|(code, _)| *code == relation.code)
            .map(|(_, c)| c.as_str())
            .collect();
        for contact in input.contacts.values().filter(|c| !c.deleted) {
            let by_operator = operator_requests.contains(&contact.id.as_str());
            let listed = lists_code(contact, &relation.code)
                && !self
                    .lost_codes
                    .get(contact.id.as_str())
                    .is_some_and(|l| l.contains(&relation.code));
            if !by_operator && !listed {
                continue;
            }
            // Refused twice the same way: left alone until `tandem retry` (R17); a link
            // waiting to be retried is not a request for a new account.
            if pending_for
                .get(&("account", contact.id.as_str()))
                .is_some_and(|p| p.parked)
                || waiting.contains(contact.id.as_str())
            {
                continue;
            }
            match self.holder(r, contact) {
                Ok(None) => {
                    if by_operator {
                        let error = already_held(contact, &relation.code);
                        self.reject(&relation.code, &contact.id, error);
                    }
                }
                Ok(Some(holder)) => {
                    requesters
                        .entry(holder)
                        .or_insert((holder != contact.id).then_some(contact.id.as_str()));
                }
                Err(error) => self.reject(&relation.code, &contact.id, error),
            }
        }
        for id in operator_requests {
            if !input.contacts.contains_key(id) {
                self.reject(&relation.code, id, format!("contact {id} not found"));
            }
        }
        let mut to_create: Vec<(&str, Option<&str>)> = Vec::new();
        for (holder, requested_by) in requesters {
            if matched_contacts.contains(holder) || ambiguous_contacts.contains(holder) {
                continue;
            }
            if pending_for
                .get(&("account", holder))
                .is_some_and(|p| p.parked)
            {
                continue;
            }
            to_create.push((holder, requested_by));
        }

        self.create_contacts(r, unmatched_accounts, &taken_accounts, &pending_for);

        for (holder, requested_by) in to_create {
            let contact = &input.contacts[holder];
            let template = match relation.template_for(contact) {
                Ok(t) => t,
                Err(error) => {
                    self.reject(&relation.code, requested_by.unwrap_or(holder), error);
                    continue;
                }
            };
            let mut baseline = contact.fields.project(&names(&relation.shared));
            let mut fields = baseline.clone();
            if let Some(t) = template {
                for (name, value) in &t.fields {
                    if fields.get(name.as_str()).is_none() {
                        fields.set(name.clone(), value.clone());
                        if relation.shared.contains(name) {
                            // Both sides will hold it: the link starts from it.
                            baseline.set(name.clone(), value.clone());
                            self.template_fills
                                .entry(holder)
                                .or_default()
                                .push((name.clone(), value.clone()));
                        }
                    }
                }
            }
            self.gained_codes
                .entry(holder)
                .or_default()
                .insert(relation.code.clone());
            let intent = Intent {
                contact: self
                    .template_fills
                    .get(holder)
                    .into_iter()
                    .flatten()
                    .map(|(name, _)| (name.clone(), Value::Null))
                    .collect(),
                account: Vec::new(),
            };
            self.plan.account_creates.push(AccountCreate {
                code: relation.code.clone(),
                relation: r,
                contact_id: holder.to_owned(),
                requested_by: requested_by.map(str::to_owned),
                contact_version: contact.version.clone(),
                fields,
                template: template.map(|t| t.index),
                baseline,
                intent,
            });
            self.plan.counts[r].created += 1;
        }
    }

    /// Creates an earlier run started and may have made (R18): the record created is an
    /// unlinked record holding exactly the fields sent. It is linked before matching
    /// runs, starting from the fields sent as its baseline, so an edit made to either
    /// side since is merged three-way instead of being overwritten by `initial`.
    fn recover(&mut self, r: usize) {
        let input = self.input;
        let code = self.relations.relations[r].code.as_str();
        let kind = self.relations.relations[r].kind;
        let wanted: Vec<&'a PendingCreate> = input
            .pending
            .iter()
            .filter(|p| p.code == code && p.side != PENDING_LINK && !p.parked)
            .filter(|p| p.error.is_none() && !p.fields.is_empty())
            .collect();
        if wanted.is_empty() {
            return;
        }
        let pool_contacts: Vec<&'a Record> = input
            .contacts
            .values()
            .filter(|c| !c.deleted && may_hold(c, kind) && !self.is_linked(r, &c.id))
            .collect();
        let pool_accounts: Vec<&'a Record> = self
            .accounts(r)
            .records
            .values()
            .filter(|a| !a.deleted && !self.linked_accounts[r].contains(a.id.as_str()))
            .collect();
        let contacts = SentIndex::new(&pool_contacts, wanted.iter().map(|p| &p.fields));
        let accounts = SentIndex::new(&pool_accounts, wanted.iter().map(|p| &p.fields));
        for p in wanted {
            let (contact, account) = if p.side == "contact" {
                let Some((a, _)) = self.accounts(r).records.get_key_value(&p.source_id) else {
                    continue;
                };
                if self.linked_accounts[r].contains(a.as_str()) {
                    continue;
                }
                match contacts.found(&p.fields, |c| !self.is_linked(r, &c.id)) {
                    Some(c) => (c.id.as_str(), a.as_str()),
                    None => continue,
                }
            } else {
                let Some((c, _)) = input.contacts.get_key_value(&p.source_id) else {
                    continue;
                };
                if self.is_linked(r, c) {
                    continue;
                }
                let free = |a: &Record| !self.linked_accounts[r].contains(a.id.as_str());
                match accounts.found(&p.fields, free) {
                    Some(a) => (c.as_str(), a.id.as_str()),
                    None => continue,
                }
            };
            self.linked_accounts[r].insert(account);
            self.new_links
                .entry(contact)
                .or_default()
                .push((r, account, NewLink::Recovered));
            self.starts.insert((r, contact), &p.fields);
            self.plan.counts[r].linked += 1;
            self.plan
                .done_pending
                .push((p.code.clone(), p.side.clone(), p.source_id.clone()));
        }
    }

    /// R6: a new company contact for every unmatched account of a relation that numbers
    /// contacts, but not for one whose contact the user deleted (R12), unless asked by
    /// `tandem create-contact`, which works for any relation.
    fn create_contacts(
        &mut self,
        r: usize,
        unmatched: Vec<String>,
        taken: &crate::IdSet<&str>,
        pending_for: &BTreeMap<(&str, &str), &PendingCreate>,
    ) {
        let relation = &self.relations.relations[r];
        let asked: BTreeSet<&str> = self
            .input
            .directives
            .create_contact
            .iter()
            .filter(|(code, _)| *code == relation.code)
            .map(|(_, a)| a.as_str())
            .collect();
        let deleted = self.input.contact_deleted.get(r);
        for account_id in unmatched {
            let by_operator = asked.contains(account_id.as_str());
            let wanted = by_operator
                || (relation.create_contacts
                    && !deleted.is_some_and(|d| d.contains(&account_id))
                    && !pending_for
                        .get(&("contact", account_id.as_str()))
                        .is_some_and(|p| p.parked));
            if !wanted || taken.contains(account_id.as_str()) {
                continue;
            }
            let account = &self.accounts(r).records[&account_id];
            let baseline = account.fields.project(&names(&relation.shared));
            let mut fields = baseline.clone();
            fields.set(
                field::CONTACT_TYPE,
                Value::text(ContactType::Company.as_str()),
            );
            fields.set(
                field::BUSINESS_RELATIONS,
                Value::List(vec![relation.code.clone()]),
            );
            self.plan.creates.push(ContactCreate {
                code: relation.code.clone(),
                relation: r,
                account_id,
                account_version: account.version.clone(),
                fields,
                baseline,
                asked: by_operator,
            });
            self.plan.counts[r].created += 1;
        }
        for account_id in asked {
            if !self
                .plan
                .creates
                .iter()
                .any(|c| c.relation == r && c.account_id == account_id)
            {
                let error = if self.linked_accounts[r].contains(account_id) {
                    format!("{} {account_id} already has a contact (R2)", relation.kind)
                } else {
                    format!("{} {account_id} not found", relation.kind)
                };
                self.reject(&relation.code, account_id, error);
            }
        }
    }

    /// Who holds relation `r` when `contact` asks for it (R3): `Ok(None)` when that
    /// contact already holds it.
    fn holder(&self, r: usize, contact: &'a Record) -> Result<Option<&'a str>, String> {
        let relation = &self.relations.relations[r];
        let person = ContactType::from_field(contact.fields.text(field::CONTACT_TYPE))
            == ContactType::Person;
        let holder: &'a Record = match (person, contact.fields.text(field::COMPANY_ID)) {
            (true, Some(company_id)) => match self.input.contacts.get(company_id) {
                Some(company) => company,
                // Not read this run: it did not change and holds all its codes.
                None if self
                    .by_contact
                    .get(company_id)
                    .is_some_and(|l| l.iter().any(|(lr, _)| *lr == r)) =>
                {
                    return Ok(None);
                }
                None => {
                    return Err(format!(
                        "person {} asks for {} through company {company_id}, which was not found",
                        contact.id, relation.code
                    ));
                }
            },
            (true, None) if relation.kind != EntityKind::Customer => {
                return Err(format!(
                    "person {} has no company; {}s need a company contact (R3): set the person's company_id or ask on the company",
                    contact.id, relation.kind
                ));
            }
            _ => contact,
        };
        if self.is_linked(r, &holder.id) {
            Ok(None)
        } else {
            Ok(Some(holder.id.as_str()))
        }
    }

    /// Every contact with a link or a new link that involves a record read this run.
    fn hubs(&mut self) {
        let input = self.input;
        let mut open_conflicts: HashMap<&str, Vec<&ConflictEntry>> = HashMap::new();
        for c in input.conflicts.iter().filter(|c| c.closed_at.is_none()) {
            open_conflicts
                .entry(c.contact_id.as_str())
                .or_default()
                .push(c);
        }
        let mut hub_ids: BTreeSet<&str> = self.new_links.keys().copied().collect();
        for (contact_id, links) in &self.by_contact {
            if (input.contacts.contains_key(*contact_id) && !input.match_only.contains(*contact_id))
                || links
                    .iter()
                    .any(|(r, l)| self.accounts(*r).records.contains_key(&l.account_id))
            {
                hub_ids.insert(contact_id);
            }
        }
        // Each hub is merged on its own (pure, no shared state): on a big run the hubs
        // are split over the machine's cores, and the results taken back in order, so
        // the plan is the same as on one core.
        let hub_ids: Vec<&str> = hub_ids.into_iter().collect();
        let threads = if hub_ids.len() < PARALLEL_HUBS {
            1
        } else {
            self.threads
        };
        let this = &*self;
        let merge = |ids: &[&str]| -> Vec<Merged> {
            ids.iter()
                .filter_map(|contact_id| this.merge_one(contact_id, &open_conflicts))
                .collect()
        };
        let merged: Vec<Merged> = if threads <= 1 {
            merge(&hub_ids)
        } else {
            let chunk = hub_ids.len().div_ceil(threads);
            std::thread::scope(|scope| {
                let workers: Vec<_> = hub_ids
                    .chunks(chunk)
                    .map(|ids| scope.spawn(move || merge(ids)))
                    .collect();
                workers
                    .into_iter()
                    .flat_map(|w| w.join().expect("merging a hub does not panic"))
                    .collect()
            })
        };
        for merged in merged {
            self.plan.close_conflicts.extend(merged.closed);
            let Some(hub) = merged.hub else { continue };
            for pair in &hub.pairs {
                if pair.updated && pair.previous.is_some() {
                    self.plan.counts[pair.relation].updated += 1;
                }
            }
            for conflict in &hub.conflicts {
                for (code, _, _) in &conflict.accounts {
                    if let Some(r) = self.relations.index_of(code) {
                        self.plan.counts[r].conflicts += 1;
                    }
                }
            }
            self.plan.hubs.push(hub);
        }
    }

    /// One contact with all its pairs, merged; `None` when it has no pair.
    fn merge_one(
        &self,
        contact_id: &str,
        open_conflicts: &HashMap<&str, Vec<&ConflictEntry>>,
    ) -> Option<Merged> {
        let input = self.input;
        let mut pairs: Vec<PairInput> = Vec::new();
        for (r, link) in self.by_contact.get(contact_id).into_iter().flatten() {
            if link.parked {
                continue;
            }
            pairs.push(PairInput {
                relation: *r,
                account_id: &link.account_id,
                account: self.accounts(*r).records.get(&link.account_id),
                link: Some(link),
                base: Some(&link.baseline),
                new_link: None,
            });
        }
        for (r, account_id, how) in self.new_links.get(contact_id).into_iter().flatten() {
            pairs.push(PairInput {
                relation: *r,
                account_id,
                account: self.accounts(*r).records.get(*account_id),
                link: None,
                base: self.starts.get(&(*r, contact_id)).copied(),
                new_link: Some(*how),
            });
        }
        if pairs.is_empty() {
            return None;
        }
        pairs.sort_by_key(|p| p.relation);
        let contact = input.contacts.get(contact_id);
        let open = open_conflicts
            .get(contact_id)
            .map(Vec::as_slice)
            .unwrap_or_default();
        Some(merge_hub(self.relations, contact_id, contact, &pairs, open))
    }

    /// R9: after the run, a contact's `business_relations` lists the codes it holds.
    /// Configured codes it holds are added, codes it lost are removed, codes it asks
    /// for stay until they are granted or refused; anything else in the field is left.
    fn reflect_codes(&mut self) {
        let input = self.input;
        let configured: BTreeSet<&str> = self
            .relations
            .relations
            .iter()
            .map(|r| r.code.as_str())
            .collect();
        // Hubs by contact: a search per contact would make this quadratic.
        let mut hub_of: crate::IdMap<String, usize> = self
            .plan
            .hubs
            .iter()
            .enumerate()
            .map(|(i, h)| (h.contact_id.clone(), i))
            .collect();
        for contact_id in input
            .contacts
            .keys()
            .map(String::as_str)
            .filter(|id| !input.deleted_contacts.contains(*id))
        {
            if input.match_only.contains(contact_id)
                && !self.new_links.contains_key(contact_id)
                && !self.lost_codes.contains_key(contact_id)
                && !self.gained_codes.contains_key(contact_id)
                && !self.template_fills.contains_key(contact_id)
            {
                continue;
            }
            let contact = &input.contacts[contact_id];
            let current = listed_codes(contact);
            let mut held: BTreeSet<String> = BTreeSet::new();
            for (r, _) in self.by_contact.get(contact_id).into_iter().flatten() {
                held.insert(self.relations.relations[*r].code.clone());
            }
            for (r, _, _) in self.new_links.get(contact_id).into_iter().flatten() {
                held.insert(self.relations.relations[*r].code.clone());
            }
            held.extend(
                self.gained_codes
                    .get(contact_id)
                    .into_iter()
                    .flatten()
                    .cloned(),
            );
            let lost = self.lost_codes.get(contact_id);
            let mut wanted: Vec<String> = Vec::new();
            for code in &current {
                let keep = if configured.contains(code.as_str()) {
                    // Held, or still asked for (not just lost).
                    held.contains(code) || !lost.is_some_and(|l| l.contains(code))
                } else {
                    true
                };
                if keep && !wanted.contains(code) {
                    wanted.push(code.clone());
                }
            }
            for code in &held {
                if !wanted.contains(code) {
                    wanted.push(code.clone());
                }
            }
            let mut changes = Vec::new();
            if wanted != current {
                changes.push(FieldChange {
                    field: FieldName::new(field::BUSINESS_RELATIONS),
                    old: contact.fields.value(field::BUSINESS_RELATIONS).clone(),
                    new: Value::List(wanted),
                });
            }
            for (name, value) in self.template_fills.get(contact_id).into_iter().flatten() {
                if contact.fields.get(name.as_str()).is_none()
                    && !changes.iter().any(|c| &c.field == name)
                {
                    changes.push(FieldChange {
                        field: name.clone(),
                        old: Value::Null,
                        new: value.clone(),
                    });
                }
            }
            if changes.is_empty() {
                continue;
            }
            match hub_of.get(contact_id).map(|&i| &mut self.plan.hubs[i]) {
                Some(hub) => {
                    for change in changes {
                        hub.contact_changes.retain(|c| c.field != change.field);
                        hub.contact_changes.push(change);
                    }
                }
                None => {
                    hub_of.insert(contact_id.to_owned(), self.plan.hubs.len());
                    self.plan.hubs.push(HubPlan {
                        contact_id: contact_id.to_owned(),
                        contact_version: contact.version.clone(),
                        contact_changes: changes,
                        pairs: Vec::new(),
                        conflicts: Vec::new(),
                        contact_after_hash: None,
                        other_links: Vec::new(),
                    });
                }
            }
        }
        self.plan
            .hubs
            .sort_by(|a, b| a.contact_id.cmp(&b.contact_id));
    }

    /// R19: every link of a contact this run writes to learns the contact's new version,
    /// also the links the hub does not merge (parked, or unchanged while only the
    /// contact's own fields change).
    fn other_links(&mut self) {
        for hub in self.plan.hubs.iter_mut() {
            if hub.contact_changes.is_empty() {
                continue;
            }
            for (_, link) in self
                .by_contact
                .get(hub.contact_id.as_str())
                .into_iter()
                .flatten()
            {
                if !hub.pairs.iter().any(|p| p.code == link.code) {
                    hub.other_links.push((*link).clone());
                }
            }
        }
    }

    /// The content hash of every contact read this run as it will be after its writes
    /// (merge and R9 together), computed once all of them are planned.
    fn hash_contacts_after(&mut self) {
        for hub in &mut self.plan.hubs {
            if let Some(contact) = self.input.contacts.get(&hub.contact_id) {
                let mut after = contact.fields.clone();
                for change in &hub.contact_changes {
                    after.set(change.field.clone(), change.new.clone());
                }
                hub.contact_after_hash = Some(after.content_hash());
            }
        }
    }

    fn finish_counts(&mut self) {
        for (r, counts) in self.plan.counts.iter_mut().enumerate() {
            let before = self.input.link_counts.get(r).copied().unwrap_or(0);
            counts.unchanged = before.saturating_sub(counts.updated + counts.unlinked);
        }
    }
}

/// Why a contact's request for `code` needs nothing: it, or for a person its company
/// (R3), already holds the relation.
fn already_held(contact: &Record, code: &str) -> String {
    let person =
        ContactType::from_field(contact.fields.text(field::CONTACT_TYPE)) == ContactType::Person;
    match contact.fields.text(field::COMPANY_ID) {
        Some(company) if person => format!(
            "contact {} is a person of company {company}, which already has a {code} link (R3): \
             `tandem resolve {} {code}` names the account",
            contact.id, contact.id
        ),
        _ => format!("contact {} already has a {code} link (R2)", contact.id),
    }
}

/// The records of a pool by the value of one pivot field of the creates looked for, so
/// finding 25,000 creates again costs a lookup each, not a walk of the pool each.
struct SentIndex<'r> {
    by_pivot: HashMap<(String, String), Vec<&'r Record>>,
}

impl<'r> SentIndex<'r> {
    fn new<'s>(pool: &[&'r Record], sent: impl Iterator<Item = &'s Fields>) -> SentIndex<'r> {
        let names: BTreeSet<&str> = sent.filter_map(|f| pivot(f).map(|(n, _)| n)).collect();
        let mut by_pivot: HashMap<(String, String), Vec<&'r Record>> = HashMap::new();
        for record in pool {
            for name in &names {
                if let Some(value) = record.fields.get(name) {
                    by_pivot
                        .entry(((*name).to_owned(), value.to_cell()))
                        .or_default()
                        .push(record);
                }
            }
        }
        SentIndex { by_pivot }
    }

    /// The one record accepted by `free` that holds every value of `sent`; `None` when
    /// there is none, or more than one (never a guess).
    fn found(&self, sent: &Fields, free: impl Fn(&Record) -> bool) -> Option<&'r Record> {
        let (name, value) = pivot(sent)?;
        let candidates = self.by_pivot.get(&(name.to_owned(), value.to_cell()))?;
        let mut found = candidates
            .iter()
            .filter(|r| free(r) && same_fields(&r.fields, sent));
        match (found.next(), found.next()) {
            (Some(one), None) => Some(one),
            _ => None,
        }
    }
}

/// The field a create is looked up by: its name, or its first field.
fn pivot(sent: &Fields) -> Option<(&str, &Value)> {
    sent.get(field::NAME)
        .map(|v| (field::NAME, v))
        .or_else(|| sent.iter().next().map(|(n, v)| (n.as_str(), v)))
}

/// Whether `record` holds exactly the values of `sent` (a create's fields).
fn same_fields(record: &Fields, sent: &Fields) -> bool {
    sent.iter()
        .all(|(name, value)| record.value(name.as_str()) == value)
}

struct PairInput<'a> {
    relation: usize,
    account_id: &'a str,
    account: Option<&'a Record>,
    link: Option<&'a Link>,
    /// What both sides are taken to have agreed on: the link's baseline, or for a
    /// recovered create the fields it sent; `None` for a new link (R4's `initial`).
    base: Option<&'a Fields>,
    new_link: Option<NewLink>,
}

fn names(list: &[FieldName]) -> Vec<&str> {
    list.iter().map(FieldName::as_str).collect()
}

struct Merged {
    hub: Option<HubPlan>,
    /// Open conflicts of this hub that are settled: (code, contact id, field).
    closed: Vec<(String, String, String)>,
}

/// Merges one contact with all its pairs.
fn merge_hub<'p>(
    relations: &'p Relations,
    contact_id: &str,
    contact: Option<&'p Record>,
    pairs: &'p [PairInput<'p>],
    open: &[&'p ConflictEntry],
) -> Merged {
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
    let mut from_account: Vec<Vec<FieldName>> = vec![Vec::new(); pairs.len()];
    let mut conflicts = Vec::new();
    let mut closed = Vec::new();
    let mut open_manual: BTreeSet<(usize, &FieldName)> = BTreeSet::new();

    for f in universe {
        let name = f.as_str();
        let involved: Vec<usize> = (0..pairs.len())
            .filter(|&i| rel(&pairs[i]).shared.contains(f))
            .collect();
        let base =
            |i: usize| -> &Value { pairs[i].base.map(|b| b.value(name)).unwrap_or(&Value::Null) };
        // Values are borrowed from the records and links; only what is written or
        // remembered is copied.
        // A side still holding what it held before an intended write did not get it
        // and was not edited: it stands for the baseline (R18).
        let account_value = |i: usize| -> &Value {
            match pairs[i].account {
                Some(a) => {
                    let value = a.fields.value(name);
                    let before = pairs[i].link.and_then(|l| l.intent.as_ref());
                    match before.and_then(|intent| intent.account_before(name)) {
                        Some(before) if before == value => base(i),
                        _ => value,
                    }
                }
                // Not read this run, so unchanged since it was synchronised.
                None => base(i),
            }
        };
        let contact_value: &Value = match contact {
            Some(c) => {
                let value = c.fields.value(name);
                involved
                    .iter()
                    .find(|&&i| {
                        pairs[i]
                            .link
                            .and_then(|l| l.intent.as_ref())
                            .and_then(|intent| intent.contact_before(name))
                            == Some(value)
                    })
                    .map_or(value, |&i| base(i))
            }
            None => involved
                .iter()
                .find(|&&i| pairs[i].base.is_some())
                .map(|&i| base(i))
                .unwrap_or(&Value::Null),
        };
        let contact_owns = relations.contact_preserve.contains(f);
        let owner_pairs: Vec<usize> = involved
            .iter()
            .copied()
            .filter(|&i| rel(&pairs[i]).preserve.contains(f))
            .collect();
        let resolution = involved.iter().find_map(|&i| {
            open.iter()
                .find(|c| c.code == rel(&pairs[i]).code && c.field == name)
                .and_then(|c| c.resolution.as_ref())
                .map(|v| (i, v))
        });
        // Pairs whose change to this field waits for a decision (manual policy).
        let mut held: Vec<usize> = Vec::new();

        let value = if let Some((_, v)) = resolution {
            for &i in &involved {
                let code = &rel(&pairs[i]).code;
                if open.iter().any(|c| &c.code == code && c.field == name) {
                    closed.push((code.clone(), contact_id.to_owned(), name.to_owned()));
                }
                if account_value(i) == v {
                    from_account[i].push(f.clone());
                }
            }
            v
        } else if contact_owns {
            contact_value
        } else if let Some(&owner) = owner_pairs.first() {
            // The owner's value wins, but an empty one only when the owner cleared it:
            // empty values never overwrite filled ones (R4).
            let a = account_value(owner);
            if a.is_empty() && base(owner).is_empty() {
                contact_value
            } else {
                if a != contact_value {
                    from_account[owner].push(f.clone());
                }
                a
            }
        } else {
            // Step 1: the contact and its existing links, a three-way merge.
            let existing: Vec<usize> = involved
                .iter()
                .copied()
                .filter(|&i| pairs[i].base.is_some())
                .collect();
            let contact_changed =
                contact.is_some() && existing.iter().any(|&i| contact_value != base(i));
            let mut proposals: Vec<(usize, &Value)> = existing
                .iter()
                .map(|&i| (i, account_value(i)))
                .filter(|(i, v)| *v != base(*i))
                .collect();
            let agreed = |proposals: &[(usize, &Value)]| {
                let mut all = proposals
                    .iter()
                    .map(|(_, v)| *v)
                    .chain(contact_changed.then_some(contact_value));
                let first = all.next();
                all.all(|v| Some(v) == first)
            };
            if !agreed(&proposals) {
                // Competing changes: pairs under `manual` step aside and wait.
                held = proposals
                    .iter()
                    .filter(|(i, _)| rel(&pairs[*i]).policy(f) == ConflictPolicy::Manual)
                    .map(|(i, _)| *i)
                    .collect();
                proposals.retain(|(i, _)| !held.contains(i));
            }
            let mut value = contact_value;
            if agreed(&proposals) {
                if let Some((i, v)) = proposals.first() {
                    value = v;
                    for (j, w) in &proposals {
                        if w == v {
                            from_account[*j].push(f.clone());
                        }
                    }
                    let _ = i;
                }
            } else {
                let newest = |candidates: &[&(usize, &'p Value)]| -> (usize, &'p Value) {
                    let mut best = candidates[0];
                    for c in &candidates[1..] {
                        let m = pairs[c.0].account.and_then(|a| a.modified_at);
                        let best_m = pairs[best.0].account.and_then(|a| a.modified_at);
                        if m > best_m {
                            best = c;
                        }
                    }
                    *best
                };
                let winner = if contact_changed {
                    let beating: Vec<&(usize, &Value)> = proposals
                        .iter()
                        .filter(|(i, v)| {
                            *v != contact_value
                                && account_beats_contact(
                                    rel(&pairs[*i]).policy(f),
                                    pairs[*i].account.and_then(|a| a.modified_at),
                                    contact_modified,
                                )
                        })
                        .collect();
                    if beating.is_empty() {
                        None
                    } else {
                        Some(newest(&beating))
                    }
                } else {
                    Some(newest(&proposals.iter().collect::<Vec<_>>()))
                };
                let (winner_name, policy) = match &winner {
                    Some((i, v)) => {
                        value = v;
                        from_account[*i].push(f.clone());
                        (rel(&pairs[*i]).code.clone(), rel(&pairs[*i]).policy(f))
                    }
                    None => (
                        "contact".to_owned(),
                        proposals
                            .first()
                            .map(|(i, _)| rel(&pairs[*i]).policy(f))
                            .unwrap_or_default(),
                    ),
                };
                conflicts.push(Conflict {
                    field: f.clone(),
                    base: existing
                        .first()
                        .map(|&i| base(i).clone())
                        .unwrap_or(Value::Null),
                    contact: contact_changed.then(|| contact_value.clone()),
                    accounts: proposals
                        .iter()
                        .map(|(i, v)| {
                            (
                                rel(&pairs[*i]).code.clone(),
                                pairs[*i].account_id.to_owned(),
                                (*v).clone(),
                            )
                        })
                        .collect(),
                    policy,
                    winner: winner_name,
                    value: value.clone(),
                });
            }
            // Step 2: new links start from the contact's values or the account's (R4);
            // an empty value never overwrites a filled one.
            for &i in involved.iter().filter(|&&i| pairs[i].base.is_none()) {
                let a = account_value(i);
                let take_account = match rel(&pairs[i]).initial {
                    InitialSide::Contact => value.is_empty() && !a.is_empty(),
                    InitialSide::Account => !a.is_empty(),
                };
                if take_account && a != value {
                    value = a;
                    from_account[i].push(f.clone());
                }
            }
            value
        };
        for &i in &held {
            open_manual.insert((i, f));
            conflicts.push(Conflict {
                field: f.clone(),
                base: base(i).clone(),
                contact: Some(value.clone()),
                accounts: vec![(
                    rel(&pairs[i]).code.clone(),
                    pairs[i].account_id.to_owned(),
                    account_value(i).clone(),
                )],
                policy: ConflictPolicy::Manual,
                winner: "manual".to_owned(),
                value: value.clone(),
            });
        }

        // Writes compare with what the sides hold, not with what they stand for.
        let contact_holds = contact.map_or(contact_value, |c| c.fields.value(name));
        if !contact_owns && value != contact_holds {
            contact_changes.push(FieldChange {
                field: f.clone(),
                old: contact_holds.clone(),
                new: value.clone(),
            });
        }
        for &i in &involved {
            let a = pairs[i].account.map_or(base(i), |a| a.fields.value(name));
            let owns = owner_pairs.contains(&i);
            let waits = held.contains(&i);
            if !owns && !waits && value != a {
                account_changes[i].push(FieldChange {
                    field: f.clone(),
                    old: a.clone(),
                    new: value.clone(),
                });
            }
            // A waiting field keeps its old baseline, so the conflict stays visible.
            let new_base = if waits {
                base(i)
            } else if owns {
                a
            } else {
                value
            };
            // Baselines are built in name order: an append, not an insert.
            baselines[i].set(f.clone(), new_base.clone());
        }
    }
    // Open manual conflicts that did not come up again are settled by themselves.
    for entry in open.iter().filter(|c| c.resolution.is_none()) {
        let still_open = open_manual
            .iter()
            .any(|(i, f)| rel(&pairs[*i]).code == entry.code && f.as_str() == entry.field);
        let in_hub = pairs.iter().any(|p| rel(p).code == entry.code);
        if in_hub && !still_open {
            closed.push((
                entry.code.clone(),
                contact_id.to_owned(),
                entry.field.clone(),
            ));
        }
    }
    closed.sort();

    // What the plan keeps is held until the run ends, for every hub of the run: it is
    // sized to what it holds, not to what pushing one by one grew it to (on a big run,
    // fresh memory is a large part of planning's time).
    contact_changes.shrink_to_fit();
    conflicts.shrink_to_fit();
    let mut out_pairs = Vec::with_capacity(pairs.len());
    for (i, p) in pairs.iter().enumerate() {
        let mut changes = std::mem::take(&mut account_changes[i]);
        changes.shrink_to_fit();
        let mut brought: Vec<FieldName> = std::mem::take(&mut from_account[i])
            .into_iter()
            .filter(|f| contact_changes.iter().any(|c| &c.field == f))
            .collect();
        brought.shrink_to_fit();
        let updated = !changes.is_empty() || !brought.is_empty();
        let account_version = match p.account {
            Some(a) => a.version.clone(),
            None => p.link.and_then(|l| l.account_version.clone()),
        };
        let mut baseline = std::mem::take(&mut baselines[i]);
        baseline.shrink_to_fit();
        let unchanged_link = p.link.is_some_and(|l| {
            l.baseline == baseline
                && l.account_version == account_version
                && (contact.is_none() || l.contact_version == contact_version)
                && l.failure_count == 0
                && l.intent.is_none()
        });
        if p.new_link.is_none() && !updated && contact_changes.is_empty() && unchanged_link {
            continue;
        }
        let account_after_hash = p.account.map(|a| {
            let mut fields = a.fields.clone();
            for change in &changes {
                fields.set(change.field.clone(), change.new.clone());
            }
            fields.content_hash()
        });
        let intent = Intent {
            contact: contact_changes
                .iter()
                .filter(|c| rel(p).shared.contains(&c.field))
                .map(|c| (c.field.clone(), c.old.clone()))
                .collect(),
            account: changes
                .iter()
                .map(|c| (c.field.clone(), c.old.clone()))
                .collect(),
        };
        let intent = (!intent.contact.is_empty() || !intent.account.is_empty()).then_some(intent);
        out_pairs.push(PairPlan {
            code: rel(p).code.clone(),
            relation: p.relation,
            account_id: p.account_id.to_owned(),
            account_version,
            new_link: p.new_link,
            account_changes: changes,
            from_account: brought,
            updated,
            baseline,
            previous: p.link.cloned().map(Box::new),
            account_after_hash,
            intent,
        });
    }
    let hub = (!out_pairs.is_empty() || !contact_changes.is_empty() || !conflicts.is_empty()).then(
        || HubPlan {
            contact_id: contact_id.to_owned(),
            contact_version,
            contact_changes,
            pairs: out_pairs,
            conflicts,
            contact_after_hash: None,
            other_links: Vec::new(),
        },
    );
    Merged { hub, closed }
}

fn account_beats_contact(
    policy: ConflictPolicy,
    account: Option<Timestamp>,
    contact: Option<Timestamp>,
) -> bool {
    match policy {
        ConflictPolicy::ContactWins | ConflictPolicy::Manual => false,
        ConflictPolicy::AccountWins => true,
        ConflictPolicy::Newest => matches!((account, contact), (Some(a), Some(c)) if a > c),
    }
}

#[cfg(test)]
mod tests {
    use tandem_model::{EntityKind, Fields, Record};

    use super::*;
    use crate::config::{ContactsConfig, MatchTier, RelationConfig, SyncConfig};

    /// Enough hubs to be merged on several threads: the plan must be the one a single
    /// thread makes, hub for hub.
    #[test]
    fn merging_on_several_threads_gives_the_same_plan() {
        let mut map = BTreeMap::new();
        map.insert(
            "CUST".to_owned(),
            RelationConfig {
                match_tiers: vec![MatchTier::Fields(vec!["vat_registration_no".into()])],
                create_contacts: true,
                ..RelationConfig::new(EntityKind::Customer, "erp")
            },
        );
        let config = SyncConfig::new(
            ContactsConfig {
                connector: "crm".into(),
                preserve: None,
            },
            map,
        )
        .unwrap();
        let relations = Relations::from_config(&config);
        let n = PARALLEL_HUBS + 5_000;
        let mut input = PlanInput {
            accounts: vec![AccountInput::default()],
            link_counts: vec![0],
            ..PlanInput::default()
        };
        for i in 0..n {
            let contact = Record::new(
                EntityKind::Contact,
                format!("C{i:06}"),
                Fields::new()
                    .with("name", format!("Partner {i}"))
                    .with("vat_registration_no", format!("BE{i:010}"))
                    .with("phone", format!("+32 {i}")),
            );
            input.contacts.insert(contact.id.clone(), contact);
            let account = Record::new(
                EntityKind::Customer,
                format!("K{i:06}"),
                Fields::new()
                    .with("name", format!("PARTNER {i}"))
                    .with("vat_registration_no", format!("BE{i:010}"))
                    .with("city", "Gent"),
            );
            input.accounts[0]
                .records
                .insert(account.id.clone(), account);
        }
        let one = plan_on(&relations, &input, 1);
        let four = plan_on(&relations, &input, 4);
        assert_eq!(one.hubs.len(), n);
        assert_eq!(one.counts, four.counts);
        assert!(one == four, "the plans differ");
    }
}
