//! Writes: each batch one transaction, fenced by the leases held (see `lease`).
//!
//! Bulk rows (links, hashes, log rows, pending creates, companies, intent batches) go
//! in as arrays, `INSERT .. SELECT FROM unnest($1, $2, ..)`, a few thousand rows per
//! statement: a first sync stores hundreds of thousands of rows, and a statement per
//! row would cost a round trip each. An `ON CONFLICT DO UPDATE` may not meet one key
//! twice in a statement, so rows are first reduced to the last one per key, which is
//! what applying them one by one (as the SQLite store does) leaves.

use std::collections::HashMap;
use std::time::Duration;

use sqlx::Connection;
use sqlx::postgres::PgConnection;
use tandem_model::{Timestamp, Value};

use super::lease::{self, Lease};
use super::read::{SCOPE_ID, ended_create_batch_entries, ended_intent_batch_links};
use super::{PARTITION_LEASE, pg};
use crate::sqlite::{LogRow, same_pair};
use crate::{
    ConflictEntry, IntentBatch, Interaction, Link, PendingCreate, PendingCreateBatch,
    RefusedRequest, Scope, Side, StateBatch, StateError, codec,
};

/// Rows per bulk statement: large enough that round trips do not count, small enough
/// that one statement's arrays stay a few MiB.
const CHUNK: usize = 5_000;

/// The R2 constraint's name, which a unique violation reports.
const R2_CONSTRAINT: &str = "links_code_account_id_key";

pub(crate) async fn commit(
    conn: &mut PgConnection,
    shown: &str,
    leases: &[Lease],
    ttl: Duration,
    batch: StateBatch,
) -> Result<(), StateError> {
    let mut tx = conn.begin().await.map_err(pg("starting a transaction"))?;
    lease::fence(&mut tx, shown, leases, ttl).await?;
    apply(&mut tx, &batch).await?;
    // Any early return above drops `tx`, which rolls the whole batch back.
    tx.commit().await.map_err(pg("committing a batch"))
}

/// The batch's parts in the SQLite store's order.
async fn apply(tx: &mut PgConnection, batch: &StateBatch) -> Result<(), StateError> {
    delete_links(tx, &batch.delete_links).await?;
    upsert_links(tx, &batch.upsert_links, OnTaken::Fail).await?;
    delete_hashes(tx, &batch.delete_hashes).await?;
    set_hashes(tx, &batch.set_hashes, &batch.set_match_keys).await?;
    set_cursors(tx, &batch.set_cursors).await?;
    set_fingerprints(tx, &batch.set_fingerprints).await?;
    set_ambiguities(tx, &batch.set_ambiguities).await?;
    append_interactions(tx, &batch.interactions).await?;
    upsert_conflicts(tx, &batch.upsert_conflicts).await?;
    resolve_conflicts(tx, &batch.resolve_conflicts).await?;
    close_conflicts(tx, &batch.close_conflicts).await?;
    upsert_pending(tx, &batch.upsert_pending).await?;
    delete_pending(tx, &batch.delete_pending).await?;
    store_create_batches(
        tx,
        &batch.pending_create_batches,
        &batch.clear_pending_create_batches,
    )
    .await?;
    upsert_refused(tx, &batch.upsert_refused).await?;
    delete_by_code_and_contact(tx, "refused_requests", &batch.delete_refused).await?;
    delete_by_code_and_contact(tx, "pending_links", &batch.delete_pending_links).await?;
    store_intent_batches(tx, &batch.intent_batches, &batch.clear_intent_batches).await?;
    set_companies(tx, &batch.set_companies).await?;
    set_marks(
        tx,
        Marks::UnlinkedPairs,
        unlinked_marks(&batch.unlinked_pairs),
    )
    .await?;
    set_marks(
        tx,
        Marks::ContactDeleted,
        pair_marks(&batch.contact_deleted),
    )
    .await?;
    set_marks(tx, Marks::CodesLost, pair_marks(&batch.codes_lost)).await?;
    Ok(())
}

pub(crate) async fn unpack_intents(
    conn: &mut PgConnection,
    shown: &str,
    leases: &[Lease],
    ttl: Duration,
) -> Result<u64, StateError> {
    let mut tx = conn.begin().await.map_err(pg("starting a transaction"))?;
    lease::fence(&mut tx, shown, leases, ttl).await?;
    let links = ended_intent_batch_links(&mut tx).await?;
    // A link whose account another contact holds now is left out: that link is newer.
    let unpacked = upsert_links(&mut tx, &links, OnTaken::Skip).await?;
    sqlx::query(
        "DELETE FROM intent_batches
         WHERE run_id NOT IN (SELECT id FROM runs WHERE status = 'running')",
    )
    .execute(&mut *tx)
    .await
    .map_err(pg("forgetting intents taken up"))?;
    // The creates of ended runs likewise; a partition's run going on keeps its own.
    let creates = ended_create_batch_entries(&mut tx).await?;
    upsert_pending(&mut tx, &creates).await?;
    sqlx::query(
        "DELETE FROM pending_create_batches
         WHERE run_id NOT IN (SELECT id FROM runs WHERE status = 'running')",
    )
    .execute(&mut *tx)
    .await
    .map_err(pg("forgetting creates taken up"))?;
    tx.commit()
        .await
        .map_err(pg("committing intents taken up"))?;
    Ok(unpacked)
}

