//! R16: a full listing that would delete too much stops the run.

use tandem_model::EntityKind;

use crate::error::EngineError;

/// What stops a run whose full listing would delete too much (R16): more than
/// `max_share` of a scope's known records, or all of them (an empty listing).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DeleteGuard {
    /// A share of the known records, from 0 to 1.
    pub max_share: f64,
    /// Let every delete through (`--allow-deletes`).
    pub allow: bool,
}

impl DeleteGuard {
    /// The default limit: half of a scope's known records.
    pub const DEFAULT_MAX_SHARE: f64 = 0.5;

    /// Whether deleting `deleted` of `known` records, from a listing of `listed`
    /// records, must stop the run. Nothing known, nothing guarded.
    pub fn refuses(&self, deleted: u64, known: u64, listed: u64) -> bool {
        !self.allow
            && deleted > 0
            && known > 0
            && (listed == 0 || deleted as f64 > self.max_share * known as f64)
    }

    /// [`DeleteGuard::refuses`] as the error that stops the run, naming the scope.
    pub(crate) fn check(
        &self,
        connector: &str,
        kind: EntityKind,
        deleted: u64,
        known: u64,
        listed: u64,
    ) -> Result<(), EngineError> {
        if !self.refuses(deleted, known, listed) {
            return Ok(());
        }
        Err(EngineError::TooManyDeletes {
            connector: connector.to_owned(),
            kind,
            deleted,
            known,
            empty: listed == 0,
            max_share: self.max_share,
        })
    }
}

impl Default for DeleteGuard {
    fn default() -> DeleteGuard {
        DeleteGuard {
            max_share: DeleteGuard::DEFAULT_MAX_SHARE,
            allow: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::DeleteGuard;

    #[test]
    fn r16_the_guard_counts_shares_of_known_records() {
        let half = DeleteGuard::default();
        assert!(!half.refuses(1, 2, 1), "50 % is not over half");
        assert!(half.refuses(2, 3, 1), "66 % is");
        assert!(!half.refuses(0, 3, 3));
        assert!(!half.refuses(0, 0, 0), "nothing known, nothing guarded");
        let all = DeleteGuard {
            max_share: 1.0,
            allow: false,
        };
        assert!(!all.refuses(3, 3, 2), "all known replaced by others");
        assert!(all.refuses(3, 3, 0), "an empty listing is always stopped");
        let allowed = DeleteGuard {
            max_share: 0.0,
            allow: true,
        };
        assert!(!allowed.refuses(3, 3, 0));
    }
}
