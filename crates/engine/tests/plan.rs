//! Table-driven tests of the pure planning core: records and links in, actions out.

use std::collections::{BTreeMap, BTreeSet};

use tandem_engine::plan::{AccountInput, NewLink, Plan, PlanInput, UnlinkReason, plan};
use tandem_engine::{
    ConflictPolicy, ContactsConfig, InitialSide, MatchNormalise, MatchTier, RelationConfig,
    Relations, SyncConfig,
};
use tandem_model::{EntityKind, Fields, Record, Timestamp, Value};
use tandem_state::Link;

fn relation(kind: EntityKind) -> RelationConfig {
    RelationConfig {
        match_tiers: vec![
            MatchTier::Fields(vec!["vat_registration_no".into()]),
            MatchTier::Fields(vec!["email".into()]),
        ],
        ..RelationConfig::new(kind, &format!("erp_{kind}"))
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
        parked: false,
        linked_at: Timestamp(0),
        synced_at: Timestamp(0),
        intent: None,
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
    let mut accounts: Vec<AccountInput> = relations
        .relations
        .iter()
        .map(|_| AccountInput::default())
        .collect();
    for a in input.accounts {
        let r = relations
            .relations
            .iter()
            .position(|r| r.kind == a.kind)
            .unwrap();
        accounts[r].records.insert(a);
    }
    for (kind, id) in input.deleted_accounts {
        let r = relations
            .relations
            .iter()
            .position(|r| r.kind == kind)
            .unwrap();
        accounts[r].deleted.insert(id.to_string());
    }
    let link_counts = relations
        .relations
        .iter()
        .map(|r| input.links.iter().filter(|l| l.code == r.code).count() as u64)
        .collect();
    let input = PlanInput {
        contacts: input
            .contacts
            .into_iter()
            .map(|c| (c.id.clone(), c))
            .collect(),
        deleted_contacts: input
            .deleted_contacts
            .iter()
            .map(|s| s.to_string())
            .collect::<BTreeSet<_>>(),
        accounts,
        links: input.links,
        link_counts,
        ..PlanInput::default()
    };
    plan(relations, &input)
}

/// (record id, field, new value) of every write in the plan but the R9 reflection of
/// codes on the contact, sorted.
fn writes(plan: &Plan) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for hub in &plan.hubs {
        for c in hub
            .contact_changes
            .iter()
            .filter(|c| c.field.as_str() != "business_relations")
        {
            out.push((hub.contact_id.clone(), c.field.to_string(), c.new.to_cell()));
        }
        for pair in &hub.pairs {
            for c in &pair.account_changes {
                out.push((
                    pair.account_id.clone(),
                    c.field.to_string(),
                    c.new.to_cell(),
                ));
            }
        }
    }
    out.sort();
    out
}

fn w(id: &str, field: &str, value: &str) -> (String, String, String) {
    (id.into(), field.into(), value.into())
}

const BASE: &[(&str, &str)] = &[
    ("name", "Acme"),
    ("phone", "1"),
    ("vat_registration_no", "BE1"),
];

#[test]
fn r14_nothing_changed_plans_nothing() {
    let rels = relations(|_| {});
    let mut contact = record(EntityKind::Contact, "C1", BASE);
    contact
        .fields
        .set("business_relations", Value::list(vec!["CUST".into()]));
    let plan = run(
        &rels,
        Input {
            contacts: vec![contact],
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
    let changed = &[
        ("name", "Acme"),
        ("phone", "2"),
        ("vat_registration_no", "BE1"),
    ];
    let plan = run(
        &rels,
        Input {
            // The contact and the vendor were not read: unchanged since the baseline.
            accounts: vec![record(EntityKind::Customer, "K1", changed)],
            links: vec![
                link("CUST", "C1", "K1", BASE),
                link("VEND", "C1", "V1", BASE),
                link("BANK", "C1", "B1", BASE),
            ],
            ..Input::default()
        },
    );
    assert_eq!(
        writes(&plan),
        vec![
            w("B1", "phone", "2"),
            w("C1", "phone", "2"),
            w("V1", "phone", "2")
        ]
    );
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
            contacts: vec![record(
                EntityKind::Contact,
                "C1",
                &[
                    ("name", "Acme NV"),
                    ("phone", "1"),
                    ("vat_registration_no", "BE1"),
                ],
            )],
            links: vec![
                link("CUST", "C1", "K1", BASE),
                link("VEND", "C1", "V1", BASE),
            ],
            ..Input::default()
        },
    );
    assert_eq!(
        writes(&plan),
        vec![w("K1", "name", "Acme NV"), w("V1", "name", "Acme NV")]
    );
}

