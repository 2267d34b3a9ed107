//! The per-relation counts of a plan and of the run that carries it out: derived from
//! what the plan holds, and changed by what failed. No other place makes or adjusts
//! them.

use super::*;

impl Plan {
    /// Counts every item the plan holds, per relation; `link_counts` are the links the
    /// state held before the run. Parked items are counted by the report, from the
    /// state.
    pub fn derive_counts(&self, relations: &Relations, link_counts: &[u64]) -> Vec<RelationCounts> {
        let mut counts: Vec<RelationCounts> = (relations.relations.iter())
            .map(|r| RelationCounts {
                code: r.code.clone(),
                ..RelationCounts::default()
            })
            .collect();
        let by_code = |code: &str| relations.index_of(code);
        // Links the state held before the run whose sides this run changes: the rest of
        // those links are unchanged. A new link whose sides are written is updated too.
        let mut updated_before = vec![0u64; counts.len()];
        for hub in &self.hubs {
            for pair in &hub.pairs {
                let c = &mut counts[pair.relation];
                c.linked += u64::from(pair.new_link.is_some());
                c.updated += u64::from(pair.updated);
                updated_before[pair.relation] += u64::from(pair.updated && pair.previous.is_some());
            }
            let conflicting = hub.conflicts.iter().flat_map(|c| &c.accounts);
            for r in conflicting.filter_map(|(code, _, _)| by_code(code)) {
                counts[r].conflicts += 1;
            }
        }
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
        for (r, c) in counts.iter_mut().enumerate() {
            let before = link_counts.get(r).copied().unwrap_or(0);
            c.unchanged = before.saturating_sub(updated_before[r] + c.unlinked);
        }
        counts
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
