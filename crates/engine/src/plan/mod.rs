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
use tandem_model::{
    ChangesIter, ContactType, EntityKind, FieldName, Fields, PackedChanges, PackedFields,
    PackedRecord, Record, RecordView, Timestamp, Value, field,
};
use tandem_state::{ConflictEntry, Intent, Link, LinkedBy, PendingCreate, Side};

use crate::pending::{Pending, PendingDone};

use crate::config::{ConflictPolicy, InitialSide};
use crate::matching::{Ambiguity, match_records};
use crate::relation::{Relation, Relations};

mod codes;
mod counts;
pub use counts::{PairWas, add_hub_counts};
mod create;
mod merge;
mod new_links;
mod operator;
mod recover;
mod relate;
mod request;
mod unlink;

/// What was read this run and what the state holds about it.
///
/// Invariant: `links` holds every link of every contact in `contacts`, of every
/// account in `accounts`, and of every contact such a link points at, so a record
/// without a link here has none under that code.
#[derive(Debug, Default)]
pub struct PlanInput {
    /// Contacts in play: changed since the last run, unlinked under some code, or
    /// needed by this run.
    pub contacts: crate::Records,
    /// Contacts deleted (tombstones, or missing from a completed full listing).
    pub deleted_contacts: BTreeSet<String>,
    /// Contacts in `contacts` only as match candidates: unchanged since the last run,
    /// read again because their relation needs matching. Unless they get a new link,
    /// nothing about them is merged or reflected: both were settled when they were
    /// last read.
    pub match_only: HashSet<String>,
    /// Per relation, in config order.
    pub accounts: Vec<AccountInput>,
    /// Per relation, in config order: whether nothing of it changed that matching could
    /// act on (`Wake::Quiet`). Such a relation matches nothing and creates nothing from
    /// matching this run: the unlinked records in play are the few that changed where
    /// no match rule looks, and matched against each other alone one would seem to
    /// match nothing (and get a duplicate, R6) or to match one of two it is ambiguous
    /// with. Missing: the relation matches.
    pub quiet: Vec<bool>,
    pub links: Vec<Link>,
    /// Per relation: how many links the state held before the run.
    pub link_counts: Vec<u64>,
    /// Open conflicts of the `manual` policy, with their resolutions if any.
    pub conflicts: Vec<ConflictEntry>,
    /// Creates, refused requests and links earlier runs left unfinished.
    pub pending: Pending,
    /// (code, contact, account) pairs an operator unlinked: never linked again by match
    /// rules.
    pub unlinked_pairs: Vec<(String, String, String)>,
    /// Per relation: accounts whose contact the user deleted, which get no new contact
    /// unless asked (R12 over R6).
    pub contact_deleted: Vec<HashSet<String>>,
    /// (code, contact): codes contacts lost in an earlier run that are still to be
    /// taken off their business-relation field (R9); not requests (R5).
    pub codes_lost: Vec<(String, String)>,
    /// What an operator asked for on this run.
    pub directives: Directives,
}

impl PlanInput {
    /// Lets the pages of the records held in a file go from memory until a step reads
    /// them again ([`crate::Records::let_go_pages`]): between the steps of planning
    /// and after each range is planned, so that a budgeted run holds the records it works on.
    pub fn let_go_pages(&self) {
        self.contacts.let_go_pages();
        self.accounts.iter().for_each(|a| a.records.let_go_pages());
    }

    /// The bytes of the records held in a file, not on the heap.
    pub fn records_in_files(&self) -> usize {
        let in_file = |r: &crate::Records| r.byte_len() - r.heap_bytes();
        (self.accounts.iter().map(|a| in_file(&a.records))).sum::<usize>() + in_file(&self.contacts)
    }
}