#[test]
fn r8_bank_accounts_do_not_receive_vat_numbers() {
    let rels = relations(|_| {});
    let plan = run(
        &rels,
        Input {
            contacts: vec![record(
                EntityKind::Contact,
                "C1",
                &[
                    ("name", "Acme"),
                    ("phone", "1"),
                    ("vat_registration_no", "BE2"),
                ],
            )],
            links: vec![
                link("CUST", "C1", "K1", BASE),
                link("BANK", "C1", "B1", &[("name", "Acme"), ("phone", "1")]),
            ],
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
            contacts: vec![record(
                EntityKind::Contact,
                "C1",
                &[("name", "Acme"), ("currency_code", "USD")],
            )],
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
        let mut contact = record(
            EntityKind::Contact,
            "C1",
            &[
                ("name", "Acme"),
                ("phone", "2"),
                ("vat_registration_no", "BE1"),
            ],
        );
        contact.modified_at = contact_time.map(Timestamp);
        let mut account = record(
            EntityKind::Customer,
            "K1",
            &[
                ("name", "Acme"),
                ("phone", "3"),
                ("vat_registration_no", "BE1"),
            ],
        );
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
        assert_eq!(hub.conflicts[0].winner.as_str(), winner, "{policy:?}");
        assert_eq!(hub.conflicts[0].value.to_cell(), value, "{policy:?}");
        let expected = if winner == "contact" {
            w("K1", "phone", value)
        } else {
            w("C1", "phone", value)
        };
        assert_eq!(writes(&plan), vec![expected], "{policy:?}");
        assert_eq!(
            plan.counts
                .iter()
                .find(|c| c.code == "CUST")
                .unwrap()
                .conflicts,
            1
        );
    }
}

#[test]
fn r15_different_fields_merge_without_conflict() {
    let rels = relations(|_| {});
    let plan = run(
        &rels,
        Input {
            contacts: vec![record(
                EntityKind::Contact,
                "C1",
                &[
                    ("name", "Acme NV"),
                    ("phone", "1"),
                    ("vat_registration_no", "BE1"),
                ],
            )],
            accounts: vec![record(
                EntityKind::Customer,
                "K1",
                &[
                    ("name", "Acme"),
                    ("phone", "9"),
                    ("vat_registration_no", "BE1"),
                ],
            )],
            links: vec![link("CUST", "C1", "K1", BASE)],
            ..Input::default()
        },
    );
    assert!(plan.hubs[0].conflicts.is_empty());
    assert_eq!(
        writes(&plan),
        vec![w("C1", "phone", "9"), w("K1", "name", "Acme NV")]
    );
}

#[test]
fn r14_same_change_on_both_sides_is_no_conflict_and_no_write() {
    let rels = relations(|_| {});
    let same = &[
        ("name", "Acme"),
        ("phone", "7"),
        ("vat_registration_no", "BE1"),
    ];
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
    assert_eq!(plan.hubs[0].pairs[0].baseline.unpack(), fields(same));
}

#[test]
fn r4_new_links_start_from_the_contact_and_fill_empties() {
    let rels = relations(|_| {});
    let plan = run(
        &rels,
        Input {
            contacts: vec![record(
                EntityKind::Contact,
                "C1",
                &[("name", "Acme"), ("vat_registration_no", "BE1")],
            )],
            accounts: vec![record(
                EntityKind::Customer,
                "K1",
                &[
                    ("name", "ACME NV"),
                    ("phone", "5"),
                    ("vat_registration_no", "be1"),
                ],
            )],
            ..Input::default()
        },
    );
    // `be1` is `BE1` in another spelling: no change (R20).
    assert_eq!(
        writes(&plan),
        vec![w("C1", "phone", "5"), w("K1", "name", "Acme")]
    );
    assert_eq!(
        plan.hubs[0].pairs[0].new_link,
        Some(NewLink::Match { tier: 1 })
    );
    assert_eq!(
        plan.counts
            .iter()
            .find(|c| c.code == "CUST")
            .unwrap()
            .linked,
        1
    );
}

#[test]
fn r4_initial_account_takes_the_account_values() {
    let rels = relations(|m| m.get_mut("CUST").unwrap().initial = InitialSide::Account);
    let plan = run(
        &rels,
        Input {
            contacts: vec![record(
                EntityKind::Contact,
                "C1",
                &[("name", "Acme"), ("city", "Gent"), ("email", "a@x.be")],
            )],
            accounts: vec![record(
                EntityKind::Customer,
                "K1",
                &[("name", "ACME NV"), ("email", "a@x.be")],
            )],
            ..Input::default()
        },
    );
    // The account's name wins; its empty city does not clear the contact's.
    assert_eq!(
        writes(&plan),
        vec![w("C1", "name", "ACME NV"), w("K1", "city", "Gent")]
    );
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
        .flat_map(|h| {
            h.pairs
                .iter()
                .filter(|p| p.new_link.is_some())
                .map(move |p| (h.contact_id.clone(), p.account_id.clone()))
        })
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
                record(
                    EntityKind::Contact,
                    "P1",
                    &[
                        ("contact_type", "person"),
                        ("company_id", "C9"),
                        ("email", "p1@x.be"),
                    ],
                ),
                record(
                    EntityKind::Contact,
                    "P2",
                    &[("contact_type", "person"), ("email", "p2@x.be")],
                ),
            ],
            accounts: vec![
                record(EntityKind::Customer, "K1", &[("email", "p1@x.be")]),
                record(EntityKind::Customer, "K2", &[("email", "p2@x.be")]),
                record(EntityKind::Vendor, "V2", &[("email", "p2@x.be")]),
            ],
            ..Input::default()
        },
    );
    let linked: Vec<_> = plan
        .hubs
        .iter()
        .flat_map(|h| {
            h.pairs
                .iter()
                .map(move |p| (h.contact_id.as_str(), p.account_id.as_str()))
        })
        .collect();
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
                record(
                    EntityKind::Vendor,
                    "V2",
                    &[("name", "New Supplier"), ("iban", "BE68")],
                ),
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
    let mut expected = fields(&[("name", "New Supplier"), ("contact_type", "company")]);
    expected.set("business_relations", Value::list(vec!["VEND".into()]));
    assert_eq!(
        plan.creates[0].fields.unpack(),
        expected,
        "R9: the new contact shows its code"
    );
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
            links: vec![
                link("CUST", "C1", "K1", BASE),
                link("VEND", "C2", "V2", BASE),
                link("CUST", "C2", "K2", BASE),
            ],
            ..Input::default()
        },
    );
    let unlinks: Vec<_> = plan
        .unlinks
        .iter()
        .map(|u| (u.code.as_str(), u.contact_id.as_str(), u.reason))
        .collect();
    assert_eq!(
        unlinks,
        vec![
            ("CUST", "C1", UnlinkReason::ContactDeleted),
            ("VEND", "C2", UnlinkReason::AccountDeleted)
        ]
    );
    assert_eq!(
        plan.write_count(),
        0,
        "a delete is never carried to the other side"
    );
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

