#!/usr/bin/env python3
"""A process connector that misbehaves on purpose, for Tandem's tests.

It answers `describe`, `init`, `info` and `read` correctly (one customer record) and
misbehaves on `check` as its first argument says:

    exit      exits with status 3 without answering
    hang      never answers
    garbage   answers with a line that is not JSON
    wrong_id  answers with another request's id
    oversized answers with a line of 2 MiB
    deaf      stops reading stdin after `info` (so a large request fills the pipe)
    env       answers with an error listing the names in its environment
    ok        answers correctly
"""

import json
import os
import sys
import time

mode = sys.argv[1]


def reply(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


sys.stderr.write("warn: misbehaving child started in mode %s\n" % mode)
sys.stderr.flush()
for raw in sys.stdin:
    message = json.loads(raw)
    id = message["id"]
    kind = message["type"]
    call = message.get("call")
    if kind == "describe":
        reply(json.dumps({"id": id, "ok": {"name": "misbehaving", "version": "1", "abi_version": 1, "type_name": "misbehaving"}}))
    elif kind == "init":
        reply(json.dumps({"id": id, "ok": None}))
    elif call == "info":
        capabilities = {"kinds": ["customer"], "incremental": False, "write": True, "delete": True, "max_batch": 10}
        reply(json.dumps({"id": id, "ok": {"name": "misbehaving", "version": "1", "capabilities": capabilities}}))
        if mode == "deaf":
            time.sleep(3600)
    elif call == "read":
        record = {"id": "K1", "kind": "customer", "fields": {"name": "Still here"}, "version": "1"}
        reply(json.dumps({"id": id, "ok": {"records": [record], "listing": "full", "cursor": None, "has_more": False}}))
    elif call == "check" and mode == "exit":
        sys.exit(3)
    elif call == "check" and mode == "hang":
        time.sleep(3600)
    elif call == "check" and mode == "garbage":
        reply("hello, this is not JSON")
    elif call == "check" and mode == "wrong_id":
        reply(json.dumps({"id": id + 100, "ok": None}))
    elif call == "check" and mode == "oversized":
        reply(json.dumps({"id": id, "ok": None, "padding": "x" * (2 * 1024 * 1024)}))
    elif call == "check" and mode == "env":
        names = ",".join(sorted(os.environ))
        reply(json.dumps({"id": id, "err": {"error": "fatal", "message": names}}))
    else:
        reply(json.dumps({"id": id, "ok": None}))
