//! Partitions: several workers share one deployment's work without doing any of it
//! twice (`tandem run --worker` with `[state] partitions`).
//!
//! Every worker reads and plans the whole deployment, then carries out only its
//! partition's share of the plan ([`Partition::cut`]):
//!
//! * a hub whose pairs were all linked before the run (a *settled* hub) belongs to the
//!   partition of its contact, by a stable hash of the contact's id, so a contact and
//!   all its accounts are always in one partition's hands;
//! * everything that makes or drops links, or creates records, belongs to partition 0,
//!   the *matcher*: hubs with a new link (a match, an operator's link, a create found
//!   again), creates, unlinks, refused requests, pending work done, ambiguities. Only
//!   the matcher changes which records are linked, so its view of who owns what is
//!   never older than its own writes.
//!
//! Each partition keeps its own view of what changed: its cursors, fingerprints and
//! content hashes live under a scope of its own (`crm#2/4`), so one partition reading
//! a change never hides it from the partition that must act on it. A partition
//! remembers a record it might have to act on later as read only once it acted on it
//! (see [`Cut::remembers`]); a record another partition owns for good it remembers as
//! read, so it does not plan that record's hub again and again.

use std::collections::{HashMap, HashSet};

use tandem_model::EntityKind;
use tandem_state::{Link, Scope};

use crate::plan::{HubPlan, Plan};

/// One partition of a deployment's work: `index` of `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partition {
    index: u32,
    count: u32,
}

impl Default for Partition {
    fn default() -> Partition {
        Partition::whole()
    }
}

/// A partition that does not exist (`index` not below `count`, or no partitions).
#[derive(Debug, thiserror::Error)]
#[error("partition {index} of {count} does not exist: partitions are numbered 0 to count - 1")]
pub struct NoSuchPartition {
    pub index: u32,
    pub count: u32,
}

impl Partition {
    pub fn new(index: u32, count: u32) -> Result<Partition, NoSuchPartition> {
        if index >= count {
            return Err(NoSuchPartition { index, count });
        }
        Ok(Partition { index, count })
    }

    /// The whole deployment as one partition: what a run without workers does.
    pub fn whole() -> Partition {
        Partition { index: 0, count: 1 }
    }

    pub fn index(&self) -> u32 {
        self.index
    }

    pub fn count(&self) -> u32 {
        self.count
    }

    pub fn is_whole(&self) -> bool {
        self.count == 1
    }

    /// Partition 0 makes and drops links and creates records.
    pub fn is_matcher(&self) -> bool {
        self.index == 0
    }

    /// The partition a settled hub of `contact_id` belongs to; stable across processes,
    /// hosts and releases (xxh3 of the id).
    pub fn of_contact(contact_id: &str, count: u32) -> u32 {
        (xxhash_rust::xxh3::xxh3_64(contact_id.as_bytes()) % u64::from(count.max(1))) as u32
    }

    /// The partition of this count that holds the settled hubs of `contact_id`.
    fn holder(&self, contact_id: &str) -> Partition {
        Partition {
            index: Partition::of_contact(contact_id, self.count),
            ..*self
        }
    }

    /// Whether a settled hub of `contact_id` is this partition's.
    pub fn holds_contact(&self, contact_id: &str) -> bool {
        self.holder(contact_id) == *self
    }

    /// Where this partition keeps its cursor, fingerprint and hashes of a scope: the
    /// scope itself for the whole deployment, `name#index/count` otherwise.
    pub fn scope(&self, connector: &str, kind: EntityKind) -> Scope {
        match self.is_whole() {
            true => Scope::new(connector, kind),
            false => Scope::new(&format!("{connector}#{}/{}", self.index, self.count), kind),
        }
    }

    /// The mode the runs of this partition are recorded under: `sync`, and the
    /// partition's lease for a partition (`sync, partition 1/3`), by which a store
    /// tells its partition's runs from the others'.
    pub(crate) fn run_mode(&self) -> String {
        let sync = crate::report::RunMode::Sync.as_str();
        match self.is_whole() {
            true => sync.to_owned(),
            false => format!("{sync}, {}", self.lease_name()),
        }
    }

    /// Whether this partition's view of what changed is stale: a run of another cut of
    /// the work (the whole deployment, or partitions of another count) went on since
    /// this partition's last run, in `runs` (newest first, `current` left out). Its
    /// hashes may then hide an edit that run carried and the user then undid: the
    /// record is back to the content this view remembers, and differs from the
    /// baseline the other run left.
    ///
    /// `None` when `runs` do not tell: neither a run of this view nor one of another
    /// cut is among them (ask again with more runs).
    pub(crate) fn view_is_stale(
        &self,
        runs: &[tandem_state::RunRecord],
        current: i64,
    ) -> Option<bool> {
        let (own, cut) = (self.run_mode(), (!self.is_whole()).then_some(self.count));
        for run in runs.iter().filter(|r| r.id != current) {
            if run.mode == own {
                return Some(false);
            }
            if cut_of(&run.mode) != cut {
                return Some(true);
            }
        }
        None
    }