pub(crate) async fn begin_run(
    conn: &mut PgConnection,
    shown: &str,
    leases: &[Lease],
    ttl: Duration,
    mode: &str,
) -> Result<i64, StateError> {
    const ACTION: &str = "recording the start of a run";
    let mut tx = conn.begin().await.map_err(pg(ACTION))?;
    lease::fence(&mut tx, shown, leases, ttl).await?;
    // A worker of a partition ends only the runs of its partition, and those of a
    // holder of the whole state (none can live beside a partition's lease): the other
    // partitions' may be going on. The engine names the partition in the run's mode
    // (`sync, partition 1/3`), its lease's name.
    let partition = leases.iter().find(|l| l.name.starts_with(PARTITION_LEASE));
    sqlx::query(
        "UPDATE runs SET status = 'interrupted'
         WHERE status = 'running'
           AND ($1::text IS NULL OR mode LIKE '%, ' || $1 OR mode NOT LIKE '%, partition %')",
    )
    .bind(partition.map(|l| l.name.as_str()))
    .execute(&mut *tx)
    .await
    .map_err(pg(ACTION))?;
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO runs (mode, started_at, status) VALUES ($1, $2, 'running') RETURNING id",
    )
    .bind(mode)
    .bind(Timestamp::now().0)
    .fetch_one(&mut *tx)
    .await
    .map_err(pg(ACTION))?;
    tx.commit().await.map_err(pg(ACTION))?;
    Ok(id)
}

pub(crate) async fn finish_run(
    conn: &mut PgConnection,
    shown: &str,
    leases: &[Lease],
    ttl: Duration,
    run_id: i64,
    status: &str,
    summary: &str,
) -> Result<(), StateError> {
    const ACTION: &str = "recording the end of a run";
    let mut tx = conn.begin().await.map_err(pg(ACTION))?;
    lease::fence(&mut tx, shown, leases, ttl).await?;
    let updated =
        sqlx::query("UPDATE runs SET finished_at = $2, status = $3, summary = $4 WHERE id = $1")
            .bind(run_id)
            .bind(Timestamp::now().0)
            .bind(status)
            .bind(summary)
            .execute(&mut *tx)
            .await
            .map_err(pg(ACTION))?
            .rows_affected();
    if updated == 0 {
        return Err(StateError::Postgres {
            action: ACTION,
            source: sqlx::Error::RowNotFound,
        });
    }
    tx.commit().await.map_err(pg(ACTION))
}

/// The items of `items` that are the last of their key, in order: what applying
/// them one by one leaves.
fn last_per_key<'i, T, K: Eq + std::hash::Hash>(
    items: &'i [T],
    key: impl Fn(&'i T) -> K,
) -> Vec<&'i T> {
    let mut last: HashMap<K, usize> = HashMap::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        last.insert(key(item), i);
    }
    items
        .iter()
        .enumerate()
        .filter(|(i, item)| last.get(&key(item)) == Some(i))
        .map(|(_, item)| item)
        .collect()
}

async fn delete_links(tx: &mut PgConnection, keys: &[(String, String)]) -> Result<(), StateError> {
    if keys.is_empty() {
        return Ok(());
    }
    for chunk in keys.chunks(CHUNK) {
        sqlx::query(
            "WITH gone AS (
                 DELETE FROM links l USING unnest($1::text[], $2::text[]) AS d (code, contact_id)
                 WHERE l.code = d.code AND l.contact_id = d.contact_id
                 RETURNING l.code
             ), counted AS (SELECT code, count(*) AS n FROM gone GROUP BY code)
             UPDATE link_counts c SET links = c.links - counted.n
             FROM counted WHERE c.code = counted.code",
        )
        .bind(chunk.iter().map(|k| k.0.as_str()).collect::<Vec<_>>())
        .bind(chunk.iter().map(|k| k.1.as_str()).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await
        .map_err(pg("deleting links"))?;
    }
    Ok(())
}

/// What a link refused by R2 does to the links stored with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OnTaken {
    /// Fails the batch with [`StateError::AccountTaken`].
    Fail,
    /// Is left out (intents taken up after the account went to another contact).
    Skip,
}

const UPSERT_LINKS: &str = "
WITH stored AS (
    INSERT INTO links (code, contact_id, account_id, baseline, contact_version,
                       account_version, last_error, failure_count, linked_at, synced_at,
                       parked, intent)
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bytea[], $5::text[],
                         $6::text[], $7::text[], $8::bigint[], $9::bigint[], $10::bigint[],
                         $11::bigint[], $12::text[])
    ON CONFLICT (code, contact_id) DO UPDATE SET
        account_id = excluded.account_id,
        baseline = excluded.baseline,
        contact_version = excluded.contact_version,
        account_version = excluded.account_version,
        last_error = excluded.last_error,
        failure_count = excluded.failure_count,
        linked_at = excluded.linked_at,
        synced_at = excluded.synced_at,
        parked = excluded.parked,
        intent = excluded.intent
    -- xmax is 0 on a row this statement inserted (not updated).
    RETURNING code, xmax = 0 AS inserted
)
SELECT code, count(*) FILTER (WHERE inserted) FROM stored GROUP BY code";

