"""`grain annotate` CLI and config parsing (fast: no engines)."""

import subprocess
import sys

import pytest

from annotators.cli import format_summary, main
from annotators.config import ConfigError, load_config


def test_help_lists_the_options(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for opt in ("--input", "--output", "--profile", "--config", "--set", "--ray-address", "--dashboard"):
        assert opt in out


def test_grain_dispatcher_and_module_entry_point(capsys):
    from infra.cli import main as grain_main

    with pytest.raises(SystemExit) as e:
        grain_main(["annotate", "--help"])
    assert e.value.code == 0 and "resumes" in capsys.readouterr().out
    r = subprocess.run([sys.executable, "-m", "annotators.cli", "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "--ray-address" in r.stdout


def test_profiles_and_overrides(tmp_path, monkeypatch):
    tiny = load_config(profile="tiny")
    paper = load_config(profile="paper")
    assert tiny.models.mllm == "tiny" and paper.models.mllm == "llava-hf/llava-1.5-7b-hf"
    assert paper.models.detector == "google/owlv2-base-patch16-ensemble" and paper.models.box_threshold == 0.3
    run_file = tmp_path / "run.yaml"
    run_file.write_text("run:\n  batch_size: 3\nmodels:\n  nms_iou: 0.5\n")
    monkeypatch.setenv("GRAIN_ALLOW_TEST_HOOKS", "1")  # run.inject below is a test hook (grain/common/safety.py)
    cfg = load_config(profile="tiny", path=str(run_file), overrides=["run.max_shards=2", "models.box_threshold=0.25",
                                                                      "run.inject={fail_keys: [a]}"])
    assert (cfg.run.batch_size, cfg.run.max_shards, cfg.models.nms_iou) == (3, 2, 0.5)
    assert cfg.models.box_threshold == 0.25 and cfg.run.inject == {"fail_keys": ["a"]}


@pytest.mark.parametrize("item,match", [
    ("run.batchsize=3", "unknown key 'batchsize'"),
    ("run.batch_size=many", "expected an integer"),
    ("models.box_threshold", "KEY=VALUE"),
    ("nothing.x=1", "unknown key 'nothing'"),
])
def test_bad_overrides_name_the_key(item, match):
    with pytest.raises(ConfigError, match=match):
        load_config(profile="tiny", overrides=[item])


def test_bad_arguments_exit_2(tmp_path, capsys):
    assert main(["--input", str(tmp_path / "missing"), "--output", str(tmp_path / "o"), "--set", "run.x=1"]) == 2
    assert "unknown key" in capsys.readouterr().err
    assert main(["--input", str(tmp_path / "missing"), "--output", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_summary_format():
    text = format_summary({"shards_written": 2, "shards_skipped": 1, "shards_left": 0, "shards_total": 3, "rows": 10,
                           "counts": {"ok": 7, "decode_error": 2, "too_large": 1}, "images_per_s": 1.5,
                           "tokens_per_s": 20.0, "generated_tokens": 200, "seconds": 6.7, "output": "/o"})
    assert "ok 7" in text and "decode_error 2" in text and "errors 3" in text and "images/s" in text
