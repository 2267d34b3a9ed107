//! Matching unlinked records by tiers of fields (R4).
//!
//! Each tier builds one hash index over both pools, so a tier costs O(contacts +
//! accounts), never O(contacts x accounts). A pair is linked only when its key is
//! shared by exactly one unlinked contact and exactly one unlinked account; a key
//! shared by more is ambiguous: reported, and those records are not tried on later
//! tiers, because a weaker rule must not guess where a stronger one could not decide.

use serde::Serialize;
use tandem_model::normalise::{CountryCode, Form};
use tandem_model::{FieldName, RecordView, Value, field};

use crate::relation::Tier;

/// Records that share a match key with too many others.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Ambiguity {
    pub code: String,
    /// 1-based tier number, as users count them in the config.
    pub tier: usize,
    pub fields: Vec<String>,
    /// The shared values, as found on the first contact.
    pub values: Vec<String>,
    pub contact_ids: Vec<String>,
    pub account_ids: Vec<String>,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct MatchOutcome<'p> {
    /// (contact id, account id, 1-based tier), the ids borrowed from the pools: the
    /// planner keeps them as they are (a first sync's 805,000 matches were two copies
    /// of their ids each, then two lookups each to borrow them back).
    pub matches: Vec<(&'p str, &'p str, usize)>,
    pub ambiguous: Vec<Ambiguity>,
    /// Accounts that matched no contact (ambiguous ones excluded), in id order.
    pub unmatched_accounts: Vec<String>,
}

/// The records of both pools that share one key.
struct Found<'p, R: ?Sized> {
    contacts: &'p [&'p R],
    accounts: &'p [&'p R],
    /// Positions in the pools.
    cs: &'p [u32],
    accs: &'p [u32],
}

impl<R: RecordView + ?Sized> Found<'_, R> {
    /// More than one record on a side: reported, never guessed (R4).
    fn ambiguity(&self, code: &str, tier_number: usize, tier: &Tier) -> Ambiguity {
        let first = self.contacts[self.cs[0] as usize];
        let ids = |pool: &[&R], at: &[u32]| {
            let mut ids: Vec<String> = (at.iter())
                .map(|&i| pool[i as usize].record_id().to_owned())
                .collect();
            ids.sort();
            ids
        };
        Ambiguity {
            code: code.to_owned(),
            tier: tier_number,
            fields: tier.fields.iter().map(|f| f.to_string()).collect(),
            values: tier
                .fields
                .iter()
                .map(|f| first.value_of(f).map_or_else(String::new, |v| v.to_cell()))
                .collect(),
            contact_ids: ids(self.contacts, self.cs),
            account_ids: ids(self.accounts, self.accs),
        }
    }
}

/// Matches `contacts` against `accounts` (both unlinked under `code`), making the keys
/// on `threads` threads.
pub fn match_records<'p, R: RecordView + Sync + ?Sized>(
    code: &str,
    tiers: &[Tier],
    (contacts, accounts): (&[&'p R], &[&'p R]),
    threads: usize,
) -> MatchOutcome<'p> {
    let mut contact_open = vec![true; contacts.len()];
    let mut account_open = vec![true; accounts.len()];
    let mut outcome = MatchOutcome::default();
    // (contact, account, tier) by position in the pools.
    let mut matches: Vec<(u32, u32, usize)> = Vec::new();

    for (t, tier) in tiers.iter().enumerate() {
        let contact_keys = keys_of(tier, contacts, &contact_open, threads);
        if contact_keys.is_empty() {
            continue;
        }
        let account_keys = keys_of(tier, accounts, &account_open, threads);
        for (cs, accs) in common_keys(&contact_keys, &account_keys) {
            for &(_, c) in cs {
                contact_open[c as usize] = false;
            }
            for &(_, a) in accs {
                account_open[a as usize] = false;
            }
            if let ([(_, c)], [(_, a)]) = (cs, accs) {
                matches.push((*c, *a, t + 1));
            } else {
                let positions = |keys: &[Keyed]| keys.iter().map(|k| k.1).collect::<Vec<_>>();
                let (cs, accs) = (positions(cs), positions(accs));
                let found = Found {
                    contacts,
                    accounts,
                    cs: &cs,
                    accs: &accs,
                };
                outcome.ambiguous.push(found.ambiguity(code, t + 1, tier));
            }
        }
    }
    outcome.matches = by_contact_id(matches, contacts, accounts);
    outcome
        .ambiguous
        .sort_by(|a, b| (a.tier, &a.contact_ids).cmp(&(b.tier, &b.contact_ids)));
    outcome.unmatched_accounts = accounts
        .iter()
        .zip(&account_open)
        .filter(|(_, open)| **open)
        .map(|(r, _)| r.record_id().to_owned())
        .collect();
    if !accounts
        .windows(2)
        .all(|w| w[0].record_id() <= w[1].record_id())
    {
        outcome.unmatched_accounts.sort();
    }
    outcome
}

