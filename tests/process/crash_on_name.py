#!/usr/bin/env python3
"""The example SQLite connector of examples/process-python, except that the process
dies (exit status 1, no reply) when asked to create a customer named as the
environment variable CRASH_ON says: one record that kills its connector, for Tandem's
test that the run's other records go on (R17)."""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "examples", "process-python"))

from sqlite_connector import SqliteConnector  # noqa: E402
from tandem_connector import run  # noqa: E402


class CrashingConnector(SqliteConnector):
    def create(self, kind, fields):
        if kind == "customer" and fields.get("name") == os.environ.get("CRASH_ON"):
            sys.stderr.write("error: crashing on purpose\n")
            sys.stderr.flush()
            os._exit(1)
        return super().create(kind, fields)


if __name__ == "__main__":
    run(CrashingConnector)
