//! The contact as the hub: each contact merged with all its links at once (R7, R8, R14,
//! R15).

use super::*;

impl<'a> Planner<'a> {
    /// Every contact with a link or a new link that involves a record read this run.
    pub(super) fn hubs(&mut self) {
        let input = self.input;
        let mut open_conflicts: HashMap<&str, Vec<&ConflictEntry>> = HashMap::new();
        for c in input.conflicts.iter().filter(|c| c.closed_at.is_none()) {
            open_conflicts
                .entry(c.contact_id.as_str())
                .or_default()
                .push(c);
        }
        let mut hub_ids: BTreeSet<&str> = self.new_links.keys().copied().collect();
        for (contact_id, links) in &self.by_contact {
            if (input.contacts.contains_key(*contact_id) && !input.match_only.contains(*contact_id))
                || links
                    .iter()
                    .any(|(r, l)| self.accounts(*r).records.contains_key(&l.account_id))
            {
                hub_ids.insert(contact_id);
            }
        }
        // Each hub is merged on its own (pure, no shared state): on a big run the hubs
        // are split over the machine's cores, and the results taken back in order, so
        // the plan is the same as on one core.
        let hub_ids: Vec<&str> = hub_ids.into_iter().collect();
        let threads = if hub_ids.len() < PARALLEL_HUBS {
            1
        } else {
            self.threads
        };
        let this = &*self;
        let merge = |ids: &[&str]| -> Vec<Merged> {
            ids.iter()
                .filter_map(|contact_id| this.merge_one(contact_id, &open_conflicts))
                .collect()
        };
        let merged: Vec<Merged> = if threads <= 1 {
            merge(&hub_ids)
        } else {
            let chunk = hub_ids.len().div_ceil(threads);
            std::thread::scope(|scope| {
                let workers: Vec<_> = hub_ids
                    .chunks(chunk)
                    .map(|ids| scope.spawn(move || merge(ids)))
                    .collect();
                workers
                    .into_iter()
                    .flat_map(|w| w.join().expect("merging a hub does not panic"))
                    .collect()
            })
        };
        for merged in merged {
            self.plan.close_conflicts.extend(merged.closed);
            let Some(hub) = merged.hub else { continue };
            for pair in &hub.pairs {
                if pair.updated && pair.previous.is_some() {
                    self.plan.counts[pair.relation].updated += 1;
                }
            }
            for conflict in &hub.conflicts {
                for (code, _, _) in &conflict.accounts {
                    if let Some(r) = self.relations.index_of(code) {
                        self.plan.counts[r].conflicts += 1;
                    }
                }
            }
            self.plan.hubs.push(hub);
        }
    }

    /// One contact with all its pairs, merged; `None` when it has no pair.
    pub(super) fn merge_one(
        &self,
        contact_id: &str,
        open_conflicts: &HashMap<&str, Vec<&ConflictEntry>>,
    ) -> Option<Merged> {
        let input = self.input;
        let mut pairs: Vec<PairInput> = Vec::new();
        for (r, link) in self.by_contact.get(contact_id).into_iter().flatten() {
            if link.parked {
                continue;
            }
            pairs.push(PairInput {
                relation: *r,
                account_id: &link.account_id,
                account: self.accounts(*r).records.get(&link.account_id),
                link: Some(link),
                base: Some(&link.baseline),
                new_link: None,
            });
        }
        for (r, account_id, how) in self.new_links.get(contact_id).into_iter().flatten() {
            pairs.push(PairInput {
                relation: *r,
                account_id,
                account: self.accounts(*r).records.get(*account_id),
                link: None,
                base: self.starts.get(&(*r, contact_id)).copied(),
                new_link: Some(*how),
            });
        }
        if pairs.is_empty() {
            return None;
        }
        pairs.sort_by_key(|p| p.relation);
        let contact = input.contacts.get(contact_id);
        let open = open_conflicts
            .get(contact_id)
            .map(Vec::as_slice)
            .unwrap_or_default();
        Some(merge_hub(self.relations, contact_id, contact, &pairs, open))
    }
}

pub(super) struct PairInput<'a> {
    relation: usize,
    account_id: &'a str,
    account: Option<&'a Record>,
    link: Option<&'a Link>,
    /// What both sides are taken to have agreed on: the link's baseline, or for a
    /// recovered create the fields it sent; `None` for a new link (R4's `initial`).
    base: Option<&'a Fields>,
    new_link: Option<NewLink>,
}