    /// The lease a worker holds while it runs this partition.
    pub fn lease_name(&self) -> String {
        format!("partition {}/{}", self.index, self.count)
    }

    /// Keeps this partition's share of `plan` (see the module's doc) and returns what
    /// was cut away, for [`Cut::remembers`] and [`Cut::forgets`].
    pub(crate) fn cut(&self, plan: &mut Plan, links: &[Link]) -> Cut {
        let mut cut = Cut {
            partition: *self,
            ..Cut::default()
        };
        if self.is_whole() {
            return cut;
        }
        for link in links {
            let account = (link.code.clone(), link.account_id.clone());
            cut.contact_of_account
                .insert(account, link.contact_id.clone());
        }
        let mut kept_contacts = HashSet::new();
        plan.hubs.retain(|hub| {
            let keep = self.owns(hub);
            match keep {
                true => _ = kept_contacts.insert(hub.contact_id.clone()),
                false => cut.skip_hub(hub, self.owner(hub)),
            }
            keep
        });
        let owns_contact = |contact_id: &String| match kept_contacts.contains(contact_id) {
            true => true,
            false => self.is_matcher() && !cut.skipped_contacts.contains_key(contact_id),
        };
        plan.close_conflicts
            .retain(|(_, contact, _)| owns_contact(contact));
        plan.codes_removed
            .retain(|(_, contact)| owns_contact(contact));
        if !self.is_matcher() {
            cut.skip_matcher_work(plan);
        }
        cut
    }

    /// Whether this partition carries out `hub`.
    fn owns(&self, hub: &HubPlan) -> bool {
        self.owner(hub) == *self
    }

    /// The partition that carries out `hub`: a settled one its contact's, any other
    /// the matcher.
    fn owner(&self, hub: &HubPlan) -> Partition {
        let settled = hub
            .pairs
            .iter()
            .all(|p| p.new_link.is_none() && p.previous.is_some());
        match settled {
            true => self.holder(&hub.contact_id),
            false => self.matcher(),
        }
    }

    /// The partition that makes links and creates records.
    fn matcher(&self) -> Partition {
        Partition { index: 0, ..*self }
    }
}

/// The cut of the work a run's mode names: `None` for the whole deployment, else the
/// count of partitions (`sync, partition 1/3`).
fn cut_of(mode: &str) -> Option<u32> {
    let (_, partition) = mode.split_once(", partition ")?;
    partition.rsplit_once('/')?.1.parse().ok()
}

/// How a partition remembers a record it read ([`Cut::remembers`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Seen {
    /// Its hash as read: the record shows as changed only once it changes again.
    AsRead,
    /// Marked to be looked at again by the partition `to` that carries out its part of
    /// the plan, and here too with `again_here` (else remembered as read here).
    HandedOver { to: Partition, again_here: bool },
}

/// What [`Partition::cut`] left to other partitions.
#[derive(Debug, Default)]
pub(crate) struct Cut {
    partition: Partition,
    /// Records of the parts of the plan cut away, with the partition that carries
    /// each part out: contacts, and accounts by code.
    skipped_contacts: HashMap<String, Partition>,
    skipped_accounts: HashMap<(String, String), Partition>,
    /// The contact of each account linked when the run read the links, by (code,
    /// account).
    contact_of_account: HashMap<(String, String), String>,
}

impl Cut {
    fn skip_hub(&mut self, hub: &HubPlan, owner: Partition) {
        self.skipped_contacts.insert(hub.contact_id.clone(), owner);
        for pair in &hub.pairs {
            let account = (pair.code.clone(), pair.account_id.clone());
            self.skipped_accounts.insert(account, owner);
        }
    }

    /// Drops what only the matcher does from a plan of another partition.
    fn skip_matcher_work(&mut self, plan: &mut Plan) {
        let matcher = self.partition.matcher();
        for create in plan.creates.drain(..) {
            let account = (create.code, create.account_id);
            self.skipped_accounts.insert(account, matcher);
        }
        for create in plan.account_creates.drain(..) {
            self.skipped_contacts.insert(create.contact_id, matcher);
        }
        for unlink in plan.unlinks.drain(..) {
            self.skipped_contacts.insert(unlink.contact_id, matcher);
            let account = (unlink.code, unlink.account_id);
            self.skipped_accounts.insert(account, matcher);
        }
        plan.ambiguous.clear();
        plan.rejected.clear();
        plan.done_pending = Default::default();
        plan.recheck_accounts.clear();
        plan.new_lost_codes.clear();
    }

