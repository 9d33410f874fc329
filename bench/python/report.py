"""Prints the markdown tables of saved results (bench/python/results/{dbm,shelve}.json, or the
files given), as dbm_bench.py / shelve_bench.py printed them, with the date, load and versions.

Usage: python bench/python/report.py [results.json ...]
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402


def main() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    paths = sys.argv[1:] or [os.path.join(here, "results", f) for f in ("dbm.json", "shelve.json")]
    for path in paths:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
        m, after = doc["machine"], doc.get("machine_after", doc["machine"])
        print(f"### {doc['benchmark']}")
        print()
        print(
            f"n = {doc['n']:,}; {m['date']}; Python {m['python']}; {m['cpus']} CPUs; load "
            f"average {m['loadavg'][0]} at the start, {after['loadavg'][0]} at the end."
        )
        if "versions" in doc:
            print("Versions: " + ", ".join(f"{k} {v}" for k, v in doc["versions"].items()) + ".")
        print()
        print(common.table(doc["results"], "").lstrip("\n"))
        print()


if __name__ == "__main__":
    main()
