//! The tables of an SQLite state as rows of [`StoredValue`]s, for `tandem migrate`.

use rusqlite::TransactionBehavior;
use rusqlite::types::{ToSqlOutput, ValueRef};

use tandem_model::Fields;

use super::{PackedLink, SqliteState, hash_pages, sql_error, unpack, user_version};
use crate::transfer::{ColumnType, StateTable, StoredValue};
use crate::{Link, StateError, codec};

impl SqliteState {
    pub(super) fn schema_version_of_file(&self) -> Result<i64, StateError> {
        user_version(&self.conn).map_err(sql_error("reading the schema version"))
    }

    pub(super) fn export(
        &self,
        table: &str,
        each: &mut dyn FnMut(Vec<StoredValue>) -> Result<(), StateError>,
    ) -> Result<u64, StateError> {
        const ACTION: &str = "exporting a table";
        let table = StateTable::named(table)?;
        if table.name == "record_hashes" {
            return hash_pages::export(&self.conn, each);
        }
        let columns: Vec<&str> = table.columns.iter().map(|c| c.name).collect();
        let sql = format!(
            "SELECT {} FROM {} ORDER BY {}",
            columns.join(", "),
            table.name,
            table.primary_key.join(", ")
        );
        let mut stmt = self.conn.prepare(&sql).map_err(sql_error(ACTION))?;
        let mut rows = stmt.query([]).map_err(sql_error(ACTION))?;
        let mut count = 0;
        while let Some(row) = rows.next().map_err(sql_error(ACTION))? {
            let mut values = Vec::with_capacity(columns.len());
            for (index, column) in columns.iter().enumerate() {
                values.push(match row.get_ref(index).map_err(sql_error(ACTION))? {
                    ValueRef::Null => StoredValue::Null,
                    ValueRef::Integer(i) => StoredValue::Integer(i),
                    ValueRef::Real(r) => StoredValue::Real(r),
                    // Rows written before migration 8 hold JSON text here: exported
                    // in the binary form every store reads (the same values).
                    ValueRef::Text(text) if table.columns[index].column_type == ColumnType::Any => {
                        StoredValue::Blob(encoded(table.name, column, text)?)
                    }
                    ValueRef::Text(text) => {
                        StoredValue::Text(String::from_utf8(text.to_vec()).map_err(|e| {
                            StateError::Corrupt {
                                what: format!("column {column} of table {}", table.name),
                                message: format!("text that is not UTF-8: {e}"),
                            }
                        })?)
                    }
                    ValueRef::Blob(bytes) => StoredValue::Blob(bytes.to_vec()),
                });
            }
            each(values)?;
            count += 1;
        }
        Ok(count)
    }

    pub(super) fn import(
        &mut self,
        table: &str,
        rows: Vec<Vec<StoredValue>>,
    ) -> Result<(), StateError> {
        const ACTION: &str = "importing rows";
        let table = StateTable::named(table)?;
        let width = table.columns.len();
        let bad_row = |message: String| StateError::BadRow {
            table: table.name.to_owned(),
            message,
        };
        for (i, row) in rows.iter().enumerate() {
            if row.len() != width {
                return Err(bad_row(format!(
                    "row {} has {} values, the table {width} columns",
                    i + 1,
                    row.len()
                )));
            }
            for (column, value) in table.columns.iter().zip(row) {
                let fits = match (value, column.column_type) {
                    (StoredValue::Null, _) => column.nullable,
                    (StoredValue::Integer(_), ColumnType::Integer) => true,
                    (StoredValue::Real(_), ColumnType::Real) => true,
                    (StoredValue::Text(_), ColumnType::Text | ColumnType::Any) => true,
                    (StoredValue::Blob(_), ColumnType::Blob | ColumnType::Any) => true,
                    _ => false,
                };
                if !fits {
                    return Err(bad_row(format!(
                        "row {} holds {} in column {}, which takes {:?}{}",
                        i + 1,
                        value.type_name(),
                        column.name,
                        column.column_type,
                        if column.nullable { " or null" } else { "" }
                    )));
                }
            }
        }
        if table.name == "record_hashes" {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(sql_error("starting a transaction"))?;
            hash_pages::import(&tx, &rows)?;
            return tx.commit().map_err(sql_error("committing imported rows"));
        }
        let columns: Vec<&str> = table.columns.iter().map(|c| c.name).collect();
        let sql = format!(
            "INSERT INTO {} ({}) VALUES ({})",
            table.name,
            columns.join(", "),
            vec!["?"; width].join(", ")
        );
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql_error("starting a transaction"))?;
        {
            let mut stmt = tx.prepare(&sql).map_err(sql_error(ACTION))?;
            for row in &rows {
                // An explicit id in an AUTOINCREMENT table moves its sequence past it,
                // so the ids given later continue after the copied ones.
                stmt.execute(rusqlite::params_from_iter(row.iter().map(to_sql)))
                    .map_err(sql_error(ACTION))?;
            }
        }
        tx.commit().map_err(sql_error("committing imported rows"))
    }
}

