"""Every shell and Python block of the README and docs/ runs as written.

A block whose first line is ``# needs: <reason>`` is not run here (a GPU, a TPU pod, a cluster, internet, files of
the user's own, or longer than CI allows); the reason must be stated. The Python blocks of one page run in order in
one fresh interpreter (later blocks use names defined by earlier ones); each shell block runs on its own under
``bash -euo pipefail``. Both run in a scratch directory that sees the repository's configs/ and experiments/, so
nothing is written into the repository.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)
NEEDS = re.compile(r"^# needs: (\S.*)$")


def blocks(page: Path, language: str) -> list[str]:
    return [body for lang, body in FENCE.findall(page.read_text()) if lang == language]


def runnable(body: str) -> bool:
    return not NEEDS.match(body.splitlines()[0] if body.strip() else "")


def scratch(tmp_path: Path) -> Path:
    for name in ("configs", "experiments", "notebooks"):
        (tmp_path / name).symlink_to(REPO / name)
    return tmp_path


def environment() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.setdefault("MPLBACKEND", "Agg")
    return env


def test_every_skipped_block_says_why():
    for page in PAGES:
        for lang in ("python", "bash"):
            for body in blocks(page, lang):
                first = body.splitlines()[0] if body.strip() else ""
                if first.startswith("# needs"):
                    assert NEEDS.match(first), f"{page.name}: a skipped block must say what it needs: {first!r}"


@pytest.mark.slow
@pytest.mark.parametrize("page", [p for p in PAGES if any(runnable(b) for b in blocks(p, "python"))],
                         ids=lambda p: p.name)
def test_python_blocks_run(page, tmp_path):
    code = "\n\n".join(b for b in blocks(page, "python") if runnable(b))
    result = subprocess.run([sys.executable, "-c", code], cwd=scratch(tmp_path), env=environment(),
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


SHELL = [(page, i, body) for page in PAGES for i, body in enumerate(blocks(page, "bash")) if runnable(body)]


@pytest.mark.slow
@pytest.mark.parametrize("page,index,body", SHELL, ids=[f"{p.name}-{i}" for p, i, _ in SHELL])
def test_shell_blocks_run(page, index, body, tmp_path):
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", body], cwd=scratch(tmp_path), env=environment(),
                            capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
