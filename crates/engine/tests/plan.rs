//! Table-driven tests of the pure planning core: records and links in, actions out.

use std::collections::{BTreeMap, BTreeSet};

use tandem_engine::plan::{AccountInput, Plan, PlanInput, UnlinkReason, plan};
use tandem_engine::{ConflictPolicy, ContactsConfig, InitialSide, MatchTier, RelationConfig, Relations, SyncConfig};
use tandem_model::{EntityKind, Fields, Record, Timestamp, Value};
use tandem_state::Link;

fn relation(kind: EntityKind) -> RelationConfig {
    RelationConfig {
        kind,
        connector: format!("erp_{kind}"),
        create_contacts: false,
        match_tiers: vec![
            MatchTier::Fields(vec!["vat_registration_no".into()]),
            MatchTier::Fields(vec!["email".into()]),
        ],
        conflict: ConflictPolicy::ContactWins,
        initial: InitialSide::Contact,
        fields: None,
        preserve: None,
    }
}

/// CUST, VEND and BANK, customised by `edit`.
fn relations(edit: impl FnOnce(&mut BTreeMap<String, RelationConfig>)) -> Relations {
    let mut map = BTreeMap::new();
    map.insert("CUST".to_string(), relation(EntityKind::Customer));
    map.insert("VEND".to_string(), relation(EntityKind::Vendor));
    map.insert("BANK".to_string(), relation(EntityKind::BankAccount));
    edit(&mut map);
    let config = SyncConfig::new(
        ContactsConfig {
            connector: "crm".into(),
            preserve: None,
        },
        map,
    )
    .unwrap();
    Relations::from_config(&config)
}

fn fields(pairs: &[(&str, &str)]) -> Fields {
    let mut f = Fields::new();
    for (k, v) in pairs {
        f.set(*k, Value::text(*v));
    }
    f
}

fn record(kind: EntityKind, id: &str, pairs: &[(&str, &str)]) -> Record {
    Record {
        version: Some(format!("{id}-v1")),
        ..Record::new(kind, id, fields(pairs))
    }
}

fn link(code: &str, contact: &str, account: &str, baseline: &[(&str, &str)]) -> Link {
    Link {
        code: code.into(),
        contact_id: contact.into(),
        account_id: account.into(),
        baseline: fields(baseline),
        contact_version: Some(format!("{contact}-v0")),
        account_version: Some(format!("{account}-v0")),
        last_error: None,
        failure_count: 0,
        linked_at: Timestamp(0),
        synced_at: Timestamp(0),
    }
}

/// Builds a plan input; relations in `Relations` are sorted by code: BANK, CUST, VEND.
#[derive(Default)]
struct Input {
    contacts: Vec<Record>,
    deleted_contacts: Vec<&'static str>,
    accounts: Vec<Record>,
    deleted_accounts: Vec<(EntityKind, &'static str)>,
    links: Vec<Link>,
}

fn run(relations: &Relations, input: Input) -> Plan {
    let mut accounts: Vec<AccountInput> = relations.relations.iter().map(|_| AccountInput::default()).collect();
    for a in input.accounts {
        let r = relations.relations.iter().position(|r| r.kind == a.kind).unwrap();
        accounts[r].records.insert(a.id.clone(), a);
    }
    for (kind, id) in input.deleted_accounts {
        let r = relations.relations.iter().position(|r| r.kind == kind).unwrap();
        accounts[r].deleted.insert(id.to_string());
    }
    let link_counts = relations
        .relations
        .iter()
        .map(|r| input.links.iter().filter(|l| l.code == r.code).count() as u64)
        .collect();
    let input = PlanInput {
        contacts: input.contacts.into_iter().map(|c| (c.id.clone(), c)).collect(),
        deleted_contacts: input.deleted_contacts.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>(),
        accounts,
        links: input.links,
        link_counts,
    };
    plan(relations, &input)
}

/// (record id, field, new value) of every write in the plan, sorted.
fn writes(plan: &Plan) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for hub in &plan.hubs {
        for c in &hub.contact_changes {
            out.push((hub.contact_id.clone(), c.field.to_string(), c.new.to_cell()));
        }
        for pair in &hub.pairs {
            for c in &pair.account_changes {
                out.push((pair.account_id.clone(), c.field.to_string(), c.new.to_cell()));
            }
        }
    }
    out.sort();
    out
}

fn w(id: &str, field: &str, value: &str) -> (String, String, String) {
    (id.into(), field.into(), value.into())
}

