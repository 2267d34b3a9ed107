//! Reads: one statement each; lookups by many ids pass them as one array (`= ANY($1)`).

use std::collections::{HashMap, HashSet};

use sqlx::postgres::{PgConnection, PgRow, Postgres};
use sqlx::{Decode, Row, Type};
use tandem_model::{Timestamp, Value};

use super::pg;
use crate::sqlite::overlay;
use crate::{
    ConflictEntry, Intent, Interaction, Link, LinkedBy, PendingCreate, PendingLink, RefusedRequest,
    RunRecord, Scope, Side, StateError, codec,
};

pub(crate) const LINK_COLUMNS: &str = "l.code, l.contact_id, l.account_id, l.baseline, \
     l.contact_version, l.account_version, l.last_error, l.failure_count, l.linked_at, \
     l.synced_at, l.parked, l.intent";

pub(crate) const LOG_COLUMNS: &str = "id, at, run_id, contact_id, code, account_id, action, \
     source, details, next_action, next_source, next_details";

/// The number of the scope `$1`, `$2` (connector, kind): none for a scope that never
/// had a hash.
pub(crate) const SCOPE_ID: &str = "(SELECT id FROM scopes WHERE connector = $1 AND kind = $2)";

const READING_LINKS: &str = "reading links";

pub(crate) fn get<'r, T>(
    row: &'r PgRow,
    index: usize,
    action: &'static str,
) -> Result<T, StateError>
where
    T: Decode<'r, Postgres> + Type<Postgres>,
{
    row.try_get(index).map_err(pg(action))
}