fn codes(plan: &Plan, contact: &str) -> Option<Vec<String>> {
    plan.hubs
        .iter()
        .find(|h| h.contact_id == contact)?
        .contact_changes
        .iter()
        .find(|c| c.field.as_str() == "business_relations")
        .map(|c| match &c.new {
            Value::List(l) => l.to_vec(),
            other => vec![other.to_cell()],
        })
}

#[test]
fn r9_contact_shows_the_codes_it_holds_and_keeps_other_categories() {
    let rels = relations(|_| {});
    let mut c1 = record(
        EntityKind::Contact,
        "C1",
        &[("name", "Acme"), ("vat_registration_no", "BE1")],
    );
    c1.fields
        .set("business_relations", Value::list(vec!["VIP".into()]));
    let plan = run(
        &rels,
        Input {
            contacts: vec![c1],
            accounts: vec![record(
                EntityKind::Vendor,
                "V1",
                &[("name", "Acme"), ("vat_registration_no", "BE1")],
            )],
            links: vec![link(
                "CUST",
                "C1",
                "K1",
                &[("name", "Acme"), ("vat_registration_no", "BE1")],
            )],
            ..Input::default()
        },
    );
    assert_eq!(
        codes(&plan, "C1"),
        Some(vec!["VIP".to_string(), "CUST".into(), "VEND".into()])
    );
}

#[test]
fn r13_r9_deleted_account_takes_its_code_off_the_contact() {
    let rels = relations(|m| m.get_mut("CUST").unwrap().create_contacts = true);
    let mut c1 = record(EntityKind::Contact, "C1", BASE);
    c1.fields.set(
        "business_relations",
        Value::list(vec!["CUST".into(), "VEND".into()]),
    );
    let plan = run(
        &rels,
        Input {
            contacts: vec![c1],
            deleted_accounts: vec![(EntityKind::Customer, "K1")],
            links: vec![
                link("CUST", "C1", "K1", BASE),
                link("VEND", "C1", "V1", BASE),
            ],
            ..Input::default()
        },
    );
    assert_eq!(codes(&plan, "C1"), Some(vec!["VEND".to_string()]));
    // Losing the code is not a request for a new customer.
    assert!(plan.account_creates.is_empty());
}

#[test]
fn r5_contact_asking_for_a_code_gets_an_account_from_the_template() {
    let rels = relations(|m| {
        let cust = m.get_mut("CUST").unwrap();
        cust.templates = vec![tandem_engine::TemplateRule {
            when: [("country_code".to_string(), "NL".to_string())]
                .into_iter()
                .collect(),
            fields: [("x_payment_terms".to_string(), Value::text("14D"))]
                .into_iter()
                .collect(),
        }];
        cust.template = Some(
            [
                ("x_payment_terms".to_string(), Value::text("30D")),
                ("currency_code".to_string(), Value::text("EUR")),
            ]
            .into_iter()
            .collect(),
        );
    });
    let mut c1 = record(
        EntityKind::Contact,
        "C1",
        &[
            ("name", "Acme"),
            ("country_code", "be"),
            ("currency_code", "USD"),
        ],
    );
    c1.fields.set("business_relations", Value::text("CUST"));
    let mut c2 = record(
        EntityKind::Contact,
        "C2",
        &[("name", "Dutch"), ("country_code", "nl")],
    );
    c2.fields.set("business_relations", Value::text("CUST"));
    let plan = run(
        &rels,
        Input {
            contacts: vec![c1, c2],
            ..Input::default()
        },
    );
    assert_eq!(plan.account_creates.len(), 2);
    let acme = &plan.account_creates[0];
    assert_eq!(acme.contact_id, "C1");
    assert_eq!(acme.template, Some(1));
    // The template fills only what the contact left empty.
    assert_eq!(acme.fields.text("currency_code"), Some("USD"));
    assert_eq!(acme.fields.text("x_payment_terms"), Some("30D"));
    assert_eq!(
        plan.account_creates[1].fields.text("x_payment_terms"),
        Some("14D")
    );
    assert_eq!(
        plan.counts
            .iter()
            .find(|c| c.code == "CUST")
            .unwrap()
            .created,
        2
    );
}