const BASE: &[(&str, &str)] = &[("name", "Acme"), ("phone", "1"), ("vat_registration_no", "BE1")];

#[test]
fn r14_nothing_changed_plans_nothing() {
    let rels = relations(|_| {});
    let plan = run(
        &rels,
        Input {
            contacts: vec![record(EntityKind::Contact, "C1", BASE)],
            accounts: vec![record(EntityKind::Customer, "K1", BASE)],
            links: vec![link("CUST", "C1", "K1", BASE)],
            ..Input::default()
        },
    );
    assert!(writes(&plan).is_empty());
    assert_eq!(plan.write_count(), 0);
}

#[test]
fn r7_account_change_reaches_contact_and_other_accounts() {
    let rels = relations(|_| {});
    let changed = &[("name", "Acme"), ("phone", "2"), ("vat_registration_no", "BE1")];
    let plan = run(
        &rels,
        Input {
            // The contact and the vendor were not read: unchanged since the baseline.
            accounts: vec![record(EntityKind::Customer, "K1", changed)],
            links: vec![link("CUST", "C1", "K1", BASE), link("VEND", "C1", "V1", BASE), link("BANK", "C1", "B1", BASE)],
            ..Input::default()
        },
    );
    assert_eq!(writes(&plan), vec![w("B1", "phone", "2"), w("C1", "phone", "2"), w("V1", "phone", "2")]);
    let hub = &plan.hubs[0];
    assert_eq!(hub.contact_version.as_deref(), Some("C1-v0"));
    let cust = plan.counts.iter().find(|c| c.code == "CUST").unwrap();
    assert_eq!(cust.updated, 1);
}

#[test]
fn r7_contact_change_reaches_every_account() {
    let rels = relations(|_| {});
    let plan = run(
        &rels,
        Input {
            contacts: vec![record(EntityKind::Contact, "C1", &[("name", "Acme NV"), ("phone", "1"), ("vat_registration_no", "BE1")])],
            links: vec![link("CUST", "C1", "K1", BASE), link("VEND", "C1", "V1", BASE)],
            ..Input::default()
        },
    );
    assert_eq!(writes(&plan), vec![w("K1", "name", "Acme NV"), w("V1", "name", "Acme NV")]);
}

#[test]
fn r8_bank_accounts_do_not_receive_vat_numbers() {
    let rels = relations(|_| {});
    let plan = run(
        &rels,
        Input {
            contacts: vec![record(EntityKind::Contact, "C1", &[("name", "Acme"), ("phone", "1"), ("vat_registration_no", "BE2")])],
            links: vec![link("CUST", "C1", "K1", BASE), link("BANK", "C1", "B1", &[("name", "Acme"), ("phone", "1")])],
            ..Input::default()
        },
    );
    assert_eq!(writes(&plan), vec![w("K1", "vat_registration_no", "BE2")]);
}

#[test]
fn r8_preserved_fields_are_never_overwritten() {
    // Customers preserve currency_code by default: the ERP owns it.
    let rels = relations(|_| {});
    let base = &[("name", "Acme"), ("currency_code", "EUR")];
    let plan = run(
        &rels,
        Input {
            contacts: vec![record(EntityKind::Contact, "C1", &[("name", "Acme"), ("currency_code", "USD")])],
            accounts: vec![record(EntityKind::Customer, "K1", base)],
            links: vec![link("CUST", "C1", "K1", base)],
            ..Input::default()
        },
    );
    assert_eq!(writes(&plan), vec![w("C1", "currency_code", "EUR")]);
}

#[test]
fn r15_conflict_policies() {
    let cases = [
        (ConflictPolicy::ContactWins, None, None, "contact", "2"),
        (ConflictPolicy::AccountWins, None, None, "CUST", "3"),
        (ConflictPolicy::Newest, Some(10), Some(20), "CUST", "3"),
        (ConflictPolicy::Newest, Some(20), Some(10), "contact", "2"),
        (ConflictPolicy::Newest, None, Some(10), "contact", "2"),
    ];
    for (policy, contact_time, account_time, winner, value) in cases {
        let rels = relations(|m| m.get_mut("CUST").unwrap().conflict = policy);
        let mut contact = record(EntityKind::Contact, "C1", &[("name", "Acme"), ("phone", "2"), ("vat_registration_no", "BE1")]);
        contact.modified_at = contact_time.map(Timestamp);
        let mut account = record(EntityKind::Customer, "K1", &[("name", "Acme"), ("phone", "3"), ("vat_registration_no", "BE1")]);
        account.modified_at = account_time.map(Timestamp);
        let plan = run(
            &rels,
            Input {
                contacts: vec![contact],
                accounts: vec![account],
                links: vec![link("CUST", "C1", "K1", BASE)],
                ..Input::default()
            },
        );
        let hub = &plan.hubs[0];
        assert_eq!(hub.conflicts.len(), 1, "{policy:?}");
        assert_eq!(hub.conflicts[0].winner, winner, "{policy:?}");
        assert_eq!(hub.conflicts[0].value.to_cell(), value, "{policy:?}");
        let expected = if winner == "contact" { w("K1", "phone", value) } else { w("C1", "phone", value) };
        assert_eq!(writes(&plan), vec![expected], "{policy:?}");
        assert_eq!(plan.counts.iter().find(|c| c.code == "CUST").unwrap().conflicts, 1);
    }
}

