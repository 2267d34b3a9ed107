//! Content hashes of linked records kept on their link rows (migration 11).
//!
//! A change to a linked pair rewrites its link row (baseline, versions) and sets the
//! content hashes of both records. In pages, at a million links, each of those hashes
//! fell on a page of its own: 1,000 changes rewrote about 1,800 pages of hashes on top
//! of the link rows, 16 of the commit's 38 ms. On the link row, the hash goes into the
//! row the change writes anyway.
//!
//! A scope's linked records are *held* by one relation code and side
//! (`hash_holders`, set by [`hold`]): the hash of a record of that scope linked under
//! that code lives on its link row (`contact_hash` and `contact_keys`, or
//! `account_hash` and `account_keys`); every other hash of the scope stays in the pages
//! (`hash_pages`).
//!
//! Invariants:
//! * a scope has at most one holder and a (code, side) holds at most one scope; a
//!   holder is never dropped (its rows hold that scope's hashes whatever the config
//!   says later);
//! * the hash of a held record (a record of a held scope on a link row of its holder)
//!   is on that row or nowhere, never in the pages: a link made takes its records'
//!   hashes out of the pages ([`take_from_pages`]), a link deleted gives them back
//!   ([`released`]), and a holder begun moves its records' hashes onto their rows.

use std::cell::Cell;
use std::collections::{HashMap, HashSet};

use rusqlite::{Connection, OptionalExtension, params};

use super::hash_pages::{self, HashChange};
use super::sql_error;
use crate::transfer::StoredValue;
use crate::{Scope, Side, StateBatch, StateError};

/// The columns of `links` that hold hashes: not in `STATE_TABLES`, whose
/// `record_hashes` rows carry them.
#[cfg(test)]
pub(super) const COLUMNS: [&str; 4] = [
    "contact_hash",
    "contact_keys",
    "account_hash",
    "account_keys",
];

/// Who holds the hashes of a scope's linked records: the link rows of `code`, on `side`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Holder {
    pub(super) scope: i64,
    pub(super) code: String,
    pub(super) side: Side,
}

/// The statements of one side, by [`Side`]: the contact's columns, then the account's.
struct SideSql {
    set: &'static str,
    take: &'static str,
    clear: &'static str,
    get: &'static str,
    all: &'static str,
    rechecks: &'static str,
}

const CONTACT_SQL: SideSql = SideSql {
    set: "UPDATE links SET contact_hash = ?3, contact_keys = coalesce(?4, contact_keys) \
          WHERE code = ?1 AND contact_id = ?2",
    take: "UPDATE links SET contact_hash = coalesce(contact_hash, ?3), \
           contact_keys = coalesce(contact_keys, ?4) WHERE code = ?1 AND contact_id = ?2",
    clear: "UPDATE links SET contact_hash = NULL, contact_keys = NULL \
            WHERE code = ?1 AND contact_id = ?2",
    get: "SELECT contact_hash, contact_keys FROM links WHERE code = ?1 AND contact_id = ?2",
    all: "SELECT contact_id, contact_hash, contact_keys FROM links \
          WHERE code = ?1 AND contact_hash IS NOT NULL",
    rechecks: "SELECT contact_id, contact_hash, contact_keys FROM links \
               WHERE code = ?1 AND contact_hash = 0",
};

const ACCOUNT_SQL: SideSql = SideSql {
    set: "UPDATE links SET account_hash = ?3, account_keys = coalesce(?4, account_keys) \
          WHERE code = ?1 AND account_id = ?2",
    take: "UPDATE links SET account_hash = coalesce(account_hash, ?3), \
           account_keys = coalesce(account_keys, ?4) WHERE code = ?1 AND account_id = ?2",
    clear: "UPDATE links SET account_hash = NULL, account_keys = NULL \
            WHERE code = ?1 AND account_id = ?2",
    get: "SELECT account_hash, account_keys FROM links WHERE code = ?1 AND account_id = ?2",
    all: "SELECT account_id, account_hash, account_keys FROM links \
          WHERE code = ?1 AND account_hash IS NOT NULL",
    rechecks: "SELECT account_id, account_hash, account_keys FROM links \
               WHERE code = ?1 AND account_hash = 0",
};

fn sql(side: Side) -> &'static SideSql {
    match side {
        Side::Contact => &CONTACT_SQL,
        Side::Account => &ACCOUNT_SQL,
    }
}

