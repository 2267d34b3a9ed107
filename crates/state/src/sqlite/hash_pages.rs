//! Content hashes kept in pages (migration 10): a row holds the entries of one scope
//! from its `first_id` up to the next page's, about 64 of them, sorted by id, in the
//! binary form of `codec::encode_hash_page`.
//!
//! A first sync of 1M partners sets 2.18M hashes. As a row each they took 3.4 s of the
//! state writer's 11.5 s, in SQLite's per-row work (the B-tree insert, the upsert's
//! conflict check); as pages they are 34,000 rows. Reading a scope's hashes decodes
//! pages instead of stepping a row per record.
//!
//! Invariants: the pages of a scope cover disjoint id ranges; a page's `first_id` is
//! its smallest entry's id; no page is empty; `entries` and `rechecks` count its
//! entries and those whose hash is 0 (a record to look at again).

use std::collections::HashMap;

use rusqlite::{Connection, OptionalExtension, params};

use super::sql_error;
use crate::StateError;
use crate::codec::{self, HashEntry};
use crate::transfer::StoredValue;

/// Entries of a page written anew; a page grown past [`PAGE_MAX`] is cut into pages
/// of this many. 64 entries take about 1.5 KB: a row stays within one 4 KB page.
const PAGE_ENTRIES: usize = 64;
const PAGE_MAX: usize = 2 * PAGE_ENTRIES;

/// The hash the engine stores for a record to look at again (`RECHECK`).
pub(super) const RECHECK: u64 = 0;

/// What a batch does to the hash of one record.
#[derive(Debug, Clone, Copy)]
pub(super) enum HashChange {
    /// Sets its hash; match keys `None` keep the ones stored.
    Set {
        hash: u64,
        keys: Option<u64>,
    },
    Delete,
}

/// The page whose range holds `id`, if one begins at or before it.
const PAGE_AT: &str = "SELECT first_id, page FROM record_hash_pages \
                       WHERE scope = ?1 AND first_id <= ?2 ORDER BY first_id DESC LIMIT 1";
const FIRST_PAGE: &str = "SELECT first_id, page FROM record_hash_pages \
                          WHERE scope = ?1 ORDER BY first_id LIMIT 1";
/// Where the range of the page beginning at `?2` ends: the next page's first id.
const NEXT_FIRST_ID: &str = "SELECT first_id FROM record_hash_pages \
                             WHERE scope = ?1 AND first_id > ?2 ORDER BY first_id LIMIT 1";
const DELETE_PAGE: &str = "DELETE FROM record_hash_pages WHERE scope = ?1 AND first_id = ?2";
const PUT_PAGE: &str = "INSERT OR REPLACE INTO record_hash_pages \
                        (scope, first_id, entries, rechecks, page) VALUES (?1, ?2, ?3, ?4, ?5)";
/// A page rewritten where it stands (its first id unchanged): unlike a replace, which
/// deletes the row and inserts it again, the key's index is not touched.
const REWRITE_PAGE: &str = "UPDATE record_hash_pages SET entries = ?3, rechecks = ?4, page = ?5 \
                            WHERE scope = ?1 AND first_id = ?2";

/// Applies `changes` to the hashes of scope `scope`, in their order for one id.
pub(super) fn apply(
    conn: &Connection,
    scope: i64,
    mut changes: Vec<(&str, HashChange)>,
) -> Result<(), StateError> {
    // Stable: changes to one id keep their order.
    changes.sort_by(|a, b| a.0.cmp(b.0));
    let mut at = 0;
    // The page of `changes[at]`, when found while bounding the page before.
    let mut found: Option<Option<Page>> = None;
    while at < changes.len() {
        let page = match found.take() {
            Some(page) => page,
            None => page_for(conn, scope, changes[at].0)?,
        };
        let end = match &page {
            Some(page) => {
                let (end, next) = page_end(conn, scope, page, &changes, at)?;
                found = next;
                end
            }
            None => changes.len(),
        };
        let (old_first, entries) = match page {
            Some((first_id, entries)) => (Some(first_id), entries),
            None => (None, Vec::new()),
        };
        let merged = merge(entries, &changes[at..end]);
        put_pages(conn, scope, old_first, &merged)?;
        at = end;
    }
    Ok(())
}

