"""Every command and code block of the README runs as written, after `make demo` and `make up`.

The fixture does what a new user does: runs the demo on the embedded defaults (no stack), then
starts the stack, which must show the demo's fine-tune (one history). Then, in README order:
each ```python block in a fresh interpreter, each ```bash block in bash, and each `$ command`
of a ```text transcript (its exit code must be the one the transcript shows, else 0). A block
that cannot run here says why in a `<!-- readme-test: skip: REASON -->` line above its fence.

Only two things differ from a user's machine, both at loraflow's seams: the base model named
`smollm2-135m-instruct` is the tiny Llama built from config (a zoo file of the test's own,
`LORAFLOW_MODELS_ZOO`), so the README's model names stay as written and the run takes minutes,
not an hour (the real SmolLM2 path has its own smoke tests); and the stack's ports are free
ones, so the README's 4200/5000/5005 are replaced by them in the commands.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from tests.conftest import free_port
from tests.helpers import stack_env

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
pytestmark = [pytest.mark.slow, pytest.mark.readme]  # make test-readme runs them
SKIP = re.compile(r"<!-- readme-test: skip: (?P<reason>.+?) -->")


@dataclass
class Block:
    line: int  # of the opening fence, as an editor counts
    language: str
    code: str
    skip: str | None  # the reason, when it cannot run here

    @property
    def where(self) -> str:
        return f"README.md:{self.line} ({self.language})"


def blocks(text: str) -> list[Block]:
    """The fenced blocks of ``text``, with the skip reason written above each."""
    found, lines = [], text.splitlines()
    n = 0
    while n < len(lines):
        fence = re.match(r"^```(\w*)\s*$", lines[n])
        if not fence:
            n += 1
            continue
        end = next(k for k in range(n + 1, len(lines)) if lines[k].startswith("```"))
        above = next((lines[k] for k in range(n - 1, -1, -1) if lines[k].strip()), "")
        skip = SKIP.search(above)
        code = "\n".join(lines[n + 1 : end]) + "\n"
        found.append(Block(n + 1, fence.group(1), code, skip and skip.group("reason")))
        n = end + 1
    return found


@dataclass
class Command:
    line: str
    code: int = 0  # the exit code the transcript shows (after `echo $?`), else 0
    says: list[str] = field(default_factory=list)  # "word:" its output lines start with


def transcript_commands(code: str) -> list[Command]:
    """The `$ command` lines of a transcript, each with the exit code it shows (the number
    printed after an `echo $?` on its line or the next `$` line, else 0) and the `word:` that
    begins each of its output lines that has one (`promoted:`, `serve:`...)."""
    commands: list[Command] = []
    lines = code.splitlines()
    for k, line in enumerate(lines):
        if not line.startswith("$ "):
            if commands and (said := re.match(r"^[a-z][\w/.-]*:(?=\s)", line)):
                commands[-1].says.append(said.group())
            continue
        command = line[2:].split("  #")[0].strip()
        shows_code = command == "echo $?" or command.endswith("; echo $?")
        if shows_code:
            code_line = next((s for s in lines[k + 1 :] if re.fullmatch(r"\d+", s.strip())), "0")
            expected = int(code_line)
            command = command.removesuffix("; echo $?").removesuffix("echo $?").strip()
            if not command:  # `$ echo $?` on its own: the code of the command before
                commands[-1].code = expected
                continue
            commands.append(Command(command, expected))
        else:
            commands.append(Command(command))
    return commands


@dataclass
class Session:
    env: dict[str, str]
    ports: dict[str, int]
    logs: Path
    groups: list[int]

    def here(self, code: str) -> str:
        """``code`` with the README's ports replaced by the test stack's."""
        for default, name in (("4200", "PREFECT"), ("5000", "MLFLOW"), ("5005", "SERVE")):
            code = re.sub(rf"(?<=:){default}\b", str(self.ports[name]), code)
        return code

    def run(self, args: list[str], name: str, timeout: float = 900) -> tuple[int, str]:
        """Run ``args`` in the checkout; output to a log (a background `&` child keeps no
        pipe open); each run is its own process group, stopped at the end."""
        log = self.logs / f"{name}.log"
        with log.open("w") as sink:
            proc = subprocess.Popen(
                args, cwd=ROOT, env=self.env, stdout=sink, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
            self.groups.append(proc.pid)
            try:
                code = proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                raise
        return code, log.read_text(errors="replace")

    def loraflow(self, *args: str) -> tuple[int, str]:
        return self.run([sys.executable, "-m", "deployments.cli", *args], "-".join(args[:2]))


class Python:
    """One interpreter that runs the README's python blocks one after another, each in a fresh
    namespace, as a user's notebook would: imports, engines and Prefect's ephemeral API are
    paid once, not once a block. Output goes to a log; each block's outcome comes back on a
    pipe."""

    DRIVER = (
        "import os, sys, traceback\n"
        "status = os.fdopen(int(sys.argv[1]), 'w')\n"
        "for size in iter(sys.stdin.readline, ''):\n"
        "    code = sys.stdin.read(int(size))\n"
        "    try:\n"
        "        exec(compile(code, '<README block>', 'exec'), {'__name__': '__main__'})\n"
        "        outcome = 'ok'\n"
        "    except BaseException:\n"
        "        traceback.print_exc()\n"
        "        outcome = 'failed'\n"
        "    sys.stdout.flush(); sys.stderr.flush()\n"
        "    print(outcome, file=status, flush=True)\n"
    )

    def __init__(self, session: Session) -> None:
        self.log = session.logs / "python-blocks.log"
        read, write = os.pipe()
        with self.log.open("w") as sink:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", self.DRIVER, str(write)], cwd=ROOT, env=session.env,
                stdin=subprocess.PIPE, stdout=sink, stderr=subprocess.STDOUT, text=True,
                start_new_session=True, pass_fds=(write,),
            )  # fmt: skip
        os.close(write)
        session.groups.append(self.proc.pid)
        self.outcomes = os.fdopen(read)

    def run(self, code: str) -> tuple[int, str]:
        """Run one block: (0 or 1, what it printed)."""
        assert self.proc.stdin is not None
        start = self.log.stat().st_size
        self.proc.stdin.write(f"{len(code)}\n{code}")
        self.proc.stdin.flush()
        outcome = self.outcomes.readline().strip()  # the block's own waits are bounded
        with self.log.open(errors="replace") as log:
            log.seek(start)
            return (0 if outcome == "ok" else 1), log.read()


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Session]:
    home = tmp_path_factory.mktemp("readme-home")
    zoo = yaml.safe_load((ROOT / "configs" / "models.yaml").read_text())
    zoo["smollm2-135m-instruct"] = zoo["tiny-llama-test"] | {
        "description": "the tiny Llama, under the README's model name"
    }
    zoo_file = home / "zoo.yaml"
    zoo_file.write_text(yaml.safe_dump(zoo))
    ports = {name: free_port() for name in ("PREFECT", "MLFLOW", "SERVE")}
    env = stack_env(home, ports)
    env |= {
        "LORAFLOW_MODELS_DIR": str(home / "models"),  # never the session's real SmolLM2
        "LORAFLOW_MODELS_ZOO": str(zoo_file),
        "LORAFLOW_API_KEYS": "my-key",  # the README's
        # .venv first, then .venv-llm for `llm` (make test makes both; see the Makefile)
        "PATH": os.pathsep.join(
            [str(Path(sys.executable).parent), str(ROOT / ".venv-llm" / "bin"), env["PATH"]]
        ),
        "LLM_LOAD_PLUGINS": "loraflow",  # the README says why, beside the llm block
        "LLM_USER_PATH": str(home / "llm"),
        "PREFECT_WORKER_QUERY_SECONDS": "2",
        "LLM_ENGINE_DISABLE_VERSION_CHECK": "1",
    }
    logs = tmp_path_factory.mktemp("readme-logs")
    s = Session(env, ports, logs, [])
    try:
        code, out = s.run([sys.executable, "-m", "deployments.demo"], "demo")  # `make demo`
        assert code == 0, out[-4000:]
        assert "is now smollm2-135m-instruct.support@champion" in " ".join(out.split()), out
        code, out = s.loraflow("up")
        assert code == 0, out[-4000:]
        yield s
    finally:  # tests/test_stack.py tests `down`; here the quickest stop does: every group
        for pid_file in (home / "stack").glob("*.pid"):
            with contextlib.suppress(ValueError, OSError):
                s.groups.append(int(json.loads(pid_file.read_text())["pid"]))
        for group in s.groups:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)


def test_the_demo_made_before_the_stack_shows_in_the_stack(session: Session) -> None:
    code, listed = session.loraflow("fine-tunes", "list")
    assert code == 0, listed
    assert re.search(r"ft-[a-z0-9]{20}\s+.*SUCCESS", listed), listed


def test_every_block_of_the_readme_runs_as_written(session: Session) -> None:
    found = blocks(README.read_text())
    ran, skipped, failed = [], [], []
    python = Python(session)
    for n, block in enumerate(found):
        if block.skip:
            skipped.append(f"{block.where}: {block.skip}")
            continue
        code = session.here(block.code)
        if block.language == "python":
            runs = [(["python", code], Command(code))]
        elif block.language == "bash":
            runs = [(["bash", "-eo", "pipefail", "-c", code], Command(code))]
        else:  # a transcript: its `$` commands
            runs = [(["bash", "-c", c.line], c) for c in transcript_commands(code)]
        for k, (args, want) in enumerate(runs):
            if args[0] == "python":
                got, out = python.run(args[1])
            else:
                got, out = session.run(args, f"block-{n}-{k}")
            ran.append(block.where)
            starts = {line.split()[0] for line in out.splitlines() if line.strip()}
            if got != want.code or not set(want.says) <= starts:
                failed.append(
                    f"{block.where}: {args[-1][:200]!r} exited {got} (the README: {want.code})"
                    f", its lines begin {sorted(starts)[:30]} (the README: {want.says}):\n"
                    f"{out[-2500:]}"
                )
    print(f"ran {len(ran)} commands and blocks; skipped {len(skipped)}:", *skipped, sep="\n  ")
    assert not failed, "\n\n".join(failed)
    assert all(reason.strip() for reason in skipped)
    assert len(ran) >= 15, "the README lost its examples, or the test stopped finding them"


def test_the_block_reader_finds_fences_skips_and_exit_codes() -> None:
    text = "a\n```python\nx = 1\n```\n<!-- readme-test: skip: needs a GPU -->\n```bash\ngo\n```\n"
    first, second = blocks(text)
    assert (first.line, first.language, first.code, first.skip) == (2, "python", "x = 1\n", None)
    assert second.skip == "needs a GPU"
    shown = "$ a --x  # note\npromoted: yes\n$ b; echo $?\n3\n$ c\nno colon\n$ echo $?\n1\n"
    assert transcript_commands(shown) == [
        Command("a --x", 0, ["promoted:"]),
        Command("b", 3),
        Command("c", 1),
    ]
