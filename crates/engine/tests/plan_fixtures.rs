//! Data-driven tests of the planning core: one text file per scenario under
//! `tests/plan_fixtures/<chapter>/`, holding the config, the records and the state in
//! simple tables, followed by the plan rendered in a readable form (a snapshot).
//! The format is described in `tests/plan_fixtures/README.md`.
//!
//! Each chapter (a folder, named after a chapter of the user guide) is one test. A
//! fixture whose plan differs from its snapshot fails with the file's path and a diff;
//! `UPDATE_EXPECT=1 cargo test -p tandem-engine --test plan_fixtures` rewrites the
//! snapshots (review every change against DESIGN.md before committing it).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use expect_test::expect_file;
use tandem_engine::plan::{AccountInput, Directives, NewLink, Plan, PlanInput, UnlinkReason, plan};
use tandem_engine::{ContactsConfig, RelationConfig, Relations, SyncConfig};
use tandem_model::{EntityKind, Fields, Record, Timestamp, Value};
use tandem_state::{ConflictEntry, Intent, Link, PendingCreate, RefusedRequest, Side};

/// The chapters, each a folder of fixtures; a folder not listed here is an error.
const CHAPTERS: &[&str] = &[
    "matching",
    "relations-and-codes",
    "templates",
    "conflicts",
    "deletes",
    "recovery",
];

/// The line that starts the snapshot; everything before it is the scenario.
const PLAN_MARK: &str = "--- plan";

#[test]
fn matching() {
    run_chapter("matching");
}

#[test]
fn relations_and_codes() {
    run_chapter("relations-and-codes");
}

#[test]
fn templates() {
    run_chapter("templates");
}

#[test]
fn conflicts() {
    run_chapter("conflicts");
}

#[test]
fn deletes() {
    run_chapter("deletes");
}

#[test]
fn recovery() {
    run_chapter("recovery");
}

#[test]
fn every_fixture_folder_is_a_chapter() {
    for entry in std::fs::read_dir(fixtures_dir()).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            let name = entry.file_name().to_string_lossy().into_owned();
            assert!(
                CHAPTERS.contains(&name.as_str()),
                "plan_fixtures/{name} is not a chapter of plan_fixtures.rs: add it to CHAPTERS and give it a test"
            );
        }
    }
}

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/plan_fixtures")
}

/// Checks every fixture of a chapter; reports all failing files, not only the first.
fn run_chapter(chapter: &str) {
    let dir = fixtures_dir().join(chapter);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "{}: a chapter without fixtures",
        dir.display()
    );
    let mut failed = Vec::new();
    for file in &files {
        let outcome = std::panic::catch_unwind(|| check_fixture(file));
        if outcome.is_err() {
            failed.push(file.display().to_string());
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} fixtures of `{chapter}` failed (diffs above):\n  {}",
        failed.len(),
        files.len(),
        failed.join("\n  ")
    );
}

fn check_fixture(file: &Path) {
    let text = std::fs::read_to_string(file).unwrap();
    let scenario = match text.find(&format!("\n{PLAN_MARK}\n")) {
        Some(at) => &text[..at + 1],
        None if text.ends_with(&format!("\n{PLAN_MARK}")) => &text[..text.len() - PLAN_MARK.len()],
        None => text.as_str(),
    };
    let mut scenario = scenario.to_owned();
    if !scenario.ends_with('\n') {
        scenario.push('\n');
    }
    let name = file.display().to_string();
    let (relations, input) = Fixture::parse(&name, &scenario).build(&name);
    let plan = plan(&relations, &input);
    let rendered = render(&plan, &relations);
    expect_file![file].assert_eq(&format!("{scenario}{PLAN_MARK}\n{rendered}"));
}

// ---------------------------------------------------------------------------------
// Parsing

/// A table: a header row and rows of cells, separated by `|`.
#[derive(Debug, Default)]
struct Table {
    header: Vec<String>,
    /// (line number, cells)
    rows: Vec<(usize, Vec<Option<String>>)>,
}

impl Table {
    /// The row's cells by column name; an empty cell is left out.
    fn row<'t>(&'t self, cells: &'t [Option<String>]) -> Vec<(&'t str, &'t str)> {
        self.header
            .iter()
            .zip(cells)
            .filter_map(|(h, c)| c.as_deref().map(|c| (h.as_str(), c)))
            .collect()
    }
}