/// Where the changes that go to `page` (the page of `changes[at]`) end, and the page of
/// the change there when it was read to tell. Up to the page's last entry they are
/// its own; past it, the next change's page is read: another page (as it is when a
/// run's few changes fall one to a page) serves that change next, and only a change
/// in the gap after the last entry asks where the page's range ends.
fn page_end(
    conn: &Connection,
    scope: i64,
    (first_id, entries): &Page,
    changes: &[(&str, HashChange)],
    at: usize,
) -> Result<(usize, Option<Option<Page>>), StateError> {
    let last = entries.last().map(|e| e.id.as_str());
    let within = changes[at..].partition_point(|(id, _)| Some(*id) <= last);
    let end = at + within.max(1);
    if end == changes.len() {
        return Ok((end, None));
    }
    let next = page_for(conn, scope, changes[end].0)?;
    if next
        .as_ref()
        .is_some_and(|(next_first, _)| next_first != first_id)
    {
        return Ok((end, Some(next)));
    }
    let end = match next_first_id(conn, scope, first_id)? {
        Some(bound) => end + changes[end..].partition_point(|(id, _)| *id < bound.as_str()),
        None => changes.len(),
    };
    Ok((end, None))
}

/// A stored page: its first id and its entries.
type Page = (String, Vec<HashEntry>);

/// The page whose range holds `id` (the first page for an id before every page); none
/// when the scope has none.
fn page_for(conn: &Connection, scope: i64, id: &str) -> Result<Option<Page>, StateError> {
    const ACTION: &str = "reading a page of content hashes";
    let read = |sql: &str, params: &[&dyn rusqlite::ToSql]| {
        conn.prepare_cached(sql)
            .and_then(|mut stmt| {
                stmt.query_row(params, |row| {
                    Ok((row.get::<_, String>(0)?, row.get::<_, Vec<u8>>(1)?))
                })
                .optional()
            })
            .map_err(sql_error(ACTION))
    };
    let found = match read(PAGE_AT, &[&scope, &id])? {
        Some(page) => Some(page),
        None => read(FIRST_PAGE, &[&scope])?,
    };
    let Some((first_id, bytes)) = found else {
        return Ok(None);
    };
    let entries = decoded(scope, &first_id, &bytes)?;
    Ok(Some((first_id, entries)))
}

/// The first id of the page after the one that begins at `first_id`.
fn next_first_id(
    conn: &Connection,
    scope: i64,
    first_id: &str,
) -> Result<Option<String>, StateError> {
    conn.prepare_cached(NEXT_FIRST_ID)
        .and_then(|mut stmt| {
            stmt.query_row(params![scope, first_id], |row| row.get(0))
                .optional()
        })
        .map_err(sql_error("reading a page of content hashes"))
}

fn decoded(scope: i64, first_id: &str, bytes: &[u8]) -> Result<Vec<HashEntry>, StateError> {
    codec::hash_page_entries(bytes).map_err(|message| corrupt(scope, first_id, message))
}

fn corrupt(scope: i64, first_id: &str, message: String) -> StateError {
    StateError::Corrupt {
        what: format!("the page of content hashes of scope {scope} from id {first_id}"),
        message,
    }
}

/// `entries` (sorted by id) with `changes` (sorted by id, in order for one id) applied.
fn merge(entries: Vec<HashEntry>, changes: &[(&str, HashChange)]) -> Vec<HashEntry> {
    let mut out: Vec<HashEntry> = Vec::with_capacity(entries.len() + changes.len());
    let mut old = entries.into_iter().peekable();
    for &(id, change) in changes {
        while let Some(entry) = old.next_if(|e| e.id.as_str() < id) {
            out.push(entry);
        }
        // The entry as it stands: stored, or set by an earlier change of this batch.
        let current = match old.next_if(|e| e.id == id) {
            Some(entry) => Some(entry),
            None if out.last().is_some_and(|e| e.id == id) => out.pop(),
            None => None,
        };
        if let HashChange::Set { hash, keys } = change {
            out.push(HashEntry {
                id: id.to_owned(),
                hash,
                keys: keys.or(current.and_then(|c| c.keys)),
            });
        }
    }
    out.extend(old);
    out
}

