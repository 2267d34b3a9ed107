//! Leases: which process may write the state (or, later, a part of it).
//!
//! Not session advisory locks: behind a pooler (PgBouncer in transaction mode) a
//! session is not a process, and such a lock is taken on one backend and released, or
//! kept forever, by whoever gets that backend next. A lease is a row instead:
//! `leases (name, owner, expires_at, epoch)`.
//!
//! * [`claim`] inserts the row, or takes it over only when it has expired, adding one
//!   to `epoch`; a live lease of another owner is refused, naming the owner and when
//!   the lease expires, unless that owner is a process of this machine (same boot and
//!   pid namespace) that no longer runs: a killed sync does not hold the state until its
//!   lease expires.
//! * The holder renews it well before it expires: its store's thread runs [`fence`]
//!   every third of the lifetime, between jobs, and notes when. Before each write to a
//!   system the engine asks the store (`confirm_lease`): a renewal younger than half
//!   the lifetime answers; an older one (the process was stopped, or suspended) is
//!   checked with the server first, and a lease taken over ends the run there.
//! * Every write transaction first runs [`fence`]: it renews each lease held, matching
//!   owner *and* epoch, and fails with [`StateError::LeaseLost`] when a row is gone or
//!   has another epoch. The epoch is a fencing token: a process that stalled past its
//!   lease (a long GC pause, a suspended VM) and wakes up after another took the state
//!   over cannot write a single row, since its fence runs in the same transaction as
//!   its writes.
//! * [`release`] ends the leases that are still this holder's: it expires them rather
//!   than deleting them, so that the next holder's epoch is higher still (a deleted
//!   row would start again at 1, the epoch a fenced-off holder may still carry).
//!
//! A store holds a list of leases so that a worker can hold one per partition.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::postgres::PgConnection;

use super::pg;
use crate::StateError;

/// A lease this process holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Lease {
    pub name: String,
    pub owner: String,
    pub epoch: i64,
}

/// Who holds a lease, for other processes' messages: host and process id, and a
/// number telling apart the stores one process opens; then where the process id means
/// something ([`here`]).
pub(crate) fn owner() -> String {
    static OPENED: AtomicU64 = AtomicU64::new(0);
    // The start time tells a restarted process with a recycled pid from the old one.
    let started = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros());
    let n = OPENED.fetch_add(1, Ordering::Relaxed);
    format!(
        "tandem on {}, pid {} (store {started:x}-{n}){}",
        host(),
        std::process::id(),
        here().map(|here| format!(" [{here}]")).unwrap_or_default()
    )
}

fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "an unknown host".to_owned())
}

/// Where a process id names a process: this boot of this machine and this pid
/// namespace (a container has its own). `None` where /proc does not say.
fn here() -> Option<String> {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let namespace = std::fs::read_link("/proc/self/ns/pid").ok()?;
    Some(format!("boot {}, {}", boot.trim(), namespace.display()))
}

/// Whether `owner` (as [`owner`] wrote it) is a process of this boot and pid
/// namespace that no longer runs: a sync killed, or ended without letting its lease
/// go. Its lease can be taken at once instead of after it expires; no other process
/// can hold it, and no write of the dead one can come.
fn dead_here(owner: &str) -> bool {
    let Some(here) = here() else {
        return false;
    };
    let Some(rest) = owner.strip_prefix(&format!("tandem on {}, pid ", host())) else {
        return false;
    };
    let pid: String = rest.chars().take_while(char::is_ascii_digit).collect();
    owner.ends_with(&format!(" [{here}]"))
        && !pid.is_empty()
        && pid != std::process::id().to_string()
        && !std::path::Path::new("/proc").join(&pid).exists()
}

fn millis(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)
}

/// Takes the lease `name` for `owner`: a new one, or one that expired (its epoch one
/// higher). A live lease, whoever holds it, is refused with [`StateError::Leased`].
pub(crate) async fn claim(
    conn: &mut PgConnection,
    shown: &str,
    name: &str,
    owner: &str,
    ttl: Duration,
) -> Result<Lease, StateError> {
    const ACTION: &str = "taking the state's lease";
    let epoch: Option<i64> = sqlx::query_scalar(
        "INSERT INTO leases (name, owner, expires_at, epoch)
         VALUES ($1, $2, now() + $3 * interval '1 millisecond', 1)
         ON CONFLICT (name) DO UPDATE SET
             owner = excluded.owner,
             expires_at = excluded.expires_at,
             epoch = leases.epoch + 1
         WHERE leases.expires_at < now()
         RETURNING epoch",
    )
    .bind(name)
    .bind(owner)
    .bind(millis(ttl))
    .fetch_optional(&mut *conn)
    .await
    .map_err(pg(ACTION))?;
    if let Some(epoch) = epoch {
        return Ok(Lease {
            name: name.to_owned(),
            owner: owner.to_owned(),
            epoch,
        });
    }
    let holder: Option<(String, String)> = sqlx::query_as(
        "SELECT owner, to_char(expires_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') || ' UTC'
         FROM leases WHERE name = $1",
    )
    .bind(name)
    .fetch_optional(&mut *conn)
    .await
    .map_err(pg(ACTION))?;
    let (holder, expires_at) = holder.unwrap_or_else(|| {
        // Released between the two statements: the next try takes it.
        ("a process that just let it go".to_owned(), "now".to_owned())
    });
    if dead_here(&holder) {
        // Taken from that owner only: a live process that took it meanwhile keeps it.
        let epoch: Option<i64> = sqlx::query_scalar(
            "UPDATE leases SET owner = $3, expires_at = now() + $4 * interval '1 millisecond',
                 epoch = epoch + 1
             WHERE name = $1 AND owner = $2
             RETURNING epoch",
        )
        .bind(name)
        .bind(&holder)
        .bind(owner)
        .bind(millis(ttl))
        .fetch_optional(&mut *conn)
        .await
        .map_err(pg(ACTION))?;
        if let Some(epoch) = epoch {
            return Ok(Lease {
                name: name.to_owned(),
                owner: owner.to_owned(),
                epoch,
            });
        }
    }
    Err(StateError::Leased {
        path: shown.to_owned(),
        name: name.to_owned(),
        owner: holder,
        expires_at,
    })
}

