//! Work earlier runs left for later ones (R17, R18): creates written down before their
//! remote call, requests the plan refused, and pending links of an older state. One
//! place answers what waits, what is parked and what is done with it.

use tandem_state::{PendingCreate, PendingLink, RefusedRequest, Side, StateError, StateStore};

/// What earlier runs left unfinished, as the run found it.
#[derive(Debug, Default, Clone)]
pub struct Pending {
    pub creates: Vec<PendingCreate>,
    pub refused: Vec<RefusedRequest>,
    pub links: Vec<PendingLink>,
}

/// What of [`Pending`] a run is done with: deleted from the state when it commits.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct PendingDone {
    /// (code, side created, source id)
    pub creates: Vec<(String, Side, String)>,
    /// (code, contact id)
    pub refused: Vec<(String, String)>,
    /// (code, contact id)
    pub links: Vec<(String, String)>,
}

impl PendingDone {
    /// Each entry named once (a create found again is also linked now).
    pub(crate) fn dedup(&mut self) {
        self.creates.sort();
        self.creates.dedup();
        self.refused.sort();
        self.refused.dedup();
        self.links.sort();
        self.links.dedup();
    }
}

impl Pending {
    pub fn load(state: &dyn StateStore) -> Result<Pending, StateError> {
        Ok(Pending {
            creates: state.pending_creates()?,
            refused: state.refused_requests()?,
            links: state.pending_links()?,
        })
    }

    /// Whether anything of relation `code` is to be tried again this run.
    pub(crate) fn active_in(&self, code: &str) -> bool {
        self.creates.iter().any(|p| p.code == code && !p.parked)
            || self.refused.iter().any(|p| p.code == code && !p.parked)
            || self.links.iter().any(|p| p.code == code && !p.parked)
    }

    /// How many creates, refused requests and links of `code` are parked (R17).
    pub(crate) fn parked_in(&self, code: &str) -> u64 {
        let creates = self.creates.iter().filter(|p| p.code == code && p.parked);
        let refused = self.refused.iter().filter(|p| p.code == code && p.parked);
        let links = self.links.iter().filter(|p| p.code == code && p.parked);
        (creates.count() + refused.count() + links.count()) as u64
    }
}
