"""``make bench``: every benchmark in turn, its output as it comes, then one table of the
figures that have a goal: benchmark, figure, value, goal, met or not.

A benchmark states a goal on the line of its figure, as ``… 1.75x the baseline (goal >= 3x)``,
``server overhead 22.6 % (goal <= 10 %)`` or ``ratio: 1.05 (goal <= 1.10)``: the number (and
unit) before ``(goal`` is the value. A benchmark that fails is a row of its own; one that prints
``skipped: REASON`` is a row saying so. ``python benchmarks/summary.py NAME…`` runs only those
(``finetune``, ``serve``...).

``--gpu`` runs the benchmarks that need a GPU, each with ``--device cuda`` (``benchmarks/gpu.sh``
installs and calls it); ``--gpu --skip REASON`` runs none and prints their rows as skipped.
It needs nothing outside the standard library, so the skip table prints on a bare machine.
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
GPU_BENCHMARKS = ["finetune", "completion"]  # each run with --device cuda
GOAL = re.compile(
    r"(?P<value>-?\d+(?:\.\d+)?)\s*(?P<unit>x|%)?[^(\n\d]*\(goal (?P<op><=|>=|<|>) "
    r"(?P<goal>\d+(?:\.\d+)?)\s*(?:x|%)?\)"
)
SKIPPED = re.compile(r"^skipped: (?P<reason>.+)$", re.MULTILINE)
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
    found = [
        Figure(benchmark, f"skipped: {m.group('reason').strip()}", "", "", None)
        for m in SKIPPED.finditer(output)
    ]
    for line in output.splitlines():
        if match := GOAL.search(line):
            value, unit, op, goal = match.group("value", "unit", "op", "goal")
            label = line[: match.start()].strip(" :") or line.strip()
            met = COMPARE[op](float(value), float(goal))
            unit = unit or ""
            found.append(Figure(benchmark, label[:60], f"{value}{unit}", f"{op} {goal}{unit}", met))
    return found


def run(benchmark: str, args: list[str] | None = None) -> list[Figure]:
    """Run one benchmark, echoing its output; its figures (or one row saying it failed)."""
    args = args or []
    print(f"\n== benchmarks/{benchmark}.py {' '.join(args)}".rstrip(), flush=True)
    proc = subprocess.Popen(
        [sys.executable, str(HERE / f"{benchmark}.py"), *args],
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


def main(argv: list[str]) -> None:
    if argv[:1] == ["--gpu"]:
        if argv[1:2] == ["--skip"]:
            reason = " ".join(argv[2:]) or "no GPU"
            rows = [Figure(name, f"skipped: {reason}", "", "", None) for name in GPU_BENCHMARKS]
        else:
            rows = [f for name in GPU_BENCHMARKS for f in run(name, ["--device", "cuda"])]
        print("\n== GPU benchmarks, summary\n" + table(rows))
        return
    unknown = set(argv) - set(BENCHMARKS)
    if unknown:
        sys.exit(f"unknown benchmark(s) {sorted(unknown)}: choose from {BENCHMARKS}")
    rows = [figure for name in argv or BENCHMARKS for figure in run(name)]
    print("\n== summary\n" + table(rows))


if __name__ == "__main__":
    main(sys.argv[1:])