#[derive(Debug, Default)]
pub struct AccountInput {
    pub records: crate::Records,
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

/// A hub's or a pair's changes, in order, held packed ([`PackedChanges`]): a plan
/// holds those of every hub it carries out (a run made whole, of all of them), about
/// eight a hub in a first sync, and as `FieldChange`s they took 56 bytes each. Read
/// as `FieldChange`s, unpacked one by one.
#[derive(Clone, Default, PartialEq)]
pub struct FieldChanges(PackedChanges);

/// The changes of a [`FieldChanges`], unpacked one by one.
pub type FieldChangesIter<'c> =
    std::iter::Map<ChangesIter<'c>, fn((FieldName, Value, Value)) -> FieldChange>;

impl FieldChanges {
    pub fn iter(&self) -> FieldChangesIter<'_> {
        let change: fn((FieldName, Value, Value)) -> FieldChange =
            |(field, old, new)| FieldChange { field, old, new };
        self.0.iter().map(change)
    }

    pub fn to_vec(&self) -> Vec<FieldChange> {
        self.iter().collect()
    }

    /// These changes and `more`, each replacing a change of the same field, at the end
    /// ([`PackedChanges::with`]): the rest stays packed.
    pub fn with(&self, more: &[FieldChange]) -> FieldChanges {
        let more: Vec<_> = (more.iter()).map(|c| (&c.field, &c.old, &c.new)).collect();
        FieldChanges(self.0.with(&more))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<'c> IntoIterator for &'c FieldChanges {
    type Item = FieldChange;
    type IntoIter = FieldChangesIter<'c>;

    fn into_iter(self) -> FieldChangesIter<'c> {
        self.iter()
    }
}

impl From<Vec<FieldChange>> for FieldChanges {
    fn from(changes: Vec<FieldChange>) -> FieldChanges {
        FieldChanges(PackedChanges::pack(
            changes.iter().map(|c| (&c.field, &c.old, &c.new)),
        ))
    }
}

impl std::fmt::Debug for FieldChanges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// As a list of [`FieldChange`]s.
impl Serialize for FieldChanges {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.iter())
    }
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
    pub winner: crate::side::Winner,
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
    pub contact_changes: FieldChanges,
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
    pub account_changes: FieldChanges,
    /// Fields this pair's account brought to the contact.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub from_account: Vec<FieldName>,
    /// Whether this run changes either side of the pair.
    pub updated: bool,
    /// Packed: every pair of a run is held until its links are stored, and a baseline
    /// as a field set took 400 bytes of them.
    #[serde(skip)]
    pub baseline: PackedFields,
    /// The link as stored before this run; boxed, since most pairs of a big run are
    /// new links and an inline `Link` would double the size of every pair.
    #[serde(skip)]
    pub previous: Option<Box<Link>>,
    /// The content hash of the account's fields after the write, when it was read.
    #[serde(skip)]
    pub account_after_hash: Option<u64>,
}

impl PairPlan {
    /// What this run writes to the pair, stored with its baseline before it writes
    /// (R18): the value each side holds before, per field written there; `None` when
    /// it writes nothing. Derived when it is stored, so a plan does not hold it twice.
    pub fn intent(&self, hub: &HubPlan, relation: &Relation) -> Option<Intent> {
        let intent = Intent {
            contact: hub
                .contact_changes
                .iter()
                .filter(|c| relation.shared.contains(&c.field))
                .map(|c| (c.field, c.old))
                .collect(),
            account: self
                .account_changes
                .iter()
                .map(|c| (c.field, c.old))
                .collect(),
        };
        (!intent.contact.is_empty() || !intent.account.is_empty()).then_some(intent)
    }
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
    /// The account's shared fields, with the contact type and the relation's code.
    /// The new link starts from the shared ones: not held apart, they were a second
    /// copy of 180,000 creates' fields at 1M. Packed, as records are: held from
    /// planning to the end of a run made whole (for its report), 180,000 of them as
    /// `Fields` made its peak 50 MB higher.
    pub fields: PackedFields,
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
    /// As a contact create's: emptied once the create step is through.
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

impl UnlinkReason {
    /// As the log spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            UnlinkReason::ContactDeleted => "contact_deleted",
            UnlinkReason::AccountDeleted => "account_deleted",
            UnlinkReason::Operator => "operator",
        }
    }
}