/// Stores `links` (the last per code and contact), keeping `link_counts`; returns how
/// many were stored. R2 is checked as the SQLite store checks it, link by link in
/// order: a chunk that breaks it is stored again one link at a time, to name the link
/// (or, with [`OnTaken::Skip`], to leave it out and keep the others).
async fn upsert_links(
    tx: &mut PgConnection,
    links: &[Link],
    on_taken: OnTaken,
) -> Result<u64, StateError> {
    if links.is_empty() {
        return Ok(0);
    }
    let mut links = last_per_key(links, |l| (l.code.as_str(), l.contact_id.as_str()));
    // In key order, as hashes are: two partitions may store links of one hub.
    links.sort_unstable_by_key(|l| (l.code.as_str(), l.contact_id.as_str()));
    let mut counts: HashMap<String, i64> = HashMap::new();
    let mut stored = 0;
    for chunk in links.chunks(CHUNK) {
        savepoint(tx, "SAVEPOINT links_chunk").await?;
        match insert_links(tx, chunk).await {
            Ok(added) => {
                add_counts(&mut counts, added);
                stored += chunk.len() as u64;
                savepoint(tx, "RELEASE SAVEPOINT links_chunk").await?;
            }
            Err(e) if is_r2(&e) => {
                savepoint(tx, "ROLLBACK TO SAVEPOINT links_chunk").await?;
                stored += upsert_one_by_one(tx, chunk, on_taken, &mut counts).await?;
                savepoint(tx, "RELEASE SAVEPOINT links_chunk").await?;
            }
            Err(e) => return Err(pg("storing links")(e)),
        }
    }
    store_counts(tx, counts).await?;
    Ok(stored)
}

async fn upsert_one_by_one(
    tx: &mut PgConnection,
    links: &[&Link],
    on_taken: OnTaken,
    counts: &mut HashMap<String, i64>,
) -> Result<u64, StateError> {
    let mut stored = 0;
    for link in links {
        savepoint(tx, "SAVEPOINT one_link").await?;
        match insert_links(tx, std::slice::from_ref(link)).await {
            Ok(added) => {
                add_counts(counts, added);
                stored += 1;
            }
            Err(e) if is_r2(&e) => {
                savepoint(tx, "ROLLBACK TO SAVEPOINT one_link").await?;
                if on_taken == OnTaken::Fail {
                    return Err(account_taken(tx, link, e).await);
                }
            }
            Err(e) => return Err(pg("storing links")(e)),
        }
        savepoint(tx, "RELEASE SAVEPOINT one_link").await?;
    }
    Ok(stored)
}

async fn savepoint(tx: &mut PgConnection, sql: &'static str) -> Result<(), StateError> {
    sqlx::query(sql)
        .execute(&mut *tx)
        .await
        .map(|_| ())
        .map_err(pg("storing links"))
}

fn is_r2(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .is_some_and(|d| d.is_unique_violation() && d.constraint() == Some(R2_CONSTRAINT))
}

fn add_counts(counts: &mut HashMap<String, i64>, added: Vec<(String, i64)>) {
    for (code, n) in added {
        *counts.entry(code).or_default() += n;
    }
}

/// Upserts `links` in one statement; returns the links inserted per code.
async fn insert_links(
    tx: &mut PgConnection,
    links: &[&Link],
) -> Result<Vec<(String, i64)>, sqlx::Error> {
    let mut baselines = Vec::with_capacity(links.len());
    let mut intents = Vec::with_capacity(links.len());
    for link in links {
        let mut baseline = Vec::with_capacity(256);
        codec::encode_fields(&mut baseline, &link.baseline);
        baselines.push(baseline);
        // An intent is plain data (field names and values), which always renders.
        intents.push(
            link.intent
                .as_ref()
                .map(|i| serde_json::to_string(i).unwrap_or_default()),
        );
    }
    let column = |f: fn(&Link) -> &str| links.iter().map(|l| f(l)).collect::<Vec<_>>();
    let optional = |f: fn(&Link) -> Option<&str>| links.iter().map(|l| f(l)).collect::<Vec<_>>();
    let number = |f: fn(&Link) -> i64| links.iter().map(|l| f(l)).collect::<Vec<_>>();
    sqlx::query_as(UPSERT_LINKS)
        .bind(column(|l| &l.code))
        .bind(column(|l| &l.contact_id))
        .bind(column(|l| &l.account_id))
        .bind(baselines)
        .bind(optional(|l| l.contact_version.as_deref()))
        .bind(optional(|l| l.account_version.as_deref()))
        .bind(optional(|l| l.last_error.as_deref()))
        .bind(number(|l| i64::from(l.failure_count)))
        .bind(number(|l| l.linked_at.0))
        .bind(number(|l| l.synced_at.0))
        .bind(number(|l| i64::from(l.parked)))
        .bind(intents)
        .fetch_all(&mut *tx)
        .await
}

