//! `--json` output against the schemas of docs/json-output.md: every command's real
//! output is checked by a validator of the JSON Schema keywords those schemas use, so
//! the document cannot drift from the binary.

use std::collections::BTreeMap;
use std::fs;

use serde_json::{Value, json};
use tandem_state::LockMode;

use crate::support::{Deployment, repo_root, stdout};

/// The schemas of docs/json-output.md, by the name in their `<!-- schema: NAME -->`
/// marker.
fn schemas() -> BTreeMap<String, Value> {
    let text = fs::read_to_string(repo_root().join("docs/json-output.md")).unwrap();
    let mut out = BTreeMap::new();
    let mut rest = text.as_str();
    while let Some(at) = rest.find("<!-- schema: ") {
        rest = &rest[at + "<!-- schema: ".len()..];
        let name = rest[..rest.find(" -->").unwrap()].to_owned();
        let start = rest.find("```json\n").unwrap() + "```json\n".len();
        let end = start + rest[start..].find("```").unwrap();
        let schema: Value = serde_json::from_str(&rest[start..end])
            .unwrap_or_else(|e| panic!("schema {name} is not JSON: {e}"));
        out.insert(name, schema);
        rest = &rest[end..];
    }
    out
}

/// Checks `value` against `schema`; the errors, with their JSON paths.
fn validate(
    schemas: &BTreeMap<String, Value>,
    schema: &Value,
    value: &Value,
    path: &str,
) -> Vec<String> {
    let mut errors = Vec::new();
    if let Some(reference) = schema["$ref"].as_str() {
        let name = reference
            .strip_prefix("#/$defs/")
            .expect("refs point into $defs");
        let def = &schemas["defs"][name];
        assert!(def.is_object(), "no definition {name}");
        return validate(schemas, def, value, path);
    }
    if let Some(expected) = schema.get("const")
        && value != expected
    {
        errors.push(format!("{path}: {value} is not {expected}"));
    }
    if let Some(options) = schema["enum"].as_array()
        && !options.contains(value)
    {
        errors.push(format!("{path}: {value} is none of {options:?}"));
    }
    let types: Vec<&str> = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    let is = |t: &str| match t {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "boolean" => value.is_boolean(),
        "null" => value.is_null(),
        other => panic!("unknown type {other}"),
    };
    if !types.is_empty() && !types.iter().any(|t| is(t)) {
        errors.push(format!("{path}: {value} is not {types:?}"));
        return errors;
    }
    if let (Some(min), Some(n)) = (schema["minimum"].as_i64(), value.as_i64())
        && n < min
    {
        errors.push(format!("{path}: {n} < {min}"));
    }
    if let Some(object) = value.as_object() {
        for required in schema["required"].as_array().into_iter().flatten() {
            let key = required.as_str().unwrap();
            if !object.contains_key(key) {
                errors.push(format!("{path}: `{key}` is missing"));
            }
        }
        let properties = schema["properties"].as_object();
        for (key, item) in object {
            match properties.and_then(|p| p.get(key)) {
                Some(sub) => errors.extend(validate(schemas, sub, item, &format!("{path}.{key}"))),
                None if schema["additionalProperties"] == json!(false) => {
                    errors.push(format!("{path}: `{key}` is not in the schema"));
                }
                None => {}
            }
        }
    }
    if let (Some(items), Some(array)) = (schema.get("items"), value.as_array()) {
        for (i, item) in array.iter().enumerate() {
            errors.extend(validate(schemas, items, item, &format!("{path}[{i}]")));
        }
    }
    errors
}

/// Runs `tandem --json <args>`, expects `code`, and checks the output against `schema`.
pub(crate) fn check(d: &Deployment, args: &[&str], code: i32, schema: &str) -> Value {
    let schemas = schemas();
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = d.tandem(&all);
    assert_eq!(
        out.status.code(),
        Some(code),
        "tandem {args:?}: {}",
        stdout(&out)
    );
    let value: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("tandem {args:?} printed no JSON ({e}): {}", stdout(&out)));
    let errors = validate(&schemas, &schemas[schema], &value, "$");
    assert!(
        errors.is_empty(),
        "tandem {args:?} does not match the schema `{schema}` of docs/json-output.md:\n{}\n{value:#}",
        errors.join("\n")
    );
    value
}

fn deployment() -> Deployment {
    let d = Deployment::new();
    d.write(
        "crm/contacts.csv",
        "id,name,email,vat_registration_no,phone\nC1,Acme,a@acme.example,BE0111,+32 1\n",
    );
    d.write(
        "erp/customers.csv",
        "id,name,email,vat_registration_no,phone\nK1,Acme,a@acme.example,BE0111,+32 2\n\
         K2,Beta,b@beta.example,,\n",
    );
    d.write(
        "erp/vendors.csv",
        "id,name,vat_registration_no\nV1,Vendor,BE0999\n",
    );
    d
}