impl NewLink {
    /// How the log says it: `by` and the tier of a match.
    pub fn entry(self) -> tandem_state::LogEntry {
        let (by, tier) = match self {
            NewLink::Match { tier } => ("match", Some(tier)),
            NewLink::Operator => ("operator", None),
            NewLink::Recovered => ("recovered", None),
        };
        tandem_state::LogEntry::Linked {
            by: by.to_owned(),
            tier,
        }
    }
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
    /// Pairs where this run changed either side, new links included (a first sync
    /// that rewrites a linked record counts it here and in `linked`).
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
    /// Pending creates, refused requests and links that are done (found again,
    /// granted, or no longer wanted).
    #[serde(skip)]
    pub done_pending: PendingDone,
    /// Accounts to look at again next run, by relation: they matched no contact this
    /// run, before contacts this run creates for other relations existed (R4).
    #[serde(skip)]
    pub recheck_accounts: Vec<(usize, String)>,
    /// (code, contact): lost codes the contact's field no longer lists once this run's
    /// write to it landed (R9).
    #[serde(skip)]
    pub codes_removed: Vec<(String, String)>,
    /// (code, contact): codes contacts lose this run other than by an unlink (a
    /// contact created for an account deleted before its link was stored), remembered
    /// until the removal lands (R9).
    #[serde(skip)]
    pub new_lost_codes: Vec<(String, String)>,
    /// Hubs a sync carried out that its report leaves out: a run planned range by
    /// range shows at most one range's hubs (the log has every one).
    #[serde(skip_serializing_if = "is_zero")]
    pub hubs_left_out: u64,
    /// Creates a sync carried out that its report leaves out: a run planned range by
    /// range shows at most one range's worth of each side's (the log has every one).
    #[serde(skip_serializing_if = "is_zero")]
    pub creates_left_out: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Plan {
    /// Number of record writes the plan makes.
    pub fn write_count(&self) -> usize {
        self.creates.len() + self.account_creates.len() + hub_writes(&self.hubs)
    }
}

/// Number of record writes `hubs` make.
pub fn hub_writes(hubs: &[HubPlan]) -> usize {
    let writes = |h: &HubPlan| {
        let accounts = h.pairs.iter().filter(|p| !p.account_changes.is_empty());
        usize::from(!h.contact_changes.is_empty()) + accounts.count()
    };
    hubs.iter().map(writes).sum()
}

/// Whether a contact may hold a relation of `kind` directly (R3): companies may; a
/// person without a company may be a customer; any other person resolves through its
/// company.
pub fn may_hold(contact: &(impl RecordView + ?Sized), kind: EntityKind) -> bool {
    match ContactType::from_field(contact.text_named(&contact_fields::CONTACT_TYPE)) {
        ContactType::Company => true,
        ContactType::Person => {
            kind == EntityKind::Customer
                && contact.text_named(&contact_fields::COMPANY_ID).is_none()
        }
    }
}

/// Interned names of the fields asked of every contact of a run: looked up by slot,
/// not found by text each time.
pub(super) mod contact_fields {
    use std::sync::LazyLock;

    use tandem_model::{FieldName, field};