/// Adds the links added per code to `link_counts`.
async fn store_counts(
    tx: &mut PgConnection,
    counts: HashMap<String, i64>,
) -> Result<(), StateError> {
    let (codes, ns): (Vec<String>, Vec<i64>) = counts.into_iter().filter(|(_, n)| *n != 0).unzip();
    if codes.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO link_counts (code, links) SELECT * FROM unnest($1::text[], $2::bigint[])
         ON CONFLICT (code) DO UPDATE SET links = link_counts.links + excluded.links",
    )
    .bind(codes)
    .bind(ns)
    .execute(&mut *tx)
    .await
    .map_err(pg("counting links"))?;
    Ok(())
}

/// Explains a link refused by R2: another contact already holds the account.
async fn account_taken(tx: &mut PgConnection, link: &Link, source: sqlx::Error) -> StateError {
    let holder: Option<String> =
        sqlx::query_scalar("SELECT contact_id FROM links WHERE code = $1 AND account_id = $2")
            .bind(&link.code)
            .bind(&link.account_id)
            .fetch_optional(&mut *tx)
            .await
            .ok()
            .flatten();
    match holder {
        Some(linked_contact) => StateError::AccountTaken {
            code: link.code.clone(),
            account_id: link.account_id.clone(),
            contact_id: link.contact_id.clone(),
            linked_contact,
        },
        None => StateError::Postgres {
            action: "storing links",
            source,
        },
    }
}

/// Groups `items` by scope, in order of first appearance.
fn by_scope<'i, T>(
    items: &'i [T],
    scope: impl Fn(&'i T) -> &'i Scope,
) -> Vec<(&'i Scope, Vec<&'i T>)> {
    let mut groups: Vec<(&Scope, Vec<&T>)> = Vec::new();
    for item in items {
        let s = scope(item);
        match groups.iter_mut().find(|(g, _)| *g == s) {
            Some((_, members)) => members.push(item),
            None => groups.push((s, vec![item])),
        }
    }
    groups
}

async fn delete_hashes(tx: &mut PgConnection, keys: &[(Scope, String)]) -> Result<(), StateError> {
    for (scope, keys) in by_scope(keys, |k| &k.0) {
        for chunk in keys.chunks(CHUNK) {
            let ids: Vec<&str> = chunk.iter().map(|k| k.1.as_str()).collect();
            let sql = format!(
                "DELETE FROM record_hashes WHERE scope = {SCOPE_ID} AND id = ANY($3::text[])"
            );
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(&scope.connector)
                .bind(scope.kind.as_str())
                .bind(ids)
                .execute(&mut *tx)
                .await
                .map_err(pg("deleting content hashes"))?;
        }
    }
    Ok(())
}

/// The number of `scope` in `scopes`, given it on first use.
async fn scope_number(tx: &mut PgConnection, scope: &Scope) -> Result<i64, StateError> {
    const ACTION: &str = "numbering a scope";
    sqlx::query("INSERT INTO scopes (connector, kind) VALUES ($1, $2) ON CONFLICT DO NOTHING")
        .bind(&scope.connector)
        .bind(scope.kind.as_str())
        .execute(&mut *tx)
        .await
        .map_err(pg(ACTION))?;
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT {SCOPE_ID}")))
        .bind(&scope.connector)
        .bind(scope.kind.as_str())
        .fetch_one(&mut *tx)
        .await
        .map_err(pg(ACTION))
}

/// One row of `record_hashes` to store.
struct HashRow<'b> {
    scope: i64,
    id: &'b str,
    hash: i64,
    keys: Option<i64>,
}

async fn set_hashes(
    tx: &mut PgConnection,
    hashes: &[(Scope, String, u64)],
    keys: &[(usize, u64)],
) -> Result<(), StateError> {
    if hashes.is_empty() {
        return Ok(());
    }
    let mut scopes: Vec<(&Scope, i64)> = Vec::new();
    for (scope, _) in by_scope(hashes, |h| &h.0) {
        scopes.push((scope, scope_number(tx, scope).await?));
    }
    let keys: HashMap<usize, u64> = keys.iter().copied().collect();
    // One row per key: the last hash, and the last match keys given (a hash set
    // without them keeps those stored before).
    let mut rows: Vec<HashRow> = Vec::with_capacity(hashes.len());
    let mut index: HashMap<(i64, &str), usize> = HashMap::with_capacity(hashes.len());
    for (i, (scope, id, hash)) in hashes.iter().enumerate() {
        let number = scopes
            .iter()
            .find(|(s, _)| *s == scope)
            .map_or(0, |(_, n)| *n);
        let key = keys.get(&i).map(|k| k.cast_signed());
        match index.get(&(number, id.as_str())) {
            Some(&at) => {
                rows[at].hash = hash.cast_signed();
                rows[at].keys = key.or(rows[at].keys);
            }
            None => {
                index.insert((number, id), rows.len());
                rows.push(HashRow {
                    scope: number,
                    id,
                    hash: hash.cast_signed(),
                    keys: key,
                });
            }
        }
    }
    // In key order: workers of two partitions write rows of each other's views (hand-
    // overs) side by side, and one order for all of them keeps their row locks from
    // crossing (PostgreSQL found a deadlock when each went in its own order).
    rows.sort_unstable_by(|a, b| (a.scope, a.id).cmp(&(b.scope, b.id)));
    for chunk in rows.chunks(CHUNK) {
        sqlx::query(
            "INSERT INTO record_hashes (scope, id, hash, match_keys)
             SELECT * FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::bigint[])
             ON CONFLICT (scope, id) DO UPDATE SET
                 hash = excluded.hash,
                 match_keys = coalesce(excluded.match_keys, record_hashes.match_keys)",
        )
        .bind(chunk.iter().map(|r| r.scope).collect::<Vec<_>>())
        .bind(chunk.iter().map(|r| r.id).collect::<Vec<_>>())
        .bind(chunk.iter().map(|r| r.hash).collect::<Vec<_>>())
        .bind(chunk.iter().map(|r| r.keys).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await
        .map_err(pg("storing content hashes"))?;
    }
    Ok(())
}

