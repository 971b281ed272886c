"""`make bench`'s closing table reads each benchmark's goal lines as they are printed."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from benchmarks.summary import GPU_BENCHMARKS, Figure, figures, table

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


def test_a_unitless_goal_and_a_skipped_benchmark_are_rows() -> None:
    output = (
        "server CPU per token ratio: 1.04 (goal <= 1.10)\n"
        "loraflow MFU over the run: 24.4% of the measured matmul peak (goal >= 40 %); 553 MFLOP\n"
        "loraflow MFU in steady state: 40.2% (goal >= 40 %): the second epoch of a two-epoch run\n"
        "skipped: --device cuda, but torch sees no CUDA device\n"
    )
    found = figures("x", output)
    assert [(f.label, f.value, f.goal, f.met) for f in found] == [
        ("skipped: --device cuda, but torch sees no CUDA device", "", "", None),
        ("server CPU per token ratio", "1.04", "<= 1.10", True),
        ("loraflow MFU over the run", "24.4%", ">= 40%", False),
        ("loraflow MFU in steady state", "40.2%", ">= 40%", True),
    ]


def test_gpu_sh_on_a_machine_without_a_gpu_installs_nothing_and_says_what_it_skipped(
    tmp_path: Path,
) -> None:
    """benchmarks/gpu.sh's CPU fallback, as it runs here: every GPU benchmark is a skipped row."""
    root = Path(__file__).resolve().parents[1]
    bare = tmp_path / "bin"  # a PATH with python and the basics, without nvidia-smi
    bare.mkdir()
    for tool in ("dirname", "date"):
        (bare / tool).symlink_to(shutil.which(tool) or "")
    (bare / "python3").symlink_to(sys.executable)
    done = subprocess.run(
        [shutil.which("bash") or "bash", str(root / "benchmarks/gpu.sh")],
        env={"PATH": str(bare), "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    rows = done.stdout.split("== GPU benchmarks, summary")[1].strip().splitlines()[1:]
    assert [r.split()[0] for r in rows] == GPU_BENCHMARKS == ["finetune", "completion"]
    assert all("skipped: no NVIDIA GPU here (nvidia-smi not found)" in r for r in rows)
    assert not (root / ".venv-gpu").exists()


def test_the_gpu_benchmarks_skip_without_cuda_and_say_so() -> None:
    root = Path(__file__).resolve().parents[1]
    for name in GPU_BENCHMARKS:
        done = subprocess.run(
            [sys.executable, str(root / f"benchmarks/{name}.py"), "--device", "cuda"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "skipped: --device cuda, but torch sees no CUDA device"
