"""`make bench`'s closing table reads each benchmark's goal lines as they are printed."""

from __future__ import annotations

from benchmarks.summary import Figure, figures, table

OUTPUT = """\
baseline  one-at-a-time generate: 2039 tokens in 156.7 s = 13.0 tokens/s
ratio 12.45x (goal >= 5x); identical answers 32/32
ratio: loraflow is 1.75x the baseline (goal >= 3x)
the same load in process: 119.7 tokens/s; server overhead 22.6 % (goal <= 10 %)
  eval loss difference: 0.12 % (goal < 1 %)
ratio (HTTP / in process, requests/s): 0.89x
"""


def test_each_goal_line_is_a_figure_met_or_not() -> None:
    found = figures("mixed", OUTPUT)
    assert [(f.value, f.goal, f.met) for f in found] == [
        ("12.45x", ">= 5x", True),
        ("1.75x", ">= 3x", False),
        ("22.6%", "<= 10%", False),
        ("0.12%", "< 1%", True),
    ]
    assert found[1].label == "ratio: loraflow is"
    assert "server overhead" in found[2].label


def test_the_table_has_a_row_a_figure_and_a_failed_benchmark_says_so() -> None:
    rows = [*figures("completion", "ratio 12.45x (goal >= 5x)\n")]
    rows.append(Figure("serve", "failed (exit 1)", "", "", None))
    lines = table(rows).splitlines()
    assert lines[0].split() == ["benchmark", "figure", "value", "goal", "met"]
    assert lines[1].split()[-1] == "yes" and "12.45x" in lines[1]
    assert lines[2].startswith("serve") and "failed (exit 1)" in lines[2]
