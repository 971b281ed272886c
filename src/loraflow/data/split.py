"""Seeded train/validation splits, and normalised rows back to file bytes."""

from __future__ import annotations

import json

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


def encode_rows(frame: pl.DataFrame) -> tuple[bytes, str]:
    """Normalised rows as a file's bytes and its suffix: CSV for prompt/response rows, JSONL
    when any row is a chat."""
    if "messages" not in frame.columns or frame["messages"].null_count() == len(frame):
        return frame.select("prompt", "response").write_csv().encode(), ".csv"
    lines = []
    for prompt, response, messages in frame.select("prompt", "response", "messages").iter_rows():
        row = (
            {"messages": json.loads(messages)}
            if messages
            else {"prompt": prompt, "response": response}
        )
        lines.append(json.dumps(row, ensure_ascii=False) + "\n")
    return "".join(lines).encode(), ".jsonl"