#[test]
fn every_command_prints_what_its_schema_says() {
    let d = deployment();
    let plan = check(&d, &["plan"], 0, "report");
    assert_eq!(plan["run_id"], Value::Null);
    let sync = check(&d, &["sync"], 0, "report");
    assert_eq!(sync["run_id"], 1);
    check(&d, &["check"], 0, "check");
    let links = check(&d, &["links"], 0, "links");
    assert_eq!(links["links"].as_array().unwrap().len(), 2, "{links}");
    check(&d, &["resolve", "C1", "CUST"], 0, "resolve");
    let log = check(&d, &["log", "C1"], 0, "log");
    assert!(!log["entries"].as_array().unwrap().is_empty());
    check(&d, &["conflicts"], 0, "conflicts");
    check(&d, &["retry", "--all"], 0, "retry");
    let status = check(&d, &["status"], 0, "status");
    assert_eq!(status["sync_running"], false);
    let runs = check(&d, &["runs"], 0, "runs");
    assert_eq!(runs["runs"][0]["id"], 1);
    let shown = check(&d, &["runs", "show", "1"], 0, "runs-show");
    assert!(shown["records_total"].as_u64().unwrap() >= 2, "{shown}");
    check(&d, &["plugins"], 0, "plugins");

    let fresh = Deployment::new();
    fs::remove_file(fresh.path("tandem.toml")).unwrap();
    check(&fresh, &["init"], 0, "init");
}

#[test]
fn errors_under_json_are_an_object_on_stdout_with_the_same_exit_code() {
    let d = deployment();
    let error = check(&d, &["resolve", "C9", "CUST"], 1, "error");
    assert!(
        error["error"]["message"].as_str().unwrap().contains("C9"),
        "{error}"
    );
    let usage = check(&d, &["no-such-command"], 2, "error");
    assert!(
        usage["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no-such-command"),
        "{usage}"
    );

    // A state another process holds: the error says so, and what to do.
    d.json(&["sync"]);
    let held = d.open_state(LockMode::Exclusive);
    let locked = check(&d, &["sync"], 1, "error");
    assert!(
        locked["error"]["message"]
            .as_str()
            .unwrap()
            .contains("in use"),
        "{locked}"
    );
    assert!(
        locked["error"]["hint"]
            .as_str()
            .unwrap()
            .contains("tandem status"),
        "{locked}"
    );
    drop(held);
}

/// On PostgreSQL, `status` shows the processes behind the state's leases: who holds
/// the state and which workers stand by, with epochs and the time left, and shows none
/// once they let go.
#[test]
fn status_shows_the_lease_of_a_postgres_state() {
    let Some(server) = tandem_connector_sql::testsupport::PostgresServer::start() else {
        return;
    };
    let url = server.create_database();
    let d = Deployment::on_sqlite(
        &crate::support::CONFIG.replace(crate::support::SQLITE_STATE_URL, &url),
    );
    let holder = tandem_state::PgState::open_url(&url, LockMode::Exclusive).unwrap();
    let standby = tandem_state::PgState::standing_by(&url, tandem_state::LEASE_TTL).unwrap();
    let status = check(&d, &["status"], 0, "status");
    let leases = status["leases"].as_array().unwrap();
    assert_eq!(leases.len(), 2, "{status}");
    let holding = leases.iter().find(|l| l["role"] == "holder").unwrap();
    assert_eq!(holding["name"], "state");
    assert_eq!(holding["epoch"], 1);
    let pid = format!("pid {}", std::process::id());
    assert!(
        holding["owner"].as_str().unwrap().contains(&pid),
        "{status}"
    );
    let left = holding["expires_in_ms"].as_i64().unwrap();
    assert!(left > 0 && left <= 30_000, "{status}");
    let waiting = leases.iter().find(|l| l["role"] == "standby").unwrap();
    assert!(
        waiting["owner"].as_str().unwrap().contains(&pid),
        "{status}"
    );
    let text = stdout(&d.tandem(&["status"]));
    let line = |role: &str| {
        text.lines()
            .find(|l| l.starts_with(role))
            .unwrap_or_else(|| panic!("no {role} line:\n{text}"))
            .to_owned()
    };
    assert!(line("holds the state").contains(&pid), "{text}");
    assert!(line("stands by").contains(&pid), "{text}");
    drop((holder, standby));
    let status = check(&d, &["status"], 0, "status");
    assert_eq!(status["leases"], json!([]), "{status}");
}
