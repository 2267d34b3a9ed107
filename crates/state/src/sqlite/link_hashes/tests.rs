//! The hashes a store gives back do not depend on where it keeps them: a model-based
//! test against a map of (scope, id) to (hash, match keys), through links made, moved
//! and deleted, hashes set and deleted, and holders begun at any point.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use proptest::prelude::*;
use tandem_model::{EntityKind, Fields, Timestamp};

use super::*;
use crate::sqlite::{LockMode, SqliteState, hash_pages};
use crate::{HashHolder, Link, StateStore};

const CODES: [&str; 2] = ["A", "B"];

fn scopes() -> [Scope; 4] {
    [
        Scope::new("crm", EntityKind::Contact),
        Scope::new("erp", EntityKind::Customer),
        Scope::new("erp", EntityKind::Vendor),
        Scope::new("book", EntityKind::Contact),
    ]
}

/// Holders in order of preference: the contacts under A, then under B (refused while
/// A holds them), the customers under A, the vendors under B.
fn offered() -> Vec<HashHolder> {
    let [contacts, customers, vendors, _] = scopes();
    let holder = |scope: &Scope, code: &str, side| HashHolder {
        scope: scope.clone(),
        code: code.to_owned(),
        side,
    };
    vec![
        holder(&contacts, "A", Side::Contact),
        holder(&contacts, "B", Side::Contact),
        holder(&customers, "A", Side::Account),
        holder(&vendors, "B", Side::Account),
    ]
}

