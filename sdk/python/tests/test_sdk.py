"""Tests of the Python SDK: the protocol loop, the errors, and that the SDK and the
example connector stay within Python 3.9.

    python3 -m unittest discover -s sdk/python/tests

(crates/plugin/tests/process.rs runs them under cargo.)
"""

import ast
import io
import json
import os
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
SDK = os.path.dirname(HERE)
REPO = os.path.dirname(os.path.dirname(SDK))
EXAMPLE = os.path.join(REPO, "examples", "process-python", "sqlite_connector.py")
sys.path.insert(0, SDK)

from tandem_connector import (  # noqa: E402
    Capabilities,
    Conflict,
    Connector,
    InvalidRecord,
    Page,
    Written,
    record,
    serve,
)


class Memory(Connector):
    name = "memory"
    version = "1.0"

    def __init__(self, settings, base_dir):
        super().__init__(settings, base_dir)
        self.records = {}

    def capabilities(self):
        return Capabilities(kinds=["customer"], max_batch=10)

    def read(self, kind, cursor):
        return Page([record(kind, id, fields, version="1") for id, fields in self.records.items()])

    def create(self, kind, fields):
        if "boom" in fields:
            raise RuntimeError("a bug in the connector")
        id = str(len(self.records) + 1)
        self.records[id] = fields
        return Written(id, "1")

    def update(self, kind, id, version, changes):
        if version != "1":
            raise Conflict(id)
        self.records[id].update(changes)
        return Written(id, "2")


def exchange(*messages):
    """Runs the loop over `messages`; returns the replies."""
    stdin = io.BytesIO(b"".join(json.dumps(m).encode() + b"\n" for m in messages))
    stdout = io.BytesIO()
    serve(Memory, stdin, stdout)
    return [json.loads(line) for line in stdout.getvalue().splitlines()]


class ProtocolLoop(unittest.TestCase):
    def test_a_conversation(self):
        replies = exchange(
            {"id": 1, "type": "describe"},
            {"id": 2, "type": "init", "settings": {}, "base_dir": "/tmp"},
            {"id": 3, "type": "call", "call": "info"},
            {"id": 4, "type": "call", "call": "write", "kind": "customer", "ops": [
                {"op": "create", "fields": {"name": "Acme", "x_rating": 0.1, "x_since": {"date": "2024-01-02"}}},
                {"op": "update", "id": "1", "version": "7", "changes": {"name": "B"}},
            ]},
            {"id": 5, "type": "call", "call": "read", "kind": "customer", "cursor": None},
        )
        self.assertEqual([r["id"] for r in replies], [1, 2, 3, 4, 5])
        self.assertEqual(replies[0]["ok"]["abi_version"], 1)
        self.assertEqual(replies[0]["ok"]["name"], "memory")
        self.assertEqual(replies[1], {"id": 2, "ok": None})
        self.assertEqual(replies[2]["ok"]["capabilities"]["max_batch"], 10)
        self.assertEqual(
            replies[3]["ok"],
            [
                {"ok": {"id": "1", "version": "1", "modified_at": None}},
                {"err": {"error": "conflict", "id": "1"}},
            ],
        )
        page = replies[4]["ok"]
        self.assertEqual(page["listing"], "full")
        self.assertFalse(page["has_more"])
        self.assertEqual(
            page["records"][0]["fields"],
            {"name": "Acme", "x_rating": 0.1, "x_since": {"date": "2024-01-02"}},
        )

    def test_a_bug_in_the_connector_is_a_fatal_reply_and_the_loop_goes_on(self):
        replies = exchange(
            {"id": 1, "type": "init", "settings": {}, "base_dir": "."},
            {"id": 2, "type": "call", "call": "write", "kind": "customer", "ops": [
                {"op": "create", "fields": {"boom": True}}]},
            {"id": 3, "type": "call", "call": "check"},
        )
        self.assertEqual(replies[1]["id"], 2)
        self.assertEqual(
            replies[1]["err"], {"error": "fatal", "message": "RuntimeError: a bug in the connector"}
        )
        self.assertEqual(replies[2], {"id": 3, "ok": None})

    def test_a_call_before_init_and_an_unknown_type_are_refused(self):
        replies = exchange({"id": 1, "type": "call", "call": "check"}, {"id": 2, "type": "shout"})
        self.assertEqual(replies[0]["err"]["error"], "fatal")
        self.assertIn("before `init`", replies[0]["err"]["message"])
        self.assertIn("unknown message type `shout`", replies[1]["err"]["message"])

    def test_a_value_json_cannot_carry_is_a_fatal_reply(self):
        class Odd(Memory):
            def read(self, kind, cursor):
                return Page([record(kind, "1", {"x_ratio": float("nan")})])

        stdin = io.BytesIO(
            b'{"id":1,"type":"init","settings":{},"base_dir":"."}\n'
            b'{"id":2,"type":"call","call":"read","kind":"customer","cursor":null}\n'
        )
        stdout = io.BytesIO()
        serve(Odd, stdin, stdout)
        reply = json.loads(stdout.getvalue().splitlines()[1])
        self.assertEqual(reply["id"], 2)
        self.assertEqual(reply["err"]["error"], "fatal")
        self.assertIn("cannot be written as JSON", reply["err"]["message"])

    def test_errors_carry_their_keys(self):
        self.assertEqual(
            InvalidRecord("`colour` is not a field", id="7").to_json(),
            {"error": "invalid_record", "id": "7", "message": "`colour` is not a field"},
        )

    def test_print_goes_to_the_log_not_into_the_protocol(self):
        script = (
            "import sys; sys.path.insert(0, %r)\n"
            "from tandem_connector import Connector, run\n"
            "class Noisy(Connector):\n"
            "    def __init__(self, settings, base_dir):\n"
            "        print('hello from init')\n"
            "run(Noisy)\n" % SDK
        )
        out = subprocess.run(
            [sys.executable, "-c", script],
            input=b'{"id":1,"type":"init","settings":{},"base_dir":"."}\n',
            capture_output=True,
            check=True,
        )
        self.assertEqual(out.stdout, b'{"id":1,"ok":null}\n')
        self.assertIn(b"hello from init", out.stderr)