#[test]
fn r5_no_applicable_template_is_an_error_for_that_contact() {
    let rels = relations(|m| {
        m.get_mut("CUST").unwrap().templates = vec![tandem_engine::TemplateRule {
            when: [("country_code".to_string(), "BE".to_string())]
                .into_iter()
                .collect(),
            fields: [("x_payment_terms".to_string(), Value::text("30D"))]
                .into_iter()
                .collect(),
        }];
    });
    let mut c1 = record(
        EntityKind::Contact,
        "C1",
        &[("name", "Acme"), ("country_code", "FR")],
    );
    c1.fields.set("business_relations", Value::text("CUST"));
    let plan = run(
        &rels,
        Input {
            contacts: vec![c1],
            ..Input::default()
        },
    );
    assert!(plan.account_creates.is_empty());
    assert_eq!(plan.rejected.len(), 1);
    assert!(
        plan.rejected[0]
            .error
            .contains("no template of relation CUST applies to contact C1"),
        "{:?}",
        plan.rejected
    );
    assert!(
        plan.rejected[0].error.contains("country_code=\"FR\""),
        "{:?}",
        plan.rejected
    );
}

#[test]
fn r5_a_contact_asking_for_a_code_is_matched_before_anything_is_created() {
    let rels = relations(|_| {});
    let mut c1 = record(
        EntityKind::Contact,
        "C1",
        &[("name", "Acme"), ("email", "a@x.be")],
    );
    c1.fields.set("business_relations", Value::text("CUST"));
    let plan = run(
        &rels,
        Input {
            contacts: vec![c1],
            accounts: vec![record(EntityKind::Customer, "K1", &[("email", "a@x.be")])],
            ..Input::default()
        },
    );
    assert!(plan.account_creates.is_empty());
    assert_eq!(
        plan.hubs[0].pairs[0].new_link,
        Some(NewLink::Match { tier: 2 })
    );
}