#[derive(Debug, Default)]
struct Fixture {
    config: String,
    contacts: Table,
    /// By relation code.
    accounts: BTreeMap<String, Table>,
    links: Table,
    intents: Table,
    pending: Table,
    refused: Table,
    conflicts: Table,
    /// (line, words) of the line-based sections.
    deleted: Vec<(usize, Vec<String>)>,
    unlinked_pairs: Vec<(usize, Vec<String>)>,
    contact_deleted: Vec<(usize, Vec<String>)>,
    codes_lost: Vec<(usize, Vec<String>)>,
    directives: Vec<(usize, Vec<String>)>,
}

fn fail(file: &str, line: usize, message: impl std::fmt::Display) -> ! {
    panic!("{file}:{line}: {message}")
}

/// A cell: trimmed, empty is `None`; `"..."` keeps the text between the quotes as it is.
fn cell(raw: &str) -> Option<String> {
    let t = raw.trim();
    if t.len() >= 2 && t.starts_with('"') && t.ends_with('"') {
        return Some(t[1..t.len() - 1].to_owned());
    }
    (!t.is_empty()).then(|| t.to_owned())
}

impl Fixture {
    fn parse(file: &str, text: &str) -> Fixture {
        let mut fixture = Fixture::default();
        let mut section: Option<(String, Option<String>)> = None;
        for (i, line) in text.lines().enumerate() {
            let n = i + 1;
            if let Some(head) = line.strip_prefix("--- ") {
                let mut words = head.split_whitespace().map(str::to_owned);
                let name = words.next().unwrap_or_default();
                let arg = words.next();
                let known = [
                    "config",
                    "contacts",
                    "accounts",
                    "links",
                    "intents",
                    "pending",
                    "refused",
                    "conflicts",
                    "deleted",
                    "unlinked_pairs",
                    "contact_deleted",
                    "codes_lost",
                    "directives",
                ];
                if !known.contains(&name.as_str()) {
                    fail(file, n, format!("unknown section `{name}`"));
                }
                if (name == "accounts") != arg.is_some() {
                    fail(
                        file,
                        n,
                        "`--- accounts <CODE>` names a code; no other section does",
                    );
                }
                section = Some((name, arg));
                continue;
            }
            let Some((name, arg)) = &section else {
                if line.trim().is_empty() || line.starts_with('#') {
                    continue;
                }
                fail(
                    file,
                    n,
                    "text before the first `--- <section>` line that is not a comment",
                );
            };
            if name == "config" {
                fixture.config.push_str(line);
                fixture.config.push('\n');
                continue;
            }
            if line.trim().is_empty() || line.trim_start().starts_with('#') {
                continue;
            }
            let table = match name.as_str() {
                "contacts" => Some(&mut fixture.contacts),
                "accounts" => Some(fixture.accounts.entry(arg.clone().unwrap()).or_default()),
                "links" => Some(&mut fixture.links),
                "intents" => Some(&mut fixture.intents),
                "pending" => Some(&mut fixture.pending),
                "refused" => Some(&mut fixture.refused),
                "conflicts" => Some(&mut fixture.conflicts),
                _ => None,
            };
            if let Some(table) = table {
                let cells: Vec<Option<String>> = line.split('|').map(cell).collect();
                if table.header.is_empty() {
                    table.header = cells
                        .into_iter()
                        .map(|c| c.unwrap_or_else(|| fail(file, n, "an empty column name")))
                        .collect();
                } else if cells.len() != table.header.len() {
                    fail(
                        file,
                        n,
                        format!(
                            "{} cells, the header has {}",
                            cells.len(),
                            table.header.len()
                        ),
                    );
                } else {
                    table.rows.push((n, cells));
                }
                continue;
            }
            let words = (n, line.split_whitespace().map(str::to_owned).collect());
            match name.as_str() {
                "deleted" => fixture.deleted.push(words),
                "unlinked_pairs" => fixture.unlinked_pairs.push(words),
                "contact_deleted" => fixture.contact_deleted.push(words),
                "codes_lost" => fixture.codes_lost.push(words),
                "directives" => fixture.directives.push(words),
                _ => unreachable!(),
            }
        }
        fixture
    }