/// Every holder, by scope.
pub(super) fn holders(conn: &Connection) -> Result<Vec<Holder>, StateError> {
    const ACTION: &str = "reading who holds content hashes";
    let mut stmt = conn
        .prepare_cached("SELECT scope, code, side FROM hash_holders ORDER BY scope")
        .map_err(sql_error(ACTION))?;
    let rows = stmt
        .query_map([], |row| {
            Ok((
                row.get::<_, i64>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
            ))
        })
        .map_err(sql_error(ACTION))?;
    let mut out = Vec::new();
    for row in rows {
        let (scope, code, side) = row.map_err(sql_error(ACTION))?;
        let side = Side::parse(&side).ok_or_else(|| StateError::Corrupt {
            what: format!("the holder of the content hashes of scope {scope}"),
            message: format!("unknown side {side:?}"),
        })?;
        out.push(Holder { scope, code, side });
    }
    Ok(out)
}

/// The holder of scope `scope`, if it has one.
pub(super) fn holder_of(conn: &Connection, scope: i64) -> Result<Option<Holder>, StateError> {
    Ok(holders(conn)?.into_iter().find(|h| h.scope == scope))
}

/// Makes (code, side) the holder of `scope` unless either already holds or is held,
/// and moves the hashes of the scope's records linked under `code` from the pages onto
/// their rows. Returns how many it moved, `None` when it did not begin a holder.
pub(super) fn hold(conn: &Connection, holder: &Holder) -> Result<Option<u64>, StateError> {
    const ACTION: &str = "choosing where content hashes are kept";
    let begun = conn
        .prepare_cached(
            "INSERT OR IGNORE INTO hash_holders (scope, code, side) VALUES (?1, ?2, ?3)",
        )
        .and_then(|mut stmt| stmt.execute(params![holder.scope, holder.code, holder.side.as_str()]))
        .map_err(sql_error(ACTION))?;
    if begun == 0 {
        return Ok(None);
    }
    let mut entries = Vec::new();
    hash_pages::each_entry(conn, holder.scope, false, |id, hash, keys| {
        entries.push((id.to_owned(), hash, keys));
    })?;
    let mut stmt = conn
        .prepare_cached(sql(holder.side).set)
        .map_err(sql_error(ACTION))?;
    let mut moved = Vec::new();
    for (id, hash, keys) in &entries {
        let on_row = stmt
            .execute(params![
                holder.code,
                id,
                hash.cast_signed(),
                keys.map(u64::cast_signed)
            ])
            .map_err(sql_error(ACTION))?;
        if on_row > 0 {
            moved.push((id.as_str(), HashChange::Delete));
        }
    }
    let count = moved.len() as u64;
    hash_pages::apply(conn, holder.scope, moved)?;
    Ok(Some(count))
}

/// Applies `changes` (in their order for one id) to the rows of the records `holder`
/// holds; returns the changes of the records it does not hold, for the pages.
pub(super) fn apply<'a>(
    conn: &Connection,
    holder: &Holder,
    changes: Vec<(&'a str, HashChange)>,
) -> Result<Vec<(&'a str, HashChange)>, StateError> {
    const ACTION: &str = "storing content hashes on links";
    let side = sql(holder.side);
    let mut set = conn.prepare_cached(side.set).map_err(sql_error(ACTION))?;
    let mut clear = conn.prepare_cached(side.clear).map_err(sql_error(ACTION))?;
    let mut rest = Vec::new();
    for (id, change) in changes {
        let on_row = match change {
            HashChange::Set { hash, keys } => set.execute(params![
                holder.code,
                id,
                hash.cast_signed(),
                keys.map(u64::cast_signed)
            ]),
            HashChange::Delete => clear.execute(params![holder.code, id]),
        }
        .map_err(sql_error(ACTION))?;
        if on_row == 0 {
            rest.push((id, change));
        }
    }
    Ok(rest)
}