/// Extends every lease in `leases` that is still held; returns the first one that is
/// not (its row gone, or taken over with a higher epoch).
async fn extend<'l>(
    conn: &mut PgConnection,
    leases: &'l [Lease],
    ttl: Duration,
) -> Result<Option<&'l Lease>, sqlx::Error> {
    for lease in leases {
        let extended = sqlx::query(
            "UPDATE leases SET expires_at = now() + $4 * interval '1 millisecond'
             WHERE name = $1 AND owner = $2 AND epoch = $3",
        )
        .bind(&lease.name)
        .bind(&lease.owner)
        .bind(lease.epoch)
        .bind(millis(ttl))
        .execute(&mut *conn)
        .await?
        .rows_affected();
        if extended == 0 {
            return Ok(Some(lease));
        }
    }
    Ok(None)
}

/// The fence of a write: run inside its transaction, before its first write. Renews
/// every lease held, and fails with [`StateError::LeaseLost`] when one is no longer
/// this holder's, so that the transaction applies nothing.
pub(crate) async fn fence(
    conn: &mut PgConnection,
    shown: &str,
    leases: &[Lease],
    ttl: Duration,
) -> Result<(), StateError> {
    let lost = extend(conn, leases, ttl)
        .await
        .map_err(pg("checking the state's lease"))?;
    match lost {
        None => Ok(()),
        Some(lease) => Err(StateError::LeaseLost {
            path: shown.to_owned(),
            name: lease.name.clone(),
            epoch: lease.epoch,
        }),
    }
}

/// Lets the leases go: expires those that are still this holder's, so that the next
/// [`claim`] takes them at once, with the next epoch.
pub(crate) async fn release(conn: &mut PgConnection, leases: &[Lease]) -> Result<(), StateError> {
    for lease in leases {
        sqlx::query(
            "UPDATE leases SET expires_at = '-infinity'
             WHERE name = $1 AND owner = $2 AND epoch = $3",
        )
        .bind(&lease.name)
        .bind(&lease.owner)
        .bind(lease.epoch)
        .execute(&mut *conn)
        .await
        .map_err(pg("releasing the state's lease"))?;
    }
    Ok(())
}

/// The leases live now, by name.
pub(crate) async fn live_leases(
    conn: &mut PgConnection,
) -> Result<Vec<crate::LeaseInfo>, StateError> {
    let rows: Vec<(String, String, i64, i64)> = sqlx::query_as(
        "SELECT name, owner, epoch,
                (extract(epoch FROM expires_at - now()) * 1000)::bigint
         FROM leases WHERE expires_at > now() ORDER BY name",
    )
    .fetch_all(conn)
    .await
    .map_err(pg("reading the state's leases"))?;
    Ok(rows
        .into_iter()
        .map(|(name, owner, epoch, expires_in_ms)| crate::LeaseInfo {
            role: crate::LeaseRole::of(&name),
            name,
            owner,
            epoch,
            expires_in_ms,
        })
        .collect())
}

/// Refuses with [`StateError::Leased`], naming the holder and when its lease expires,
/// when a live lease `overlaps` (by its name) one just taken: a whole state's holder
/// and workers of partitions never write side by side, nor partitions of two counts.
pub(crate) async fn refuse_overlapping(
    conn: &mut PgConnection,
    shown: &str,
    overlaps: impl Fn(&str) -> bool,
) -> Result<(), StateError> {
    let rows: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT name, owner,
                to_char(expires_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') || ' UTC'
         FROM leases WHERE expires_at > now() ORDER BY name",
    )
    .fetch_all(conn)
    .await
    .map_err(pg("reading the state's leases"))?;
    match rows.into_iter().find(|(name, _, _)| overlaps(name)) {
        None => Ok(()),
        Some((name, owner, expires_at)) => Err(StateError::Leased {
            path: shown.to_owned(),
            name,
            owner,
            expires_at,
        }),
    }
}
