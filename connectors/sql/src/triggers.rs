//! The change table and the triggers that fill it (`tandem sql install-triggers`):
//! one entry per inserted, updated or deleted row, in commit order of a sequence, read
//! by `changes = "triggers"`.

use crate::dialect::Dialect;

/// Statements that create the change table (if missing) and its index.
pub fn change_table(d: Dialect, name: &str) -> Vec<String> {
    let q = d.quote(name);
    let index = d.quote(&format!("{}_by_table", name.replace('.', "_")));
    match d {
        Dialect::Postgres => vec![
            format!(
                "CREATE TABLE IF NOT EXISTS {q} (seq BIGSERIAL PRIMARY KEY, \
                 table_name TEXT NOT NULL, row_id TEXT NOT NULL, op CHAR(1) NOT NULL, \
                 changed_at TIMESTAMPTZ NOT NULL DEFAULT now())"
            ),
            format!("CREATE INDEX IF NOT EXISTS {index} ON {q} (table_name, seq)"),
        ],
        Dialect::MySql => vec![format!(
            "CREATE TABLE IF NOT EXISTS {q} (seq BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY, \
             table_name VARCHAR(255) NOT NULL, row_id VARCHAR(255) NOT NULL, \
             op CHAR(1) NOT NULL, changed_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6), \
             KEY {index} (table_name, seq))"
        )],
        Dialect::Sqlite => vec![
            format!(
                "CREATE TABLE IF NOT EXISTS {q} (seq INTEGER PRIMARY KEY AUTOINCREMENT, \
                 table_name TEXT NOT NULL, row_id TEXT NOT NULL, op TEXT NOT NULL, \
                 changed_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')))"
            ),
            format!("CREATE INDEX IF NOT EXISTS {index} ON {q} (table_name, seq)"),
        ],
    }
}

/// Statements that (re)create the triggers of `table` (keyed by column `id`).
pub fn table_triggers(d: Dialect, change_table: &str, table: &str, id: &str) -> Vec<String> {
    let changes = d.quote(change_table);
    let t = d.quote(table);
    let id = d.quote(id);
    // Table names are checked identifiers: safe inside a string literal.
    let literal = format!("'{table}'");
    let base = format!("tandem_{}", table.replace('.', "_"));
    match d {
        Dialect::Postgres => {
            let function = d.quote(&format!("{base}_changes"));
            vec![
                format!(
                    "CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $tandem$ \
                     BEGIN \
                       IF TG_OP = 'DELETE' THEN \
                         INSERT INTO {changes} (table_name, row_id, op) VALUES ({literal}, CAST(OLD.{id} AS TEXT), 'D'); \
                         RETURN OLD; \
                       END IF; \
                       INSERT INTO {changes} (table_name, row_id, op) VALUES ({literal}, CAST(NEW.{id} AS TEXT), left(TG_OP, 1)); \
                       RETURN NEW; \
                     END $tandem$"
                ),
                format!("DROP TRIGGER IF EXISTS tandem_changes ON {t}"),
                format!(
                    "CREATE TRIGGER tandem_changes AFTER INSERT OR UPDATE OR DELETE ON {t} \
                     FOR EACH ROW EXECUTE FUNCTION {function}()"
                ),
            ]
        }
        Dialect::MySql | Dialect::Sqlite => {
            let mut out = Vec::new();
            for (suffix, event, row, op) in [
                ("insert", "INSERT", "NEW", "I"),
                ("update", "UPDATE", "NEW", "U"),
                ("delete", "DELETE", "OLD", "D"),
            ] {
                let name = d.quote(&format!("{base}_{suffix}"));
                out.push(format!("DROP TRIGGER IF EXISTS {name}"));
                let value = d.text(&format!("{row}.{id}"));
                let insert = format!(
                    "INSERT INTO {changes} (table_name, row_id, op) VALUES ({literal}, {value}, '{op}')"
                );
                out.push(if d == Dialect::MySql {
                    format!("CREATE TRIGGER {name} AFTER {event} ON {t} FOR EACH ROW {insert}")
                } else {
                    format!(
                        "CREATE TRIGGER {name} AFTER {event} ON {t} FOR EACH ROW BEGIN {insert}; END"
                    )
                });
            }
            out
        }
    }
}