#[test]
fn r15_different_fields_merge_without_conflict() {
    let rels = relations(|_| {});
    let plan = run(
        &rels,
        Input {
            contacts: vec![record(EntityKind::Contact, "C1", &[("name", "Acme NV"), ("phone", "1"), ("vat_registration_no", "BE1")])],
            accounts: vec![record(EntityKind::Customer, "K1", &[("name", "Acme"), ("phone", "9"), ("vat_registration_no", "BE1")])],
            links: vec![link("CUST", "C1", "K1", BASE)],
            ..Input::default()
        },
    );
    assert!(plan.hubs[0].conflicts.is_empty());
    assert_eq!(writes(&plan), vec![w("C1", "phone", "9"), w("K1", "name", "Acme NV")]);
}

#[test]
fn r14_same_change_on_both_sides_is_no_conflict_and_no_write() {
    let rels = relations(|_| {});
    let same = &[("name", "Acme"), ("phone", "7"), ("vat_registration_no", "BE1")];
    let plan = run(
        &rels,
        Input {
            contacts: vec![record(EntityKind::Contact, "C1", same)],
            accounts: vec![record(EntityKind::Customer, "K1", same)],
            links: vec![link("CUST", "C1", "K1", BASE)],
            ..Input::default()
        },
    );
    assert!(writes(&plan).is_empty());
    // The new baseline is stored.
    assert_eq!(plan.hubs[0].pairs[0].baseline, fields(same));
}

#[test]
fn r4_new_links_start_from_the_contact_and_fill_empties() {
    let rels = relations(|_| {});
    let plan = run(
        &rels,
        Input {
            contacts: vec![record(EntityKind::Contact, "C1", &[("name", "Acme"), ("vat_registration_no", "BE1")])],
            accounts: vec![record(
                EntityKind::Customer,
                "K1",
                &[("name", "ACME NV"), ("phone", "5"), ("vat_registration_no", "be1")],
            )],
            ..Input::default()
        },
    );
    assert_eq!(
        writes(&plan),
        vec![w("C1", "phone", "5"), w("K1", "name", "Acme"), w("K1", "vat_registration_no", "BE1")]
    );
    assert_eq!(plan.hubs[0].pairs[0].matched_by_tier, Some(1));
    assert_eq!(plan.counts.iter().find(|c| c.code == "CUST").unwrap().linked, 1);
}

#[test]
fn r4_initial_account_takes_the_account_values() {
    let rels = relations(|m| m.get_mut("CUST").unwrap().initial = InitialSide::Account);
    let plan = run(
        &rels,
        Input {
            contacts: vec![record(EntityKind::Contact, "C1", &[("name", "Acme"), ("city", "Gent"), ("email", "a@x.be")])],
            accounts: vec![record(EntityKind::Customer, "K1", &[("name", "ACME NV"), ("email", "a@x.be")])],
            ..Input::default()
        },
    );
    // The account's name wins; its empty city does not clear the contact's.
    assert_eq!(writes(&plan), vec![w("C1", "name", "ACME NV"), w("K1", "city", "Gent")]);
}