#[derive(Debug, Clone)]
enum Op {
    /// Offers these of [`offered`].
    Hold(Vec<usize>),
    Batch {
        /// (code, contact)
        delete_links: Vec<(usize, u8)>,
        /// (code, contact, account)
        upsert_links: Vec<(usize, u8, u8)>,
        /// (scope, id)
        delete_hashes: Vec<(usize, u8)>,
        /// (scope, id, hash, keys)
        set_hashes: Vec<(usize, u8, u64, Option<u64>)>,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let id = 0u8..5;
    let batch = (
        prop::collection::vec((0usize..2, id.clone()), 0..3),
        prop::collection::vec((0usize..2, id.clone(), id.clone()), 0..4),
        prop::collection::vec((0usize..4, id.clone()), 0..3),
        prop::collection::vec((0usize..4, id, 0u64..3, prop::option::of(0u64..3)), 0..6),
    )
        .prop_map(
            |(delete_links, upsert_links, delete_hashes, set_hashes)| Op::Batch {
                delete_links,
                upsert_links,
                delete_hashes,
                set_hashes,
            },
        );
    prop_oneof![
        1 => prop::collection::vec(0usize..4, 1..4).prop_map(Op::Hold),
        6 => batch,
    ]
}

/// Contact ids are `c<n>`, account ids `a<n>`; a hash of a contact scope is a
/// contact's, of an account scope an account's.
fn record_id(scope: usize, n: u8) -> String {
    match scope {
        1 | 2 => format!("a{n}"),
        _ => format!("c{n}"),
    }
}

fn link(code: &str, contact: &str, account: &str) -> Link {
    Link {
        code: code.to_owned(),
        contact_id: contact.to_owned(),
        account_id: account.to_owned(),
        baseline: Fields::new().with("name", contact),
        contact_version: None,
        account_version: None,
        last_error: None,
        failure_count: 0,
        parked: false,
        linked_at: Timestamp(1),
        synced_at: Timestamp(2),
        intent: None,
    }
}

/// What the store should hold: links by (code, contact), hashes by (scope, id).
#[derive(Debug, Default, Clone)]
struct Model {
    links: BTreeMap<(String, String), String>,
    hashes: BTreeMap<(usize, String), (u64, Option<u64>)>,
}

impl Model {
    /// The batch applied as the store applies it, or `None` when it breaks R2 (an
    /// account linked to two contacts under one code): the store refuses it whole.
    fn apply(&self, batch: &StateBatch) -> Option<Model> {
        let mut next = self.clone();
        for (code, contact) in &batch.delete_links {
            next.links.remove(&(code.clone(), contact.clone()));
        }
        for l in &batch.upsert_links {
            let taken = (next.links.iter()).any(|((c, contact), a)| {
                *c == l.code && *a == l.account_id && *contact != l.contact_id
            });
            if taken {
                return None;
            }
            next.links
                .insert((l.code.clone(), l.contact_id.clone()), l.account_id.clone());
        }
        let all = scopes();
        let index = |s: &Scope| all.iter().position(|x| x == s).unwrap();
        for (scope, id) in &batch.delete_hashes {
            next.hashes.remove(&(index(scope), id.clone()));
        }
        for (scope, id, hash, keys) in batch.hashes_with_keys() {
            let key = (index(scope), id.to_owned());
            let kept = next.hashes.get(&key).and_then(|(_, k)| *k);
            next.hashes.insert(key, (hash, keys.or(kept)));
        }
        Some(next)
    }
}

fn batch_of(op: &Op) -> Option<StateBatch> {
    let Op::Batch {
        delete_links,
        upsert_links,
        delete_hashes,
        set_hashes,
    } = op
    else {
        return None;
    };
    let all = scopes();
    let mut batch = StateBatch {
        delete_links: (delete_links.iter())
            .map(|(code, n)| (CODES[*code].to_owned(), format!("c{n}")))
            .collect(),
        upsert_links: (upsert_links.iter())
            .map(|(code, c, a)| link(CODES[*code], &format!("c{c}"), &format!("a{a}")))
            .collect(),
        delete_hashes: (delete_hashes.iter())
            .map(|(scope, n)| (all[*scope].clone(), record_id(*scope, *n)))
            .collect(),
        ..StateBatch::default()
    };
    for (scope, n, hash, keys) in set_hashes {
        let (scope, id) = (all[*scope].clone(), record_id(*scope, *n));
        match keys {
            Some(keys) => batch.set_hash_with_keys(scope, id, *hash, *keys),
            None => batch.set_hashes.push((scope, id, *hash)),
        }
    }
    Some(batch)
}

/// Every way the store gives back hashes agrees with the model, and no held record's
/// hash is in the pages.
fn check(state: &SqliteState, model: &Model) {
    let ids: Vec<String> = (0..5)
        .flat_map(|n| [format!("c{n}"), format!("a{n}")])
        .collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    for (s, scope) in scopes().iter().enumerate() {
        let expected: BTreeMap<String, (u64, Option<u64>)> = (model.hashes.iter())
            .filter(|((ms, _), _)| *ms == s)
            .map(|((_, id), v)| (id.clone(), *v))
            .collect();
        let all: BTreeMap<String, u64> = (state.hashes(scope).unwrap().into_iter())
            .map(|(id, hash)| (id.to_string(), hash))
            .collect();
        let hashes: BTreeMap<String, u64> =
            expected.iter().map(|(id, v)| (id.clone(), v.0)).collect();
        assert_eq!(all, hashes, "hashes of {scope:?}");
        let of: BTreeMap<String, u64> = state.hashes_of(scope, &ids).unwrap().into_iter().collect();
        assert_eq!(of, hashes, "hashes_of {scope:?}");
        let keys: BTreeMap<String, u64> = (expected.iter())
            .filter_map(|(id, (_, k))| Some((id.clone(), (*k).filter(|k| *k != 0)?)))
            .collect();
        let found: BTreeMap<String, u64> = state
            .match_keys_of(scope, &ids)
            .unwrap()
            .into_iter()
            .collect();
        assert_eq!(found, keys, "match keys of {scope:?}");
        let rechecks: Vec<String> = (expected.iter())
            .filter(|(_, (h, _))| *h == hash_pages::RECHECK)
            .map(|(id, _)| id.clone())
            .collect();
        assert_eq!(
            state.rechecks(scope).unwrap(),
            rechecks,
            "rechecks of {scope:?}"
        );
        assert_eq!(state.has_rechecks(scope).unwrap(), !rechecks.is_empty());
    }
    let mut exported = BTreeSet::new();
    state
        .export_table("record_hashes", &mut |row| {
            exported.insert(format!("{row:?}"));
            Ok(())
        })
        .unwrap();
    assert_eq!(exported.len(), model.hashes.len(), "exported hashes");
    for holder in holders(&state.conn).unwrap() {
        let held: Vec<&str> = (model.links.iter())
            .filter(|((code, _), _)| *code == holder.code)
            .map(|((_, contact), account)| match holder.side {
                Side::Contact => contact.as_str(),
                Side::Account => account.as_str(),
            })
            .collect();
        let in_pages =
            hash_pages::lookup(&state.conn, holder.scope, &held, |h, _| Some(h)).unwrap();
        assert!(
            in_pages.is_empty(),
            "held hashes in the pages: {in_pages:?}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn hashes_read_back_the_same_wherever_they_are_kept(ops in prop::collection::vec(op(), 1..25)) {
        let mut state =
            SqliteState::open_existing(Path::new("/nonexistent/state.db"), LockMode::Exclusive).unwrap();
        let mut model = Model::default();
        let all_holders = offered();
        for op in &ops {
            match op {
                Op::Hold(which) => {
                    let wanted: Vec<HashHolder> = which.iter().map(|i| all_holders[*i].clone()).collect();
                    state.hold_hashes_on_links(&wanted).unwrap();
                }
                Op::Batch { .. } => {
                    let batch = batch_of(op).unwrap();
                    let next = model.apply(&batch);
                    let stored = state.commit(batch);
                    match next {
                        Some(next) => {
                            stored.unwrap();
                            model = next;
                        }
                        None => prop_assert!(stored.is_err(), "a batch breaking R2 was stored"),
                    }
                }
            }
            check(&state, &model);
        }
    }
}