/// A record's key, hashed, and its position in its pool.
type Keyed = (u128, u32);

/// The key of `tier` of each record of `pool` still open, hashed, with its position,
/// sorted: records that share a key lie together, in position order. Sorted, not
/// gathered in a map of a vector per key: a tier of a million records made a million
/// vectors, and grew faster than the records did (10M took 11x the time of 1M).
///
/// The keys are made on `threads` threads, each filling its part of one vector in
/// place (a record without a key leaves [`NO_KEY`]), then sorted on this one: making
/// them is most of matching a first sync, and the larger relation's matching used to
/// hold one core alone once the smaller one was done. One vector sorted in place, not
/// parts put together: at 10M a second copy of the keys would be 240 MB more at the
/// peak of the run.
fn keys_of<R: RecordView + Sync + ?Sized>(
    tier: &Tier,
    pool: &[&R],
    open: &[bool],
    threads: usize,
) -> Vec<Keyed> {
    let mut keys: Vec<Keyed> = vec![NO_KEY; pool.len()];
    let part_len = pool.len().div_ceil(threads.max(1)).max(1);
    let fill = |start: usize, part: &mut [Keyed]| {
        let mut buf = String::new();
        let mut none = 0;
        for (k, slot) in part.iter_mut().enumerate() {
            let i = start + k;
            if open[i] && key(tier, pool[i], &mut buf) {
                *slot = (hash(&buf), i as u32);
            } else {
                none += 1;
            }
        }
        none
    };
    let none: usize = std::thread::scope(|scope| {
        let mut parts = keys.chunks_mut(part_len).enumerate();
        let first = parts.next();
        let others: Vec<_> =
            (parts.map(|(p, part)| scope.spawn(move || fill(p * part_len, part)))).collect();
        let mut none = first.map_or(0, |(_, part)| fill(0, part));
        for other in others {
            none += other
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p));
        }
        none
    });
    // Positions are below `u32::MAX`: every `NO_KEY` sorts after the keys.
    keys.sort_unstable();
    keys.truncate(keys.len() - none);
    keys
}

/// A slot of [`keys_of`] whose record has no key.
const NO_KEY: Keyed = (u128::MAX, u32::MAX);

/// The keys found on both sides ([`keys_of`]), each as its records on either side.
fn common_keys<'k>(
    contacts: &'k [Keyed],
    accounts: &'k [Keyed],
) -> impl Iterator<Item = (&'k [Keyed], &'k [Keyed])> {
    let (mut c, mut a) = (0, 0);
    std::iter::from_fn(move || {
        while c < contacts.len() && a < accounts.len() {
            let key = contacts[c].0;
            match key.cmp(&accounts[a].0) {
                std::cmp::Ordering::Less => c += 1,
                std::cmp::Ordering::Greater => a += 1,
                std::cmp::Ordering::Equal => {
                    let cs = c + contacts[c..].partition_point(|k| k.0 == key);
                    let accs = a + accounts[a..].partition_point(|k| k.0 == key);
                    let group = (&contacts[c..cs], &accounts[a..accs]);
                    (c, a) = (cs, accs);
                    return Some(group);
                }
            }
        }
        None
    })
}

