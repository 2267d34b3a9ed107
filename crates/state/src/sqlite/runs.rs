//! One run and the records it touched, for `tandem runs show`.

use rusqlite::params;
use tandem_model::Timestamp;

use super::{LOG_COLUMNS, SqliteState, get, log_entries, sql_error};
use crate::{Interaction, RunRecord, StateError};

impl SqliteState {
    /// [`StateStore::run`](crate::StateStore::run).
    pub(super) fn run_by_id(&self, id: i64) -> Result<Option<RunRecord>, StateError> {
        const ACTION: &str = "reading a run";
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT id, mode, started_at, finished_at, status, summary FROM runs WHERE id = ?1",
            )
            .map_err(sql_error(ACTION))?;
        let mut rows = stmt.query([id]).map_err(sql_error(ACTION))?;
        let Some(row) = rows.next().map_err(sql_error(ACTION))? else {
            return Ok(None);
        };
        let summary = match get::<Option<String>>(row, 5, ACTION)? {
            None => serde_json::Value::Null,
            Some(text) => serde_json::from_str(&text).map_err(|e| StateError::Corrupt {
                what: format!("summary of run {id}"),
                message: e.to_string(),
            })?,
        };
        Ok(Some(RunRecord {
            id,
            mode: get(row, 1, ACTION)?,
            started_at: Timestamp(get(row, 2, ACTION)?),
            finished_at: get::<Option<i64>>(row, 3, ACTION)?.map(Timestamp),
            status: get(row, 4, ACTION)?,
            summary,
        }))
    }

    /// The interaction log entries of run `id` (R11), oldest first, at most `limit`;
    /// and how many it has in all. The log has no index by run: this reads the whole
    /// table once, which an operator command can afford, and a sync's commits do not
    /// pay for an index they never use.
    pub(super) fn interactions_of_run(
        &self,
        run_id: i64,
        limit: usize,
    ) -> Result<(Vec<Interaction>, u64), StateError> {
        const ACTION: &str = "reading the interaction log of a run";
        // A row holds one entry or two (`next_action`): the total counts entries, and
        // `limit` rows hold at least `limit` entries.
        let mut stmt = self
            .conn
            .prepare_cached(&format!(
                "SELECT {LOG_COLUMNS}, \
                        sum(1 + (next_action IS NOT NULL)) OVER () \
                 FROM interactions WHERE run_id = ?1 ORDER BY id LIMIT ?2"
            ))
            .map_err(sql_error(ACTION))?;
        let rows_limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut rows = stmt
            .query(params![run_id, rows_limit])
            .map_err(sql_error(ACTION))?;
        let mut out = Vec::new();
        let mut total = 0;
        while let Some(row) = rows.next().map_err(sql_error(ACTION))? {
            total = get::<i64>(row, 12, ACTION)?;
            out.extend(log_entries(row, ACTION)?);
        }
        out.truncate(limit);
        Ok((out, u64::try_from(total).unwrap_or(0)))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::{LockMode, StateBatch, StateStore};

    fn entry(run_id: Option<i64>, contact_id: &str) -> Interaction {
        Interaction {
            id: 0,
            at: Timestamp(0),
            run_id,
            contact_id: contact_id.into(),
            code: "CUST".into(),
            account_id: Some("K1".into()),
            action: "linked".into(),
            source: "match".into(),
            details: json!({ "by": "match", "tier": 1 }).into(),
        }
    }

    #[test]
    fn a_run_lists_its_own_entries_and_counts_them_past_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let mut state =
            SqliteState::open(&dir.path().join("state.db"), LockMode::Exclusive).unwrap();
        let first = state.begin_run("sync").unwrap();
        let second = state.begin_run("sync").unwrap();
        state
            .commit(StateBatch {
                interactions: vec![
                    entry(Some(first), "C1"),
                    entry(None, "C9"),
                    entry(Some(second), "C2"),
                    entry(Some(second), "C3"),
                    entry(Some(second), "C4"),
                ],
                ..StateBatch::default()
            })
            .unwrap();
        let (entries, total) = state.run_interactions(second, 2).unwrap();
        let contacts: Vec<&str> = entries.iter().map(|e| e.contact_id.as_str()).collect();
        assert_eq!(contacts, ["C2", "C3"], "oldest first, at most the limit");
        assert_eq!(total, 3);
        assert_eq!(state.run_interactions(first, 10).unwrap().1, 1);
        assert_eq!(state.run(second).unwrap().unwrap().status, "running");
        assert!(state.run(99).unwrap().is_none());
    }
}