/// Stores `entries` (sorted by id) in place of the page that began at `old_first`:
/// as one page, or cut into pages of [`PAGE_ENTRIES`] when it grew past [`PAGE_MAX`].
fn put_pages(
    conn: &Connection,
    scope: i64,
    old_first: Option<String>,
    entries: &[HashEntry],
) -> Result<(), StateError> {
    const ACTION: &str = "storing content hashes";
    let same_first = match (&old_first, entries.first()) {
        (Some(old_first), Some(first)) => first.id == *old_first,
        _ => false,
    };
    if let Some(old_first) = old_first.filter(|_| !same_first) {
        conn.prepare_cached(DELETE_PAGE)
            .and_then(|mut stmt| stmt.execute(params![scope, old_first]))
            .map_err(sql_error(ACTION))?;
    }
    let size = match entries.len() {
        n if n <= PAGE_MAX => n.max(1),
        _ => PAGE_ENTRIES,
    };
    for (i, page) in entries.chunks(size).enumerate() {
        // The first page keeps the old one's first id: rewritten in place.
        let sql = if i == 0 && same_first {
            REWRITE_PAGE
        } else {
            PUT_PAGE
        };
        put_page(conn, sql, scope, page).map_err(sql_error(ACTION))?;
    }
    Ok(())
}

/// Stores `page` (sorted by id, not empty) as the page that begins at its first id,
/// by `sql` ([`PUT_PAGE`] or [`REWRITE_PAGE`]).
fn put_page(conn: &Connection, sql: &str, scope: i64, page: &[HashEntry]) -> rusqlite::Result<()> {
    let rechecks = page.iter().filter(|e| e.hash == RECHECK).count();
    conn.prepare_cached(sql)?.execute(params![
        scope,
        page[0].id,
        page.len() as i64,
        rechecks as i64,
        codec::encode_hash_page(page)
    ])?;
    Ok(())
}

/// The list of `key` in `groups`, begun on first use: a batch's changes by scope (a
/// batch holds a few).
pub(super) fn group_of<K: PartialEq, V>(groups: &mut Vec<(K, Vec<V>)>, key: K) -> &mut Vec<V> {
    let at = match groups.iter().position(|(k, _)| *k == key) {
        Some(at) => at,
        None => {
            groups.push((key, Vec::new()));
            groups.len() - 1
        }
    };
    &mut groups[at].1
}

/// The pages of a scope that hold a record to look at again. The index is named: for
/// the order, SQLite's planner took the key's index and read every page of the scope
/// (14 ms at a million records, on every run of a change-reading connector) instead
/// of the few the partial index holds.
const RECHECK_PAGES: &str = "SELECT first_id, page FROM record_hash_pages \
                             INDEXED BY record_hash_pages_recheck \
                             WHERE scope = ?1 AND rechecks > 0 ORDER BY first_id";

/// Calls `each` with every entry of scope `scope` in id order, `only_rechecks`: of the
/// pages that hold a record to look at again.
pub(super) fn each_entry(
    conn: &Connection,
    scope: i64,
    only_rechecks: bool,
    mut each: impl FnMut(&str, u64, Option<u64>),
) -> Result<(), StateError> {
    const ACTION: &str = "reading content hashes";
    let sql = match only_rechecks {
        true => RECHECK_PAGES,
        false => "SELECT first_id, page FROM record_hash_pages WHERE scope = ?1 ORDER BY first_id",
    };
    let mut stmt = conn.prepare_cached(sql).map_err(sql_error(ACTION))?;
    let mut rows = stmt.query([scope]).map_err(sql_error(ACTION))?;
    while let Some(row) = rows.next().map_err(sql_error(ACTION))? {
        let bytes = row
            .get_ref(1)
            .and_then(|v| Ok(v.as_blob()?))
            .map_err(sql_error(ACTION))?;
        codec::decode_hash_page(bytes, &mut each).map_err(|message| {
            let first_id: String = row.get(0).unwrap_or_default();
            corrupt(scope, &first_id, message)
        })?;
    }
    Ok(())
}

/// How many hashes scope `scope` holds.
pub(super) fn count(conn: &Connection, scope: i64) -> Result<usize, StateError> {
    conn.prepare_cached("SELECT coalesce(SUM(entries), 0) FROM record_hash_pages WHERE scope = ?1")
        .and_then(|mut stmt| stmt.query_row([scope], |row| row.get::<_, i64>(0)))
        .map(|n| usize::try_from(n).unwrap_or(0))
        .map_err(sql_error("counting content hashes"))
}