    pub static CONTACT_TYPE: LazyLock<FieldName> =
        LazyLock::new(|| FieldName::new(field::CONTACT_TYPE));
    pub static COMPANY_ID: LazyLock<FieldName> =
        LazyLock::new(|| FieldName::new(field::COMPANY_ID));
    pub static BUSINESS_RELATIONS: LazyLock<FieldName> =
        LazyLock::new(|| FieldName::new(field::BUSINESS_RELATIONS));
}

/// Whether `code` is listed in a contact's `business_relations` field, without
/// building the list (asked for every contact and relation of a run).
pub fn lists_code(contact: &(impl RecordView + ?Sized), code: &str) -> bool {
    match contact
        .value_of(&contact_fields::BUSINESS_RELATIONS)
        .as_deref()
    {
        Some(Value::Text(text)) => text.split([';', ',']).any(|s| s.trim() == code),
        Some(Value::List(items)) => items.iter().any(|s| s.trim() == code),
        other => codes_in(other).iter().any(|c| c == code),
    }
}

/// The relation codes listed in a contact's `business_relations` field (R5, R9).
pub fn listed_codes(contact: &(impl RecordView + ?Sized)) -> Vec<String> {
    codes_in(
        contact
            .value_of(&contact_fields::BUSINESS_RELATIONS)
            .as_deref(),
    )
}

/// The codes a `business_relations` value lists: a list, or text separated by `;` or `,`.
pub(super) fn codes_in(value: Option<&Value>) -> Vec<String> {
    match value {
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

/// [`listed_codes`], borrowed from the field where it is text.
pub(super) fn listed_code_refs(
    contact: &(impl RecordView + ?Sized),
) -> Vec<std::borrow::Cow<'_, str>> {
    use std::borrow::Cow;
    match contact.text_named(&contact_fields::BUSINESS_RELATIONS) {
        Some(text) => (text.split([';', ',']).map(str::trim))
            .filter(|s| !s.is_empty())
            .map(Cow::Borrowed)
            .collect(),
        None => listed_codes(contact).into_iter().map(Cow::Owned).collect(),
    }
}

/// From this many hubs (or contacts) on, planning work is spread over the machine's
/// cores.
const PARALLEL_HUBS: usize = 20_000;

/// Plans a run. Deterministic: the same input gives the same plan.
pub fn plan(relations: &Relations, input: &PlanInput) -> Plan {
    plan_on(relations, input, crate::parallel::cores())
}

/// [`plan`] on at most `threads` threads: the head, then every hub as one range.
fn plan_on(relations: &Relations, input: &PlanInput, threads: usize) -> Plan {
    let (mut planning, mut plan) = Planning::start(relations, input, threads, usize::MAX);
    planning.rest_into(&mut plan);
    plan.counts = plan.derive_counts(relations, &input.link_counts);
    plan
}

/// A run's plan made in pieces: first its head (every link, unlink, create, request
/// and ambiguity: what needs every record in play), then its hubs a range of contact
/// ids at a time ([`Planning::next_range`]), so that a run can carry out one range
/// before it plans the next and hold only that range's plan.
///
/// Invariant: the ranges cover every contact id once, in order; the hubs of all
/// ranges, one after the other, are the hubs of the plan made in one piece.
pub struct Planning<'a> {
    planner: Planner<'a>,
    /// Every contact with a hub to merge, in id order.
    hub_ids: Vec<&'a str>,
    /// The first of `hub_ids` not planned yet.
    next: usize,
    /// Hubs merged per range (at least one).
    per_range: usize,
    /// Whether the last range was given.
    done: bool,
    /// Open conflicts of the `manual` policy, by contact.
    open_conflicts: HashMap<&'a str, Vec<&'a ConflictEntry>>,
}

impl std::fmt::Debug for Planning<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Planning")
            .field("hubs", &self.hub_ids.len())
            .field("next", &self.next)
            .field("per_range", &self.per_range)
            .finish_non_exhaustive()
    }
}

/// The hubs of one range of contact ids, and what merging them settled.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct HubRange {
    pub hubs: Vec<HubPlan>,
    /// Open conflicts settled, as (code, contact id, field).
    pub close_conflicts: Vec<(String, String, String)>,
    /// (code, contact): lost codes these contacts' fields no longer list once written.
    pub codes_removed: Vec<(String, String)>,
}

impl<'a> Planning<'a> {
    /// Plans the head of a run on at most `threads` threads; its hubs come
    /// `per_range` at a time. The head's counts are left to the caller.
    pub fn start(
        relations: &'a Relations,
        input: &'a PlanInput,
        threads: usize,
        per_range: usize,
    ) -> (Planning<'a>, Plan) {
        let mut planner = Planner::new(relations, input);
        planner.threads = threads.max(1);
        planner.head();
        planner.new_links.settle();
        let plan = std::mem::take(&mut planner.plan);
        let planning = Planning {
            hub_ids: planner.hub_ids(),
            planner,
            next: 0,
            per_range: per_range.max(1),
            done: false,
            open_conflicts: open_conflicts(input),
        };
        (planning, plan)
    }

    /// Hubs merged per range.
    pub fn per_range(&self) -> usize {
        self.per_range
    }

    /// Merges `hubs` per range from the next range on (at least one).
    pub fn set_per_range(&mut self, hubs: usize) {
        self.per_range = hubs.max(1);
    }