    fn build(self, file: &str) -> (Relations, PlanInput) {
        let relations = relations(file, &self.config);
        let code_index = |n: usize, code: &str| {
            relations
                .index_of(code)
                .unwrap_or_else(|| fail(file, n, format!("`{code}` is not a configured code")))
        };
        let mut input = PlanInput {
            accounts: relations
                .relations
                .iter()
                .map(|_| AccountInput::default())
                .collect(),
            contact_deleted: relations.relations.iter().map(|_| HashSet::new()).collect(),
            ..PlanInput::default()
        };

        for (n, cells) in &self.contacts.rows {
            let (record, match_only) =
                record(file, *n, EntityKind::Contact, &self.contacts.row(cells));
            if match_only {
                input.match_only.insert(record.id.clone());
            }
            input.contacts.insert(record);
        }
        for (code, table) in &self.accounts {
            let r = code_index(0, code);
            let kind = relations.relations[r].kind;
            for (n, cells) in &table.rows {
                let (record, _) = record(file, *n, kind, &table.row(cells));
                input.accounts[r].records.insert(record);
            }
        }

        for (n, cells) in &self.links.rows {
            let mut link = Link {
                code: String::new(),
                contact_id: String::new(),
                account_id: String::new(),
                baseline: Fields::new(),
                contact_version: None,
                account_version: None,
                last_error: None,
                failure_count: 0,
                parked: false,
                linked_at: Timestamp(0),
                synced_at: Timestamp(0),
                intent: None,
            };
            for (column, value) in self.links.row(cells) {
                match column {
                    "code" => link.code = value.to_owned(),
                    "contact" => link.contact_id = value.to_owned(),
                    "account" => link.account_id = value.to_owned(),
                    "@failures" => link.failure_count = number(file, *n, value),
                    "@parked" => link.parked = yes(file, *n, value),
                    "@error" => link.last_error = Some(value.to_owned()),
                    other if other.starts_with('@') => {
                        fail(file, *n, format!("unknown column `{other}`"))
                    }
                    field => link.baseline.set(field, Value::text(value)),
                }
            }
            if link.code.is_empty() || link.contact_id.is_empty() || link.account_id.is_empty() {
                fail(file, *n, "a link needs code, contact and account");
            }
            // A record not read this run equals its baseline; one read carries the
            // version `<id>-v1`, a new one.
            link.contact_version = Some(format!("{}-v0", link.contact_id));
            link.account_version = Some(format!("{}-v0", link.account_id));
            input.links.push(link);
        }
        for (n, cells) in &self.intents.rows {
            let row: BTreeMap<&str, &str> = self.intents.row(cells).into_iter().collect();
            let get = |c: &str| {
                *row.get(c)
                    .unwrap_or_else(|| fail(file, *n, format!("an intent needs `{c}`")))
            };
            let (code, contact, side, field) =
                (get("code"), get("contact"), get("side"), get("field"));
            let before = row.get("before").map_or(Value::Null, |v| Value::text(*v));
            let link = input
                .links
                .iter_mut()
                .find(|l| l.code == code && l.contact_id == contact)
                .unwrap_or_else(|| fail(file, *n, format!("no link {code} {contact}")));
            let intent = link.intent.get_or_insert_with(Intent::default);
            let entry = (field.into(), before);
            match side {
                "contact" => intent.contact.push(entry),
                "account" => intent.account.push(entry),
                other => fail(
                    file,
                    *n,
                    format!("side is contact or account, not `{other}`"),
                ),
            }
        }
        input.link_counts = relations
            .relations
            .iter()
            .map(|r| input.links.iter().filter(|l| l.code == r.code).count() as u64)
            .collect();

        for (n, cells) in &self.pending.rows {
            let mut pending = PendingCreate {
                code: String::new(),
                side: Side::Contact,
                source_id: String::new(),
                fields: Fields::new(),
                run_id: Some(1),
                error: None,
                failure_count: 0,
                parked: false,
                updated_at: Timestamp(0),
                record_id: None,
            };
            for (column, value) in self.pending.row(cells) {
                match column {
                    "code" => pending.code = value.to_owned(),
                    "side" => {
                        pending.side = Side::parse(value)
                            .unwrap_or_else(|| fail(file, *n, "side is `contact` or `account`"))
                    }
                    "source" => pending.source_id = value.to_owned(),
                    "@error" => pending.error = Some(value.to_owned()),
                    "@failures" => pending.failure_count = number(file, *n, value),
                    "@parked" => pending.parked = yes(file, *n, value),
                    "@record_id" => pending.record_id = Some(value.to_owned()),
                    other if other.starts_with('@') => {
                        fail(file, *n, format!("unknown column `{other}`"))
                    }
                    field => pending.fields.set(field, Value::text(value)),
                }
            }
            input.pending.creates.push(pending);
        }

        for (n, cells) in &self.refused.rows {
            let mut refused = RefusedRequest {
                code: String::new(),
                contact_id: String::new(),
                error: String::new(),
                run_id: Some(1),
                failure_count: 1,
                parked: false,
                updated_at: Timestamp(0),
            };
            for (column, value) in self.refused.row(cells) {
                match column {
                    "code" => refused.code = value.to_owned(),
                    "contact" => refused.contact_id = value.to_owned(),
                    "@error" => refused.error = value.to_owned(),
                    "@failures" => refused.failure_count = number(file, *n, value),
                    "@parked" => refused.parked = yes(file, *n, value),
                    other => fail(file, *n, format!("unknown column `{other}`")),
                }
            }
            input.pending.refused.push(refused);
        }

        for (n, cells) in &self.conflicts.rows {
            let row: BTreeMap<&str, &str> = self.conflicts.row(cells).into_iter().collect();
            let text = |c: &str| row.get(c).map_or(Value::Null, |v| Value::text(*v));
            let id_of = |c: &str| {
                row.get(c)
                    .unwrap_or_else(|| fail(file, *n, format!("a conflict needs `{c}`")))
                    .to_string()
            };
            input.conflicts.push(ConflictEntry {
                id: *n as i64,
                code: id_of("code"),
                contact_id: id_of("contact"),
                account_id: id_of("account"),
                field: id_of("field"),
                base: text("base"),
                contact_value: text("contact_value"),
                account_value: text("account_value"),
                opened_at: Timestamp(0),
                run_id: None,
                resolution: row.get("resolution").map(|v| Value::text(*v)),
                closed_at: None,
            });
        }

        for (n, words) in &self.deleted {
            match words.as_slice() {
                [side, id] if side == "contact" => {
                    input.deleted_contacts.insert(id.clone());
                }
                [code, id] => {
                    let r = code_index(*n, code);
                    input.accounts[r].deleted.insert(id.clone());
                }
                _ => fail(file, *n, "`contact <id>` or `<CODE> <account id>`"),
            }
        }
        for (n, words) in &self.unlinked_pairs {
            let [code, contact, account] = words.as_slice() else {
                fail(file, *n, "`<CODE> <contact> <account>`")
            };
            input
                .unlinked_pairs
                .push((code.clone(), contact.clone(), account.clone()));
        }
        for (n, words) in &self.contact_deleted {
            let [code, account] = words.as_slice() else {
                fail(file, *n, "`<CODE> <account>`")
            };
            let r = code_index(*n, code);
            input.contact_deleted[r].insert(account.clone());
        }
        for (n, words) in &self.codes_lost {
            let [code, contact] = words.as_slice() else {
                fail(file, *n, "`<CODE> <contact>`")
            };
            input.codes_lost.push((code.clone(), contact.clone()));
        }
        input.directives = directives(file, &self.directives);
        (relations, input)
    }
}

