"""``make bench``: every benchmark in turn, its output as it comes, then one table of the
figures that have a goal: benchmark, figure, value, goal, met or not.

A benchmark states a goal on the line of its figure, as ``… 1.75x the baseline (goal >= 3x)``
or ``server overhead 22.6 % (goal <= 10 %)``: the number with its unit before ``(goal`` is the
value. A benchmark that fails is a row of its own. ``python benchmarks/summary.py NAME…`` runs
only those (``finetune``, ``serve``...).
"""

from __future__ import annotations

import operator
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = ["validate", "finetune", "completion", "serve", "load", "distributed"]
GOAL = re.compile(
    r"(?P<value>-?\d+(?:\.\d+)?)\s*(?P<unit>x|%)[^(\n]*\(goal (?P<op><=|>=|<|>) "
    r"(?P<goal>\d+(?:\.\d+)?)\s*(?:x|%)?\)"
)
COMPARE = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt}


@dataclass
class Figure:
    benchmark: str
    label: str
    value: str
    goal: str
    met: bool | None  # None: the benchmark failed, there is no value


def figures(benchmark: str, output: str) -> list[Figure]:
    """The figures with a goal in a benchmark's output, in the order printed."""
    found = []
    for line in output.splitlines():
        if match := GOAL.search(line):
            value, unit, op, goal = match.group("value", "unit", "op", "goal")
            label = line[: match.start()].strip(" :") or line.strip()
            met = COMPARE[op](float(value), float(goal))
            found.append(Figure(benchmark, label[:60], f"{value}{unit}", f"{op} {goal}{unit}", met))
    return found


def run(benchmark: str) -> list[Figure]:
    """Run one benchmark, echoing its output; its figures (or one row saying it failed)."""
    print(f"\n== benchmarks/{benchmark}.py", flush=True)
    proc = subprocess.Popen(
        [sys.executable, str(HERE / f"{benchmark}.py")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        print(line, end="", flush=True)
        lines.append(line)
    if proc.wait() != 0:
        return [Figure(benchmark, f"failed (exit {proc.returncode})", "", "", None)]
    return figures(benchmark, "".join(lines))


def table(rows: list[Figure]) -> str:
    """The summary as aligned text."""
    head = ("benchmark", "figure", "value", "goal", "met")
    cells = [head] + [
        (r.benchmark, r.label, r.value, r.goal, {True: "yes", False: "NO", None: "—"}[r.met])
        for r in rows
    ]
    widths = [max(len(c[k]) for c in cells) for k in range(len(head))]
    lines = ("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells)
    return "\n".join(line.rstrip() for line in lines)


def main(names: list[str]) -> None:
    unknown = set(names) - set(BENCHMARKS)
    if unknown:
        sys.exit(f"unknown benchmark(s) {sorted(unknown)}: choose from {BENCHMARKS}")
    rows = [figure for name in names or BENCHMARKS for figure in run(name)]
    print("\n== summary\n" + table(rows))


if __name__ == "__main__":
    main(sys.argv[1:])
