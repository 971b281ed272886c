"""Seeded train/validation splits and writing normalised datasets back to files."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl


def split_frame(
    frame: pl.DataFrame, fraction: float, seed: int
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Split off ``fraction`` of the rows (at least one) as validation, reproducibly per seed.

    Both parts keep the original row order. Raises ValueError when too few rows to split.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"validation fraction must be between 0 and 1, got {fraction}")
    if len(frame) < 2:
        raise ValueError(f"cannot split {len(frame)} row(s) into training and validation sets")
    size = min(max(1, round(len(frame) * fraction)), len(frame) - 1)
    indexed = frame.with_row_index("_row")
    picked = indexed.sample(n=size, seed=seed, shuffle=True)["_row"]
    is_val = pl.col("_row").is_in(picked.implode())
    return (
        indexed.filter(~is_val).drop("_row"),
        indexed.filter(is_val).drop("_row"),
    )


def write_dataset(frame: pl.DataFrame, path: Path) -> Path:
    """Write normalised rows: CSV for prompt/response, JSONL when any row is a chat.

    The suffix of ``path`` is replaced to match the format written; returns the path used.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if "messages" not in frame.columns or frame["messages"].null_count() == len(frame):
        target = path.with_suffix(".csv")
        frame.select("prompt", "response").write_csv(target)
        return target
    target = path.with_suffix(".jsonl")
    with target.open("w", encoding="utf-8") as out:
        for prompt, response, messages in frame.select(
            "prompt", "response", "messages"
        ).iter_rows():
            row = (
                {"messages": json.loads(messages)}
                if messages
                else {
                    "prompt": prompt,
                    "response": response,
                }
            )
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
    return target
