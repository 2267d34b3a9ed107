"""Helpers of scripts/bench-partitions: point a tandem.toml at a state, and edit the
phone of every n-th account of a CSV file (written whole, then renamed into place, as
a user's program would)."""

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


if __name__ == "__main__":
    {"configure": configure, "edit": edit}[sys.argv[1]](*sys.argv[2:])
