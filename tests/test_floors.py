"""The import contract (pyproject's `[tool.importlinter]`): kept by the tree, and broken by an upward
import, also one hidden inside a function or under TYPE_CHECKING."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "benchmarks", "policies", "actors", "pipelines")
LINT = [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command as c; sys.exit(c())"]


def lint(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(LINT, cwd=root, capture_output=True, text=True, timeout=300,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(root)})


def copy_tree(dst: Path) -> Path:
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, dst / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", dst / "pyproject.toml")
    return dst


def test_the_tree_keeps_the_floors():
    out = lint(ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 kept, 0 broken" in out.stdout


@pytest.mark.parametrize("planted", [
    "from pipelines.train import Trainer  # noqa\n",
    "def later():\n    from actors.pool import start_pool  # noqa\n",
    "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from policies.router import PolicyRouter  # noqa\n",
], ids=["top-level", "inside-a-function", "type-checking"])
def test_an_upward_import_breaks_the_contract(tmp_path, planted):
    root = copy_tree(tmp_path)
    target = root / "benchmarks" / "tasks" / "scan.py"
    target.write_text(target.read_text() + "\n" + planted)
    out = lint(root)
    assert out.returncode != 0, out.stdout
    assert "benchmarks.tasks.scan ->" in out.stdout and "BROKEN" in out.stdout
