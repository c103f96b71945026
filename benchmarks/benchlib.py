"""What every benchmark shares: best-of timing, one line per figure, --quick and --json.

A figure is compared with a limit measured in the same run on the same machine
(DESIGN.md section 7), so the ratio means something on a busy laptop and on a fast CI
runner alike; the absolute numbers are printed too, but only the ratio has a goal.
Figures without a goal are context: they help explain a ratio, they are not judged.
"""

import argparse
import gc
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

# Run as `python benchmarks/x.py` from anywhere: make the repository importable even
# when chainlab is not installed into the interpreter that runs us.
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@dataclass
class Figure:
    benchmark: str  # short name of the benchmark that measured it
    name: str  # what was measured, in words
    value: float
    unit: str
    limit: float | None = None  # the same quantity for the limit, measured in this run
    limit_name: str = ""  # what the limit is, in words
    ratio: float | None = None
    goal: float | None = None  # the ratio must be >= this; None marks a context figure
    goal_text: str = ""  # the goal in words, when ">= goal" alone would not say it
    note: str = ""

    @property
    def status(self) -> str:
        if self.goal is None or self.ratio is None:
            return "info"
        return "PASS" if self.ratio >= self.goal else "BELOW"

    def line(self) -> str:
        parts = [f"{self.name}: {fmt(self.value)} {self.unit}"]
        if self.limit is not None:
            parts.append(f"limit {fmt(self.limit)} ({self.limit_name})")
        elif self.limit_name:
            parts.append(f"limit: {self.limit_name}")
        if self.ratio is not None:
            parts.append(f"ratio {self.ratio:.2f}")
        if self.goal is not None:
            parts.append(f"goal >= {self.goal:.2f}{' (' + self.goal_text + ')' if self.goal_text else ''}")
        parts.append(self.status)
        line = " | ".join(parts)
        return f"{line}  [{self.note}]" if self.note else line

    def to_json(self) -> dict:
        return {
            "benchmark": self.benchmark,
            "name": self.name,
            "value": round_sig(self.value),
            "unit": self.unit,
            "limit": round_sig(self.limit) if self.limit is not None else None,
            "limit_name": self.limit_name,
            "ratio": round(self.ratio, 4) if self.ratio is not None else None,
            "goal": self.goal,
            "goal_text": self.goal_text,
            "status": self.status,
            "note": self.note,
        }


def fmt(x: float) -> str:
    """Readable magnitude: thousands separators for big numbers, 3 significant digits for small."""
    if x >= 1000:
        return f"{x:,.0f}"
    if x >= 100:
        return f"{x:.0f}"
    return f"{x:.3g}"


def round_sig(x: float, digits: int = 6) -> float:
    return float(f"{x:.{digits}g}")


def time_once(fn: Callable[[], object], number: int = 1) -> float:
    """Seconds per call of `fn`, over `number` back-to-back calls."""
    gc.collect()  # start every repetition from the same garbage level
    start = time.perf_counter()
    for _ in range(number):
        fn()
    return (time.perf_counter() - start) / number


def best_interleaved(fns: dict[str, Callable[[], object]], repeat: int, number: int = 1) -> dict[str, float]:
    """Best seconds per call of each function, measured in turns.

    Alternating the candidates within each repetition means a burst of load from
    another process hits the figure and its limit alike, and the minimum over the
    repetitions drops such bursts.
    """
    best = {name: float("inf") for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            best[name] = min(best[name], time_once(fn, number))
    return best


def print_figures(figures: list[Figure], out=sys.stdout) -> None:
    for figure in figures:
        print(figure.line(), file=out, flush=True)


def cli(benchmark: str, main: Callable[[bool], list[Figure]], description: str) -> None:
    """The command line every benchmark script shares."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="a few-second smoke run with smaller sizes")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of lines")
    args = parser.parse_args()
    figures = main(args.quick)
    if args.json:
        print(json.dumps({"benchmark": benchmark, "quick": args.quick,
                          "figures": [f.to_json() for f in figures]}, indent=2))
    else:
        print_figures(figures)
