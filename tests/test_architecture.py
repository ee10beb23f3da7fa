"""The package contracts of docs/ARCHITECTURE.md ([tool.importlinter] in pyproject.toml), checked with
import-linter: the tree keeps them, and a wrong-way import in a copy of the tree breaks them (fast)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("grain", "annotators", "trainers", "evaluation", "flows", "infra", "benchmarks")
CONTRACTS = ("layers", "grain-pure", "grain-model", "grain-common-no-model", "stages-plain", "flows-no-math", "acyclic")

pytest.importorskip("importlinter", reason="import-linter is a dev dependency (pip install -e '.[dev]')")


def lint_imports(root: str) -> subprocess.CompletedProcess:
    """``lint-imports`` on the tree at ``root`` (its pyproject.toml, its packages first on sys.path)."""
    code = "import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports(no_cache=True, no_logo=True))"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120, env=env)


def test_every_contract_is_declared():
    tomllib = pytest.importorskip("tomllib")  # Python ≥ 3.11

    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        cfg = tomllib.load(f)["tool"]["importlinter"]
    assert tuple(cfg["root_packages"]) == PACKAGES
    assert {c["id"] for c in cfg["contracts"]} == set(CONTRACTS)


def test_the_tree_keeps_every_contract():
    out = lint_imports(REPO)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert f"Contracts: {len(CONTRACTS)} kept, 0 broken." in out.stdout


def test_wrong_way_imports_break_the_contracts(tmp_path):
    """A copy of the tree with a stage importing another stage, the library importing Ray, a model module
    importing the config engine, the plumbing importing the model, and a cycle."""
    for pkg in PACKAGES:
        shutil.copytree(os.path.join(REPO, pkg), tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy(os.path.join(REPO, "pyproject.toml"), tmp_path / "pyproject.toml")

    def append(rel: str, line: str) -> None:
        with open(tmp_path / rel, "a", encoding="utf-8") as f:
            f.write(f"\n{line}\n")

    append("evaluation/metrics.py", "import trainers.run  # noqa")  # a stage importing another stage
    append("grain/box_ops.py", "import ray  # noqa")  # the library importing Ray
    append("flows/common.py", "import infra.procs  # noqa")  # flows importing the layer above them
    append("grain/decoder.py", "import pydantic  # noqa")  # the model importing the config engine
    append("grain/common/storage.py", "import grain.model  # noqa")  # the plumbing importing the model
    append("annotators/parse_cycle_a.py", "from annotators import parse_cycle_b  # noqa")
    append("annotators/parse_cycle_b.py", "from annotators import parse_cycle_a  # noqa")
    out = lint_imports(str(tmp_path))
    assert out.returncode != 0
    text = " ".join(out.stdout.split())
    assert "Contracts: 2 kept, 5 broken." in text, out.stdout[-4000:]
    assert "evaluation is not allowed to import trainers" in text and "evaluation.metrics -> trainers.run" in text
    assert "flows is not allowed to import infra" in text and "flows.common -> infra.procs" in text
    assert "grain.box_ops -> ray" in text
    assert "grain.decoder -> pydantic" in text and "grain.common.storage -> grain.model" in text
    assert "No cycles are allowed in annotators" in text