/// Moves the hashes of `ids`, records `holder` holds on rows just made, from the pages
/// onto their rows. A row given a hash by its batch keeps it, and the match keys
/// that batch gave, as a later change would.
pub(super) fn take_from_pages(
    conn: &Connection,
    holder: &Holder,
    ids: &[&str],
) -> Result<(), StateError> {
    if ids.is_empty() || hash_pages::count(conn, holder.scope)? == 0 {
        return Ok(());
    }
    let found = hash_pages::lookup(conn, holder.scope, ids, |hash, keys| Some((hash, keys)))?;
    let mut taken = Vec::with_capacity(found.len());
    let mut stmt = conn
        .prepare_cached(sql(holder.side).take)
        .map_err(sql_error("storing content hashes on links"))?;
    for (id, (hash, keys)) in &found {
        let on_row = stmt
            .execute(params![
                holder.code,
                id,
                hash.cast_signed(),
                keys.map(u64::cast_signed)
            ])
            .map_err(sql_error("storing content hashes on links"))?;
        // A row the same batch moved on to another record leaves the hash where it is.
        if on_row > 0 {
            taken.push((id.as_str(), HashChange::Delete));
        }
    }
    hash_pages::apply(conn, holder.scope, taken)
}

/// The hash changes for the pages that give back the hashes of a deleted link row
/// (`code`, its contact and account, and the four hash columns) to the scopes its
/// code held.
pub(super) fn released<'a>(
    holders: &[Holder],
    code: &str,
    (contact_id, account_id): (&'a str, &'a str),
    contact: (Option<u64>, Option<u64>),
    account: (Option<u64>, Option<u64>),
) -> Vec<(i64, &'a str, HashChange)> {
    let mut out = Vec::new();
    for holder in holders.iter().filter(|h| h.code == code) {
        let (id, (hash, keys)) = match holder.side {
            Side::Contact => (contact_id, contact),
            Side::Account => (account_id, account),
        };
        if let Some(hash) = hash {
            out.push((holder.scope, id, HashChange::Set { hash, keys }));
        }
    }
    out
}

/// The (hash, match keys) on the rows of those of `ids` that `holder` holds with a hash.
pub(super) fn lookup(
    conn: &Connection,
    holder: &Holder,
    ids: &[&str],
) -> Result<HashMap<String, (u64, Option<u64>)>, StateError> {
    const ACTION: &str = "reading content hashes on links";
    let mut stmt = conn
        .prepare_cached(sql(holder.side).get)
        .map_err(sql_error(ACTION))?;
    let mut out = HashMap::new();
    for &id in ids {
        let found = stmt
            .query_row(params![holder.code, id], |row| {
                Ok((row.get::<_, Option<i64>>(0)?, row.get::<_, Option<i64>>(1)?))
            })
            .optional()
            .map_err(sql_error(ACTION))?;
        if let Some((Some(hash), keys)) = found {
            out.insert(
                id.to_owned(),
                (hash.cast_unsigned(), keys.map(i64::cast_unsigned)),
            );
        }
    }
    Ok(out)
}

/// Calls `each` with every (id, hash, match keys) `holder` holds, in no particular
/// order; `only_rechecks`: those marked to be looked at again.
pub(super) fn each_entry(
    conn: &Connection,
    holder: &Holder,
    only_rechecks: bool,
    mut each: impl FnMut(&str, u64, Option<u64>),
) -> Result<(), StateError> {
    const ACTION: &str = "reading content hashes on links";
    let side = sql(holder.side);
    let sql = if only_rechecks {
        side.rechecks
    } else {
        side.all
    };
    let mut stmt = conn.prepare_cached(sql).map_err(sql_error(ACTION))?;
    let mut rows = stmt.query([&holder.code]).map_err(sql_error(ACTION))?;
    while let Some(row) = rows.next().map_err(sql_error(ACTION))? {
        let id = row
            .get_ref(0)
            .and_then(|v| Ok(v.as_str()?))
            .map_err(sql_error(ACTION))?;
        let hash: i64 = row.get(1).map_err(sql_error(ACTION))?;
        let keys: Option<i64> = row.get(2).map_err(sql_error(ACTION))?;
        each(id, hash.cast_unsigned(), keys.map(i64::cast_unsigned));
    }
    Ok(())
}

/// Whether `holder` holds a record marked to be looked at again.
pub(super) fn has_rechecks(conn: &Connection, holder: &Holder) -> Result<bool, StateError> {
    conn.prepare_cached(sql(holder.side).rechecks)
        .and_then(|mut stmt| stmt.exists([&holder.code]))
        .map_err(sql_error("looking for records to look at again"))
}