async fn set_cursors(tx: &mut PgConnection, cursors: &[(Scope, String)]) -> Result<(), StateError> {
    for (scope, cursor) in cursors {
        sqlx::query(
            "INSERT INTO cursors (connector, kind, cursor) VALUES ($1, $2, $3)
             ON CONFLICT (connector, kind) DO UPDATE SET cursor = excluded.cursor",
        )
        .bind(&scope.connector)
        .bind(scope.kind.as_str())
        .bind(cursor)
        .execute(&mut *tx)
        .await
        .map_err(pg("storing cursors"))?;
    }
    Ok(())
}

async fn set_fingerprints(
    tx: &mut PgConnection,
    fingerprints: &[(Scope, Option<String>)],
) -> Result<(), StateError> {
    for (scope, fingerprint) in fingerprints {
        let query = match fingerprint {
            Some(f) => sqlx::query(
                "INSERT INTO fingerprints (connector, kind, fingerprint) VALUES ($1, $2, $3)
                 ON CONFLICT (connector, kind) DO UPDATE SET fingerprint = excluded.fingerprint",
            )
            .bind(&scope.connector)
            .bind(scope.kind.as_str())
            .bind(f),
            None => sqlx::query("DELETE FROM fingerprints WHERE connector = $1 AND kind = $2")
                .bind(&scope.connector)
                .bind(scope.kind.as_str()),
        };
        query
            .execute(&mut *tx)
            .await
            .map_err(pg("storing fingerprints"))?;
    }
    Ok(())
}

async fn set_ambiguities(
    tx: &mut PgConnection,
    entries: &[(String, serde_json::Value)],
) -> Result<(), StateError> {
    for (code, ambiguities) in entries {
        sqlx::query(
            "INSERT INTO ambiguities (code, ambiguities) VALUES ($1, $2)
             ON CONFLICT (code) DO UPDATE SET ambiguities = excluded.ambiguities",
        )
        .bind(code)
        .bind(ambiguities.to_string())
        .execute(&mut *tx)
        .await
        .map_err(pg("storing ambiguous matches"))?;
    }
    Ok(())
}

/// The key of the transaction lock under which log ids are taken ("tandemlg").
const LOG_APPEND_LOCK: i64 = 0x7461_6e64_656d_6c67;

/// The id the next log entry gets: above every entry stored (the row of the highest id
/// may hold two entries).
async fn next_log_id(tx: &mut PgConnection) -> Result<i64, StateError> {
    // Workers of several partitions append side by side: one at a time takes ids, until
    // its transaction ends. A transaction's lock, which a pooler keeps on the one
    // backend of the transaction, unlike a session's.
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(LOG_APPEND_LOCK)
        .execute(&mut *tx)
        .await
        .map_err(pg("appending to the interaction log"))?;
    let id: Option<i64> = sqlx::query_scalar(
        "SELECT id + 1 + (next_action IS NOT NULL)::int FROM interactions
         ORDER BY id DESC LIMIT 1",
    )
    .fetch_optional(&mut *tx)
    .await
    .map_err(pg("appending to the interaction log"))?;
    Ok(id.unwrap_or(1))
}

/// Appends the log entries, two entries of one pair at one time sharing a row, as the
/// SQLite store does.
async fn append_interactions(
    tx: &mut PgConnection,
    entries: &[Interaction],
) -> Result<(), StateError> {
    if entries.is_empty() {
        return Ok(());
    }
    let mut id = next_log_id(tx).await?;
    let mut rows = Vec::with_capacity(entries.len());
    let mut i = 0;
    while i < entries.len() {
        let entry = &entries[i];
        let next = entries.get(i + 1).filter(|next| same_pair(entry, next));
        rows.push(LogRow { id, entry, next });
        let span = 1 + usize::from(next.is_some());
        id += span as i64;
        i += span;
    }
    for chunk in rows.chunks(CHUNK) {
        let entry =
            |f: fn(&Interaction) -> &str| chunk.iter().map(|r| f(r.entry)).collect::<Vec<_>>();
        let next =
            |f: fn(&Interaction) -> &str| chunk.iter().map(|r| r.next.map(f)).collect::<Vec<_>>();
        sqlx::query(
            "INSERT INTO interactions (id, at, run_id, contact_id, code, account_id, action,
                                       source, details, next_action, next_source, next_details)
             SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::text[],
                                  $5::text[], $6::text[], $7::text[], $8::text[], $9::text[],
                                  $10::text[], $11::text[], $12::text[])",
        )
        .bind(chunk.iter().map(|r| r.id).collect::<Vec<_>>())
        .bind(chunk.iter().map(|r| r.entry.at.0).collect::<Vec<_>>())
        .bind(chunk.iter().map(|r| r.entry.run_id).collect::<Vec<_>>())
        .bind(entry(|e| &e.contact_id))
        .bind(entry(|e| &e.code))
        .bind(
            chunk
                .iter()
                .map(|r| r.entry.account_id.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(entry(|e| &e.action))
        .bind(entry(|e| &e.source))
        .bind(entry(|e| e.details.as_str()))
        .bind(next(|e| &e.action))
        .bind(next(|e| &e.source))
        .bind(next(|e| e.details.as_str()))
        .execute(&mut *tx)
        .await
        .map_err(pg("appending to the interaction log"))?;
    }
    Ok(())
}