    /// Whether every range was given.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// The hubs left to plan.
    pub fn hubs_left(&self) -> usize {
        self.hub_ids.len() - self.next
    }

    /// The next range's hubs, planned; at least one range (perhaps empty: contacts
    /// whose own fields change get hubs of their own), then `None`.
    pub fn next_range(&mut self) -> Option<HubRange> {
        if self.done {
            return None;
        }
        let (start, ids) = (self.next, &self.hub_ids);
        let end = start.saturating_add(self.per_range).min(ids.len());
        // Each contact falls in one range: from this range's first hub to the next's.
        let from = (start > 0).then(|| ids[start]);
        let to = ids.get(end).copied();
        self.next = end;
        self.done = end == ids.len();
        let planner = &mut self.planner;
        Some(planner.plan_range(&ids[start..end], (from, to), &self.open_conflicts))
    }

    /// Every range left, planned into `plan`.
    pub fn rest_into(&mut self, plan: &mut Plan) {
        while let Some(range) = self.next_range() {
            plan.absorb(range);
        }
    }
}

/// Open conflicts of the `manual` policy, by contact.
fn open_conflicts(input: &PlanInput) -> HashMap<&str, Vec<&ConflictEntry>> {
    let mut open: HashMap<&str, Vec<&ConflictEntry>> = HashMap::new();
    for c in input.conflicts.iter().filter(|c| c.closed_at.is_none()) {
        open.entry(c.contact_id.as_str()).or_default().push(c);
    }
    open
}

impl Plan {
    /// Adds a range's hubs and what they settled (hubs in id order, as the ranges).
    pub fn absorb(&mut self, range: HubRange) {
        match self.hubs.is_empty() {
            true => self.hubs = range.hubs,
            false => self.hubs.extend(range.hubs),
        }
        self.close_conflicts.extend(range.close_conflicts);
        self.codes_removed.extend(range.codes_removed);
    }

    /// Takes the hubs out, with what they settled.
    pub fn take_range(&mut self) -> HubRange {
        HubRange {
            hubs: std::mem::take(&mut self.hubs),
            close_conflicts: std::mem::take(&mut self.close_conflicts),
            codes_removed: std::mem::take(&mut self.codes_removed),
        }
    }
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
    new_links: new_links::NewLinks<'a>,
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
    /// Accounts matched to no contact and given none, by relation.
    left_unmatched: Vec<(usize, String)>,
    /// Accounts whose contact the user deleted, seen this run, by relation (R12).
    contact_deleted_now: BTreeSet<(usize, &'a str)>,
    /// Records of a create cut short that cannot be told apart, by relation: no new
    /// record for them, and their codes are no requests (R18).
    recovery_waiting: BTreeSet<(usize, &'a str)>,
    /// Parked creates (code, side created, source id), and parked refused requests as
    /// creates of an account for the contact: asked for every contact of a run, so
    /// looked up, not searched (at 1M, searching the 180,000 pending creates a run cut
    /// short left took minutes).
    parked: HashSet<(&'a str, Side, &'a str)>,
    /// Per relation, its shared fields in name order, once: the fields a hub of that
    /// relation alone merges, instead of a set built for each of a million hubs.
    shared_sorted: Vec<Vec<&'a FieldName>>,
}

/// The parked creates and refused requests of `pending`, as a set (R17).
fn parked_of(pending: &Pending) -> HashSet<(&str, Side, &str)> {
    let creates = (pending.creates.iter())
        .filter(|p| p.parked)
        .map(|p| (p.code.as_str(), p.side, p.source_id.as_str()));
    let refused = (pending.refused.iter())
        .filter(|p| p.parked)
        .map(|p| (p.code.as_str(), Side::Account, p.contact_id.as_str()));
    creates.chain(refused).collect()
}

impl<'a> Planner<'a> {
    fn new(relations: &'a Relations, input: &'a PlanInput) -> Planner<'a> {
        let mut lost_codes: BTreeMap<&'a str, BTreeSet<String>> = BTreeMap::new();
        for (code, contact) in &input.codes_lost {
            lost_codes
                .entry(contact.as_str())
                .or_default()
                .insert(code.clone());
        }
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
            new_links: new_links::NewLinks::default(),
            starts: HashMap::new(),
            lost_codes,
            gained_codes: BTreeMap::new(),
            template_fills: BTreeMap::new(),
            threads: 1,
            left_unmatched: Vec::new(),
            contact_deleted_now: BTreeSet::new(),
            recovery_waiting: BTreeSet::new(),
            parked: parked_of(&input.pending),
            shared_sorted: (relations.relations.iter())
                .map(|r| merge::universe([r]))
                .collect(),
        }
    }

