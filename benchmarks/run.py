"""Run every benchmark and print a summary: figure, limit, ratio, goal, PASS or BELOW.

Benchmarks report, they do not fail CI: this exits 0 whatever the ratios, and even
when a benchmark breaks (its traceback goes to stderr and its row says ERROR).

    python benchmarks/run.py [--quick] [--json]
"""

import argparse
import json
import sys
import time
import traceback

import benchlib  # noqa: F401  (puts the repository on sys.path)
from benchlib import Figure, fmt, print_figures

import bench_codec
import bench_pos
import bench_propagation
import bench_rpc
import bench_sim
import bench_startup
import bench_tps
import bench_transfers

BENCHMARKS = [
    ("transfers", bench_transfers),
    ("sim", bench_sim),
    ("pos", bench_pos),
    ("codec", bench_codec),
    # Real node processes on 127.0.0.1 (benchmarks/netlib.py); every process is stopped at the end.
    ("rpc", bench_rpc),
    ("startup", bench_startup),
    ("propagation", bench_propagation),
    ("tps", bench_tps),
]


def table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def summary_rows(results: list[dict]) -> list[list[str]]:
    rows = [["benchmark", "figure", "value", "limit", "ratio", "goal", "status"]]
    for result in results:
        if result["error"]:
            rows.append([result["benchmark"], result["error"], "-", "-", "-", "-", "ERROR"])
            continue
        for f in result["figures"]:
            rows.append([
                f.benchmark,
                f.name,
                f"{fmt(f.value)} {f.unit}",
                fmt(f.limit) if f.limit is not None else "-",
                f"{f.ratio:.2f}" if f.ratio is not None else "-",
                f">= {f.goal:.2f}" if f.goal is not None else "-",
                f.status,
            ])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few-second smoke run of every benchmark")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args()
    # With --json, stdout carries only the JSON; progress goes to stderr.
    progress = sys.stderr if args.json else sys.stdout

    started = time.perf_counter()
    results = []
    for name, module in BENCHMARKS:
        print(f"== {name}", file=progress, flush=True)
        t0 = time.perf_counter()
        figures: list[Figure] = []
        error = None
        try:
            figures = module.main(args.quick)
        except Exception as exc:  # a broken benchmark is reported, it does not stop the others
            traceback.print_exc()
            error = f"{type(exc).__name__}: {exc}"
        wall = time.perf_counter() - t0
        print_figures(figures, out=progress)
        print(f"   ({wall:.1f} s)", file=progress, flush=True)
        results.append({"benchmark": name, "wall_s": wall, "figures": figures, "error": error})
    total = time.perf_counter() - started

    judged = [f for r in results for f in r["figures"] if f.status in ("PASS", "BELOW")]
    counts = {
        "pass": sum(f.status == "PASS" for f in judged),
        "below": sum(f.status == "BELOW" for f in judged),
        "error": sum(1 for r in results if r["error"]),
    }
    if args.json:
        print(json.dumps({
            "quick": args.quick,
            "wall_s": round(total, 2),
            "summary": counts,
            "benchmarks": [{"benchmark": r["benchmark"], "wall_s": round(r["wall_s"], 2), "error": r["error"],
                            "figures": [f.to_json() for f in r["figures"]]} for r in results],
        }, indent=2))
    else:
        print()
        print(table(summary_rows(results)))
        print(f"\n{counts['pass']} PASS, {counts['below']} BELOW, {counts['error']} ERROR in {total:.1f} s"
              f"{' (quick: smoke sizes, not figures to quote)' if args.quick else ''}")
    sys.exit(0)


if __name__ == "__main__":
    main()