/// The value `pick` takes from the (hash, match keys) of each of `ids` that scope
/// `scope` holds.
pub(super) fn lookup<T>(
    conn: &Connection,
    scope: i64,
    ids: &[&str],
    pick: impl Fn(u64, Option<u64>) -> Option<T>,
) -> Result<HashMap<String, T>, StateError> {
    const ACTION: &str = "reading content hashes";
    let mut stmt = conn.prepare_cached(PAGE_AT).map_err(sql_error(ACTION))?;
    let mut out = HashMap::with_capacity(ids.len());
    // Ids asked for together are often near each other: a page is decoded once for
    // every id within its entries, into one buffer that every page reuses.
    let mut page = DecodedPage::default();
    for &id in ids {
        if !page.spans(id) {
            page.clear();
            let mut rows = stmt.query(params![scope, id]).map_err(sql_error(ACTION))?;
            if let Some(row) = rows.next().map_err(sql_error(ACTION))? {
                let bytes = row.get_ref(1).and_then(|v| Ok(v.as_blob()?));
                page.fill(bytes.map_err(sql_error(ACTION))?)
                    .map_err(|message| {
                        corrupt(scope, &row.get::<_, String>(0).unwrap_or_default(), message)
                    })?;
            }
        }
        if let Some((hash, keys)) = page.get(id)
            && let Some(value) = pick(hash, keys)
        {
            out.insert(id.to_owned(), value);
        }
    }
    Ok(out)
}

/// A page of content hashes decoded for lookups: its ids in one buffer, not a string
/// each (a run's lookups at a million records decoded a page per record, and its
/// strings were most of the work).
#[derive(Debug, Default)]
struct DecodedPage {
    ids: String,
    /// Per entry, in id order: where its id starts and ends in `ids`, its hash and
    /// match keys.
    entries: Vec<(usize, usize, u64, Option<u64>)>,
}

impl DecodedPage {
    fn clear(&mut self) {
        self.ids.clear();
        self.entries.clear();
    }

    fn fill(&mut self, bytes: &[u8]) -> Result<(), String> {
        let (ids, entries) = (&mut self.ids, &mut self.entries);
        codec::decode_hash_page(bytes, |id, hash, keys| {
            let start = ids.len();
            ids.push_str(id);
            entries.push((start, ids.len(), hash, keys));
        })?;
        Ok(())
    }

    /// Whether `id` lies between the page's first and last entries.
    fn spans(&self, id: &str) -> bool {
        match (self.entries.first(), self.entries.last()) {
            (Some(&(s, e, ..)), Some(&(ls, le, ..))) => {
                &self.ids[s..e] <= id && id <= &self.ids[ls..le]
            }
            _ => false,
        }
    }

    fn get(&self, id: &str) -> Option<(u64, Option<u64>)> {
        let at = (self.entries).binary_search_by(|&(s, e, ..)| self.ids[s..e].cmp(id));
        at.ok().map(|at| (self.entries[at].2, self.entries[at].3))
    }
}

/// Calls `each` with every hash as a row of `record_hashes` (`STATE_TABLES`), in
/// (scope, id) order, a page at a time; returns the number of rows.
pub(super) fn export(
    conn: &Connection,
    each: &mut dyn FnMut(Vec<StoredValue>) -> Result<(), StateError>,
) -> Result<u64, StateError> {
    const ACTION: &str = "exporting content hashes";
    let mut stmt = conn
        .prepare("SELECT scope, first_id, page FROM record_hash_pages ORDER BY scope, first_id")
        .map_err(sql_error(ACTION))?;
    let mut pages = stmt.query([]).map_err(sql_error(ACTION))?;
    let mut count = 0;
    while let Some(page) = pages.next().map_err(sql_error(ACTION))? {
        let scope: i64 = page.get(0).map_err(sql_error(ACTION))?;
        let first_id: String = page.get(1).map_err(sql_error(ACTION))?;
        let bytes = page
            .get_ref(2)
            .and_then(|v| Ok(v.as_blob()?))
            .map_err(sql_error(ACTION))?;
        for entry in decoded(scope, &first_id, bytes)? {
            each(vec![
                StoredValue::Integer(scope),
                StoredValue::Text(entry.id),
                StoredValue::Integer(entry.hash.cast_signed()),
                entry
                    .keys
                    .map_or(StoredValue::Null, |k| StoredValue::Integer(k.cast_signed())),
            ])?;
            count += 1;
        }
    }
    Ok(count)
}