/// Matches by position in the pools, as (contact id, account id, tier) in contact id
/// order (a contact matches at most once). The engine's pools come in id order, and
/// then position order is id order: sorting a million matches by their ids would
/// chase two pointers per comparison.
fn by_contact_id<'p, R: RecordView + ?Sized>(
    mut matches: Vec<(u32, u32, usize)>,
    contacts: &[&'p R],
    accounts: &[&'p R],
) -> Vec<(&'p str, &'p str, usize)> {
    let id = |c: u32| -> &'p str { contacts[c as usize].record_id() };
    if contacts
        .windows(2)
        .all(|w| w[0].record_id() <= w[1].record_id())
    {
        matches.sort_unstable_by_key(|m| m.0);
    } else {
        matches.sort_unstable_by(|a, b| id(a.0).cmp(id(b.0)));
    }
    (matches.into_iter())
        .map(|(c, a, tier)| (id(c), accounts[a as usize].record_id(), tier))
        .collect()
}

/// Writes the record's key for `tier` into `buf`; false when a field is empty (empty
/// values never match). Each field in its normalised form (R20): VAT numbers compacted
/// with the record's country prefix, countries as codes, e-mail domains in any case,
/// phones as E.164 when the relation asks.
fn key(tier: &Tier, record: &(impl RecordView + ?Sized), buf: &mut String) -> bool {
    buf.clear();
    let mut country = None;
    for field in &tier.fields {
        // Text is borrowed: keys are made for every record on every tier.
        let owned;
        let text: &str = match record.text_named(field) {
            Some(text) => text,
            None => match record.value_of(field) {
                Some(other) => {
                    owned = other.to_cell();
                    &owned
                }
                None => return false,
            },
        };
        // Only a number without its prefix needs the country (most carry one).
        if Form::of(field.as_str()) == Form::Vat
            && text.trim_start().starts_with(|c: char| c.is_ascii_digit())
        {
            country = record
                .text_of(field::COUNTRY_CODE)
                .and_then(CountryCode::find);
        }
        if !tier.comparison.push_key(buf, field.as_str(), text, country) {
            return false;
        }
        // A separator that cannot occur in text keeps ("ab","c") apart from ("a","bc").
        buf.push('\u{1f}');
    }
    true
}

/// The record's keys on `tiers`, hashed, each with its tier's position: what it would
/// be matched on (tiers where a field is empty give none).
pub(crate) fn tier_keys<R: RecordView + ?Sized>(tiers: &[Tier], record: &R) -> Vec<(usize, u128)> {
    let mut buf = String::new();
    let mut keys = Vec::new();
    for (t, tier) in tiers.iter().enumerate() {
        if key(tier, record, &mut buf) {
            keys.push((t, hash(&buf)));
        }
    }
    keys
}

/// Whether `field` of `tier` compares the same holding `old` as holding `new`: a
/// change matching cannot tell from no change (case, spacing, R20). Without the
/// record's country, a VAT number without its prefix is compared as it stands.
pub(crate) fn same_key_value(tier: &Tier, field: &FieldName, old: &Value, new: &Value) -> bool {
    let form = |value: &Value| {
        let mut buf = String::new();
        let text = value.to_cell();
        (tier.comparison)
            .push_key(&mut buf, field.as_str(), &text, None)
            .then_some(buf)
    };
    form(old) == form(new)
}

fn hash(key: &str) -> u128 {
    xxhash_rust::xxh3::xxh3_128(key.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_model::normalise::Comparison;
    use tandem_model::{EntityKind, FieldName, Fields, Record, Value};

    fn tier(fields: &[&str]) -> Tier {
        Tier {
            fields: fields.iter().map(|f| FieldName::new(f)).collect(),
            comparison: Comparison::default(),
        }
    }

    fn rec(kind: EntityKind, id: &str, pairs: &[(&str, &str)]) -> Record {
        let mut f = Fields::new();
        for (k, v) in pairs {
            f.set(*k, Value::text(*v));
        }
        Record::new(kind, id, f)
    }

    fn contact(id: &str, pairs: &[(&str, &str)]) -> Record {
        rec(EntityKind::Contact, id, pairs)
    }

    fn customer(id: &str, pairs: &[(&str, &str)]) -> Record {
        rec(EntityKind::Customer, id, pairs)
    }

    struct Case {
        name: &'static str,
        tiers: Vec<Tier>,
        contacts: Vec<Record>,
        accounts: Vec<Record>,
        matches: Vec<(&'static str, &'static str, usize)>,
        ambiguous: Vec<(Vec<&'static str>, Vec<&'static str>)>,
        unmatched: Vec<&'static str>,
    }

    #[test]
    fn r4_match_tiers_table() {
        let cases = vec![
            Case {
                name: "vat first, case and blanks ignored",
                tiers: vec![tier(&["vat_registration_no"]), tier(&["email"])],
                contacts: vec![contact("C1", &[("vat_registration_no", " be0123 ")])],
                accounts: vec![customer("K1", &[("vat_registration_no", "BE0123")])],
                matches: vec![("C1", "K1", 1)],
                ambiguous: vec![],
                unmatched: vec![],
            },
            Case {
                name: "falls through to the second tier",
                tiers: vec![tier(&["vat_registration_no"]), tier(&["email"])],
                contacts: vec![contact("C1", &[("email", "a@x.be")])],
                accounts: vec![customer(
                    "K1",
                    &[("email", "A@X.BE"), ("vat_registration_no", "BE1")],
                )],
                matches: vec![("C1", "K1", 2)],
                ambiguous: vec![],
                unmatched: vec![],
            },
            Case {
                name: "empty values never match",
                tiers: vec![tier(&["email"])],
                contacts: vec![contact("C1", &[("email", "  ")])],
                accounts: vec![customer("K1", &[("email", " ")])],
                matches: vec![],
                ambiguous: vec![],
                unmatched: vec!["K1"],
            },
            Case {
                name: "two contacts for one account is ambiguous",
                tiers: vec![tier(&["email"]), tier(&["name"])],
                contacts: vec![
                    contact("C1", &[("email", "a@x.be"), ("name", "Acme")]),
                    contact("C2", &[("email", "a@x.be"), ("name", "Acme")]),
                ],
                accounts: vec![customer("K1", &[("email", "a@x.be"), ("name", "Acme")])],
                matches: vec![],
                ambiguous: vec![(vec!["C1", "C2"], vec!["K1"])],
                unmatched: vec![],
            },
            Case {
                name: "two accounts for one contact is ambiguous",
                tiers: vec![tier(&["email"])],
                contacts: vec![contact("C1", &[("email", "a@x.be")])],
                accounts: vec![
                    customer("K1", &[("email", "a@x.be")]),
                    customer("K2", &[("email", "a@x.be")]),
                ],
                matches: vec![],
                ambiguous: vec![(vec!["C1"], vec!["K1", "K2"])],
                unmatched: vec![],
            },
            Case {
                name: "all fields of a tier must agree",
                tiers: vec![tier(&["name", "post_code"])],
                contacts: vec![
                    contact("C1", &[("name", "Acme"), ("post_code", "9000")]),
                    contact("C2", &[("name", "Acme"), ("post_code", "1000")]),
                ],
                accounts: vec![customer("K1", &[("name", "ACME"), ("post_code", "1000")])],
                matches: vec![("C2", "K1", 1)],
                ambiguous: vec![],
                unmatched: vec![],
            },
            Case {
                name: "no tiers, nothing matches",
                tiers: vec![],
                contacts: vec![contact("C1", &[("email", "a@x.be")])],
                accounts: vec![customer("K1", &[("email", "a@x.be")])],
                matches: vec![],
                ambiguous: vec![],
                unmatched: vec!["K1"],
            },
            Case {
                name: "field boundaries are kept",
                tiers: vec![tier(&["name", "name_2"])],
                contacts: vec![contact("C1", &[("name", "ab"), ("name_2", "c")])],
                accounts: vec![customer("K1", &[("name", "a"), ("name_2", "bc")])],
                matches: vec![],
                ambiguous: vec![],
                unmatched: vec!["K1"],
            },
        ];
        for case in cases {
            let contacts: Vec<&Record> = case.contacts.iter().collect();
            let accounts: Vec<&Record> = case.accounts.iter().collect();
            let out = match_records("CUST", &case.tiers, (&contacts, &accounts), 1);
            // Keys made on several threads match as on one.
            let on_threads = match_records("CUST", &case.tiers, (&contacts, &accounts), 3);
            assert_eq!(on_threads, out, "{} on 3 threads", case.name);
            assert_eq!(out.matches, case.matches, "{}", case.name);
            let ambiguous: Vec<_> = out
                .ambiguous
                .iter()
                .map(|a| {
                    (
                        a.contact_ids.iter().map(String::as_str).collect::<Vec<_>>(),
                        a.account_ids.iter().map(String::as_str).collect::<Vec<_>>(),
                    )
                })
                .collect();
            assert_eq!(ambiguous, case.ambiguous, "{}", case.name);
            assert_eq!(out.unmatched_accounts, case.unmatched, "{}", case.name);
        }
    }

    #[test]
    fn r4_ambiguous_records_are_not_guessed_by_a_later_tier() {
        let tiers = vec![tier(&["email"]), tier(&["name"])];
        let contacts = [
            contact("C1", &[("email", "a@x.be"), ("name", "One")]),
            contact("C2", &[("email", "a@x.be"), ("name", "Two")]),
        ];
        let accounts = [customer("K1", &[("email", "a@x.be"), ("name", "One")])];
        let out = match_records(
            "CUST",
            &tiers,
            (
                &contacts.iter().collect::<Vec<_>>(),
                &accounts.iter().collect::<Vec<_>>(),
            ),
            1,
        );
        assert!(out.matches.is_empty());
        assert_eq!(out.ambiguous.len(), 1);
        assert_eq!(out.ambiguous[0].values, vec!["a@x.be".to_string()]);
    }

    #[test]
    fn exact_tiers_compare_bytes() {
        let exact = Tier {
            fields: vec![FieldName::new("name")],
            comparison: Comparison {
                exact: true,
                ..Comparison::default()
            },
        };
        let contacts = [contact("C1", &[("name", "Acme")])];
        let accounts = [customer("K1", &[("name", "ACME")])];
        let out = match_records(
            "CUST",
            &[exact],
            (
                &contacts.iter().collect::<Vec<_>>(),
                &accounts.iter().collect::<Vec<_>>(),
            ),
            1,
        );
        assert!(out.matches.is_empty());
    }

    fn matches(tier: Tier, contact: &[(&str, &str)], account: &[(&str, &str)]) -> bool {
        let contacts = [self::contact("C1", contact)];
        let accounts = [customer("K1", account)];
        let out = match_records(
            "CUST",
            &[tier],
            (
                &contacts.iter().collect::<Vec<_>>(),
                &accounts.iter().collect::<Vec<_>>(),
            ),
            1,
        );
        out.matches == vec![("C1", "K1", 1)]
    }

    #[test]
    fn r20_vat_numbers_match_across_formats() {
        let vat = || tier(&["vat_registration_no"]);
        assert!(matches(
            vat(),
            &[("vat_registration_no", "nl 0044 95445 b01")],
            &[("vat_registration_no", "NL004495445B01")],
        ));
        assert!(matches(
            vat(),
            &[("vat_registration_no", "BE 0403.019.261")],
            &[("vat_registration_no", "be-0403-019-261")],
        ));
        // A number without its prefix takes the record's country's.
        assert!(matches(
            vat(),
            &[
                ("vat_registration_no", "0044.95445.B01"),
                ("country_code", "Netherlands")
            ],
            &[("vat_registration_no", "NL004495445B01")],
        ));
        assert!(!matches(
            vat(),
            &[("vat_registration_no", "NL004495445B01")],
            &[("vat_registration_no", "NL004495445B02")],
        ));
    }

    #[test]
    fn r20_country_names_match_their_codes() {
        let t = || tier(&["name", "country_code"]);
        assert!(matches(
            t(),
            &[("name", "Acme"), ("country_code", "Schweiz")],
            &[("name", "Acme"), ("country_code", "CH")],
        ));
        assert!(matches(
            t(),
            &[("name", "Acme"), ("country_code", "USA")],
            &[("name", "Acme"), ("country_code", "United States")],
        ));
        assert!(!matches(
            t(),
            &[("name", "Acme"), ("country_code", "Germany")],
            &[("name", "Acme"), ("country_code", "AT")],
        ));
    }

    #[test]
    fn r20_email_domains_match_in_any_case_even_in_exact_tiers() {
        let exact = || Tier {
            fields: vec![FieldName::new("email")],
            comparison: Comparison {
                exact: true,
                ..Comparison::default()
            },
        };
        assert!(matches(
            exact(),
            &[("email", "info@Acme.EXAMPLE")],
            &[("email", "info@acme.example")],
        ));
        // The local part of an address is the owner's: exact tiers keep its case.
        assert!(!matches(
            exact(),
            &[("email", "Info@acme.example")],
            &[("email", "info@acme.example")],
        ));
    }

    #[test]
    fn r20_phones_match_as_e164_when_the_relation_asks() {
        let phone = |region: Option<&str>| Tier {
            fields: vec![FieldName::new("phone")],
            comparison: Comparison {
                exact: false,
                phone_region: region.map(|r| r.parse().unwrap()),
            },
        };
        let contact = &[("phone", "09 123 45 67")];
        let account = &[("phone", "+32 (0)9 123 45 67")];
        assert!(matches(phone(Some("BE")), contact, account));
        assert!(!matches(phone(None), contact, account));
        // Read in another region, the national number is another number.
        assert!(!matches(phone(Some("NL")), contact, account));
    }

    /// R4 against a plain model: per tier, the open records grouped by their key as
    /// text (no hashing, no sorting); a key on both sides closes every record that
    /// holds it, and makes a match only one to one. Values from a small set, so keys
    /// are shared, ambiguous and empty often.
    mod model {
        use super::*;
        use proptest::prelude::*;
        use std::collections::BTreeMap;

        type Outcome = (
            Vec<(String, String, usize)>,
            Vec<(Vec<String>, Vec<String>)>,
            Vec<String>,
        );

        fn plain(tiers: &[Tier], contacts: &[Record], accounts: &[Record]) -> Outcome {
            let (mut c_open, mut a_open) = (vec![true; contacts.len()], vec![true; accounts.len()]);
            let (mut matches, mut ambiguous) = (Vec::new(), Vec::new());
            let mut buf = String::new();
            for (t, tier) in tiers.iter().enumerate() {
                let mut groups: BTreeMap<String, (Vec<usize>, Vec<usize>)> = BTreeMap::new();
                for (i, c) in contacts.iter().enumerate() {
                    if c_open[i] && key(tier, &c, &mut buf) {
                        groups.entry(buf.clone()).or_default().0.push(i);
                    }
                }
                for (i, a) in accounts.iter().enumerate() {
                    if a_open[i] && key(tier, &a, &mut buf) {
                        groups.entry(buf.clone()).or_default().1.push(i);
                    }
                }
                for (cs, accs) in groups.into_values() {
                    if cs.is_empty() || accs.is_empty() {
                        continue;
                    }
                    cs.iter().for_each(|&c| c_open[c] = false);
                    accs.iter().for_each(|&a| a_open[a] = false);
                    let ids = |pool: &[Record], at: &[usize]| {
                        let mut ids: Vec<String> = at.iter().map(|&i| pool[i].id.clone()).collect();
                        ids.sort();
                        ids
                    };
                    match (cs.as_slice(), accs.as_slice()) {
                        ([c], [a]) => {
                            matches.push((contacts[*c].id.clone(), accounts[*a].id.clone(), t + 1))
                        }
                        _ => ambiguous.push((ids(contacts, &cs), ids(accounts, &accs))),
                    }
                }
            }
            matches.sort();
            ambiguous.sort();
            let unmatched = (accounts.iter().zip(&a_open))
                .filter(|(_, open)| **open)
                .map(|(a, _)| a.id.clone())
                .collect();
            (matches, ambiguous, unmatched)
        }

        fn records(kind: EntityKind, prefix: &'static str) -> impl Strategy<Value = Vec<Record>> {
            let value = |set: &'static [&'static str]| prop::sample::select(set);
            let one = (
                value(&["", "BE1", "be 1", "BE2", "NL3"]),
                value(&["", "a@x.be", "A@X.BE", "b@x.be"]),
                value(&["", "Acme", "Beta"]),
            );
            prop::collection::vec(one, 0..12).prop_map(move |rows| {
                (rows.into_iter().enumerate())
                    .map(|(i, (vat, email, name))| {
                        let pairs = [
                            ("vat_registration_no", vat),
                            ("email", email),
                            ("name", name),
                        ];
                        let set: Vec<(&str, &str)> =
                            pairs.into_iter().filter(|(_, v)| !v.is_empty()).collect();
                        rec(kind, &format!("{prefix}{i:02}"), &set)
                    })
                    .collect()
            })
        }

        proptest! {
            #[test]
            fn r4_matching_finds_what_grouping_by_key_finds(
                contacts in records(EntityKind::Contact, "C"),
                accounts in records(EntityKind::Customer, "K"),
                threads in 1..4usize,
            ) {
                let tiers = [tier(&["vat_registration_no"]), tier(&["email"]), tier(&["name"])];
                let (cs, accs): (Vec<&Record>, Vec<&Record>) =
                    (contacts.iter().collect(), accounts.iter().collect());
                let out = match_records("CUST", &tiers, (&cs, &accs), threads);
                let mut matches: Vec<(String, String, usize)> = (out.matches.iter())
                    .map(|(c, a, t)| (c.to_string(), a.to_string(), *t))
                    .collect();
                matches.sort();
                let mut ambiguous: Vec<(Vec<String>, Vec<String>)> = (out.ambiguous.iter())
                    .map(|a| (a.contact_ids.clone(), a.account_ids.clone()))
                    .collect();
                ambiguous.sort();
                let got = (matches, ambiguous, out.unmatched_accounts.clone());
                prop_assert_eq!(got, plain(&tiers, &contacts, &accounts));
            }
        }
    }
}