#[test]
fn r3_a_person_asking_to_be_customer_makes_its_company_the_customer() {
    let rels = relations(|_| {});
    let mut p1 = record(
        EntityKind::Contact,
        "P1",
        &[
            ("name", "Jan"),
            ("contact_type", "person"),
            ("company_id", "C1"),
        ],
    );
    p1.fields.set("business_relations", Value::text("CUST"));
    let mut p2 = record(
        EntityKind::Contact,
        "P2",
        &[("name", "Lone"), ("contact_type", "person")],
    );
    p2.fields
        .set("business_relations", Value::text("VEND;CUST"));
    let plan = run(
        &rels,
        Input {
            contacts: vec![
                p1,
                p2,
                record(EntityKind::Contact, "C1", &[("name", "Acme")]),
            ],
            ..Input::default()
        },
    );
    let creates: Vec<_> = plan
        .account_creates
        .iter()
        .map(|c| {
            (
                c.code.as_str(),
                c.contact_id.as_str(),
                c.requested_by.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        creates,
        vec![("CUST", "C1", Some("P1")), ("CUST", "P2", None)]
    );
    assert_eq!(plan.rejected.len(), 1);
    assert_eq!(plan.rejected[0].contact_id, "P2");
    assert!(
        plan.rejected[0].error.contains("vendors need a company"),
        "{:?}",
        plan.rejected
    );
    assert_eq!(codes(&plan, "C1"), Some(vec!["CUST".to_string()]));
}

#[test]
fn r15_manual_conflict_waits_and_other_fields_go_on() {
    let rels = relations(|m| m.get_mut("CUST").unwrap().conflict = ConflictPolicy::Manual);
    let plan = run(
        &rels,
        Input {
            contacts: vec![record(
                EntityKind::Contact,
                "C1",
                &[
                    ("name", "Acme NV"),
                    ("phone", "2"),
                    ("vat_registration_no", "BE1"),
                ],
            )],
            accounts: vec![record(
                EntityKind::Customer,
                "K1",
                &[
                    ("name", "Acme"),
                    ("phone", "3"),
                    ("vat_registration_no", "BE1"),
                ],
            )],
            links: vec![link("CUST", "C1", "K1", BASE)],
            ..Input::default()
        },
    );
    let hub = &plan.hubs[0];
    assert_eq!(hub.conflicts.len(), 1);
    assert_eq!(hub.conflicts[0].winner.as_str(), "manual");
    assert_eq!(
        writes(&plan),
        vec![w("K1", "name", "Acme NV")],
        "the phone waits, the name goes"
    );
    assert_eq!(
        hub.pairs[0].baseline.unpack().text("phone"),
        Some("1"),
        "the old baseline keeps the conflict visible"
    );
}

#[test]
fn r15_a_resolved_conflict_is_written_to_both_sides_and_closed() {
    let rels = relations(|m| m.get_mut("CUST").unwrap().conflict = ConflictPolicy::Manual);
    let conflict = tandem_state::ConflictEntry {
        id: 7,
        code: "CUST".into(),
        contact_id: "C1".into(),
        account_id: "K1".into(),
        field: "phone".into(),
        base: Value::text("1"),
        contact_value: Value::text("2"),
        account_value: Value::text("3"),
        opened_at: Timestamp(0),
        run_id: None,
        resolution: Some(Value::text("3")),
        closed_at: None,
    };
    let relations_ref = &rels;
    let mut accounts: Vec<AccountInput> = relations_ref
        .relations
        .iter()
        .map(|_| AccountInput::default())
        .collect();
    let k1 = record(
        EntityKind::Customer,
        "K1",
        &[
            ("name", "Acme"),
            ("phone", "3"),
            ("vat_registration_no", "BE1"),
        ],
    );
    accounts[1].records.insert(k1);
    let c1 = record(
        EntityKind::Contact,
        "C1",
        &[
            ("name", "Acme"),
            ("phone", "2"),
            ("vat_registration_no", "BE1"),
        ],
    );
    let input = PlanInput {
        contacts: [("C1".to_string(), c1)].into_iter().collect(),
        accounts,
        links: vec![link("CUST", "C1", "K1", BASE)],
        conflicts: vec![conflict],
        ..PlanInput::default()
    };
    let plan = plan(&rels, &input);
    assert_eq!(writes(&plan), vec![w("C1", "phone", "3")]);
    assert!(plan.hubs[0].conflicts.is_empty());
    assert_eq!(
        plan.close_conflicts,
        vec![("CUST".to_string(), "C1".to_string(), "phone".to_string())]
    );
}

#[test]
fn r17_parked_pairs_are_left_alone() {
    let rels = relations(|_| {});
    let mut parked = link("CUST", "C1", "K1", BASE);
    parked.parked = true;
    parked.failure_count = 2;
    let plan = run(
        &rels,
        Input {
            accounts: vec![record(
                EntityKind::Customer,
                "K1",
                &[
                    ("name", "Acme"),
                    ("phone", "9"),
                    ("vat_registration_no", "BE1"),
                ],
            )],
            links: vec![parked, link("VEND", "C1", "V1", BASE)],
            ..Input::default()
        },
    );
    assert_eq!(plan.write_count(), 0);
}

#[test]
fn crash_between_create_and_link_is_repaired_not_repeated() {
    let rels = relations(|m| m.get_mut("CUST").unwrap().create_contacts = true);
    let mut sent = fields(&[("name", "Delta"), ("contact_type", "company")]);
    sent.set("business_relations", Value::list(vec!["CUST".into()]));
    let pending = pending_contact_create("K3", &sent);
    let mut created = Record::new(EntityKind::Contact, "C9", sent);
    created.version = Some("v1".into());
    let mut accounts = no_accounts(&rels);
    accounts[1]
        .records
        .insert(record(EntityKind::Customer, "K3", &[("name", "Delta")]));
    let input = PlanInput {
        contacts: [("C9".to_string(), created)].into_iter().collect(),
        accounts,
        pending: creates(vec![pending]),
        ..PlanInput::default()
    };
    let plan = plan(&rels, &input);
    assert!(plan.creates.is_empty(), "no second contact");
    assert_eq!(plan.hubs[0].pairs[0].new_link, Some(NewLink::Recovered));
    assert_eq!(
        plan.done_pending.creates,
        vec![(
            "CUST".to_string(),
            tandem_state::Side::Contact,
            "K3".to_string()
        )]
    );
}

/// One empty account input per relation.
fn no_accounts(rels: &Relations) -> Vec<AccountInput> {
    rels.relations
        .iter()
        .map(|_| AccountInput::default())
        .collect()
}

fn pending_contact_create(account: &str, sent: &Fields) -> tandem_state::PendingCreate {
    tandem_state::PendingCreate {
        code: "CUST".into(),
        side: tandem_state::Side::Contact,
        source_id: account.into(),
        fields: sent.clone(),
        run_id: Some(1),
        error: None,
        failure_count: 0,
        parked: false,
        updated_at: Timestamp(0),
        record_id: None,
    }
}

/// A contact created by a run that died before linking it; the account was edited
/// before the next run. The link starts from the fields sent, so the edit reaches the
/// contact instead of being overwritten by the contact's older value (`initial`).
#[test]
fn r18_an_edit_made_after_a_create_was_cut_short_is_kept() {
    let rels = relations(|m| m.get_mut("CUST").unwrap().create_contacts = true);
    let mut sent = fields(&[
        ("name", "Delta"),
        ("phone", "1"),
        ("contact_type", "company"),
    ]);
    sent.set("business_relations", Value::list(vec!["CUST".into()]));
    let created = Record::new(EntityKind::Contact, "C9", sent.clone());
    let mut accounts = no_accounts(&rels);
    accounts[1].records.insert(record(
        EntityKind::Customer,
        "K3",
        &[("name", "Delta"), ("phone", "2")],
    ));
    let input = PlanInput {
        contacts: [("C9".to_string(), created)].into_iter().collect(),
        accounts,
        pending: creates(vec![pending_contact_create("K3", &sent)]),
        ..PlanInput::default()
    };
    let plan = plan(&rels, &input);
    assert!(plan.creates.is_empty(), "no second contact");
    assert_eq!(plan.hubs[0].pairs[0].new_link, Some(NewLink::Recovered));
    assert_eq!(writes(&plan), vec![w("C9", "phone", "2")]);
}

/// Thousands of creates cut short are found again by lookup, each with its own record
/// (the same name twice is not a guess: neither is linked).
#[test]
fn r18_many_creates_cut_short_are_each_found_again() {
    let rels = relations(|m| m.get_mut("CUST").unwrap().create_contacts = true);
    let mut accounts = no_accounts(&rels);
    let mut contacts = tandem_engine::Records::new();
    let mut pending = Vec::new();
    for i in 0..3000 {
        // K0 and K1 sent the same fields: two candidates each, neither recovered.
        let name = format!("Partner {}", i.max(1));
        let mut sent = fields(&[("name", &name), ("contact_type", "company")]);
        sent.set("business_relations", Value::list(vec!["CUST".into()]));
        let account = format!("K{i}");
        accounts[1]
            .records
            .insert(record(EntityKind::Customer, &account, &[("name", &name)]));
        let contact = format!("C{i:05}");
        contacts.insert(Record::new(EntityKind::Contact, &contact, sent.clone()));
        pending.push(pending_contact_create(&account, &sent));
    }
    let input = PlanInput {
        contacts,
        accounts,
        pending: creates(pending),
        ..PlanInput::default()
    };
    let started = std::time::Instant::now();
    let plan = plan(&rels, &input);
    let recovered = plan
        .hubs
        .iter()
        .flat_map(|h| &h.pairs)
        .filter(|p| p.new_link == Some(NewLink::Recovered))
        .count();
    assert_eq!(recovered, 2998);
    assert!(
        !plan
            .hubs
            .iter()
            .any(|h| h.contact_id == "C00000" || h.contact_id == "C00001"),
        "an ambiguous create is not guessed"
    );
    assert!(
        plan.creates.is_empty() && plan.account_creates.is_empty(),
        "nor made again, for either side: {:?} {:?}",
        plan.creates,
        plan.account_creates
    );
    let waiting = plan.ambiguous.iter().filter(|a| a.tier == 0).count();
    assert_eq!(waiting, 2, "each reported: {:?}", plan.ambiguous);
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
}

#[test]
fn r3_a_person_asking_for_its_companys_relation_is_told_so() {
    let rels = relations(|_| {});
    let contacts = [
        record(EntityKind::Contact, "C1", &[("name", "Acme")]),
        record(
            EntityKind::Contact,
            "C2",
            &[
                ("name", "Ann"),
                ("contact_type", "person"),
                ("company_id", "C1"),
            ],
        ),
    ];
    let input = PlanInput {
        contacts: contacts.into_iter().map(|c| (c.id.clone(), c)).collect(),
        accounts: rels
            .relations
            .iter()
            .map(|_| AccountInput::default())
            .collect(),
        links: vec![link("VEND", "C1", "V1", BASE)],
        directives: tandem_engine::plan::Directives {
            create: vec![("VEND".into(), "C2".into())],
            ..Default::default()
        },
        ..PlanInput::default()
    };
    let plan = plan(&rels, &input);
    let error = &plan.rejected[0].error;
    assert!(error.contains("person of company C1"), "{error}");
    assert!(
        error.contains("C1, which already has a VEND link"),
        "{error}"
    );
}

/// A parked create stays parked while its account is not read (an unchanged file is
/// skipped); only the account's delete ends it.
#[test]
fn r17_a_parked_create_is_kept_while_its_account_is_not_read() {
    let rels = relations(|m| m.get_mut("CUST").unwrap().create_contacts = true);
    let mut parked = pending_contact_create("K3", &fields(&[("name", "Delta")]));
    parked.error = Some("refused".into());
    parked.failure_count = 2;
    parked.parked = true;
    let mut input = PlanInput {
        accounts: rels
            .relations
            .iter()
            .map(|_| AccountInput::default())
            .collect(),
        pending: creates(vec![parked]),
        ..PlanInput::default()
    };
    assert!(plan(&rels, &input).done_pending.creates.is_empty());
    input.accounts[1].deleted.insert("K3".into());
    assert_eq!(
        plan(&rels, &input).done_pending.creates,
        vec![(
            "CUST".to_string(),
            tandem_state::Side::Contact,
            "K3".to_string()
        )]
    );
}

#[test]
fn r4_operator_links_and_unlinks() {
    let rels = relations(|_| {});
    let mut input = Input {
        contacts: vec![
            record(EntityKind::Contact, "C1", &[("name", "Acme")]),
            record(EntityKind::Contact, "C2", &[("name", "Beta")]),
        ],
        accounts: vec![record(EntityKind::Customer, "K7", &[("name", "ACME")])],
        links: vec![link("VEND", "C2", "V2", &[("name", "Beta")])],
        ..Input::default()
    };
    let rels_ref = &rels;
    let mut accounts: Vec<AccountInput> = rels_ref
        .relations
        .iter()
        .map(|_| AccountInput::default())
        .collect();
    for a in std::mem::take(&mut input.accounts) {
        accounts[1].records.insert(a);
    }
    let plan_input = PlanInput {
        contacts: input
            .contacts
            .into_iter()
            .map(|c| (c.id.clone(), c))
            .collect(),
        accounts,
        links: input.links,
        directives: tandem_engine::Directives {
            link: vec![("CUST".into(), "C1".into(), "K7".into())],
            create: vec![],
            unlink: vec![("VEND".into(), "C2".into())],
            create_contact: vec![],
        },
        ..PlanInput::default()
    };
    let plan = plan(&rels, &plan_input);
    assert_eq!(
        plan.hubs
            .iter()
            .find(|h| h.contact_id == "C1")
            .unwrap()
            .pairs[0]
            .new_link,
        Some(NewLink::Operator)
    );
    assert_eq!(plan.unlinks[0].reason, UnlinkReason::Operator);
    assert_eq!(writes(&plan), vec![w("K7", "name", "Acme")]);
    assert!(plan.rejected.is_empty(), "{:?}", plan.rejected);
}

#[test]
fn r8_a_relation_overrides_its_field_set_and_preserve_list() {
    let rels = relations(|m| {
        let cust = m.get_mut("CUST").unwrap();
        // Phones are not shared with customers; the ERP owns the name.
        cust.fields = Some(vec![
            "name".into(),
            "email".into(),
            "vat_registration_no".into(),
        ]);
        cust.preserve = Some(vec!["name".into()]);
    });
    let base = &[
        ("name", "Acme"),
        ("email", "a@x.be"),
        ("vat_registration_no", "BE1"),
    ];
    let plan = run(
        &rels,
        Input {
            contacts: vec![record(
                EntityKind::Contact,
                "C1",
                &[
                    ("name", "Acme NV"),
                    ("phone", "7"),
                    ("email", "b@x.be"),
                    ("vat_registration_no", "BE1"),
                ],
            )],
            links: vec![link("CUST", "C1", "K1", base)],
            ..Input::default()
        },
    );
    // The e-mail goes; the phone is not shared; the name is the ERP's.
    assert_eq!(
        writes(&plan),
        vec![w("C1", "name", "Acme"), w("K1", "email", "b@x.be")]
    );
}

fn creates(creates: Vec<tandem_state::PendingCreate>) -> tandem_engine::Pending {
    tandem_engine::Pending {
        creates,
        ..Default::default()
    }
}

#[test]
fn r18_a_pending_link_of_an_older_state_is_linked_by_the_next_run() {
    let rels = relations(|_| {});
    let mut accounts = no_accounts(&rels);
    accounts[1]
        .records
        .insert(record(EntityKind::Customer, "K3", &[("name", "Delta")]));
    let contact = record(EntityKind::Contact, "C3", &[("name", "Delta NV")]);
    let pending_link = |parked| tandem_state::PendingLink {
        code: "CUST".into(),
        contact_id: "C3".into(),
        account_id: "K3".into(),
        by: tandem_state::LinkedBy::Match { tier: 2 },
        error: Some("503".into()),
        failure_count: 1,
        parked,
        updated_at: Timestamp(0),
    };
    let mut input = PlanInput {
        contacts: [("C3".to_string(), contact)].into_iter().collect(),
        accounts,
        pending: tandem_engine::Pending {
            links: vec![pending_link(false)],
            ..Default::default()
        },
        ..PlanInput::default()
    };
    let planned = plan(&rels, &input);
    assert_eq!(planned.hubs.len(), 1, "{planned:?}");
    let pair = &planned.hubs[0].pairs[0];
    assert_eq!(
        (pair.account_id.as_str(), pair.new_link),
        ("K3", Some(NewLink::Match { tier: 2 }))
    );
    // Parked: left alone, and the contact is not matched anew meanwhile (R17).
    input.pending.links = vec![pending_link(true)];
    assert!(
        plan(&rels, &input)
            .hubs
            .iter()
            .all(|h| h.pairs.is_empty() || h.contact_id != "C3")
    );
}

#[test]
fn r20_a_vat_number_the_account_stores_compacted_is_no_change() {
    let rels = relations(|_| {});
    let typed = &[
        ("name", "Acme"),
        ("vat_registration_no", "nl 0044 95445 b01"),
    ];
    let plan = run(
        &rels,
        Input {
            contacts: vec![record(EntityKind::Contact, "C1", typed)],
            // Tryton stores the number compacted.
            accounts: vec![record(
                EntityKind::Customer,
                "K1",
                &[("name", "Acme"), ("vat_registration_no", "NL004495445B01")],
            )],
            links: vec![link("CUST", "C1", "K1", typed)],
            ..Input::default()
        },
    );
    assert!(writes(&plan).is_empty(), "{:?}", writes(&plan));
}

#[test]
fn r20_a_country_name_and_its_code_are_no_change() {
    let rels = relations(|_| {});
    let base = &[("name", "Acme"), ("country_code", "DE")];
    let plan = run(
        &rels,
        Input {
            contacts: vec![record(
                EntityKind::Contact,
                "C1",
                &[("name", "Acme"), ("country_code", "Germany")],
            )],
            accounts: vec![record(EntityKind::Customer, "K1", base)],
            links: vec![link("CUST", "C1", "K1", base)],
            ..Input::default()
        },
    );
    assert!(writes(&plan).is_empty(), "{:?}", writes(&plan));
    // Another country is a change.
    let plan = run(
        &rels,
        Input {
            contacts: vec![record(
                EntityKind::Contact,
                "C1",
                &[("name", "Acme"), ("country_code", "Schweiz")],
            )],
            accounts: vec![record(EntityKind::Customer, "K1", base)],
            links: vec![link("CUST", "C1", "K1", base)],
            ..Input::default()
        },
    );
    assert_eq!(writes(&plan), vec![w("K1", "country_code", "Schweiz")]);
}

#[test]
fn r20_records_matched_by_vat_across_formats_are_linked_without_a_respelling() {
    let rels = relations(|_| {});
    let plan = run(
        &rels,
        Input {
            contacts: vec![record(
                EntityKind::Contact,
                "C1",
                &[
                    ("name", "Acme"),
                    ("vat_registration_no", "nl 0044 95445 b01"),
                ],
            )],
            accounts: vec![record(
                EntityKind::Customer,
                "K1",
                &[("name", "Acme"), ("vat_registration_no", "NL004495445B01")],
            )],
            ..Input::default()
        },
    );
    assert_eq!(
        plan.hubs[0].pairs[0].new_link,
        Some(NewLink::Match { tier: 1 })
    );
    assert!(writes(&plan).is_empty(), "{:?}", writes(&plan));
}

#[test]
fn r20_e164_links_by_phone_and_writes_no_respelling() {
    let rels = relations(|m| {
        let cust = m.get_mut("CUST").unwrap();
        cust.match_tiers = vec![MatchTier::Fields(vec!["phone".into()])];
        cust.match_normalise = Some(MatchNormalise::E164);
        cust.phone_region = Some("BE".parse().unwrap());
    });
    let plan = run(
        &rels,
        Input {
            contacts: vec![record(
                EntityKind::Contact,
                "C1",
                &[("name", "Acme"), ("phone", "09 123 45 67")],
            )],
            accounts: vec![record(
                EntityKind::Customer,
                "K1",
                &[("name", "Acme"), ("phone", "+32 9 123 45 67")],
            )],
            ..Input::default()
        },
    );
    assert_eq!(
        plan.hubs[0].pairs[0].new_link,
        Some(NewLink::Match { tier: 1 })
    );
    assert!(writes(&plan).is_empty(), "{:?}", writes(&plan));
}

#[test]
fn r20_a_template_rule_on_a_country_code_applies_to_its_name() {
    let rels = relations(|m| {
        m.get_mut("CUST").unwrap().templates = vec![tandem_engine::TemplateRule {
            when: BTreeMap::from([("country_code".to_string(), "CH".to_string())]),
            fields: BTreeMap::from([("language_code".to_string(), Value::text("de"))]),
        }];
    });
    let mut contact = record(
        EntityKind::Contact,
        "C1",
        &[("name", "Acme"), ("country_code", "Schweiz")],
    );
    contact
        .fields
        .set("business_relations", Value::list(vec!["CUST".into()]));
    let plan = run(
        &rels,
        Input {
            contacts: vec![contact],
            ..Input::default()
        },
    );
    assert_eq!(plan.account_creates.len(), 1, "{:?}", plan.rejected);
    assert_eq!(
        plan.account_creates[0].fields.text("language_code"),
        Some("de")
    );
}

#[test]
fn r20_r18_a_create_found_again_though_the_system_compacted_its_vat_number() {
    let rels = relations(|m| m.get_mut("CUST").unwrap().create_contacts = true);
    let sent = fields(&[
        ("name", "Delta"),
        ("city", "Gent"),
        ("vat_registration_no", "nl 0044 95445 b01"),
    ]);
    let pending = tandem_state::PendingCreate {
        side: tandem_state::Side::Account,
        source_id: "C9".into(),
        ..pending_contact_create("", &sent)
    };
    let mut stored = sent.clone();
    stored.set("vat_registration_no", Value::text("NL004495445B01"));
    // The user renamed it since: one edit, and the spelling is no second one.
    stored.set("name", Value::text("Delta NV"));
    let mut accounts = no_accounts(&rels);
    accounts[1]
        .records
        .insert(Record::new(EntityKind::Customer, "K9", stored));
    let input = PlanInput {
        contacts: [(
            "C9".to_string(),
            Record::new(EntityKind::Contact, "C9", sent),
        )]
        .into_iter()
        .collect(),
        accounts,
        pending: creates(vec![pending]),
        ..PlanInput::default()
    };
    let plan = plan(&rels, &input);
    assert!(plan.account_creates.is_empty(), "no second account");
    assert_eq!(plan.hubs[0].pairs[0].new_link, Some(NewLink::Recovered));
}
