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
