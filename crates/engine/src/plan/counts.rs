//! The per-relation counts of a plan and of the run that carries it out: derived from
//! what the plan holds, and changed by what failed. No other place makes or adjusts
//! them.

use super::*;

impl Plan {
    /// Counts every item the plan holds, per relation; `link_counts` are the links the
    /// state held before the run. Parked items are counted by the report, from the
    /// state.
    pub fn derive_counts(&self, relations: &Relations, link_counts: &[u64]) -> Vec<RelationCounts> {
        let mut counts = self.head_counts(relations, link_counts);
        add_hub_counts(&mut counts, &self.hubs, relations);
        counts
    }

    /// [`Plan::derive_counts`] of everything but the hubs, which
    /// [`add_hub_counts`] adds (a run planned range by range adds each range's).
    fn head_counts(&self, relations: &Relations, link_counts: &[u64]) -> Vec<RelationCounts> {
        let mut counts: Vec<RelationCounts> = (relations.relations.iter())
            .map(|r| RelationCounts {
                code: r.code.clone(),
                ..RelationCounts::default()
            })
            .collect();
        let by_code = |code: &str| relations.index_of(code);
        for create in &self.creates {
            counts[create.relation].created += 1;
        }
        for create in &self.account_creates {
            counts[create.relation].created += 1;
        }
        let codes = (self.unlinks.iter().map(|u| (&u.code, Item::Unlink)))
            .chain(self.ambiguous.iter().map(|a| (&a.code, Item::Ambiguity)))
            .chain(self.rejected.iter().map(|r| (&r.code, Item::Rejection)));
        for (r, item) in codes.filter_map(|(code, item)| Some((by_code(code)?, item))) {
            match item {
                Item::Unlink => counts[r].unlinked += 1,
                Item::Ambiguity => counts[r].ambiguous += 1,
                Item::Rejection => counts[r].failed += 1,
            }
        }
        // Links the state held before the run stay unchanged unless unlinked, or a hub
        // changes their sides (taken off by `add_hub_counts`).
        for (r, c) in counts.iter_mut().enumerate() {
            let before = link_counts.get(r).copied().unwrap_or(0);
            c.unchanged = before.saturating_sub(c.unlinked);
        }
        counts
    }
}

/// Adds the counts of `hubs` to `counts`: links made, pairs updated (a new link whose
/// sides are written is updated too), conflicts; a link the state held before the run
/// whose sides change is no longer unchanged.
pub fn add_hub_counts(counts: &mut [RelationCounts], hubs: &[HubPlan], relations: &Relations) {
    for hub in hubs {
        for pair in &hub.pairs {
            let c = &mut counts[pair.relation];
            c.linked += u64::from(pair.new_link.is_some());
            c.updated += u64::from(pair.updated);
            let was_unchanged = pair.updated && pair.previous.is_some();
            c.unchanged = c.unchanged.saturating_sub(u64::from(was_unchanged));
        }
        let conflicting = hub.conflicts.iter().flat_map(|c| &c.accounts);
        for r in conflicting.filter_map(|(code, _, _)| relations.index_of(code)) {
            counts[r].conflicts += 1;
        }
    }
}

/// A plan item counted by its relation code.
#[derive(Clone, Copy)]
enum Item {
    Unlink,
    Ambiguity,
    Rejection,
}

/// What a pair was to the plan before its write failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PairWas {
    /// A new link; `written` when its sides were to change.
    New { written: bool },
    /// A link whose sides were to change.
    Updated,
    /// A link left as it was (only the contact's own field was to change).
    Unchanged,
}

impl RelationCounts {
    /// A create that failed is counted as failed instead of created.
    pub fn create_failed(&mut self) {
        self.created = self.created.saturating_sub(1);
        self.failed += 1;
    }

    /// A pair whose write failed is counted as failed instead of what it was.
    pub fn pair_failed(&mut self, was: PairWas) {
        let count = match was {
            PairWas::New { written } => {
                if written {
                    self.updated = self.updated.saturating_sub(1);
                }
                &mut self.linked
            }
            PairWas::Updated => &mut self.updated,
            PairWas::Unchanged => &mut self.unchanged,
        };
        *count = count.saturating_sub(1);
        self.failed += 1;
    }

    /// Parked items (R17) are neither updated nor unchanged: `links` of them were
    /// counted unchanged by the plan.
    pub fn set_parked(&mut self, parked: u64, parked_links: u64) {
        self.parked = parked;
        self.unchanged = self.unchanged.saturating_sub(parked_links);
    }
}