fn number(file: &str, n: usize, value: &str) -> u32 {
    value
        .parse()
        .unwrap_or_else(|_| fail(file, n, format!("`{value}` is not a number")))
}

fn yes(file: &str, n: usize, value: &str) -> bool {
    match value {
        "yes" | "true" => true,
        "no" | "false" => false,
        _ => fail(file, n, format!("`{value}`: yes or no")),
    }
}

/// A record from a table row: `id`, its fields, and `@version`, `@modified` (RFC 3339)
/// and, for contacts, `@match_only`. Returns whether it is a match-only contact.
fn record(file: &str, n: usize, kind: EntityKind, row: &[(&str, &str)]) -> (Record, bool) {
    let mut id = None;
    let mut fields = Fields::new();
    let mut version = None;
    let mut modified = None;
    let mut match_only = false;
    for (column, value) in row {
        match *column {
            "id" => id = Some(value.to_string()),
            "@version" => version = Some(value.to_string()),
            "@modified" => {
                modified = Some(Timestamp::parse(value).unwrap_or_else(|e| fail(file, n, e)))
            }
            "@match_only" if kind == EntityKind::Contact => match_only = yes(file, n, value),
            other if other.starts_with('@') => fail(file, n, format!("unknown column `{other}`")),
            field => fields.set(field, Value::text(*value)),
        }
    }
    let id = id.unwrap_or_else(|| fail(file, n, "a record needs an `id`"));
    let mut record = Record::new(kind, id.as_str(), fields);
    record.version = Some(version.unwrap_or_else(|| format!("{id}-v1")));
    record.modified_at = modified;
    (record, match_only)
}