#[test]
fn r2_linked_records_are_not_matched_again() {
    let rels = relations(|_| {});
    let plan = run(
        &rels,
        Input {
            contacts: vec![
                record(EntityKind::Contact, "C1", &[("email", "a@x.be")]),
                record(EntityKind::Contact, "C2", &[("email", "b@x.be")]),
            ],
            accounts: vec![
                // K2 matches C1 by e-mail, but C1 already is customer K1.
                record(EntityKind::Customer, "K2", &[("email", "a@x.be")]),
                // V1 matches C1: one contact may also be a vendor.
                record(EntityKind::Vendor, "V1", &[("email", "a@x.be")]),
            ],
            links: vec![link("CUST", "C1", "K1", &[("email", "a@x.be")])],
            ..Input::default()
        },
    );
    let new: Vec<_> = plan
        .hubs
        .iter()
        .flat_map(|h| h.pairs.iter().filter(|p| p.matched_by_tier.is_some()).map(move |p| (h.contact_id.clone(), p.account_id.clone())))
        .collect();
    assert_eq!(new, vec![("C1".to_string(), "V1".to_string())]);
}

#[test]
fn r3_only_companies_and_lone_persons_hold_relations() {
    let rels = relations(|_| {});
    let plan = run(
        &rels,
        Input {
            contacts: vec![
                record(EntityKind::Contact, "P1", &[("contact_type", "person"), ("company_id", "C9"), ("email", "p1@x.be")]),
                record(EntityKind::Contact, "P2", &[("contact_type", "person"), ("email", "p2@x.be")]),
            ],
            accounts: vec![
                record(EntityKind::Customer, "K1", &[("email", "p1@x.be")]),
                record(EntityKind::Customer, "K2", &[("email", "p2@x.be")]),
                record(EntityKind::Vendor, "V2", &[("email", "p2@x.be")]),
            ],
            ..Input::default()
        },
    );
    let linked: Vec<_> = plan.hubs.iter().flat_map(|h| h.pairs.iter().map(move |p| (h.contact_id.as_str(), p.account_id.as_str()))).collect();
    assert_eq!(linked, vec![("P2", "K2")]);
}

#[test]
fn r6_contacts_are_created_only_for_unmatched_accounts() {
    let rels = relations(|m| m.get_mut("VEND").unwrap().create_contacts = true);
    let plan = run(
        &rels,
        Input {
            contacts: vec![
                record(EntityKind::Contact, "C1", &[("vat_registration_no", "BE1")]),
                record(EntityKind::Contact, "C2", &[("email", "x@x.be")]),
                record(EntityKind::Contact, "C3", &[("email", "x@x.be")]),
            ],
            accounts: vec![
                record(EntityKind::Vendor, "V1", &[("vat_registration_no", "BE1")]),
                record(EntityKind::Vendor, "V2", &[("name", "New Supplier"), ("iban", "BE68")]),
                // Ambiguous: reported, never given a new contact.
                record(EntityKind::Vendor, "V3", &[("email", "x@x.be")]),
                // Customers without a contact are left alone: CUST does not create.
                record(EntityKind::Customer, "K1", &[("name", "Lone Customer")]),
            ],
            ..Input::default()
        },
    );
    assert_eq!(plan.creates.len(), 1);
    assert_eq!(plan.creates[0].account_id, "V2");
    assert_eq!(plan.creates[0].fields, fields(&[("name", "New Supplier"), ("contact_type", "company")]));
    assert_eq!(plan.ambiguous.len(), 1);
    assert_eq!(plan.ambiguous[0].account_ids, vec!["V3".to_string()]);
}

#[test]
fn r12_r13_deletes_drop_only_the_link() {
    let rels = relations(|_| {});
    let plan = run(
        &rels,
        Input {
            deleted_contacts: vec!["C1"],
            deleted_accounts: vec![(EntityKind::Vendor, "V2")],
            links: vec![link("CUST", "C1", "K1", BASE), link("VEND", "C2", "V2", BASE), link("CUST", "C2", "K2", BASE)],
            ..Input::default()
        },
    );
    let unlinks: Vec<_> = plan.unlinks.iter().map(|u| (u.code.as_str(), u.contact_id.as_str(), u.reason)).collect();
    assert_eq!(
        unlinks,
        vec![("CUST", "C1", UnlinkReason::ContactDeleted), ("VEND", "C2", UnlinkReason::AccountDeleted)]
    );
    assert_eq!(plan.write_count(), 0, "a delete is never carried to the other side");
}

#[test]
fn r1_links_of_unconfigured_codes_are_left_alone() {
    let rels = relations(|m| {
        m.remove("VEND");
    });
    let plan = run(
        &rels,
        Input {
            contacts: vec![record(EntityKind::Contact, "C1", &[("name", "Acme NV")])],
            links: vec![link("VEND", "C1", "V1", &[("name", "Acme")])],
            ..Input::default()
        },
    );
    assert!(plan.hubs.is_empty());
    assert!(plan.counts.iter().all(|c| c.code != "VEND"));
}