/// A field value as JSON text.
fn value_json(value: &Value, what: impl FnOnce() -> String) -> Result<String, StateError> {
    serde_json::to_string(value).map_err(|e| StateError::Corrupt {
        what: what(),
        message: e.to_string(),
    })
}

async fn upsert_conflicts(
    tx: &mut PgConnection,
    entries: &[ConflictEntry],
) -> Result<(), StateError> {
    for entry in entries {
        let json = |value: &Value, what: &str| {
            value_json(value, || {
                format!(
                    "{what} of the {} conflict of contact {} on {}",
                    entry.code, entry.contact_id, entry.field
                )
            })
        };
        let resolution = entry
            .resolution
            .as_ref()
            .map(|value| json(value, "resolution"))
            .transpose()?;
        // The conflict target names the partial index: closed conflicts never collide.
        sqlx::query(
            "INSERT INTO conflicts (code, contact_id, field, account_id, base, contact_value,
                                    account_value, opened_at, run_id, resolution)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
             ON CONFLICT (code, contact_id, field) WHERE closed_at IS NULL DO UPDATE SET
                 account_id = excluded.account_id,
                 base = excluded.base,
                 contact_value = excluded.contact_value,
                 account_value = excluded.account_value,
                 run_id = excluded.run_id",
        )
        .bind(&entry.code)
        .bind(&entry.contact_id)
        .bind(&entry.field)
        .bind(&entry.account_id)
        .bind(json(&entry.base, "base value")?)
        .bind(json(&entry.contact_value, "contact value")?)
        .bind(json(&entry.account_value, "account value")?)
        .bind(entry.opened_at.0)
        .bind(entry.run_id)
        .bind(resolution)
        .execute(&mut *tx)
        .await
        .map_err(pg("storing conflicts"))?;
    }
    Ok(())
}

async fn resolve_conflicts(
    tx: &mut PgConnection,
    resolutions: &[(i64, Value)],
) -> Result<(), StateError> {
    for (id, value) in resolutions {
        let value = value_json(value, || format!("resolution of conflict {id}"))?;
        let updated =
            sqlx::query("UPDATE conflicts SET resolution = $2 WHERE id = $1 AND closed_at IS NULL")
                .bind(id)
                .bind(value)
                .execute(&mut *tx)
                .await
                .map_err(pg("resolving conflicts"))?
                .rows_affected();
        if updated == 0 {
            return Err(StateError::UnknownConflict { id: *id });
        }
    }
    Ok(())
}

async fn close_conflicts(
    tx: &mut PgConnection,
    keys: &[(String, String, String, Timestamp)],
) -> Result<(), StateError> {
    for (code, contact_id, field, at) in keys {
        sqlx::query(
            "UPDATE conflicts SET closed_at = $4
             WHERE code = $1 AND contact_id = $2 AND field = $3 AND closed_at IS NULL",
        )
        .bind(code)
        .bind(contact_id)
        .bind(field)
        .bind(at.0)
        .execute(&mut *tx)
        .await
        .map_err(pg("closing conflicts"))?;
    }
    Ok(())
}

async fn upsert_pending(
    tx: &mut PgConnection,
    creates: &[PendingCreate],
) -> Result<(), StateError> {
    let creates = last_per_key(creates, |c| (c.code.as_str(), c.side, c.source_id.as_str()));
    for chunk in creates.chunks(CHUNK) {
        let mut fields = Vec::with_capacity(chunk.len());
        for create in chunk {
            fields.push(serde_json::to_string(&create.fields).map_err(|e| {
                StateError::Corrupt {
                    what: format!(
                        "fields of the pending {} {} create from {}",
                        create.code, create.side, create.source_id
                    ),
                    message: e.to_string(),
                }
            })?);
        }
        sqlx::query(
            "INSERT INTO pending_creates (code, side, source_id, fields, run_id, error,
                                          failure_count, parked, updated_at, record_id)
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[],
                                  $6::text[], $7::bigint[], $8::bigint[], $9::bigint[],
                                  $10::text[])
             ON CONFLICT (code, side, source_id) DO UPDATE SET
                 fields = excluded.fields,
                 record_id = excluded.record_id,
                 run_id = excluded.run_id,
                 error = excluded.error,
                 failure_count = excluded.failure_count,
                 parked = excluded.parked,
                 updated_at = excluded.updated_at",
        )
        .bind(chunk.iter().map(|c| c.code.as_str()).collect::<Vec<_>>())
        .bind(chunk.iter().map(|c| c.side.as_str()).collect::<Vec<_>>())
        .bind(
            chunk
                .iter()
                .map(|c| c.source_id.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(fields)
        .bind(chunk.iter().map(|c| c.run_id).collect::<Vec<_>>())
        .bind(chunk.iter().map(|c| c.error.as_deref()).collect::<Vec<_>>())
        .bind(
            chunk
                .iter()
                .map(|c| i64::from(c.failure_count))
                .collect::<Vec<_>>(),
        )
        .bind(
            chunk
                .iter()
                .map(|c| i64::from(c.parked))
                .collect::<Vec<_>>(),
        )
        .bind(chunk.iter().map(|c| c.updated_at.0).collect::<Vec<_>>())
        .bind(
            chunk
                .iter()
                .map(|c| c.record_id.as_deref())
                .collect::<Vec<_>>(),
        )
        .execute(&mut *tx)
        .await
        .map_err(pg("storing pending creates"))?;
    }
    Ok(())
}