/// The `--- config` section: TOML as in `tandem.toml`, but `[contacts]` may be left
/// out (connector `crm`) and so may each relation's `connector` (`erp`).
fn relations(file: &str, text: &str) -> Relations {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Config {
        contacts: ContactsConfig,
        #[serde(default)]
        relations: BTreeMap<String, RelationConfig>,
    }
    let mut table: toml::Table = text
        .parse()
        .unwrap_or_else(|e| panic!("{file}: config: {e}"));
    table
        .entry("contacts")
        .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        .as_table_mut()
        .unwrap()
        .entry("connector")
        .or_insert_with(|| "crm".into());
    if let Some(toml::Value::Table(relations)) = table.get_mut("relations") {
        for (_, relation) in relations.iter_mut() {
            if let toml::Value::Table(relation) = relation {
                relation.entry("connector").or_insert_with(|| "erp".into());
            }
        }
    }
    let config: Config = toml::Value::Table(table)
        .try_into()
        .unwrap_or_else(|e| panic!("{file}: config: {e}"));
    let config = SyncConfig::new(config.contacts, config.relations)
        .unwrap_or_else(|e| panic!("{file}: config: {e}"));
    Relations::from_config(&config)
}

fn directives(file: &str, lines: &[(usize, Vec<String>)]) -> Directives {
    let mut d = Directives::default();
    for (n, words) in lines {
        let w: Vec<&str> = words.iter().map(String::as_str).collect();
        match w.as_slice() {
            ["link", code, contact, account] => {
                d.link
                    .push((code.to_string(), contact.to_string(), account.to_string()))
            }
            ["unlink", code, contact] => d.unlink.push((code.to_string(), contact.to_string())),
            ["create", code, contact] => d.create.push((code.to_string(), contact.to_string())),
            ["create-contact", code, account] => d
                .create_contact
                .push((code.to_string(), account.to_string())),
            _ => fail(
                file,
                *n,
                "a directive is `link CODE CONTACT ACCOUNT`, `unlink CODE CONTACT`, `create CODE CONTACT` or `create-contact CODE ACCOUNT`",
            ),
        }
    }
    d
}

// ---------------------------------------------------------------------------------
// Rendering

fn value(v: &Value) -> String {
    match v {
        Value::Null => "(empty)".into(),
        v if v.to_cell().is_empty() => "(empty)".into(),
        v => format!("{:?}", v.to_cell()),
    }
}

fn fields(f: &Fields) -> String {
    f.iter()
        .map(|(name, v)| format!("{name}={}", value(v)))
        .collect::<Vec<_>>()
        .join(" ")
}