/// The binary form (`codec`) of a baseline or intent batch stored as JSON text.
fn encoded(table: &str, column: &str, json: &[u8]) -> Result<Vec<u8>, StateError> {
    let corrupt = |message: String| StateError::Corrupt {
        what: format!("column {column} of table {table}"),
        message,
    };
    match (table, column) {
        ("links", "baseline") => {
            let fields: Fields =
                serde_json::from_slice(json).map_err(|e| corrupt(e.to_string()))?;
            let mut out = Vec::new();
            codec::encode_fields(&mut out, &fields);
            Ok(out)
        }
        ("intent_batches", "links") => {
            let links: Vec<PackedLink> =
                serde_json::from_slice(json).map_err(|e| corrupt(e.to_string()))?;
            let links: Vec<Link> = links.into_iter().map(unpack).collect();
            Ok(codec::encode_links(&links))
        }
        _ => Err(corrupt("text where only a blob is known".to_owned())),
    }
}

fn to_sql(value: &StoredValue) -> ToSqlOutput<'_> {
    ToSqlOutput::Borrowed(match value {
        StoredValue::Null => ValueRef::Null,
        StoredValue::Integer(i) => ValueRef::Integer(*i),
        StoredValue::Real(r) => ValueRef::Real(*r),
        StoredValue::Text(text) => ValueRef::Text(text.as_bytes()),
        StoredValue::Blob(bytes) => ValueRef::Blob(bytes),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};
    use std::path::Path;

    use proptest::prelude::*;
    use tandem_model::Timestamp;

    use super::*;
    use crate::transfer::STATE_TABLES;
    use crate::{Details, Interaction, LockMode, StateBatch, StateStore};

    fn in_memory() -> SqliteState {
        SqliteState::open_existing(Path::new("/nonexistent/state.db"), LockMode::Exclusive).unwrap()
    }

    fn export(state: &SqliteState, table: &str) -> Vec<Vec<StoredValue>> {
        let mut rows = Vec::new();
        let n = state
            .export_table(table, &mut |row| {
                rows.push(row);
                Ok(())
            })
            .unwrap();
        assert_eq!(n, rows.len() as u64);
        rows
    }

    #[test]
    fn state_tables_list_every_table_and_column_of_the_schema() {
        let state = in_memory();
        let tables: Vec<String> = state
            .conn
            .prepare(
                "SELECT name FROM sqlite_master WHERE type = 'table' \
                 AND name NOT LIKE 'sqlite_%' ORDER BY name",
            )
            .unwrap()
            .query_map([], |row| row.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        // `record_hashes` is kept in pages (`hash_pages`), exported and imported as rows.
        let mut listed: Vec<&str> = STATE_TABLES
            .iter()
            .map(|t| match t.name {
                "record_hashes" => "record_hash_pages",
                name => name,
            })
            .collect();
        listed.sort_unstable();
        assert_eq!(
            tables, listed,
            "a migration added or dropped a table: list it in STATE_TABLES"
        );
        for table in STATE_TABLES.iter().filter(|t| t.name != "record_hashes") {
            // (name, declared type, not null, position in the primary key)
            let columns: Vec<(String, String, bool, i64)> = state
                .conn
                .prepare(&format!("PRAGMA table_info({})", table.name))
                .unwrap()
                .query_map([], |row| {
                    Ok((row.get(1)?, row.get(2)?, row.get(3)?, row.get(5)?))
                })
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            let listed: Vec<(String, String, bool)> = table
                .columns
                .iter()
                .map(|c| {
                    let declared = match c.column_type {
                        ColumnType::Integer => "INTEGER",
                        ColumnType::Real => "REAL",
                        ColumnType::Text => "TEXT",
                        ColumnType::Blob => "BLOB",
                        ColumnType::Any => "ANY",
                    };
                    (c.name.to_owned(), declared.to_owned(), !c.nullable)
                })
                .collect();
            let schema: Vec<(String, String, bool)> = columns
                .iter()
                .map(|(name, declared, not_null, pk)| {
                    // Primary-key columns of STRICT tables take no null.
                    (name.clone(), declared.clone(), *not_null || *pk > 0)
                })
                .collect();
            assert_eq!(schema, listed, "columns of {}", table.name);
            let mut key: Vec<(i64, &str)> = columns
                .iter()
                .filter(|c| c.3 > 0)
                .map(|c| (c.3, c.0.as_str()))
                .collect();
            key.sort_unstable();
            let key: Vec<&str> = key.into_iter().map(|(_, name)| name).collect();
            assert_eq!(key, table.primary_key, "primary key of {}", table.name);
        }
    }

    #[test]
    fn imported_ids_are_kept_and_new_ids_continue_after_them() {
        let mut state = in_memory();
        let run = |id: i64| {
            vec![
                StoredValue::Integer(id),
                StoredValue::Text("sync".into()),
                StoredValue::Integer(1),
                StoredValue::Null,
                StoredValue::Text("ok".into()),
                StoredValue::Null,
            ]
        };
        state.import_rows("runs", vec![run(5), run(41)]).unwrap();
        assert_eq!(state.begin_run("sync").unwrap(), 42);
        // A log row of id 7 holds two entries (7 and 8): the next entry is 9.
        let text = |s: &str| StoredValue::Text(s.into());
        let log_row = vec![
            StoredValue::Integer(7),
            StoredValue::Integer(1),
            StoredValue::Integer(41),
            text("C1"),
            text("CUST"),
            text("K1"),
            text("linked"),
            text("match"),
            text("{}"),
            text("updated"),
            text("contact"),
            text("{}"),
        ];
        state.import_rows("interactions", vec![log_row]).unwrap();
        let entry = Interaction {
            id: 0,
            at: Timestamp(2),
            run_id: Some(42),
            contact_id: "C1".into(),
            code: "CUST".into(),
            account_id: Some("K1".into()),
            action: "updated".into(),
            source: "contact".into(),
            details: Details::of(&serde_json::json!({})),
        };
        state
            .commit(StateBatch {
                interactions: vec![entry],
                ..StateBatch::default()
            })
            .unwrap();
        let ids: Vec<i64> = state
            .interactions("C1", 10)
            .unwrap()
            .iter()
            .map(|e| e.id)
            .collect();
        assert_eq!(ids, [7, 8, 9]);
    }

    #[test]
    fn a_row_that_does_not_fit_its_table_is_refused_and_nothing_of_the_call_is_stored() {
        let mut state = in_memory();
        let good = vec![StoredValue::Text("CUST".into()), StoredValue::Integer(3)];
        let null_count = vec![StoredValue::Text("VEND".into()), StoredValue::Null];
        let err = state
            .import_rows("link_counts", vec![good.clone(), null_count])
            .unwrap_err();
        assert!(
            err.to_string().contains("link_counts") && err.to_string().contains("links"),
            "{err}"
        );
        let short = vec![StoredValue::Text("VEND".into())];
        assert!(state.import_rows("link_counts", vec![short]).is_err());
        assert!(matches!(
            state.import_rows("leases", vec![]),
            Err(StateError::UnknownTable { .. })
        ));
        // A duplicate key fails the whole call.
        assert!(
            state
                .import_rows("link_counts", vec![good.clone(), good])
                .is_err()
        );
        assert!(export(&state, "link_counts").is_empty());
    }

    /// Random values of a column's type; nullable columns are sometimes null.
    fn value_of(column: &crate::transfer::Column) -> BoxedStrategy<StoredValue> {
        let text = "[^\u{0}]{0,12}".prop_map(StoredValue::Text);
        let blob = proptest::collection::vec(any::<u8>(), 0..24).prop_map(StoredValue::Blob);
        let value = match column.column_type {
            ColumnType::Integer => any::<i64>().prop_map(StoredValue::Integer).boxed(),
            ColumnType::Real => any::<f64>()
                .prop_filter("NaN is not stored", |r| !r.is_nan())
                .prop_map(StoredValue::Real)
                .boxed(),
            ColumnType::Text => text.boxed(),
            ColumnType::Blob => blob.boxed(),
            // Exported as blobs whatever they hold; JSON text is tested on the v7 state.
            ColumnType::Any => blob.boxed(),
        };
        if column.nullable {
            prop_oneof![1 => Just(StoredValue::Null), 3 => value].boxed()
        } else {
            value
        }
    }

    /// Random rows of every table, at most one per key (and per other unique key).
    fn tables() -> impl Strategy<Value = Vec<Vec<Vec<StoredValue>>>> {
        let per_table: Vec<_> = STATE_TABLES
            .iter()
            .map(|table| {
                let row: Vec<_> = table.columns.iter().map(value_of).collect();
                proptest::collection::vec(row, 0..12).prop_map(move |rows| unique(table, rows))
            })
            .collect();
        per_table
    }

    fn unique(table: &StateTable, rows: Vec<Vec<StoredValue>>) -> Vec<Vec<StoredValue>> {
        let index = |name: &str| table.columns.iter().position(|c| c.name == name).unwrap();
        let mut keys: Vec<Vec<usize>> = vec![table.primary_key.iter().map(|k| index(k)).collect()];
        match table.name {
            "links" => keys.push(vec![index("code"), index("account_id")]),
            "scopes" => keys.push(vec![index("connector"), index("kind")]),
            _ => {}
        }
        let mut seen: Vec<HashSet<String>> = vec![HashSet::new(); keys.len() + 1];
        rows.into_iter()
            .filter(|row| {
                let mut fresh = keys.iter().zip(&mut seen).all(|(key, seen)| {
                    seen.insert(format!(
                        "{:?}",
                        key.iter().map(|&i| &row[i]).collect::<Vec<_>>()
                    ))
                });
                // At most one open conflict per (code, contact, field).
                if fresh
                    && table.name == "conflicts"
                    && row[index("closed_at")] == StoredValue::Null
                {
                    let open = [index("code"), index("contact_id"), index("field")];
                    let key = format!("{:?}", open.iter().map(|&i| &row[i]).collect::<Vec<_>>());
                    fresh = seen[keys.len()].insert(key);
                }
                fresh
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn random_rows_of_every_table_round_trip(tables in tables()) {
            let mut state = in_memory();
            let mut expected = HashMap::new();
            for (table, rows) in STATE_TABLES.iter().zip(tables) {
                state.import_rows(table.name, rows.clone()).unwrap();
                expected.insert(table.name, rows);
            }
            for table in STATE_TABLES {
                let mut rows = expected.remove(table.name).unwrap();
                let mut exported = export(&state, table.name);
                // Export order is key order; compare as sets of rows.
                rows.sort_by_key(|row| format!("{row:?}"));
                exported.sort_by_key(|row| format!("{row:?}"));
                prop_assert_eq!(exported, rows, "table {}", table.name);
            }
        }
    }
}
