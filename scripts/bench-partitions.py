"""Helpers of scripts/bench-partitions: point a tandem.toml at a state, edit the phone
of every n-th account of a CSV file (written whole, then renamed into place, as a
user's program would), and tell whether a worker ran since a line of its log."""

import csv
import os
import re
import sys


def configure(path: str, url: str, partitions: str) -> None:
    text = open(path).read()
    text = re.sub(
        r'\[state\]\n(url = "[^"]*"\n)?(partitions = \d+\n)?',
        f'[state]\nurl = "{url}"\npartitions = {partitions}\n',
        text,
        count=1,
    )
    if "[service]" not in text:
        text += '\n[service]\npoll_interval = "1s"\n'
    open(path, "w").write(text)


def edit(path: str, every: str) -> None:
    rows = list(csv.reader(open(path, newline="")))
    phone = rows[0].index("phone")
    for i, row in enumerate(rows[1:]):
        if i % int(every) == 0:
            row[phone] = f"+32 3 {i:09}"
    with open(path + ".new", "w", newline="") as out:
        csv.writer(out, lineterminator="\n").writerows(rows)
    os.replace(path + ".new", path)


def ran_since(log: str, line: str) -> None:
    """Exits 0 when the worker's log shows a run begun after its line `line` that
    ended (a read, then the loop's `sync run N:` line), 1 otherwise."""
    lines = open(log).read().splitlines()[int(line):]
    began = next((i for i, l in enumerate(lines) if l.startswith("reading connector=")), None)
    ended = began is not None and any("sync run " in l for l in lines[began:])
    sys.exit(0 if ended else 1)


if __name__ == "__main__":
    {"configure": configure, "edit": edit, "ran_since": ran_since}[sys.argv[1]](*sys.argv[2:])
