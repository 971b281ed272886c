"""Benchmark: read + validate a 1,000,000-row (~190 MB) prompt/response CSV.

loraflow (pandera's polars backend) against the same checks with pandera's pandas backend, on
the same file in this one process. Prints each median time and the ratio.

    python benchmarks/validate.py [--rows 1000000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import csv
import random
import statistics
import time
from pathlib import Path

DATA = Path(__file__).parent / ".data"
WORDS = [
    "the",
    "a",
    "to",
    "of",
    "and",
    "in",
    "is",
    "for",
    "on",
    "with",
    "how",
    "can",
    "i",
    "my",
    "order",
    "refund",
    "account",
    "password",
    "shipping",
    "delivery",
    "change",
    "cancel",
    "update",
    "please",
    "help",
    "reset",
    "card",
    "payment",
    "invoice",
    "address",
    "email",
]
MAX_CHARS = 32_768


def make_csv(rows: int) -> Path:
    """A realistic-looking CSV of ``rows`` distinct pairs (~190 bytes a row), cached on disk."""
    path = DATA / f"prompts-{rows}.csv"
    if path.exists():
        return path
    DATA.mkdir(exist_ok=True)
    rng = random.Random(0)
    partial = path.with_suffix(".partial")
    with partial.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["prompt", "response"])
        for i in range(rows):
            prompt = " ".join(rng.choices(WORDS, k=21)) + "?"
            response = " ".join(rng.choices(WORDS, k=12)) + f". Ticket {i}."
            writer.writerow([prompt, response])
    partial.replace(path)
    return path


def run_loraflow(path: Path, rows: int) -> tuple[int, int]:
    from loraflow.data import validate
    from loraflow.settings import ValidationConfig

    report = validate(path, config=ValidationConfig(max_rows=rows + 1)).report
    return report.rows, len(report.errors)


def pandas_schema():  # type: ignore[no-untyped-def]
    import pandera.pandas as pa

    def text() -> pa.Column:
        return pa.Column(
            str,
            nullable=False,
            checks=[
                pa.Check(lambda s: s.str.contains(r"\S"), error="not_blank"),
                pa.Check.str_length(max_value=MAX_CHARS),
            ],
        )

    return pa.DataFrameSchema(
        {"prompt": text(), "response": text()},
        checks=[pa.Check(lambda df: ~df.duplicated(["prompt", "response"]), error="duplicate")],
    )


def run_pandas(path: Path, rows: int) -> tuple[int, int]:
    import pandas as pd
    from pandera.errors import SchemaErrors

    frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    try:
        pandas_schema().validate(frame, lazy=True)
    except SchemaErrors as exc:
        return len(frame), len(exc.failure_cases)
    return len(frame), 0


def timed(func, path: Path, rows: int, repeat: int) -> tuple[float, float, tuple[int, int]]:  # type: ignore[no-untyped-def]
    func(path, rows)  # warm up: imports, page cache
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        result = func(path, rows)
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    path = make_csv(args.rows)
    size_mb = path.stat().st_size / 1e6
    print(f"dataset: {path.name}, {args.rows:,} rows, {size_mb:.0f} MB")
    ours, ours_best, ours_result = timed(run_loraflow, path, args.rows, args.repeat)
    print(
        f"loraflow (pandera polars): median {ours:.3f} s, best {ours_best:.3f} s, "
        f"rows/errors {ours_result}"
    )
    base, base_best, base_result = timed(run_pandas, path, args.rows, args.repeat)
    print(
        f"baseline (pandera pandas): median {base:.3f} s, best {base_best:.3f} s, "
        f"rows/errors {base_result}"
    )
    assert ours_result == base_result, "both must see the same rows and the same errors"
    print(
        f"ratio: loraflow is {base / ours:.1f}x faster (goal >= 2x); "
        f"loraflow {'meets' if ours <= 1.0 else 'misses'} the 1 s budget"
    )


if __name__ == "__main__":
    main()