fn count(n: i64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Reads a row selected with [`LINK_COLUMNS`].
fn link_from_row(row: &PgRow) -> Result<Link, StateError> {
    let code: String = get(row, 0, READING_LINKS)?;
    let contact_id: String = get(row, 1, READING_LINKS)?;
    let baseline: &[u8] = get(row, 3, READING_LINKS)?;
    let baseline = codec::decode_fields(baseline).map_err(|message| StateError::Corrupt {
        what: format!("baseline of the {code} link of contact {contact_id}"),
        message,
    })?;
    let intent: Option<String> = get(row, 11, READING_LINKS)?;
    let intent = intent
        .map(|text| {
            serde_json::from_str::<Intent>(&text).map_err(|e| StateError::Corrupt {
                what: format!("intent of the {code} link of contact {contact_id}"),
                message: e.to_string(),
            })
        })
        .transpose()?;
    Ok(Link {
        account_id: get(row, 2, READING_LINKS)?,
        baseline,
        contact_version: get(row, 4, READING_LINKS)?,
        account_version: get(row, 5, READING_LINKS)?,
        last_error: get(row, 6, READING_LINKS)?,
        failure_count: count(get(row, 7, READING_LINKS)?),
        linked_at: Timestamp(get(row, 8, READING_LINKS)?),
        synced_at: Timestamp(get(row, 9, READING_LINKS)?),
        parked: get::<i64>(row, 10, READING_LINKS)? != 0,
        intent,
        code,
        contact_id,
    })
}

fn links_from_rows(rows: &[PgRow]) -> Result<Vec<Link>, StateError> {
    rows.iter().map(link_from_row).collect()
}

async fn fetch_links(
    conn: &mut PgConnection,
    query: sqlx::query::Query<'_, Postgres, sqlx::postgres::PgArguments>,
) -> Result<Vec<Link>, StateError> {
    let rows = query.fetch_all(conn).await.map_err(pg(READING_LINKS))?;
    links_from_rows(&rows)
}

/// Lookups go through the (code, contact) index that R2 needs anyway, one seek per
/// code and id: an index on contact_id alone would slow every insert.
pub(crate) async fn links_of_contacts(
    conn: &mut PgConnection,
    ids: Vec<String>,
) -> Result<Vec<Link>, StateError> {
    let sql = format!(
        "SELECT {LINK_COLUMNS}
         FROM (SELECT code FROM link_counts WHERE links > 0) c
         CROSS JOIN (SELECT DISTINCT id FROM unnest($1::text[]) AS u (id)) i
         JOIN links l ON l.code = c.code AND l.contact_id = i.id
         ORDER BY l.contact_id, l.code"
    );
    fetch_links(conn, sqlx::query(sqlx::AssertSqlSafe(sql)).bind(ids)).await
}

pub(crate) async fn links_of_accounts(
    conn: &mut PgConnection,
    code: &str,
    ids: Vec<String>,
) -> Result<Vec<Link>, StateError> {
    let sql = format!(
        "SELECT {LINK_COLUMNS} FROM links l
         WHERE l.code = $1 AND l.account_id = ANY($2::text[])
         ORDER BY l.account_id"
    );
    fetch_links(
        conn,
        sqlx::query(sqlx::AssertSqlSafe(sql)).bind(code).bind(ids),
    )
    .await
}

pub(crate) async fn links(
    conn: &mut PgConnection,
    code: Option<&str>,
) -> Result<Vec<Link>, StateError> {
    let sql = format!(
        "SELECT {LINK_COLUMNS} FROM links l
         WHERE $1::text IS NULL OR l.code = $1
         ORDER BY l.code, l.contact_id"
    );
    let stored = fetch_links(conn, sqlx::query(sqlx::AssertSqlSafe(sql)).bind(code)).await?;
    let in_flight = intent_batch_links(conn).await?;
    Ok(overlay(stored, in_flight, |l| {
        code.is_none_or(|c| l.code == c)
    }))
}

pub(crate) async fn parked_links(conn: &mut PgConnection) -> Result<Vec<Link>, StateError> {
    let sql = format!(
        "SELECT {LINK_COLUMNS} FROM links l WHERE l.parked <> 0 ORDER BY l.code, l.contact_id"
    );
    fetch_links(conn, sqlx::query(sqlx::AssertSqlSafe(sql))).await
}

/// `ended_only`: the intents of runs still going on left out.
pub(crate) async fn links_with_intent(
    conn: &mut PgConnection,
    ended_only: bool,
) -> Result<Vec<Link>, StateError> {
    let sql = format!(
        "SELECT {LINK_COLUMNS} FROM links l WHERE l.intent IS NOT NULL \
         ORDER BY l.code, l.contact_id"
    );
    let stored = fetch_links(conn, sqlx::query(sqlx::AssertSqlSafe(sql))).await?;
    let in_flight = match ended_only {
        true => ended_intent_batch_links(conn).await?,
        false => intent_batch_links(conn).await?,
    };
    Ok(overlay(stored, in_flight, |_| true))
}

/// The links of every intent batch stored: the intents of runs in flight, shown as
/// the links they will leave.
pub(crate) async fn intent_batch_links(conn: &mut PgConnection) -> Result<Vec<Link>, StateError> {
    const ACTION: &str = "reading intents";
    let rows: Vec<(i64, Vec<u8>)> =
        sqlx::query_as("SELECT run_id, links FROM intent_batches ORDER BY id")
            .fetch_all(conn)
            .await
            .map_err(pg(ACTION))?;
    decode_intent_batches(rows)
}

/// The links of the intent batches of runs no longer running, which a run takes up:
/// a worker of another partition may be carrying out its own right now (`begin_run`
/// marks a dead run of this store's lease interrupted first). `unpack_intents`
/// forgets the same batches.
pub(crate) async fn ended_intent_batch_links(
    conn: &mut PgConnection,
) -> Result<Vec<Link>, StateError> {
    const ACTION: &str = "reading intents";
    let rows: Vec<(i64, Vec<u8>)> = sqlx::query_as(
        "SELECT run_id, links FROM intent_batches
         WHERE run_id NOT IN (SELECT id FROM runs WHERE status = 'running') ORDER BY id",
    )
    .fetch_all(conn)
    .await
    .map_err(pg(ACTION))?;
    decode_intent_batches(rows)
}

fn decode_intent_batches(rows: Vec<(i64, Vec<u8>)>) -> Result<Vec<Link>, StateError> {
    let mut out = Vec::new();
    for (run_id, bytes) in rows {
        let links = codec::decode_links(&bytes).map_err(|message| StateError::Corrupt {
            what: format!("intents of run {run_id}"),
            message,
        })?;
        out.extend(links);
    }
    Ok(out)
}

pub(crate) async fn linked_ids(
    conn: &mut PgConnection,
    code: &str,
) -> Result<(HashSet<String>, HashSet<String>), StateError> {
    const ACTION: &str = "reading linked ids";
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT contact_id, account_id FROM links WHERE code = $1")
            .bind(code)
            .fetch_all(conn)
            .await
            .map_err(pg(ACTION))?;
    let mut contacts = HashSet::with_capacity(rows.len());
    let mut accounts = HashSet::with_capacity(rows.len());
    for (contact, account) in rows {
        contacts.insert(contact);
        accounts.insert(account);
    }
    Ok((contacts, accounts))
}

pub(crate) async fn count_links(conn: &mut PgConnection, code: &str) -> Result<u64, StateError> {
    let n: Option<i64> = sqlx::query_scalar("SELECT links FROM link_counts WHERE code = $1")
        .bind(code)
        .fetch_optional(conn)
        .await
        .map_err(pg("counting links"))?;
    Ok(u64::try_from(n.unwrap_or(0)).unwrap_or(0))
}

pub(crate) async fn interactions(
    conn: &mut PgConnection,
    contact_id: &str,
    limit: usize,
) -> Result<Vec<Interaction>, StateError> {
    const ACTION: &str = "reading the interaction log";
    // The newest `limit` rows, then oldest first; a row holds one or two entries.
    let sql = format!(
        "SELECT {LOG_COLUMNS} FROM (
             SELECT * FROM interactions WHERE contact_id = $1 ORDER BY id DESC LIMIT $2
         ) newest ORDER BY id"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(contact_id)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(conn)
        .await
        .map_err(pg(ACTION))?;
    let mut out = Vec::new();
    for row in &rows {
        out.extend(log_entries(row, ACTION)?);
    }
    let extra = out.len().saturating_sub(limit);
    out.drain(..extra);
    Ok(out)
}

/// The entries of a log row selected with [`LOG_COLUMNS`]: one, or two when it holds
/// a second entry of the same pair.
pub(crate) fn log_entries(
    row: &PgRow,
    action: &'static str,
) -> Result<Vec<Interaction>, StateError> {
    let next = match get::<Option<String>>(row, 9, action)? {
        Some(next_action) => Some((
            next_action,
            get::<Option<String>>(row, 10, action)?,
            get::<String>(row, 11, action)?,
        )),
        None => None,
    };
    crate::log::LogRow {
        id: get(row, 0, action)?,
        at: get(row, 1, action)?,
        run_id: get(row, 2, action)?,
        contact_id: get(row, 3, action)?,
        code: get(row, 4, action)?,
        account_id: get(row, 5, action)?,
        action: get(row, 6, action)?,
        source: get(row, 7, action)?,
        details: get(row, 8, action)?,
        next,
    }
    .into_entries()
}

fn json_value(text: &str, what: impl FnOnce() -> String) -> Result<Value, StateError> {
    serde_json::from_str(text).map_err(|e| StateError::Corrupt {
        what: what(),
        message: e.to_string(),
    })
}

pub(crate) async fn conflicts(
    conn: &mut PgConnection,
    open_only: bool,
) -> Result<Vec<ConflictEntry>, StateError> {
    const ACTION: &str = "reading conflicts";
    let rows = sqlx::query(
        "SELECT id, code, contact_id, account_id, field, base, contact_value, account_value,
                opened_at, run_id, resolution, closed_at
         FROM conflicts WHERE NOT $1 OR closed_at IS NULL ORDER BY id",
    )
    .bind(open_only)
    .fetch_all(conn)
    .await
    .map_err(pg(ACTION))?;
    let mut out = Vec::with_capacity(rows.len());
    for row in &rows {
        let id: i64 = get(row, 0, ACTION)?;
        let value = |index: usize, what: &str| -> Result<Value, StateError> {
            let text: String = get(row, index, ACTION)?;
            json_value(&text, || format!("{what} of conflict {id}"))
        };
        let resolution: Option<String> = get(row, 10, ACTION)?;
        out.push(ConflictEntry {
            id,
            code: get(row, 1, ACTION)?,
            contact_id: get(row, 2, ACTION)?,
            account_id: get(row, 3, ACTION)?,
            field: get(row, 4, ACTION)?,
            base: value(5, "base value")?,
            contact_value: value(6, "contact value")?,
            account_value: value(7, "account value")?,
            opened_at: Timestamp(get(row, 8, ACTION)?),
            run_id: get(row, 9, ACTION)?,
            resolution: resolution
                .map(|text| json_value(&text, || format!("resolution of conflict {id}")))
                .transpose()?,
            closed_at: get::<Option<i64>>(row, 11, ACTION)?.map(Timestamp),
        });
    }
    Ok(out)
}

pub(crate) async fn pending_creates(
    conn: &mut PgConnection,
) -> Result<Vec<PendingCreate>, StateError> {
    const ACTION: &str = "reading pending creates";
    let rows = sqlx::query(
        "SELECT code, side, source_id, fields, run_id, error, failure_count, parked, updated_at,
                record_id
         FROM pending_creates ORDER BY code, side, source_id",
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(pg(ACTION))?;
    let mut out = Vec::with_capacity(rows.len());
    for row in &rows {
        let code: String = get(row, 0, ACTION)?;
        let side: String = get(row, 1, ACTION)?;
        let source_id: String = get(row, 2, ACTION)?;
        let what = || format!("the pending {code} {side} create from {source_id}");
        let fields: String = get(row, 3, ACTION)?;
        let fields = serde_json::from_str(&fields).map_err(|e| StateError::Corrupt {
            what: format!("fields of {}", what()),
            message: e.to_string(),
        })?;
        let side = Side::parse(&side).ok_or_else(|| StateError::Corrupt {
            what: format!("side of {}", what()),
            message: "neither `contact` nor `account`".to_owned(),
        })?;
        out.push(PendingCreate {
            fields,
            run_id: get(row, 4, ACTION)?,
            error: get(row, 5, ACTION)?,
            failure_count: count(get(row, 6, ACTION)?),
            parked: get::<i64>(row, 7, ACTION)? != 0,
            updated_at: Timestamp(get(row, 8, ACTION)?),
            record_id: get(row, 9, ACTION)?,
            code,
            side,
            source_id,
        });
    }
    let batched = create_batch_entries(conn).await?;
    Ok(crate::pending::overlay_creates(out, batched))
}

/// The creates of every create batch stored, oldest first: creates of runs in flight.
async fn create_batch_entries(conn: &mut PgConnection) -> Result<Vec<PendingCreate>, StateError> {
    create_batches(
        conn,
        "SELECT run_id, creates FROM pending_create_batches ORDER BY id",
    )
    .await
}

/// The creates of the batches of runs no longer running, which a run takes up (see
/// [`ended_intent_batch_links`]).
pub(crate) async fn ended_create_batch_entries(
    conn: &mut PgConnection,
) -> Result<Vec<PendingCreate>, StateError> {
    let ended = "SELECT run_id, creates FROM pending_create_batches
         WHERE run_id NOT IN (SELECT id FROM runs WHERE status = 'running') ORDER BY id";
    create_batches(conn, ended).await
}

/// The creates of the batches `select` gives as (run id, creates).
async fn create_batches(
    conn: &mut PgConnection,
    select: &'static str,
) -> Result<Vec<PendingCreate>, StateError> {
    let rows: Vec<(i64, String)> = sqlx::query_as(select)
        .fetch_all(conn)
        .await
        .map_err(pg("reading creates about to be sent"))?;
    let mut out = Vec::new();
    for (run_id, creates) in rows {
        out.extend(crate::pending::decode_creates(run_id, &creates)?);
    }
    Ok(out)
}

pub(crate) async fn refused_requests(
    conn: &mut PgConnection,
) -> Result<Vec<RefusedRequest>, StateError> {
    const ACTION: &str = "reading refused requests";
    let rows = sqlx::query(
        "SELECT code, contact_id, error, run_id, failure_count, parked, updated_at
         FROM refused_requests ORDER BY code, contact_id",
    )
    .fetch_all(conn)
    .await
    .map_err(pg(ACTION))?;
    rows.iter()
        .map(|row| {
            Ok(RefusedRequest {
                code: get(row, 0, ACTION)?,
                contact_id: get(row, 1, ACTION)?,
                error: get(row, 2, ACTION)?,
                run_id: get(row, 3, ACTION)?,
                failure_count: count(get(row, 4, ACTION)?),
                parked: get::<i64>(row, 5, ACTION)? != 0,
                updated_at: Timestamp(get(row, 6, ACTION)?),
            })
        })
        .collect()
}

pub(crate) async fn pending_links(conn: &mut PgConnection) -> Result<Vec<PendingLink>, StateError> {
    const ACTION: &str = "reading pending links";
    let rows = sqlx::query(
        "SELECT code, contact_id, account_id, tier, error, failure_count, parked, updated_at
         FROM pending_links ORDER BY code, contact_id",
    )
    .fetch_all(conn)
    .await
    .map_err(pg(ACTION))?;
    rows.iter()
        .map(|row| {
            let tier: Option<i64> = get(row, 3, ACTION)?;
            Ok(PendingLink {
                code: get(row, 0, ACTION)?,
                contact_id: get(row, 1, ACTION)?,
                account_id: get(row, 2, ACTION)?,
                by: tier.map_or(LinkedBy::Operator, |tier| LinkedBy::Match {
                    tier: usize::try_from(tier).unwrap_or(0),
                }),
                error: get(row, 4, ACTION)?,
                failure_count: count(get(row, 5, ACTION)?),
                parked: get::<i64>(row, 6, ACTION)? != 0,
                updated_at: Timestamp(get(row, 7, ACTION)?),
            })
        })
        .collect()
}

pub(crate) async fn unlinked_pairs(
    conn: &mut PgConnection,
    code: &str,
) -> Result<Vec<(String, String)>, StateError> {
    sqlx::query_as(
        "SELECT contact_id, account_id FROM unlinked_pairs WHERE code = $1
         ORDER BY contact_id, account_id",
    )
    .bind(code)
    .fetch_all(conn)
    .await
    .map_err(pg("reading the pairs unlinked by hand"))
}

pub(crate) async fn codes_lost(
    conn: &mut PgConnection,
) -> Result<Vec<(String, String)>, StateError> {
    sqlx::query_as("SELECT code, contact_id FROM codes_lost ORDER BY code, contact_id")
        .fetch_all(conn)
        .await
        .map_err(pg("reading the codes contacts lost"))
}

pub(crate) async fn contact_deleted(
    conn: &mut PgConnection,
    code: &str,
) -> Result<HashSet<String>, StateError> {
    let ids: Vec<String> =
        sqlx::query_scalar("SELECT account_id FROM contact_deleted WHERE code = $1")
            .bind(code)
            .fetch_all(conn)
            .await
            .map_err(pg("reading the accounts whose contact was deleted"))?;
    Ok(ids.into_iter().collect())
}

pub(crate) async fn company_of(
    conn: &mut PgConnection,
    contact_id: &str,
) -> Result<Option<String>, StateError> {
    sqlx::query_scalar("SELECT company_id FROM contact_companies WHERE contact_id = $1")
        .bind(contact_id)
        .fetch_optional(conn)
        .await
        .map_err(pg("reading the company of a contact"))
}

pub(crate) async fn holds_companies(conn: &mut PgConnection) -> Result<bool, StateError> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM contact_companies)")
        .fetch_one(conn)
        .await
        .map_err(pg("reading whether any contact has a company"))
}

