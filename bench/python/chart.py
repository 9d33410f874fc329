"""Draws docs/benchmarks-python.svg from the saved results (bench/python/results/{dbm,shelve}.json):
for each benchmark, three panels of horizontal bars (writes/s and reads/s on a log scale, file
size in MB), one bar per store in the store's default mode, cellar's bars highlighted.

Usage: python bench/python/chart.py [OUT.svg]   (default: docs/benchmarks-python.svg)
Plain SVG written by hand: no plotting library needed. The test command regenerates the chart
and fails if the committed one differs, so it always shows the saved results.
"""

from __future__ import annotations

import json
import math
import os
import sys
from html import escape

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

ROW = 18
LABEL_W = 300
PANEL_W = 190
GAP = 24
TITLE_H = 44
PANELS = (
    ("writes/s", "write", True),
    ("reads/s", "read", True),
    ("file size (MB)", "size", False),
)


def _rows(doc: dict) -> list[dict]:
    rows = []
    for r in doc["results"]:
        if r.get("status") != "ok" or r.get("mode") != "default":
            continue
        n = r["n"]
        rows.append(
            {
                "label": r["label"],
                "cellar": r["label"].startswith("cellar"),
                "write": n / r["write_s"] if r.get("write_s") else None,
                "read": n / r["read_s"] if r.get("read_s") else None,
                "size": r["file_bytes"] / 1e6 if r.get("file_bytes") else None,
            }
        )
    return rows


def _fmt(v: float, key: str) -> str:
    if key == "size":
        return f"{v:.1f}"
    return f"{v / 1000:.0f}k" if v >= 10_000 else f"{v / 1000:.1f}k"


def _panel(rows: list[dict], key: str, log: bool, x0: int, y0: int) -> list[str]:
    vals = [r[key] for r in rows if r[key]]
    top = max(vals)
    low = min(vals)
    out = []
    for i, r in enumerate(rows):
        y = y0 + i * ROW
        v = r[key]
        if not v:
            out.append(f'<text x="{x0 + 4}" y="{y + 12}" class="n">-</text>')
            continue
        if log:
            lo = math.log10(low) - 0.3
            frac = (math.log10(v) - lo) / (math.log10(top) - lo)
        else:
            frac = v / top
        w = max(2, round(frac * (PANEL_W - 48)))
        cls = "c" if r["cellar"] else "p"
        out.append(f'<rect x="{x0}" y="{y + 3}" width="{w}" height="{ROW - 6}" class="{cls}"/>')
        out.append(f'<text x="{x0 + w + 3}" y="{y + 12}" class="n">{_fmt(v, key)}</text>')
    return out


def svg(docs: list[dict]) -> str:
    parts = []
    y = 0
    for doc in docs:
        rows = _rows(doc)
        m = doc["machine"]
        parts.append(f'<text x="0" y="{y + 16}" class="t">{escape(doc["benchmark"])}</text>')
        parts.append(
            f'<text x="0" y="{y + 32}" class="s">n = {doc["n"]:,}, {escape(m["date"])}, Python '
            f'{escape(m["python"])}, {m["cpus"]} CPUs; default mode of each store; writes and reads on a log scale</text>'
        )
        y += TITLE_H
        for j, (title, key, log) in enumerate(PANELS):
            x0 = LABEL_W + j * (PANEL_W + GAP)
            parts.append(f'<text x="{x0}" y="{y + 10}" class="h">{title}</text>')
            parts += _panel(rows, key, log, x0, y + 14)
        for i, r in enumerate(rows):
            cls = "lc" if r["cellar"] else "l"
            parts.append(f'<text x="{LABEL_W - 8}" y="{y + 14 + i * ROW + 12}" class="{cls}">{escape(r["label"])}</text>')
        y += 14 + len(rows) * ROW + 24
    width = LABEL_W + len(PANELS) * (PANEL_W + GAP) + 8
    style = (
        "text{font-family:sans-serif;font-size:11px;fill:#222}"
        ".t{font-size:14px;font-weight:bold}.s{fill:#555}.h{font-weight:bold}"
        ".l,.lc{text-anchor:end}.lc{font-weight:bold}.n{fill:#444;font-size:10px}"
        ".c{fill:#b5462f}.p{fill:#8a9bb0}"
    )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{y}" viewBox="0 0 {width} {y}">\n'
        f'<rect width="100%" height="100%" fill="#fff"/>\n<style>{style}</style>\n<g transform="translate(8,0)">\n'
        + "\n".join(parts)
        + "\n</g>\n</svg>\n"
    )


def main() -> None:
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "docs", "benchmarks-python.svg")
    docs = []
    for name in ("dbm.json", "shelve.json"):
        with open(os.path.join(HERE, "results", name), encoding="utf-8") as f:
            docs.append(json.load(f))
    with open(out, "w", encoding="utf-8") as f:
        f.write(svg(docs))


if __name__ == "__main__":
    main()