async fn store_create_batches(
    tx: &mut PgConnection,
    batches: &[PendingCreateBatch],
    cleared: &[(i64, i64)],
) -> Result<(), StateError> {
    const ACTION: &str = "storing creates about to be sent";
    for batch in batches {
        sqlx::query(
            "INSERT INTO pending_create_batches (run_id, part, creates) VALUES ($1, $2, $3)",
        )
        .bind(batch.run_id)
        .bind(batch.part)
        .bind(crate::pending::encode_creates(batch)?)
        .execute(&mut *tx)
        .await
        .map_err(pg(ACTION))?;
    }
    // By part: the record of a batch sent after it stays until its creates are linked.
    clear_parts(tx, BatchTable::Creates, cleared, ACTION).await
}

/// The tables of batches a run stores by part (R18).
#[derive(Clone, Copy)]
enum BatchTable {
    Intents,
    Creates,
}

/// Deletes the batches of `table` of each (run, part) in `cleared`: the batches of a
/// run's other parts stay until their own commit clears them.
async fn clear_parts(
    tx: &mut PgConnection,
    table: BatchTable,
    cleared: &[(i64, i64)],
    action: &'static str,
) -> Result<(), StateError> {
    if cleared.is_empty() {
        return Ok(());
    }
    let sql = match table {
        BatchTable::Intents => {
            "DELETE FROM intent_batches b
             USING unnest($1::bigint[], $2::bigint[]) AS c (run_id, part)
             WHERE b.run_id = c.run_id AND b.part = c.part"
        }
        BatchTable::Creates => {
            "DELETE FROM pending_create_batches b
             USING unnest($1::bigint[], $2::bigint[]) AS c (run_id, part)
             WHERE b.run_id = c.run_id AND b.part = c.part"
        }
    };
    sqlx::query(sql)
        .bind(cleared.iter().map(|c| c.0).collect::<Vec<_>>())
        .bind(cleared.iter().map(|c| c.1).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await
        .map_err(pg(action))?;
    Ok(())
}

async fn delete_pending(
    tx: &mut PgConnection,
    keys: &[(String, Side, String)],
) -> Result<(), StateError> {
    for chunk in keys.chunks(CHUNK) {
        sqlx::query(
            "DELETE FROM pending_creates p
             USING unnest($1::text[], $2::text[], $3::text[]) AS d (code, side, source_id)
             WHERE p.code = d.code AND p.side = d.side AND p.source_id = d.source_id",
        )
        .bind(chunk.iter().map(|k| k.0.as_str()).collect::<Vec<_>>())
        .bind(chunk.iter().map(|k| k.1.as_str()).collect::<Vec<_>>())
        .bind(chunk.iter().map(|k| k.2.as_str()).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await
        .map_err(pg("deleting pending creates"))?;
    }
    Ok(())
}

async fn upsert_refused(
    tx: &mut PgConnection,
    requests: &[RefusedRequest],
) -> Result<(), StateError> {
    for r in requests {
        sqlx::query(
            "INSERT INTO refused_requests (code, contact_id, error, run_id, failure_count,
                                           parked, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (code, contact_id) DO UPDATE SET
                 error = excluded.error,
                 run_id = excluded.run_id,
                 failure_count = excluded.failure_count,
                 parked = excluded.parked,
                 updated_at = excluded.updated_at",
        )
        .bind(&r.code)
        .bind(&r.contact_id)
        .bind(&r.error)
        .bind(r.run_id)
        .bind(i64::from(r.failure_count))
        .bind(i64::from(r.parked))
        .bind(r.updated_at.0)
        .execute(&mut *tx)
        .await
        .map_err(pg("storing refused requests"))?;
    }
    Ok(())
}

/// Deletes rows of `table` (keyed by code and contact) by (code, contact_id).
async fn delete_by_code_and_contact(
    tx: &mut PgConnection,
    table: &'static str,
    keys: &[(String, String)],
) -> Result<(), StateError> {
    for chunk in keys.chunks(CHUNK) {
        let sql = format!(
            "DELETE FROM {table} t USING unnest($1::text[], $2::text[]) AS d (code, contact_id)
             WHERE t.code = d.code AND t.contact_id = d.contact_id"
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(chunk.iter().map(|k| k.0.as_str()).collect::<Vec<_>>())
            .bind(chunk.iter().map(|k| k.1.as_str()).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await
            .map_err(pg("deleting refused requests or pending links"))?;
    }
    Ok(())
}

async fn store_intent_batches(
    tx: &mut PgConnection,
    batches: &[IntentBatch],
    cleared: &[(i64, i64)],
) -> Result<(), StateError> {
    const ACTION: &str = "storing intents";
    if !batches.is_empty() {
        // In order: ids are given in the order of the arrays.
        sqlx::query(
            "INSERT INTO intent_batches (run_id, part, links)
             SELECT b.run_id, b.part, b.links
             FROM unnest($1::bigint[], $2::bigint[], $3::bytea[])
                  WITH ORDINALITY AS b (run_id, part, links, n)
             ORDER BY b.n",
        )
        .bind(batches.iter().map(|b| b.run_id).collect::<Vec<_>>())
        .bind(batches.iter().map(|b| b.part).collect::<Vec<_>>())
        .bind(
            batches
                .iter()
                .map(|b| codec::encode_links(&b.links))
                .collect::<Vec<_>>(),
        )
        .execute(&mut *tx)
        .await
        .map_err(pg(ACTION))?;
    }
    // By part: the batches of the run's later parts stay until their links are stored.
    clear_parts(tx, BatchTable::Intents, cleared, ACTION).await
}

async fn set_companies(
    tx: &mut PgConnection,
    companies: &[(String, Option<String>)],
) -> Result<(), StateError> {
    const ACTION: &str = "storing the companies of contacts";
    // The last entry of a contact counts: set and forgotten ones are then apart.
    let companies = last_per_key(companies, |c| c.0.as_str());
    let (set, forgotten): (Vec<_>, Vec<_>) = companies.into_iter().partition(|c| c.1.is_some());
    for chunk in set.chunks(CHUNK) {
        sqlx::query(
            "INSERT INTO contact_companies (contact_id, company_id)
             SELECT * FROM unnest($1::text[], $2::text[])
             ON CONFLICT (contact_id) DO UPDATE SET company_id = excluded.company_id",
        )
        .bind(chunk.iter().map(|c| c.0.as_str()).collect::<Vec<_>>())
        .bind(chunk.iter().map(|c| c.1.as_deref()).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await
        .map_err(pg(ACTION))?;
    }
    for chunk in forgotten.chunks(CHUNK) {
        sqlx::query("DELETE FROM contact_companies WHERE contact_id = ANY($1::text[])")
            .bind(chunk.iter().map(|c| c.0.as_str()).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await
            .map_err(pg(ACTION))?;
    }
    Ok(())
}

/// The tables of marks an operator or a run sets and takes back.
#[derive(Debug, Clone, Copy)]
enum Marks {
    UnlinkedPairs,
    ContactDeleted,
    CodesLost,
}

impl Marks {
    /// (table, key columns, action)
    fn table(self) -> (&'static str, &'static [&'static str], &'static str) {
        match self {
            Marks::UnlinkedPairs => (
                "unlinked_pairs",
                &["code", "contact_id", "account_id"],
                "storing the pairs unlinked by hand",
            ),
            Marks::ContactDeleted => (
                "contact_deleted",
                &["code", "account_id"],
                "storing the accounts whose contact was deleted",
            ),
            Marks::CodesLost => (
                "codes_lost",
                &["code", "contact_id"],
                "storing the codes contacts lost",
            ),
        }
    }
}

fn unlinked_marks(pairs: &[(String, String, String, bool)]) -> Vec<(Vec<&str>, bool)> {
    pairs
        .iter()
        .map(|(a, b, c, on)| (vec![a.as_str(), b.as_str(), c.as_str()], *on))
        .collect()
}

fn pair_marks(pairs: &[(String, String, bool)]) -> Vec<(Vec<&str>, bool)> {
    pairs
        .iter()
        .map(|(a, b, on)| (vec![a.as_str(), b.as_str()], *on))
        .collect()
}

/// Sets (`true`) or takes back (`false`) each mark, in order: a mark set and taken
/// back in one batch is gone.
async fn set_marks(
    tx: &mut PgConnection,
    marks: Marks,
    keys: Vec<(Vec<&str>, bool)>,
) -> Result<(), StateError> {
    if keys.is_empty() {
        return Ok(());
    }
    let (table, columns, action) = marks.table();
    let params: Vec<String> = (1..=columns.len()).map(|i| format!("${i}")).collect();
    let add = format!(
        "INSERT INTO {table} ({}) VALUES ({}) ON CONFLICT DO NOTHING",
        columns.join(", "),
        params.join(", ")
    );
    let condition: Vec<String> = columns
        .iter()
        .zip(&params)
        .map(|(c, p)| format!("{c} = {p}"))
        .collect();
    let remove = format!("DELETE FROM {table} WHERE {}", condition.join(" AND "));
    for (key, on) in keys {
        let sql = if on { &add } else { &remove };
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()));
        for part in key {
            query = query.bind(part);
        }
        query.execute(&mut *tx).await.map_err(pg(action))?;
    }
    Ok(())
}