    /// How this partition remembers a changed record of relation `code` (`None`: a
    /// contact) that it read. What it carried out, and what it will never act on, it
    /// remembers as read. A record in a part of the plan it left to another partition
    /// it hands over: marked to be looked at again in that partition's view, so that
    /// the owner's view, which may not have woken to it, does. Partitions' views
    /// differ: one may see a new link the matcher's view never looked for, leave the
    /// hub to the matcher, while the matcher takes the hub for settled and leaves it
    /// to the first (the model found that: neither carried the edit). And it marks
    /// the record here too when it may have to act on it later (known, so that its
    /// deletion shows; changed, so that its change shows when its turn comes): the
    /// matcher for any record, another partition for its own contacts' records.
    pub(crate) fn remembers(&self, code: Option<&str>, id: &str) -> Seen {
        let partition = self.partition;
        if partition.is_whole() {
            return Seen::AsRead;
        }
        let (owner, contact) = self.of(code, id);
        let Some(owner) = owner else {
            return Seen::AsRead;
        };
        let again_here = match contact {
            _ if partition.is_matcher() => true,
            Some(c) => partition.holds_contact(c),
            None => false,
        };
        match (owner.is_matcher(), partition.is_matcher()) {
            // Another partition's settled hub: it sees the change in its own view.
            (false, false) => Seen::AsRead,
            _ => Seen::HandedOver {
                to: owner,
                again_here,
            },
        }
    }

    /// Whether this partition forgets a record read as deleted: not while the unlink
    /// that follows is left to the matcher, or the deletion would no longer show; it is
    /// marked to be looked at again instead (and, read by id, found gone again).
    pub(crate) fn forgets(&self, code: Option<&str>, id: &str) -> bool {
        self.partition.is_whole() || self.of(code, id).0.is_none()
    }

    /// The partition carrying out the part of the plan cut away that record `id` of
    /// relation `code` (`None`: a contact) is in, if any, and the contact the record
    /// belongs to (itself, or its account's link).
    fn of<'c>(
        &'c self,
        code: Option<&'c str>,
        id: &'c str,
    ) -> (Option<Partition>, Option<&'c str>) {
        match code {
            None => (self.skipped_contacts.get(id).copied(), Some(id)),
            Some(code) => {
                let key = (code.to_owned(), id.to_owned());
                let contact = self.contact_of_account.get(&key).map(String::as_str);
                (self.skipped_accounts.get(&key).copied(), contact)
            }
        }
    }

    /// The partition that holds the settled hubs of `contact_id`, when it is not this
    /// one (and the work is cut at all).
    pub(crate) fn holder_of(&self, contact_id: &str) -> Option<Partition> {
        let holder = self.partition.holder(contact_id);
        (holder != self.partition).then_some(holder)
    }

    /// Whether this run stores the company of each person read (R3, R10).
    pub(crate) fn stores_companies(&self) -> bool {
        self.partition.is_matcher()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Workers on several hosts and releases must agree on whose a contact is: the
    /// hash is fixed, not the process's random one.
    #[test]
    fn a_contact_is_in_the_same_partition_on_every_host_and_release() {
        let seen: Vec<u32> = ["C00000001", "C00000002", "uc6", "K-17"]
            .iter()
            .map(|id| Partition::of_contact(id, 4))
            .collect();
        assert_eq!(seen, [3, 2, 1, 0]);
    }

    /// Ten thousand ids spread over four partitions within a tenth of a fair share.
    #[test]
    fn contacts_spread_evenly_over_the_partitions() {
        let mut counts = [0u32; 4];
        for i in 0..10_000 {
            counts[Partition::of_contact(&format!("C{i:08}"), 4) as usize] += 1;
        }
        assert!(
            counts.iter().all(|n| (2_250..=2_750).contains(n)),
            "{counts:?}"
        );
    }

    /// Runs newest first; the current one is left out. Runs that hold neither this
    /// view's nor another cut's do not tell.
    #[test]
    fn a_view_is_stale_after_a_run_of_another_cut_since_its_own_last_run() {
        let runs = |modes: &[&str]| -> Vec<tandem_state::RunRecord> {
            (modes.iter().enumerate())
                .map(|(i, mode)| tandem_state::RunRecord {
                    id: 100 - i as i64,
                    mode: (*mode).to_owned(),
                    started_at: tandem_model::Timestamp(0),
                    finished_at: None,
                    status: "ok".to_owned(),
                    summary: serde_json::Value::Null,
                })
                .collect()
        };
        let (p1, whole) = (Partition::new(1, 2).unwrap(), Partition::whole());
        let own = "sync, partition 1/2";
        let other = "sync, partition 0/2";
        for (partition, modes, stale) in [
            (p1, vec![other, own, "sync"], Some(false)),
            (p1, vec![other, "sync", own], Some(true)),
            (p1, vec!["sync, partition 0/3", own], Some(true)),
            (p1, vec![other, other], None),
            (p1, vec![], None),
            (whole, vec!["sync", other], Some(false)),
            (whole, vec![other, "sync"], Some(true)),
            (whole, vec![other], Some(true)),
        ] {
            let runs = runs(&modes);
            assert_eq!(
                partition.view_is_stale(&runs, 101),
                stale,
                "{partition:?} {modes:?}"
            );
        }
    }

    #[test]
    fn a_partition_keeps_its_state_under_its_own_name() {
        let p = Partition::new(1, 3).unwrap();
        assert_eq!(p.scope("crm", EntityKind::Contact).connector, "crm#1/3");
        assert_eq!(p.lease_name(), "partition 1/3");
        assert_eq!(
            Partition::whole()
                .scope("crm", EntityKind::Contact)
                .connector,
            "crm"
        );
        assert!(Partition::new(3, 3).is_err());
        assert!(Partition::whole().holds_contact("anything"));
    }
}