/// The hashes a batch sets for held records, by (code, side, id): stored with the link
/// rows the batch upserts ([`Folded::take`]) instead of by a second write of each row.
/// A record whose hash the batch also deletes is left out: the batch deletes hashes
/// before it sets them, and a row upserted first would lose its hash to the delete.
#[derive(Debug, Default)]
pub(super) struct Folded<'a> {
    by_record: HashMap<(&'a str, Side, &'a str), FoldedHash>,
    /// The scopes the batch sets hashes of, with their holder's code and side.
    held: Vec<(&'a Scope, &'a str, Side)>,
}

#[derive(Debug)]
struct FoldedHash {
    hash: u64,
    keys: Option<u64>,
    stored: Cell<bool>,
}

impl<'a> Folded<'a> {
    pub(super) fn of(
        conn: &Connection,
        holders: &'a [Holder],
        batch: &'a StateBatch,
    ) -> Result<Folded<'a>, StateError> {
        let mut folded = Folded::default();
        if holders.is_empty() || batch.upsert_links.is_empty() {
            return Ok(folded);
        }
        for (scope, _, _) in &batch.set_hashes {
            if folded.held.iter().any(|(s, ..)| *s == scope) {
                continue;
            }
            let number = super::known_scope(conn, scope)?;
            if let Some(holder) = holders.iter().find(|h| Some(h.scope) == number) {
                folded.held.push((scope, &holder.code, holder.side));
            }
        }
        if folded.held.is_empty() {
            return Ok(folded);
        }
        let deleted: HashSet<(&Scope, &str)> = (batch.delete_hashes.iter())
            .map(|(s, id)| (s, id.as_str()))
            .collect();
        for (scope, id, hash, keys) in batch.hashes_with_keys() {
            let Some(&(_, code, side)) = folded.held.iter().find(|(s, ..)| *s == scope) else {
                continue;
            };
            if deleted.contains(&(scope, id)) {
                continue;
            }
            let entry = folded.by_record.entry((code, side, id));
            let earlier = match &entry {
                std::collections::hash_map::Entry::Occupied(e) => e.get().keys,
                std::collections::hash_map::Entry::Vacant(_) => None,
            };
            let keys = keys.or(earlier);
            let stored = Cell::new(false);
            entry.insert_entry(FoldedHash { hash, keys, stored });
        }
        Ok(folded)
    }

    /// The (hash, match keys) the batch sets for record `id` on `side` of a link of
    /// `code`, now stored with that link's row.
    pub(super) fn take(&self, code: &str, side: Side, id: &str) -> Option<(u64, Option<u64>)> {
        let folded = self.by_record.get(&(code, side, id))?;
        folded.stored.set(true);
        Some((folded.hash, folded.keys))
    }

    /// Whether the hash the batch sets for `id` of `scope` was stored with a link row.
    pub(super) fn stored(&self, scope: &Scope, id: &str) -> bool {
        let Some(&(_, code, side)) = self.held.iter().find(|(s, ..)| *s == scope) else {
            return false;
        };
        (self.by_record.get(&(code, side, id))).is_some_and(|f| f.stored.get())
    }
}

/// Calls `each` with every hash, in the pages and on link rows, as a row of
/// `record_hashes` (`STATE_TABLES`), in (scope, id) order; returns the number of rows.
pub(super) fn export(
    conn: &Connection,
    each: &mut dyn FnMut(Vec<StoredValue>) -> Result<(), StateError>,
) -> Result<u64, StateError> {
    let holders = holders(conn)?;
    if holders.is_empty() {
        return hash_pages::export(conn, each);
    }
    let scopes: Vec<i64> = conn
        .prepare("SELECT id FROM scopes ORDER BY id")
        .and_then(|mut stmt| stmt.query_map([], |row| row.get(0))?.collect())
        .map_err(sql_error("exporting content hashes"))?;
    let mut count = 0;
    for scope in scopes {
        let mut entries: Vec<(String, u64, Option<u64>)> = Vec::new();
        let mut add = |id: &str, hash, keys| entries.push((id.to_owned(), hash, keys));
        hash_pages::each_entry(conn, scope, false, &mut add)?;
        if let Some(holder) = holders.iter().find(|h| h.scope == scope) {
            each_entry(conn, holder, false, &mut add)?;
        }
        entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        for (id, hash, keys) in entries {
            each(vec![
                StoredValue::Integer(scope),
                StoredValue::Text(id),
                StoredValue::Integer(hash.cast_signed()),
                keys.map_or(StoredValue::Null, |k| StoredValue::Integer(k.cast_signed())),
            ])?;
            count += 1;
        }
    }
    Ok(count)
}

#[cfg(test)]
mod tests;