    /// Whether relation `r` matches nothing this run ([`PlanInput::quiet`]).
    fn is_quiet(&self, r: usize) -> bool {
        self.input.quiet.get(r).copied().unwrap_or(false)
    }

    /// Whether a contact's request for a `code` account is parked (R17).
    fn request_parked(&self, code: &str, contact: &str) -> bool {
        self.parked.contains(&(code, Side::Account, contact))
    }

    /// Whether the create of a `side` record from `source` under `code` is parked.
    fn create_parked(&self, code: &str, side: Side, source: &str) -> bool {
        self.parked.contains(&(code, side, source))
    }

    fn accounts(&self, r: usize) -> &'a AccountInput {
        static NONE: AccountInput = AccountInput {
            records: crate::Records::EMPTY,
            deleted: BTreeSet::new(),
        };
        self.input.accounts.get(r).unwrap_or(&NONE)
    }

    /// Everything but the hubs: unlinks, operator links, matching (R4), creates (R5,
    /// R6), requests.
    fn head(&mut self) {
        let mut step = Step::start();
        self.unlink_and_index();
        self.operator_links();
        step.done("index");
        let premade = self.match_side_by_side();
        self.input.let_go_pages();
        step.done("match");
        for (r, premade) in premade.into_iter().enumerate() {
            self.match_and_create(r, premade);
        }
        self.recheck_for_new_contacts();
        // A create found again is also linked now: named once.
        self.plan.done_pending.dedup();
        self.input.let_go_pages();
        step.done("link and create");
    }

    /// The hubs `ids` of the contact ids in `[from, to)`, merged (R7), with what the
    /// contacts in that range show after the run (R9), the other links their writes
    /// reach (R19) and their hashes after the run.
    fn plan_range(
        &mut self,
        ids: &[&'a str],
        bounds: (Option<&str>, Option<&str>),
        open_conflicts: &HashMap<&'a str, Vec<&'a ConflictEntry>>,
    ) -> HubRange {
        let mut step = Step::start();
        self.merge_hubs(ids, open_conflicts);
        step.done("merge");
        self.reflect_codes(bounds);
        self.other_links();
        step.done("codes");
        self.hash_contacts_after();
        step.done("hash");
        // Each contact falls in one range: the new links of this one's are done with
        // (a first sync at 1M makes 805,000, held until their range is planned).
        self.new_links.forget_before(bounds.1);
        // Its records are not read again while its writes go out.
        self.input.let_go_pages();
        self.plan.take_range()
    }

    pub(super) fn reject(&mut self, code: &str, contact_id: &str, error: String) {
        self.plan.rejected.push(Rejection {
            code: code.to_owned(),
            contact_id: contact_id.to_owned(),
            error,
        });
    }

    /// `work` done for each of `items`, in their order. From [`PARALLEL_HUBS`] items
    /// on they are split over the planner's threads, and the results taken back in
    /// order: the plan is the one a single core makes. `work` must depend on its item
    /// and the planner alone.
    pub(super) fn on_cores<T: Sync, R: Send>(
        &self,
        items: &[T],
        work: impl Fn(&T) -> R + Sync,
    ) -> Vec<R> {
        crate::parallel::map_in_order(items, self.threads_for(items.len()), work)
    }

    /// The threads `items` pieces of work are spread over: one below [`PARALLEL_HUBS`].
    fn threads_for(&self, items: usize) -> usize {
        match items < PARALLEL_HUBS {
            true => 1,
            false => self.threads,
        }
    }

    /// [`Planner::on_cores`], the results part by part (one per thread), for a caller
    /// that moves them on without holding them all twice.
    pub(super) fn on_cores_in_parts<T: Sync, R: Send>(
        &self,
        items: &[T],
        work: impl Fn(&T) -> R + Sync,
    ) -> Vec<Vec<R>> {
        let threads = self.threads_for(items.len());
        crate::parallel::map_parts(items, threads, |part| part.iter().map(&work).collect())
    }

    /// A link made this run. Most contacts get one, some one per relation
    /// ([`new_links::NewLinks`]).
    pub(super) fn add_new_link(
        &mut self,
        contact: &'a str,
        r: usize,
        account: &'a str,
        how: NewLink,
    ) {
        self.new_links.add(contact, (r, account, how));
    }

    pub(super) fn is_linked(&self, r: usize, contact_id: &str) -> bool {
        self.by_contact
            .get(contact_id)
            .is_some_and(|links| links.iter().any(|(lr, _)| *lr == r))
            || (self.new_links.of(contact_id).iter()).any(|(lr, _, _)| *lr == r)
    }
}