pub(crate) async fn cursor(
    conn: &mut PgConnection,
    scope: &Scope,
) -> Result<Option<String>, StateError> {
    sqlx::query_scalar("SELECT cursor FROM cursors WHERE connector = $1 AND kind = $2")
        .bind(&scope.connector)
        .bind(scope.kind.as_str())
        .fetch_optional(conn)
        .await
        .map_err(pg("reading a cursor"))
}

pub(crate) async fn fingerprint(
    conn: &mut PgConnection,
    scope: &Scope,
) -> Result<Option<String>, StateError> {
    sqlx::query_scalar("SELECT fingerprint FROM fingerprints WHERE connector = $1 AND kind = $2")
        .bind(&scope.connector)
        .bind(scope.kind.as_str())
        .fetch_optional(conn)
        .await
        .map_err(pg("reading a fingerprint"))
}

/// Which hash of a record [`hashes_of`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hash {
    Content,
    /// The hash of its match keys; none when unknown (NULL or 0).
    MatchKeys,
}

pub(crate) async fn hashes_of(
    conn: &mut PgConnection,
    scope: &Scope,
    ids: Vec<String>,
    which: Hash,
) -> Result<HashMap<String, u64>, StateError> {
    let (action, column) = match which {
        Hash::Content => ("reading content hashes", "hash"),
        Hash::MatchKeys => ("reading match keys", "match_keys"),
    };
    let sql = format!(
        "SELECT id, {column} FROM record_hashes
         WHERE scope = {SCOPE_ID} AND id = ANY($3::text[]) AND {column} IS NOT NULL"
    );
    let rows: Vec<(String, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(&scope.connector)
        .bind(scope.kind.as_str())
        .bind(ids)
        .fetch_all(conn)
        .await
        .map_err(pg(action))?;
    Ok(rows
        .into_iter()
        .filter(|(_, hash)| which == Hash::Content || *hash != 0)
        .map(|(id, hash)| (id, hash.cast_unsigned()))
        .collect())
}

pub(crate) async fn hashes(
    conn: &mut PgConnection,
    scope: &Scope,
) -> Result<crate::StoredHashes, StateError> {
    let sql = format!("SELECT id, hash FROM record_hashes WHERE scope = {SCOPE_ID}");
    let rows: Vec<(String, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(&scope.connector)
        .bind(scope.kind.as_str())
        .fetch_all(conn)
        .await
        .map_err(pg("reading content hashes"))?;
    Ok(rows
        .into_iter()
        .map(|(id, hash)| (id.into(), hash.cast_unsigned()))
        .collect())
}

pub(crate) async fn has_rechecks(
    conn: &mut PgConnection,
    scope: &Scope,
) -> Result<bool, StateError> {
    let sql = format!(
        "SELECT EXISTS (SELECT 1 FROM record_hashes WHERE scope = {SCOPE_ID} AND hash = 0)"
    );
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .bind(&scope.connector)
        .bind(scope.kind.as_str())
        .fetch_one(conn)
        .await
        .map_err(pg("looking for records to look at again"))
}

pub(crate) async fn rechecks(
    conn: &mut PgConnection,
    scope: &Scope,
) -> Result<Vec<String>, StateError> {
    let sql =
        format!("SELECT id FROM record_hashes WHERE scope = {SCOPE_ID} AND hash = 0 ORDER BY id");
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .bind(&scope.connector)
        .bind(scope.kind.as_str())
        .fetch_all(conn)
        .await
        .map_err(pg("listing records to look at again"))
}

pub(crate) async fn ambiguities(
    conn: &mut PgConnection,
    code: &str,
) -> Result<Option<serde_json::Value>, StateError> {
    let text: Option<String> =
        sqlx::query_scalar("SELECT ambiguities FROM ambiguities WHERE code = $1")
            .bind(code)
            .fetch_optional(conn)
            .await
            .map_err(pg("reading ambiguous matches"))?;
    text.map(|t| {
        serde_json::from_str(&t).map_err(|e| StateError::Corrupt {
            what: format!("ambiguous matches of {code}"),
            message: e.to_string(),
        })
    })
    .transpose()
}

/// id, mode, started_at, finished_at, status, summary
type RunRow = (i64, String, i64, Option<i64>, String, Option<String>);

pub(crate) async fn runs(
    conn: &mut PgConnection,
    limit: usize,
) -> Result<Vec<RunRecord>, StateError> {
    const ACTION: &str = "reading runs";
    let rows: Vec<RunRow> = sqlx::query_as(
        "SELECT id, mode, started_at, finished_at, status, summary FROM runs
         ORDER BY id DESC LIMIT $1",
    )
    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
    .fetch_all(conn)
    .await
    .map_err(pg(ACTION))?;
    run_records(rows)
}

pub(crate) async fn run(conn: &mut PgConnection, id: i64) -> Result<Option<RunRecord>, StateError> {
    let rows: Vec<RunRow> = sqlx::query_as(
        "SELECT id, mode, started_at, finished_at, status, summary FROM runs WHERE id = $1",
    )
    .bind(id)
    .fetch_all(conn)
    .await
    .map_err(pg("reading a run"))?;
    Ok(run_records(rows)?.pop())
}

/// The log entries of run `run_id`, oldest first, at most `limit`, and how many it
/// has in all (a row holds one or two entries).
pub(crate) async fn run_interactions(
    conn: &mut PgConnection,
    run_id: i64,
    limit: usize,
) -> Result<(Vec<Interaction>, u64), StateError> {
    const ACTION: &str = "reading the interaction log of a run";
    let total: Option<i64> = sqlx::query_scalar(
        "SELECT sum(1 + (next_action IS NOT NULL)::int)::bigint FROM interactions
         WHERE run_id = $1",
    )
    .bind(run_id)
    .fetch_one(&mut *conn)
    .await
    .map_err(pg(ACTION))?;
    let sql =
        format!("SELECT {LOG_COLUMNS} FROM interactions WHERE run_id = $1 ORDER BY id LIMIT $2");
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(run_id)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(conn)
        .await
        .map_err(pg(ACTION))?;
    let mut out = Vec::new();
    for row in &rows {
        out.extend(log_entries(row, ACTION)?);
    }
    out.truncate(limit);
    Ok((out, u64::try_from(total.unwrap_or(0)).unwrap_or(0)))
}

fn run_records(rows: Vec<RunRow>) -> Result<Vec<RunRecord>, StateError> {
    rows.into_iter()
        .map(|(id, mode, started_at, finished_at, status, summary)| {
            let summary = match summary {
                None => serde_json::Value::Null,
                Some(text) => serde_json::from_str(&text).map_err(|e| StateError::Corrupt {
                    what: format!("summary of run {id}"),
                    message: e.to_string(),
                })?,
            };
            Ok(RunRecord {
                id,
                mode,
                started_at: Timestamp(started_at),
                finished_at: finished_at.map(Timestamp),
                status,
                summary,
            })
        })
        .collect()
}