class ExampleConnector(unittest.TestCase):
    def test_the_sqlite_example_keeps_versions_and_refuses_unknown_names(self):
        with tempfile.TemporaryDirectory() as base:
            lines = [
                {"id": 1, "type": "describe"},
                {"id": 2, "type": "init", "settings": {"path": "erp.db", "kinds": ["vendor"]}, "base_dir": base},
                {"id": 3, "type": "call", "call": "write", "kind": "vendor", "ops": [
                    {"op": "create", "fields": {"name": "Nordwind"}},
                    {"op": "create", "fields": {"colour": "blue"}},
                ]},
                {"id": 4, "type": "call", "call": "write", "kind": "vendor", "ops": [
                    {"op": "update", "id": "1", "version": "1", "changes": {"city": "Hamburg"}},
                    {"op": "update", "id": "1", "version": "1", "changes": {"city": "Bremen"}},
                    {"op": "delete", "id": "99", "version": None},
                ]},
                {"id": 5, "type": "call", "call": "read", "kind": "customer", "cursor": None},
            ]
            out = subprocess.run(
                [sys.executable, EXAMPLE],
                input=b"".join(json.dumps(m).encode() + b"\n" for m in lines),
                capture_output=True,
                check=True,
                env={"PYTHONDONTWRITEBYTECODE": "1"},
            )
            replies = [json.loads(line) for line in out.stdout.splitlines()]
        created, refused = replies[2]["ok"]
        self.assertEqual(created["ok"]["version"], "1")
        self.assertEqual(refused["err"]["error"], "invalid_record")
        updated, stale, missing = replies[3]["ok"]
        self.assertEqual(updated["ok"]["version"], "2")
        self.assertEqual(stale["err"], {"error": "conflict", "id": "1"})
        self.assertEqual(missing["err"], {"error": "not_found", "id": "99"})
        self.assertEqual(replies[4]["err"]["error"], "config")


def python_files():
    roots = [os.path.join(SDK, "tandem_connector"), os.path.dirname(EXAMPLE)]
    for root in roots:
        for name in sorted(os.listdir(root)):
            if name.endswith(".py"):
                yield os.path.join(root, name)


class Python39(unittest.TestCase):
    """The SDK promises Python 3.9: no syntax and no run-time typing newer than that."""

    def test_the_syntax_is_that_of_python_3_9(self):
        for path in python_files():
            with open(path, encoding="utf-8") as f:
                source = f.read()
            with self.subTest(path=path):
                # Rejects `match` statements, parenthesised context managers, ...
                ast.parse(source, filename=path, feature_version=(3, 9))
                for node in ast.walk(ast.parse(source)):
                    self.assertNotIsInstance(node, getattr(ast, "Match", ()), path)

    def test_no_union_types_written_with_a_bar(self):
        """`int | None` fails at run time before 3.10 wherever it is evaluated:
        annotations (without `from __future__ import annotations`) and isinstance."""
        for path in python_files():
            with open(path, encoding="utf-8") as f:
                tree = ast.parse(f.read())
            annotations = []
            for node in ast.walk(tree):
                if isinstance(node, ast.arg) and node.annotation is not None:
                    annotations.append(node.annotation)
                elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.returns is not None:
                    annotations.append(node.returns)
                elif isinstance(node, ast.AnnAssign):
                    annotations.append(node.annotation)
                elif isinstance(node, ast.Call) and getattr(node.func, "id", "") in ("isinstance", "issubclass"):
                    annotations.extend(node.args[1:])
            for annotation in annotations:
                for node in ast.walk(annotation):
                    with self.subTest(path=path, line=getattr(node, "lineno", 0)):
                        self.assertFalse(
                            isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr),
                            "%s:%s uses X | Y" % (path, getattr(node, "lineno", "?")),
                        )

    def test_no_standard_library_names_newer_than_3_9(self):
        newer = ("zip(strict", "itertools.pairwise", "from typing import TypeAlias", "tomllib",
                 "ParamSpec", "typing.Self", "ExceptionGroup", "except*", "datetime.UTC")
        for path in python_files():
            with open(path, encoding="utf-8") as f:
                source = f.read()
            for name in newer:
                self.assertNotIn(name, source, "%s uses %s (newer than Python 3.9)" % (path, name))


if __name__ == "__main__":
    unittest.main()