/// The time each step of planning took, at debug level: where a big first sync's
/// planning goes.
struct Step(std::time::Instant);

impl Step {
    fn start() -> Step {
        Step(std::time::Instant::now())
    }

    fn done(&mut self, step: &'static str) {
        tracing::debug!(step, ms = self.0.elapsed().as_millis() as u64, "planning");
        self.0 = std::time::Instant::now();
    }
}

pub(super) fn names(list: &[FieldName]) -> Vec<&str> {
    list.iter().map(FieldName::as_str).collect()
}

#[cfg(test)]
mod tests {
    use tandem_model::{EntityKind, Fields, Record, Value};

    use super::*;
    use crate::config::{ContactsConfig, MatchTier, RelationConfig, SyncConfig};

    /// Relations matched side by side plan what they plan one after the other.
    #[test]
    fn matching_relations_side_by_side_gives_the_same_plan() {
        let tiers = || {
            vec![
                MatchTier::Fields(vec!["vat_registration_no".into()]),
                MatchTier::Fields(vec!["email".into()]),
            ]
        };
        let mut map = BTreeMap::new();
        for (code, kind) in [("CUST", EntityKind::Customer), ("VEND", EntityKind::Vendor)] {
            let relation = RelationConfig {
                match_tiers: tiers(),
                create_contacts: true,
                ..RelationConfig::new(kind, "erp")
            };
            map.insert(code.to_owned(), relation);
        }
        let contacts = ContactsConfig {
            connector: "crm".into(),
            preserve: None,
        };
        let relations = Relations::from_config(&SyncConfig::new(contacts, map).unwrap());
        let mut input = PlanInput {
            accounts: vec![AccountInput::default(), AccountInput::default()],
            link_counts: vec![0, 0],
            ..PlanInput::default()
        };
        for i in 0..400 {
            let mut fields = Fields::new()
                .with("name", format!("Partner {i}"))
                .with("contact_type", "company")
                .with("email", format!("p{}@x.be", i % 170));
            if i % 3 != 0 {
                fields.set("vat_registration_no", Value::text(format!("BE{i:010}")));
            }
            let contact = Record::new(EntityKind::Contact, format!("C{i:04}"), fields);
            input.contacts.insert(contact);
            for (r, kind, prefix) in [(0, EntityKind::Customer, "K"), (1, EntityKind::Vendor, "V")]
            {
                if (i + r) % 4 == 0 {
                    continue;
                }
                let fields = Fields::new()
                    .with("name", format!("PARTNER {i}"))
                    .with("vat_registration_no", format!("BE{:010}", i + 7 * r))
                    .with("email", format!("p{}@x.be", (i * 3 + r) % 190));
                let account = Record::new(kind, format!("{prefix}{i:04}"), fields);
                input.accounts[r].records.insert(account);
            }
        }
        let one = plan_on(&relations, &input, 1);
        let two = plan_on(&relations, &input, 2);
        assert!(one.hubs.len() > 100 && !one.ambiguous.is_empty() && !one.creates.is_empty());
        assert_eq!(one.counts, two.counts);
        assert!(one == two, "the plans differ");
    }