fn before(values: &[(tandem_model::FieldName, Value)]) -> String {
    values
        .iter()
        .map(|(name, v)| format!("{name}={}", value(v)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The plan as the snapshot shows it; sections without entries are left out.
fn render(plan: &Plan, relations: &Relations) -> String {
    let mut out = String::new();
    let o = &mut out;
    writeln!(o, "writes: {}", plan.write_count()).unwrap();
    for hub in &plan.hubs {
        writeln!(o, "hub {}", hub.contact_id).unwrap();
        for c in &hub.contact_changes {
            writeln!(
                o,
                "  contact {}: {} -> {}",
                c.field,
                value(&c.old),
                value(&c.new)
            )
            .unwrap();
        }
        for pair in &hub.pairs {
            let how = match pair.new_link {
                Some(NewLink::Match { tier }) => format!(", new link by match tier {tier}"),
                Some(NewLink::Operator) => ", new link by operator".into(),
                Some(NewLink::Recovered) => ", new link recovered".into(),
                None => String::new(),
            };
            let state = if pair.updated { "updated" } else { "unchanged" };
            writeln!(o, "  {} {} ({state}{how})", pair.code, pair.account_id).unwrap();
            for c in &pair.account_changes {
                writeln!(o, "    {}: {} -> {}", c.field, value(&c.old), value(&c.new)).unwrap();
            }
            if !pair.from_account.is_empty() {
                let names: Vec<&str> = pair.from_account.iter().map(|f| f.as_str()).collect();
                writeln!(o, "    to the contact: {}", names.join(", ")).unwrap();
            }
            writeln!(o, "    baseline: {}", fields(&pair.baseline.unpack())).unwrap();
            let relation = &relations.relations[pair.relation];
            if let Some(intent) = &pair.intent(hub, relation) {
                if !intent.contact.is_empty() {
                    writeln!(o, "    intent, contact before: {}", before(&intent.contact)).unwrap();
                }
                if !intent.account.is_empty() {
                    writeln!(o, "    intent, account before: {}", before(&intent.account)).unwrap();
                }
            }
        }
        for c in &hub.conflicts {
            let mut sides = Vec::new();
            if let Some(v) = &c.contact {
                sides.push(format!("contact {}", value(v)));
            }
            for (code, account, v) in &c.accounts {
                sides.push(format!("{code} {account} {}", value(v)));
            }
            let policy = serde_json::to_value(c.policy).unwrap();
            let outcome = if c.winner == tandem_engine::Winner::Manual {
                "waits in the conflict queue".to_owned()
            } else {
                format!("{} wins, {}", c.winner, value(&c.value))
            };
            writeln!(
                o,
                "  conflict {} (base {}): {}; {} -> {outcome}",
                c.field,
                value(&c.base),
                sides.join(", "),
                policy.as_str().unwrap(),
            )
            .unwrap();
        }
    }
    for c in &plan.creates {
        let asked = if c.asked { " (asked)" } else { "" };
        writeln!(
            o,
            "create contact for {} {}{asked}: {}",
            c.code,
            c.account_id,
            fields(&c.fields.unpack())
        )
        .unwrap();
    }
    for c in &plan.account_creates {
        let mut notes = String::new();
        if let Some(p) = &c.requested_by {
            write!(notes, ", asked by {p}").unwrap();
        }
        if let Some(t) = c.template {
            write!(notes, ", template {t}").unwrap();
        }
        writeln!(
            o,
            "create {} account for {}{notes}: {}",
            c.code,
            c.contact_id,
            fields(&c.fields)
        )
        .unwrap();
    }
    for u in &plan.unlinks {
        let reason = match u.reason {
            UnlinkReason::ContactDeleted => "the contact was deleted (R12)",
            UnlinkReason::AccountDeleted => "the account was deleted (R13)",
            UnlinkReason::Operator => "by operator",
        };
        writeln!(
            o,
            "unlink {} {} <-> {}: {reason}",
            u.code, u.contact_id, u.account_id
        )
        .unwrap();
    }
    for a in &plan.ambiguous {
        let key: Vec<String> = a
            .fields
            .iter()
            .zip(&a.values)
            .map(|(f, v)| format!("{f}={v:?}"))
            .collect();
        writeln!(
            o,
            "ambiguous {} tier {} ({}): contacts {} / accounts {}",
            a.code,
            a.tier,
            key.join(" "),
            a.contact_ids.join(", "),
            a.account_ids.join(", ")
        )
        .unwrap();
    }
    for r in &plan.rejected {
        writeln!(o, "rejected {} {}: {}", r.code, r.contact_id, r.error).unwrap();
    }
    for (code, contact, field) in &plan.close_conflicts {
        writeln!(o, "close conflict {code} {contact} {field}").unwrap();
    }
    for (code, side, source) in &plan.done_pending.creates {
        writeln!(o, "done pending {code} {side} {source}").unwrap();
    }
    for (code, contact) in &plan.done_pending.refused {
        writeln!(o, "done refused {code} {contact}").unwrap();
    }
    for (code, contact) in &plan.done_pending.links {
        writeln!(o, "done pending link {code} {contact}").unwrap();
    }
    for (code, contact) in &plan.codes_removed {
        writeln!(o, "lost code removed {code} {contact}").unwrap();
    }
    for (code, contact) in &plan.new_lost_codes {
        writeln!(o, "lost code remembered {code} {contact}").unwrap();
    }
    let mut recheck: BTreeSet<(String, &str)> = BTreeSet::new();
    for (r, account) in &plan.recheck_accounts {
        let code = plan.counts.get(*r).map_or("?", |c| c.code.as_str());
        recheck.insert((code.to_owned(), account.as_str()));
    }
    for (code, account) in recheck {
        writeln!(o, "look again next run {code} {account}").unwrap();
    }
    writeln!(o, "counts").unwrap();
    for c in &plan.counts {
        let all = [
            ("linked", c.linked),
            ("created", c.created),
            ("updated", c.updated),
            ("unchanged", c.unchanged),
            ("unlinked", c.unlinked),
            ("conflicts", c.conflicts),
            ("ambiguous", c.ambiguous),
            ("failed", c.failed),
            ("parked", c.parked),
        ];
        let shown: Vec<String> = all
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(name, n)| format!("{n} {name}"))
            .collect();
        let shown = if shown.is_empty() {
            "-".to_owned()
        } else {
            shown.join(", ")
        };
        writeln!(o, "  {}: {shown}", c.code).unwrap();
    }
    out
}
