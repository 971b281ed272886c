"""The layer rules of ARCHITECTURE.md hold, and the check really fails when one is broken."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")
CODE = ("src", "flows", "tasks", "deployments")


def lint(root: Path) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"PYTHONPATH": f"{root / 'src'}{os.pathsep}{root}"}
    return subprocess.run(
        [str(LINT), "--no-cache", "--no-logo"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_tree_keeps_every_layer_rule() -> None:
    result = lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "planted", "contract"),
    [
        ("src/loraflow/completion.py", "import tasks.files", "ops edge sits on flows"),
        ("src/loraflow/registry.py", "import loraflow.sdk.model", "never reaches up"),
        ("src/loraflow/storage/base.py", "import loraflow.files", "No import cycles"),
        ("tasks/promote.py", "import flows.promote", "ops edge sits on flows"),
    ],
)
def test_a_planted_violation_breaks_the_check(
    tmp_path: Path, module: str, planted: str, contract: str
) -> None:
    for part in CODE:
        shutil.copytree(ROOT / part, tmp_path / part, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    target = tmp_path / module
    target.write_text(target.read_text() + f"\n{planted}  # planted\n")
    result = lint(tmp_path)
    assert result.returncode != 0
    broken = result.stdout.split("Broken contracts", 1)[-1]
    assert contract in broken and planted.split()[-1].rsplit(".", 1)[-1] in broken


def test_no_module_is_over_400_lines() -> None:
    long = {
        str(path.relative_to(ROOT)): n
        for part in CODE
        for path in (ROOT / part).rglob("*.py")
        if (n := len(path.read_text().splitlines())) > 400
    }
    assert long == {}
