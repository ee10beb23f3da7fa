"""The `grain` dispatcher (infra/cli.py): every command listed, every target exists, stages imported lazily."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

from infra.cli import COMMANDS, main

STAGE_PACKAGES = ("annotators", "trainers", "evaluation", "benchmarks", "flows")


def test_help_lists_every_command_and_imports_no_stage():
    code = ("import sys; from infra.cli import main; main(['--help']); "
            f"print('LOADED', sorted({{m.split('.')[0] for m in sys.modules}} & set({STAGE_PACKAGES!r})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    for name in COMMANDS:
        assert f"\n  {name} " in out.stdout, name
    assert "LOADED []" in out.stdout  # `grain --help` imports no stage module


def test_every_target_module_exists():
    for name, (target, _) in COMMANDS.items():
        module, func = target.split(":")
        assert importlib.util.find_spec(module) is not None, f"grain {name}: module {module} is missing"
        assert func and func.isidentifier()


def test_unknown_command_is_named(capsys):
    assert main(["no-such-command"]) == 2
    assert "'no-such-command'" in capsys.readouterr().err