pub(super) struct Merged {
    hub: Option<HubPlan>,
    /// Open conflicts of this hub that are settled: (code, contact id, field).
    closed: Vec<(String, String, String)>,
}

/// Merges one contact with all its pairs.
pub(super) fn merge_hub<'p>(
    relations: &'p Relations,
    contact_id: &str,
    contact: Option<&'p Record>,
    pairs: &'p [PairInput<'p>],
    open: &[&'p ConflictEntry],
) -> Merged {
    let rel = |p: &PairInput| -> &Relation { &relations.relations[p.relation] };
    let universe: BTreeSet<&FieldName> = pairs.iter().flat_map(|p| rel(p).shared.iter()).collect();
    // The contact's stored version: when it was not read, the newest link's.
    let contact_version = match contact {
        Some(c) => c.version.clone(),
        None => pairs
            .iter()
            .filter_map(|p| p.link)
            .max_by_key(|l| l.synced_at)
            .and_then(|l| l.contact_version.clone()),
    };
    let contact_modified = contact.and_then(|c| c.modified_at);

    let mut contact_changes = Vec::new();
    let mut account_changes: Vec<Vec<FieldChange>> = vec![Vec::new(); pairs.len()];
    let mut baselines: Vec<Fields> = vec![Fields::new(); pairs.len()];
    let mut from_account: Vec<Vec<FieldName>> = vec![Vec::new(); pairs.len()];
    let mut conflicts = Vec::new();
    let mut closed = Vec::new();
    let mut open_manual: BTreeSet<(usize, &FieldName)> = BTreeSet::new();

    for f in universe {
        let name = f.as_str();
        let involved: Vec<usize> = (0..pairs.len())
            .filter(|&i| rel(&pairs[i]).shared.contains(f))
            .collect();
        let base =
            |i: usize| -> &Value { pairs[i].base.map(|b| b.value(name)).unwrap_or(&Value::Null) };
        // Values are borrowed from the records and links; only what is written or
        // remembered is copied.
        // A side still holding what it held before an intended write did not get it
        // and was not edited: it stands for the baseline (R18).
        let account_value = |i: usize| -> &Value {
            match pairs[i].account {
                Some(a) => {
                    let value = a.fields.value(name);
                    let before = pairs[i].link.and_then(|l| l.intent.as_ref());
                    match before.and_then(|intent| intent.account_before(name)) {
                        Some(before) if before == value => base(i),
                        _ => value,
                    }
                }
                // Not read this run, so unchanged since it was synchronised.
                None => base(i),
            }
        };
        let contact_value: &Value = match contact {
            Some(c) => {
                let value = c.fields.value(name);
                involved
                    .iter()
                    .find(|&&i| {
                        pairs[i]
                            .link
                            .and_then(|l| l.intent.as_ref())
                            .and_then(|intent| intent.contact_before(name))
                            == Some(value)
                    })
                    .map_or(value, |&i| base(i))
            }
            None => involved
                .iter()
                .find(|&&i| pairs[i].base.is_some())
                .map(|&i| base(i))
                .unwrap_or(&Value::Null),
        };
        let contact_owns = relations.contact_preserve.contains(f);
        let owner_pairs: Vec<usize> = involved
            .iter()
            .copied()
            .filter(|&i| rel(&pairs[i]).preserve.contains(f))
            .collect();
        let resolution = involved.iter().find_map(|&i| {
            open.iter()
                .find(|c| c.code == rel(&pairs[i]).code && c.field == name)
                .and_then(|c| c.resolution.as_ref())
                .map(|v| (i, v))
        });
        // Pairs whose change to this field waits for a decision (manual policy).
        let mut held: Vec<usize> = Vec::new();

        let value = if let Some((_, v)) = resolution {
            for &i in &involved {
                let code = &rel(&pairs[i]).code;
                if open.iter().any(|c| &c.code == code && c.field == name) {
                    closed.push((code.clone(), contact_id.to_owned(), name.to_owned()));
                }
                if account_value(i) == v {
                    from_account[i].push(f.clone());
                }
            }
            v
        } else if contact_owns {
            contact_value
        } else if let Some(&owner) = owner_pairs.first() {
            // The owner's value wins, but an empty one only when the owner cleared it:
            // empty values never overwrite filled ones (R4).
            let a = account_value(owner);
            if a.is_empty() && base(owner).is_empty() {
                contact_value
            } else {
                if a != contact_value {
                    from_account[owner].push(f.clone());
                }
                a
            }
        } else {
            // Step 1: the contact and its existing links, a three-way merge.
            let existing: Vec<usize> = involved
                .iter()
                .copied()
                .filter(|&i| pairs[i].base.is_some())
                .collect();
            let contact_changed =
                contact.is_some() && existing.iter().any(|&i| contact_value != base(i));
            let mut proposals: Vec<(usize, &Value)> = existing
                .iter()
                .map(|&i| (i, account_value(i)))
                .filter(|(i, v)| *v != base(*i))
                .collect();
            let agreed = |proposals: &[(usize, &Value)]| {
                let mut all = proposals
                    .iter()
                    .map(|(_, v)| *v)
                    .chain(contact_changed.then_some(contact_value));
                let first = all.next();
                all.all(|v| Some(v) == first)
            };
            if !agreed(&proposals) {
                // Competing changes: pairs under `manual` step aside and wait.
                held = proposals
                    .iter()
                    .filter(|(i, _)| rel(&pairs[*i]).policy(f) == ConflictPolicy::Manual)
                    .map(|(i, _)| *i)
                    .collect();
                proposals.retain(|(i, _)| !held.contains(i));
            }
            let mut value = contact_value;
            if agreed(&proposals) {
                if let Some((i, v)) = proposals.first() {
                    value = v;
                    for (j, w) in &proposals {
                        if w == v {
                            from_account[*j].push(f.clone());
                        }
                    }
                    let _ = i;
                }
            } else {
                let newest = |candidates: &[&(usize, &'p Value)]| -> (usize, &'p Value) {
                    let mut best = candidates[0];
                    for c in &candidates[1..] {
                        let m = pairs[c.0].account.and_then(|a| a.modified_at);
                        let best_m = pairs[best.0].account.and_then(|a| a.modified_at);
                        if m > best_m {
                            best = c;
                        }
                    }
                    *best
                };
                let winner = if contact_changed {
                    let beating: Vec<&(usize, &Value)> = proposals
                        .iter()
                        .filter(|(i, v)| {
                            *v != contact_value
                                && account_beats_contact(
                                    rel(&pairs[*i]).policy(f),
                                    pairs[*i].account.and_then(|a| a.modified_at),
                                    contact_modified,
                                )
                        })
                        .collect();
                    if beating.is_empty() {
                        None
                    } else {
                        Some(newest(&beating))
                    }
                } else {
                    Some(newest(&proposals.iter().collect::<Vec<_>>()))
                };
                let (winner_name, policy) = match &winner {
                    Some((i, v)) => {
                        value = v;
                        from_account[*i].push(f.clone());
                        (rel(&pairs[*i]).code.clone(), rel(&pairs[*i]).policy(f))
                    }
                    None => (
                        "contact".to_owned(),
                        proposals
                            .first()
                            .map(|(i, _)| rel(&pairs[*i]).policy(f))
                            .unwrap_or_default(),
                    ),
                };
                conflicts.push(Conflict {
                    field: f.clone(),
                    base: existing
                        .first()
                        .map(|&i| base(i).clone())
                        .unwrap_or(Value::Null),
                    contact: contact_changed.then(|| contact_value.clone()),
                    accounts: proposals
                        .iter()
                        .map(|(i, v)| {
                            (
                                rel(&pairs[*i]).code.clone(),
                                pairs[*i].account_id.to_owned(),
                                (*v).clone(),
                            )
                        })
                        .collect(),
                    policy,
                    winner: winner_name,
                    value: value.clone(),
                });
            }
            // Step 2: new links start from the contact's values or the account's (R4);
            // an empty value never overwrites a filled one.
            for &i in involved.iter().filter(|&&i| pairs[i].base.is_none()) {
                let a = account_value(i);
                let take_account = match rel(&pairs[i]).initial {
                    InitialSide::Contact => value.is_empty() && !a.is_empty(),
                    InitialSide::Account => !a.is_empty(),
                };
                if take_account && a != value {
                    value = a;
                    from_account[i].push(f.clone());
                }
            }
            value
        };
        for &i in &held {
            open_manual.insert((i, f));
            conflicts.push(Conflict {
                field: f.clone(),
                base: base(i).clone(),
                contact: Some(value.clone()),
                accounts: vec![(
                    rel(&pairs[i]).code.clone(),
                    pairs[i].account_id.to_owned(),
                    account_value(i).clone(),
                )],
                policy: ConflictPolicy::Manual,
                winner: "manual".to_owned(),
                value: value.clone(),
            });
        }

        // Writes compare with what the sides hold, not with what they stand for.
        let contact_holds = contact.map_or(contact_value, |c| c.fields.value(name));
        if !contact_owns && value != contact_holds {
            contact_changes.push(FieldChange {
                field: f.clone(),
                old: contact_holds.clone(),
                new: value.clone(),
            });
        }
        for &i in &involved {
            let a = pairs[i].account.map_or(base(i), |a| a.fields.value(name));
            let owns = owner_pairs.contains(&i);
            let waits = held.contains(&i);
            if !owns && !waits && value != a {
                account_changes[i].push(FieldChange {
                    field: f.clone(),
                    old: a.clone(),
                    new: value.clone(),
                });
            }
            // A waiting field keeps its old baseline, so the conflict stays visible.
            let new_base = if waits {
                base(i)
            } else if owns {
                a
            } else {
                value
            };
            // Baselines are built in name order: an append, not an insert.
            baselines[i].set(f.clone(), new_base.clone());
        }
    }
    // Open manual conflicts that did not come up again are settled by themselves.
    for entry in open.iter().filter(|c| c.resolution.is_none()) {
        let still_open = open_manual
            .iter()
            .any(|(i, f)| rel(&pairs[*i]).code == entry.code && f.as_str() == entry.field);
        let in_hub = pairs.iter().any(|p| rel(p).code == entry.code);
        if in_hub && !still_open {
            closed.push((
                entry.code.clone(),
                contact_id.to_owned(),
                entry.field.clone(),
            ));
        }
    }
    closed.sort();

    // What the plan keeps is held until the run ends, for every hub of the run: it is
    // sized to what it holds, not to what pushing one by one grew it to (on a big run,
    // fresh memory is a large part of planning's time).
    contact_changes.shrink_to_fit();
    conflicts.shrink_to_fit();
    let mut out_pairs = Vec::with_capacity(pairs.len());
    for (i, p) in pairs.iter().enumerate() {
        let mut changes = std::mem::take(&mut account_changes[i]);
        changes.shrink_to_fit();
        let mut brought: Vec<FieldName> = std::mem::take(&mut from_account[i])
            .into_iter()
            .filter(|f| contact_changes.iter().any(|c| &c.field == f))
            .collect();
        brought.shrink_to_fit();
        let updated = !changes.is_empty() || !brought.is_empty();
        let account_version = match p.account {
            Some(a) => a.version.clone(),
            None => p.link.and_then(|l| l.account_version.clone()),
        };
        let mut baseline = std::mem::take(&mut baselines[i]);
        baseline.shrink_to_fit();
        let unchanged_link = p.link.is_some_and(|l| {
            l.baseline == baseline
                && l.account_version == account_version
                && (contact.is_none() || l.contact_version == contact_version)
                && l.failure_count == 0
                && l.intent.is_none()
        });
        if p.new_link.is_none() && !updated && contact_changes.is_empty() && unchanged_link {
            continue;
        }
        let account_after_hash = p.account.map(|a| {
            let mut fields = a.fields.clone();
            for change in &changes {
                fields.set(change.field.clone(), change.new.clone());
            }
            fields.content_hash()
        });
        let intent = Intent {
            contact: contact_changes
                .iter()
                .filter(|c| rel(p).shared.contains(&c.field))
                .map(|c| (c.field.clone(), c.old.clone()))
                .collect(),
            account: changes
                .iter()
                .map(|c| (c.field.clone(), c.old.clone()))
                .collect(),
        };
        let intent = (!intent.contact.is_empty() || !intent.account.is_empty()).then_some(intent);
        out_pairs.push(PairPlan {
            code: rel(p).code.clone(),
            relation: p.relation,
            account_id: p.account_id.to_owned(),
            account_version,
            new_link: p.new_link,
            account_changes: changes,
            from_account: brought,
            updated,
            baseline,
            previous: p.link.cloned().map(Box::new),
            account_after_hash,
            intent,
        });
    }
    let hub = (!out_pairs.is_empty() || !contact_changes.is_empty() || !conflicts.is_empty()).then(
        || HubPlan {
            contact_id: contact_id.to_owned(),
            contact_version,
            contact_changes,
            pairs: out_pairs,
            conflicts,
            contact_after_hash: None,
            other_links: Vec::new(),
        },
    );
    Merged { hub, closed }
}

pub(super) fn account_beats_contact(
    policy: ConflictPolicy,
    account: Option<Timestamp>,
    contact: Option<Timestamp>,
) -> bool {
    match policy {
        ConflictPolicy::ContactWins | ConflictPolicy::Manual => false,
        ConflictPolicy::AccountWins => true,
        ConflictPolicy::Newest => matches!((account, contact), (Some(a), Some(c)) if a > c),
    }
}