/// Stores rows of `record_hashes` as [`export`] gives them (checked against the
/// table's columns by the caller).
pub(super) fn import(conn: &Connection, rows: &[Vec<StoredValue>]) -> Result<(), StateError> {
    let mut by_scope: Vec<(i64, Vec<(&str, HashChange)>)> = Vec::new();
    for row in rows {
        let (StoredValue::Integer(scope), StoredValue::Text(id), StoredValue::Integer(hash), keys) =
            (&row[0], &row[1], &row[2], &row[3])
        else {
            return Err(StateError::BadRow {
                table: "record_hashes".to_owned(),
                message: "a hash row needs a scope number, an id and a hash".to_owned(),
            });
        };
        let keys = match keys {
            StoredValue::Integer(k) => Some(k.cast_unsigned()),
            _ => None,
        };
        let change = HashChange::Set {
            hash: hash.cast_unsigned(),
            keys,
        };
        group_of(&mut by_scope, *scope).push((id.as_str(), change));
    }
    for (scope, changes) in by_scope {
        apply(conn, scope, changes)?;
    }
    Ok(())
}

/// Migration 10: the rows of `record_hashes` (migration 8's table) packed into pages,
/// then the table dropped.
pub(super) fn pack_hash_rows(conn: &Connection) -> rusqlite::Result<()> {
    let mut stmt =
        conn.prepare("SELECT scope, id, hash, match_keys FROM record_hashes ORDER BY scope, id")?;
    let mut rows = stmt.query([])?;
    let mut page: Vec<HashEntry> = Vec::with_capacity(PAGE_ENTRIES);
    let mut page_scope = 0;
    let put = |scope: i64, page: &mut Vec<HashEntry>| -> rusqlite::Result<()> {
        if !page.is_empty() {
            put_page(conn, PUT_PAGE, scope, page)?;
        }
        page.clear();
        Ok(())
    };
    while let Some(row) = rows.next()? {
        let scope: i64 = row.get(0)?;
        if scope != page_scope || page.len() == PAGE_ENTRIES {
            put(page_scope, &mut page)?;
            page_scope = scope;
        }
        page.push(HashEntry {
            id: row.get(1)?,
            hash: row.get::<_, i64>(2)?.cast_unsigned(),
            keys: row.get::<_, Option<i64>>(3)?.map(i64::cast_unsigned),
        });
    }
    put(page_scope, &mut page)?;
    drop(rows);
    drop(stmt);
    conn.execute_batch("DROP TABLE record_hashes;")
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    fn entry(id: &str, hash: u64, keys: Option<u64>) -> HashEntry {
        HashEntry {
            id: id.to_owned(),
            hash,
            keys,
        }
    }

    #[test]
    fn a_merge_applies_changes_in_order_and_keeps_keys_not_given() {
        let stored = vec![
            entry("a", 1, Some(10)),
            entry("c", 3, None),
            entry("e", 5, Some(50)),
        ];
        let set = |hash, keys| HashChange::Set { hash, keys };
        let changes = [
            ("a", set(11, None)),
            ("b", set(2, Some(20))),
            ("b", set(22, None)),
            ("c", HashChange::Delete),
            ("d", HashChange::Delete),
            ("e", HashChange::Delete),
            ("e", set(55, None)),
        ];
        assert_eq!(
            merge(stored, &changes),
            vec![
                entry("a", 11, Some(10)),
                entry("b", 22, Some(20)),
                entry("e", 55, None)
            ]
        );
    }

    fn table() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(super::super::MIGRATION_10_HASH_PAGES)
            .unwrap();
        conn
    }

    #[test]
    fn the_pages_to_look_at_again_are_found_by_their_index_not_by_reading_every_page() {
        let conn = table();
        let plan: Vec<String> = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {RECHECK_PAGES}"))
            .unwrap()
            .query_map([1], |row| row.get(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(
            plan.iter()
                .any(|step| step.contains("USING INDEX record_hash_pages_recheck")),
            "{plan:?}"
        );
    }

    /// (scope, first id, entries, rechecks, page) of every page, in key order.
    fn pages(conn: &Connection) -> Vec<(i64, String, i64, i64, Vec<u8>)> {
        conn.prepare(
            "SELECT scope, first_id, entries, rechecks, page FROM record_hash_pages ORDER BY 1, 2",
        )
        .unwrap()
        .query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
    }

    /// The invariants of the module's doc, and the entries they hold, by scope.
    fn checked(conn: &Connection) -> BTreeMap<(i64, String), (u64, Option<u64>)> {
        let mut all = BTreeMap::new();
        let mut last: Option<(i64, String)> = None;
        for (scope, first_id, entries, rechecks, bytes) in pages(conn) {
            let page = codec::hash_page_entries(&bytes).unwrap();
            assert!(!page.is_empty(), "an empty page at {first_id}");
            assert!(page.len() <= PAGE_MAX);
            assert_eq!(page[0].id, first_id);
            assert_eq!(entries, page.len() as i64);
            let zeros = page.iter().filter(|e| e.hash == RECHECK).count();
            assert_eq!(rechecks, zeros as i64);
            for entry in page {
                let key = (scope, entry.id);
                assert!(last.as_ref() < Some(&key), "{key:?} out of order");
                last = Some(key.clone());
                all.insert(key, (entry.hash, entry.keys));
            }
        }
        all
    }

    /// What a change sets (hash, keys), `None` for a delete.
    type Given = Option<(u64, Option<u64>)>;

    fn change() -> impl Strategy<Value = (i64, u16, Given)> {
        (
            1..3i64,
            0..400u16,
            prop_oneof![
                1 => Just(None),
                4 => (prop_oneof![Just(0u64), any::<u64>()], proptest::option::of(any::<u64>()))
                    .prop_map(Some),
            ],
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Pages hold what a map of (scope, id) to hash would, batch after batch:
        /// inserts anywhere, deletes, repeated ids in one batch, pages split and gone.
        #[test]
        fn pages_hold_what_a_map_would(batches in proptest::collection::vec(
            proptest::collection::vec(change(), 0..300), 1..6)
        ) {
            let conn = table();
            let mut model: BTreeMap<(i64, String), (u64, Option<u64>)> = BTreeMap::new();
            for batch in batches {
                let ids: Vec<(i64, String, Given)> = batch
                    .into_iter()
                    .map(|(scope, n, change)| (scope, format!("C{n:05}"), change))
                    .collect();
                for scope in [1, 2] {
                    let changes = ids
                        .iter()
                        .filter(|(s, _, _)| *s == scope)
                        .map(|(_, id, change)| {
                            let change = match change {
                                Some((hash, keys)) => HashChange::Set { hash: *hash, keys: *keys },
                                None => HashChange::Delete,
                            };
                            (id.as_str(), change)
                        })
                        .collect();
                    apply(&conn, scope, changes).unwrap();
                }
                for (scope, id, change) in ids {
                    let key = (scope, id);
                    match change {
                        None => {
                            model.remove(&key);
                        }
                        Some((hash, keys)) => {
                            let keys = keys.or(model.get(&key).and_then(|(_, k)| *k));
                            model.insert(key, (hash, keys));
                        }
                    }
                }
                prop_assert_eq!(&checked(&conn), &model);
            }
            for scope in [1, 2] {
                let ids: Vec<String> = (0..400u16).map(|n| format!("C{n:05}")).collect();
                let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
                let expected: HashMap<String, u64> = model
                    .iter()
                    .filter(|((s, _), _)| *s == scope)
                    .map(|((_, id), (hash, _))| (id.clone(), *hash))
                    .collect();
                prop_assert_eq!(&lookup(&conn, scope, &ids, |hash, _| Some(hash)).unwrap(), &expected);
                let mut read = HashMap::new();
                each_entry(&conn, scope, false, |id, hash, _| {
                    read.insert(id.to_owned(), hash);
                })
                .unwrap();
                prop_assert_eq!(&read, &expected);
                prop_assert_eq!(count(&conn, scope).unwrap(), expected.len());
                let mut rechecks = Vec::new();
                each_entry(&conn, scope, true, |id, hash, _| {
                    if hash == RECHECK {
                        rechecks.push(id.to_owned());
                    }
                })
                .unwrap();
                let mut expected: Vec<String> = expected
                    .into_iter()
                    .filter(|(_, hash)| *hash == RECHECK)
                    .map(|(id, _)| id)
                    .collect();
                expected.sort();
                prop_assert_eq!(rechecks, expected);
            }
        }
    }
}
