"""Per-packet Markdown table from a pytest-benchmark JSON file of the data-path grid.

    pytest benchmarks --benchmark-only --benchmark-json=grid.json
    python -m benchmarks.grid_table grid.json

pytest-benchmark reports time per call; the grid's calls carry ``extra_info["packets"]``
packets each, so this divides to ns per packet and Mpps, which is what compares across
batch sizes.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from natt.cli import run_script, say


def rows(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per benchmark: its test parameters and per-packet min/median in ns."""
    out = []
    for b in doc["benchmarks"]:
        info = b.get("extra_info", {})
        packets = int(info.get("packets", 1))
        stats = b["stats"]
        out.append({
            "name": b["name"], "group": b.get("group") or "", "packets": packets,
            "threads": info.get("threads", 1), "sas": info.get("sas", 1), "backend": info.get("backend", ""),
            "min_ns": stats["min"] / packets * 1e9, "median_ns": stats["median"] / packets * 1e9,
            "rounds": stats["rounds"],
        })
    return sorted(out, key=lambda r: (r["group"], r["backend"], r["packets"], r["threads"], r["sas"]))


def markdown(doc: dict[str, Any]) -> str:
    lines = ["| group | backend | batch | threads | SAs | ns/packet min | median | Mpps (median) | rounds |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows(doc):
        lines.append(f"| {r['group']} | {r['backend']} | {r['packets']} | {r['threads']} | {r['sas']} | "
                     f"{r['min_ns']:.0f} | {r['median_ns']:.0f} | {1e3 / r['median_ns']:.3f} | {r['rounds']} |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.grid_table", description=__doc__.split("\n\n")[0],
                                     epilog="Make the file with: pytest benchmarks --benchmark-only "
                                            "--benchmark-json=grid.json")
    parser.add_argument("json", metavar="GRID.json", help="pytest-benchmark's --benchmark-json output")
    args = parser.parse_args(argv)
    try:
        with open(args.json) as f:
            doc = json.load(f)
    except OSError as e:
        parser.error(f"cannot read {args.json}: {e.strerror or e}")
    except ValueError as e:
        parser.error(f"{args.json}: not JSON ({e})")
    if not isinstance(doc, dict) or not isinstance(doc.get("benchmarks"), list):
        parser.error(f"{args.json}: not a pytest-benchmark JSON file (no 'benchmarks' list)")
    say(markdown(doc))
    return 0


if __name__ == "__main__":
    run_script(lambda: main(sys.argv[1:]))
