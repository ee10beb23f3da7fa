"""Test hooks are refused from outside input unless the environment allows them (grain/common/safety.py).

``run.inject`` (kills a model actor, slows batches), ``models.extra_engine_args`` (any vLLM engine
argument) and the trainer's ``debug_fail_at_step`` are refused when they come from a run file, a
``--set`` override or a Prefect flow parameter, with an error naming the key, unless the process that
loads the config has ``GRAIN_ALLOW_TEST_HOOKS=1``. A config built in code gets the same check when the
run starts. All fast: every refusal happens before any Ray, engine or model is started.
"""

from __future__ import annotations

import pytest

from annotators.config import ConfigError, load_config
from grain.common.safety import ALLOW_TEST_HOOKS_ENV, TestHookRefused

HOOKS = [("run.inject", "{fail_keys: [a]}", "run:\n  inject: {crash_key: k, crash_marker: /tmp/x}\n"),
         ("models.extra_engine_args", "{trust_remote_code: true}",
          "models:\n  extra_engine_args: {trust_remote_code: true}\n")]


@pytest.fixture(autouse=True)
def _no_hooks_env(monkeypatch):
    monkeypatch.delenv(ALLOW_TEST_HOOKS_ENV, raising=False)


@pytest.mark.parametrize("key,value,yaml_text", HOOKS)
def test_annotate_refuses_hooks_from_run_files_and_overrides(key, value, yaml_text, tmp_path, monkeypatch):
    run_file = tmp_path / "run.yaml"
    run_file.write_text(yaml_text)
    with pytest.raises(ConfigError, match=rf"run\.yaml: '{key}' is a test hook.*{ALLOW_TEST_HOOKS_ENV}=1"):
        load_config(profile="tiny", path=str(run_file))
    with pytest.raises(ConfigError, match=rf"--set {key}: '{key}' is a test hook"):
        load_config(profile="tiny", overrides=[f"{key}={value}"])
    for wrong in ("0", "true", "yes"):  # only the exact opt-in counts
        monkeypatch.setenv(ALLOW_TEST_HOOKS_ENV, wrong)
        with pytest.raises(ConfigError, match=key):
            load_config(profile="tiny", overrides=[f"{key}={value}"])
    monkeypatch.setenv(ALLOW_TEST_HOOKS_ENV, "1")
    assert load_config(profile="tiny", path=str(run_file)).to_dict()[key.split(".")[0]][key.split(".")[1]]


def test_empty_hooks_are_not_refused():
    cfg = load_config(profile="paper", overrides=["run.inject={}", "models.extra_engine_args={}"])
    assert cfg.run.inject == {} and cfg.models.extra_engine_args == {}


def test_annotate_cli_exits_2_naming_the_key(capsys):
    from annotators.cli import main

    rc = main(["--input", "/nonexistent", "--output", "/nonexistent-out", "--set", "run.inject={describe_delay_s: 9}"])
    assert rc == 2
    assert "'run.inject' is a test hook" in capsys.readouterr().err


def test_flow_parameter_is_refused_before_the_stage_runs(tmp_path):
    """The deployment's `overrides` parameter reaches the task that loads the config: refused there."""
    from flows.annotate import annotate

    with pytest.raises(ConfigError, match=r"flow parameter overrides: 'models.extra_engine_args' is a test hook"):
        annotate.fn(None, {"input": [str(tmp_path)], "output": str(tmp_path / "out"),
                           "models": {"extra_engine_args": {"worker_extension_cls": "evil.Mod"}}})
    assert not (tmp_path / "out").exists()


def test_run_annotation_refuses_a_config_built_in_code(tmp_path):
    from annotators.pipeline import run_annotation

    cfg = load_config(profile="tiny")
    cfg.input, cfg.output = [str(tmp_path / "missing")], str(tmp_path / "out")
    cfg.run.inject = {"describe_delay_s": 1}
    with pytest.raises(ConfigError, match="run_annotation: 'run.inject'"):
        run_annotation(cfg)
    assert not (tmp_path / "out").exists()  # refused before the output folder was touched


def test_trainer_refuses_debug_fail_at_step(tmp_path, monkeypatch):
    from trainers.config import load_config as load_train

    run_file = tmp_path / "train.yaml"
    run_file.write_text("train:\n  debug_fail_at_step: 3\n")
    with pytest.raises(TestHookRefused, match=r"train\.yaml: 'debug_fail_at_step' is a test hook"):
        load_train(path=str(run_file), profile="tiny")
    with pytest.raises(TestHookRefused, match=r"overrides: 'debug_fail_at_step'"):
        load_train(profile="tiny", overrides={"debug_fail_at_step": 3})
    with pytest.raises(TestHookRefused, match=r"--set: 'debug_fail_at_step'"):
        load_train(profile="tiny", sets=["debug_fail_at_step=3"])
    assert load_train(profile="tiny", overrides={"debug_fail_at_step": None}).debug_fail_at_step is None
    monkeypatch.setenv(ALLOW_TEST_HOOKS_ENV, "1")
    assert load_train(profile="tiny", overrides={"debug_fail_at_step": 3}).debug_fail_at_step == 3


def test_run_training_refuses_a_config_built_in_code(tmp_path):
    import dataclasses

    from trainers.config import load_config as load_train
    from trainers.run import run_training

    cfg = dataclasses.replace(load_train(profile="tiny", overrides={"output": str(tmp_path / "out")}),
                              debug_fail_at_step=2)
    with pytest.raises(TestHookRefused, match="run_training: 'debug_fail_at_step'"):
        run_training(cfg)
    assert not (tmp_path / "out").exists()
