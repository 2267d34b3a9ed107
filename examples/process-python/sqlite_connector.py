#!/usr/bin/env python3
"""An example Tandem connector in Python: records of any kind in one SQLite database.

Tandem starts it as a child process (`type = "process"`, see tandem.toml next to this
file) and speaks the plugin protocol with it over stdin and stdout; the SDK in
sdk/python/tandem_connector does the protocol, this file only the storage.

Settings:
    path       the database file, relative to the config file's folder (created on
               first use)
    kinds      the kinds it holds; default all four
    page_size  records per page of a listing; default 1000
    max_batch  operations per write call; default 500

It reads incrementally: every write appends to a change log, and a read from the
cursor a listing ended with returns the records changed since, deleted ones as
tombstones. Every record has a version (a counter per record) that updates and
deletes may carry, refused with a conflict when stale.
"""

import json
import os
import sqlite3
import sys
from datetime import datetime, timezone

try:
    import tandem_connector
except ImportError:  # run from a checkout: the SDK is in sdk/python
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "sdk", "python"))
    import tandem_connector

from tandem_connector import (
    KINDS,
    Capabilities,
    ConfigError,
    Conflict,
    Connector,
    Fatal,
    NotFound,
    Page,
    Written,
    check_field_names,
    log,
    record,
    run,
    tombstone,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    kind        TEXT NOT NULL,
    version     INTEGER NOT NULL,
    modified_at TEXT NOT NULL,
    fields      TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS records_kind ON records (kind, id);
CREATE TABLE IF NOT EXISTS changes (
    seq  INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    id   INTEGER NOT NULL
);
"""


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class SqliteConnector(Connector):
    name = "tandem-example-sqlite-python"
    version = tandem_connector.__version__
    type_name = "sqlite-python"

    def __init__(self, settings, base_dir):
        super().__init__(settings, base_dir)
        unknown = set(settings) - {"path", "kinds", "page_size", "max_batch"}
        if unknown:
            raise ConfigError("`%s`: unknown setting; known: path, kinds, page_size, max_batch" % sorted(unknown)[0])
        if not isinstance(settings.get("path"), str):
            raise ConfigError("`path`: give the database file, e.g. \"erp.db\"")
        self.kinds = settings.get("kinds", list(KINDS))
        for kind in self.kinds:
            if kind not in KINDS:
                raise ConfigError("`kinds`: `%s` is not a kind; known: %s" % (kind, ", ".join(KINDS)))
        self.page_size = int(settings.get("page_size", 1000))
        self.max_batch = int(settings.get("max_batch", 500))
        self.path = os.path.join(base_dir, settings["path"])
        self.db = sqlite3.connect(self.path, isolation_level=None)
        self.db.executescript(SCHEMA)
        log.info("serving %s", self.path)

    def capabilities(self):
        return Capabilities(kinds=self.kinds, incremental=True, write=True, delete=True, max_batch=self.max_batch)

    def check(self):
        self.db.execute("SELECT count(*) FROM records").fetchone()

    def held(self, kind):
        if kind not in self.kinds:
            raise ConfigError("this connector holds %s, not %ss" % (", ".join(self.kinds), kind))

    def read(self, kind, cursor):
        """Cursors: `after:<id>:<seq>` (the next page of a listing that started at
        change <seq>) and `since:<seq>` (the changes after change <seq>)."""
        self.held(kind)
        if cursor is None:
            return self.listing(kind, 0, self.last_change())
        parts = cursor.split(":")
        try:
            if parts[0] == "after" and len(parts) == 3:
                return self.listing(kind, int(parts[1]), int(parts[2]))
            if parts[0] == "since" and len(parts) == 2:
                return self.changes(kind, int(parts[1]))
        except ValueError:
            pass
        raise Fatal("`%s` is not a cursor of this connector" % cursor)

    def last_change(self):
        return self.db.execute("SELECT coalesce(max(seq), 0) FROM changes").fetchone()[0]

    def listing(self, kind, after, since):
        rows = self.db.execute(
            "SELECT id, version, modified_at, fields FROM records WHERE kind = ? AND id > ? ORDER BY id LIMIT ?",
            (kind, after, self.page_size + 1),
        ).fetchall()
        has_more = len(rows) > self.page_size
        rows = rows[: self.page_size]
        records = [
            record(kind, str(id), json.loads(fields), version=str(version), modified_at=modified_at)
            for id, version, modified_at, fields in rows
        ]
        cursor = "after:%d:%d" % (rows[-1][0], since) if has_more else "since:%d" % since
        return Page(records, "full", cursor, has_more)

    def changes(self, kind, since):
        rows = self.db.execute(
            "SELECT c.id, max(c.seq) AS last, r.version, r.modified_at, r.fields"
            " FROM changes c LEFT JOIN records r ON r.id = c.id"
            " WHERE c.kind = ? AND c.seq > ? GROUP BY c.id ORDER BY last LIMIT ?",
            (kind, since, self.page_size + 1),
        ).fetchall()
        has_more = len(rows) > self.page_size
        rows = rows[: self.page_size]
        records = [
            tombstone(kind, str(id))
            if fields is None
            else record(kind, str(id), json.loads(fields), version=str(version), modified_at=modified_at)
            for id, _, version, modified_at, fields in rows
        ]
        last = rows[-1][1] if rows else since
        return Page(records, "changes", "since:%d" % last, has_more)

    def changed(self, kind, id):
        self.db.execute("INSERT INTO changes (kind, id) VALUES (?, ?)", (kind, id))

    def write(self, kind, ops):
        self.held(kind)
        self.db.execute("BEGIN")
        try:
            outcomes = super().write(kind, ops)
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        return outcomes

    def create(self, kind, fields):
        check_field_names(kind, fields)
        stamp = now()
        fields = {k: v for k, v in fields.items() if v is not None}
        cursor = self.db.execute(
            "INSERT INTO records (kind, version, modified_at, fields) VALUES (?, 1, ?, ?)",
            (kind, stamp, json.dumps(fields, ensure_ascii=False)),
        )
        self.changed(kind, cursor.lastrowid)
        return Written(str(cursor.lastrowid), "1", stamp)

    def current(self, kind, id, version):
        row = None
        if id.isdigit():
            row = self.db.execute(
                "SELECT version, fields FROM records WHERE kind = ? AND id = ?", (kind, int(id))
            ).fetchone()
        if row is None:
            raise NotFound(id)
        if version is not None and version != str(row[0]):
            raise Conflict(id)
        return row[0], json.loads(row[1])

    def update(self, kind, id, version, changes):
        check_field_names(kind, changes, id)
        current, fields = self.current(kind, id, version)
        for name, value in changes.items():
            if value is None:
                fields.pop(name, None)
            else:
                fields[name] = value
        stamp = now()
        self.db.execute(
            "UPDATE records SET version = ?, modified_at = ?, fields = ? WHERE id = ?",
            (current + 1, stamp, json.dumps(fields, ensure_ascii=False), int(id)),
        )
        self.changed(kind, int(id))
        return Written(id, str(current + 1), stamp)

    def delete(self, kind, id, version):
        self.current(kind, id, version)
        self.db.execute("DELETE FROM records WHERE id = ?", (int(id),))
        self.changed(kind, int(id))
        return Written(id, None, None)

    def close(self):
        self.db.close()


if __name__ == "__main__":
    run(SqliteConnector)