    /// Enough hubs to be merged on several threads: the plan must be the one a single
    /// thread makes, hub for hub.
    #[test]
    fn merging_on_several_threads_gives_the_same_plan() {
        let (relations, input, n) = many_hubs();
        let one = plan_on(&relations, &input, 1);
        let four = plan_on(&relations, &input, 4);
        assert!(one.codes_removed.len() > 200, "{}", one.codes_removed.len());
        assert_eq!(one.hubs.len(), n);
        assert_eq!(one.counts, four.counts);
        assert!(one == four, "the plans differ");
    }

    /// A plan made range by range, as a sync carries it out: the head's counts, then
    /// each range's hubs added.
    fn plan_in_ranges(relations: &Relations, input: &PlanInput, per_range: usize) -> Plan {
        let (mut planning, mut plan) = Planning::start(relations, input, 2, per_range);
        let mut counts = plan.derive_counts(relations, &input.link_counts);
        let expected = planning.hubs_left().div_ceil(per_range).max(1);
        let mut ranges = 0;
        while let Some(range) = planning.next_range() {
            add_hub_counts(&mut counts, &range.hubs, relations);
            plan.absorb(range);
            ranges += 1;
        }
        assert!(planning.is_done() && planning.next_range().is_none());
        assert_eq!(ranges, expected, "ranges of {per_range}");
        plan.counts = counts;
        plan
    }

    /// Hubs planned a range at a time, in ranges of any size, are the hubs of the plan
    /// made in one piece, with the same counts: new hubs of contacts whose own field
    /// changes (R9) fall in the range of their id, unlinked contacts' lost codes too.
    #[test]
    fn a_plan_made_range_by_range_is_the_plan_made_in_one_piece() {
        let (relations, input, _) = many_hubs();
        let whole = plan_on(&relations, &input, 2);
        for per_range in [
            1,
            97,
            7_000,
            whole.hubs.len() - 1,
            whole.hubs.len(),
            usize::MAX,
        ] {
            let ranged = plan_in_ranges(&relations, &input, per_range);
            assert_eq!(ranged.counts, whole.counts, "ranges of {per_range}");
            assert!(ranged == whole, "ranges of {per_range}: the plans differ");
        }
        // Nothing to merge: one empty range.
        let empty = PlanInput {
            accounts: vec![AccountInput::default()],
            link_counts: vec![0],
            ..PlanInput::default()
        };
        let (mut planning, _) = Planning::start(&relations, &empty, 1, 10);
        assert_eq!(planning.next_range(), Some(HubRange::default()));
        assert_eq!(planning.next_range(), None);
    }

    /// Enough hubs to merge on several threads; some contacts unlinked by the operator
    /// lose their code (R9). The relations, the input and the hubs that come of it.
    fn many_hubs() -> (Relations, PlanInput, usize) {
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
            input.contacts.insert(contact);
            let account = Record::new(
                EntityKind::Customer,
                format!("K{i:06}"),
                Fields::new()
                    .with("name", format!("PARTNER {i}"))
                    .with("vat_registration_no", format!("BE{i:010}"))
                    .with("city", "Gent"),
            );
            input.accounts[0].records.insert(account);
        }
        // Some contacts linked before and unlinked by the operator lose their code
        // (R9): worked out on the cores too.
        for i in (0..n).step_by(97) {
            let (contact_id, account_id) = (format!("C{i:06}"), format!("K{i:06}"));
            let mut contact = input.contacts.get(&contact_id).unwrap().unpack();
            contact
                .fields
                .set("business_relations", Value::list(vec!["CUST".into()]));
            // Matched again by nothing: the code goes.
            contact
                .fields
                .set("vat_registration_no", Value::from(format!("NL{i:010}")));
            input.contacts.insert(contact);
            input.links.push(Link {
                code: "CUST".into(),
                contact_id: contact_id.clone(),
                account_id,
                baseline: Fields::new(),
                contact_version: None,
                account_version: None,
                last_error: None,
                failure_count: 0,
                parked: false,
                linked_at: Timestamp(0),
                synced_at: Timestamp(0),
                intent: None,
            });
            input.directives.unlink.push(("CUST".into(), contact_id));
        }
        (relations, input, n)
    }
}
