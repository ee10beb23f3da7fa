"""grain/common/runconfig.py and the stages on it: numbers, wrong types and unknown keys behave the same in every
stage (annotate, train, eval, bench; file, --set and flow overrides), and no setting promises what the
shard schema refuses."""

from __future__ import annotations

import pytest

from benchmarks.bench_config import load_bench_config
from benchmarks.bench_grounding import SMOKE_CONFIG
from grain.common.runconfig import ConfigError

# stage → (load(sets) -> config, dotted key of a float field, of an int field, getter of the float)
STAGES = {
    "annotate": (lambda sets: __import__("annotators.config", fromlist=["x"]).load_config(profile="tiny", overrides=sets),
                 "models.box_threshold", "run.batch_size", lambda c: c.models.box_threshold),
    "train": (lambda sets: __import__("trainers.config", fromlist=["x"]).load_config(profile="tiny", sets=sets),
              "optim.lr", "batch_size", lambda c: c.optim.lr),
    "eval": (lambda sets: __import__("evaluation.config", fromlist=["x"]).load_config(
        overrides={"checkpoint": "c.pt", "datasets": ["flags"]}, sets=sets), "alphas", "batch_size", lambda c: c.alphas),
    "bench": (lambda sets: load_bench_config(SMOKE_CONFIG, sets), "eval.min_scale", "eval.batch_size",
              lambda c: c["eval"]["min_scale"]),
}


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_scientific_notation_is_a_number_in_every_stage(stage):
    """Reproduction 1: `--set models.box_threshold=3e-1` was refused by annotate, accepted by train."""
    load, float_key, _, get = STAGES[stage]
    value = "[3e-1]" if stage == "eval" else "3e-1"
    assert get(load([f"{float_key}={value}"])) in (0.3, [0.3])


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_a_wrong_type_is_refused_when_loaded_naming_key_value_and_flag(stage):
    """Reproduction 2: `batch_size=abc` passed the trainer's parser and failed later with a TypeError."""
    load, _, int_key, _ = STAGES[stage]
    with pytest.raises(ConfigError) as e:
        load([f"{int_key}=abc"])
    assert str(e.value) == f"{int_key}: expected an integer, got 'abc' (from --set {int_key}=abc)"


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_an_unknown_key_is_named_once_with_its_source(stage):
    """Reproduction 3: the annotator printed the key twice (`models.box_threshold.models.box_threshold`)."""
    load, float_key, _, _ = STAGES[stage]
    bad = float_key.rsplit(".", 1)[0] + ".nope" if "." in float_key else "nope"
    with pytest.raises(ConfigError) as e:
        load([f"{bad}=1"])
    assert str(e.value) == f"{bad}: unknown key 'nope' (from --set {bad}=1)"
    with pytest.raises(ConfigError) as e:
        load([f"{float_key}=abc"])
    assert str(e.value).count(float_key) == 2 and str(e.value).startswith(f"{float_key}: ")  # key, then the flag


def test_errors_name_the_run_file_and_the_flow_parameter(tmp_path):
    from annotators.config import load_config
    from flows import stages

    run = tmp_path / "run.yaml"
    run.write_text("models:\n  box_threshold: high\n")
    with pytest.raises(ConfigError, match=rf"^models.box_threshold: expected a number, got 'high' \(from {run}\)$"):
        load_config(profile="tiny", path=str(run))
    with pytest.raises(ConfigError, match=r"^run.batch_size: expected an integer, got 'x' \(from flow parameter overrides\)$"):
        stages.annotation_config(None, {"run": {"batch_size": "x"}})
    with pytest.raises(ConfigError, match=r"^optim.lr: expected a number, got 'x' \(from flow parameter overrides\)$"):
        stages.training_config(None, {"optim.lr": "x"})
    with pytest.raises(ConfigError, match=r"^limit: expected an integer, got 'x' \(from flow parameter overrides\)$"):
        stages.eval_config(None, {"checkpoint": "c.pt", "limit": "x"})
    assert stages.annotation_config(None, {"models.box_threshold": "3e-1"}).models.box_threshold == 0.3


def test_same_coercion_for_booleans_lists_and_nulls():
    from annotators.config import load_config

    cfg = load_config(profile="tiny", overrides=["models.structured_output=true", "run.progress=false",
                                                 "input=[/a, /b]", "run.max_shards=null", "models.mllm_revision=1234567"])
    assert (cfg.models.structured_output, cfg.run.progress, cfg.input, cfg.run.max_shards) == (True, False, ["/a", "/b"], None)
    assert cfg.models.mllm_revision == "1234567"  # a short hex revision YAML reads as a number stays a string
    with pytest.raises(ConfigError, match="run.progress: expected true/false, got 'maybe'"):
        load_config(profile="tiny", overrides=["run.progress=maybe"])


def test_no_setting_promises_what_the_schema_refuses():
    """`models.max_boxes=60` was accepted, then every row with > 50 boxes became model_error."""
    from annotators.config import load_config
    from grain.common.schema import MAX_BOXES, MAX_DESCRIPTIONS

    with pytest.raises(ConfigError, match=rf"^models.max_boxes: must be in \[1, {MAX_BOXES}\] .*got 60 \(from --set models.max_boxes=60\)$"):
        load_config(profile="tiny", overrides=["models.max_boxes=60"])
    with pytest.raises(ConfigError, match=rf"models.max_descriptions: must be in \[1, {MAX_DESCRIPTIONS}\]"):
        load_config(profile="tiny", overrides=[f"models.max_descriptions={MAX_DESCRIPTIONS + 1}"])
    with pytest.raises(ConfigError, match=r"models.box_threshold: must be in \[0, 1\]"):
        load_config(profile="tiny", overrides=["models.box_threshold=3"])
    assert load_config(profile="tiny").models.max_boxes == MAX_BOXES


def test_the_prompt_is_built_from_max_descriptions():
    from annotators import prompts
    from annotators.config import load_config

    cfg = load_config(profile="tiny", overrides=["models.max_descriptions=4", "models.structured_output=true"])
    rec = prompts.prompt_record(cfg.to_dict()["models"])
    assert "up to 4 short phrases" in rec["prompt.text"] and "{1,4}" in rec["prompt.answer_regex"]
    default = prompts.prompt_record(load_config(profile="tiny").to_dict()["models"])["prompt.text"]
    assert "up to 10 short phrases that each describe one distinct object" in default  # unchanged: old runs resume


def test_detector_dtype_reaches_the_grounder_and_the_manifest():
    from annotators.config import load_config
    from annotators.manifest import content_settings
    from annotators.pipeline import grounder_kwargs

    cfg = load_config(profile="tiny", overrides=["models.detector_dtype=bfloat16"])
    assert grounder_kwargs(cfg, {})["dtype"] == "bfloat16"
    assert content_settings(cfg.to_dict(), {})["models.detector_dtype"] == "bfloat16"
    base = load_config(profile="tiny")
    assert grounder_kwargs(base, {})["dtype"] is None and "models.detector_dtype" not in content_settings(base.to_dict(), {})
    with pytest.raises(ConfigError, match=r"models.detector_dtype: expected 'float32' or 'bfloat16', got 'fp16'"):
        load_config(profile="tiny", overrides=["models.detector_dtype=fp16"])


def test_config_show_lists_every_key_with_type_default_and_meaning(capsys):
    from infra.cli import main

    assert main(["config", "show", "annotate"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines()[2:]}
    assert "models.detector_dtype" in rows and "run.batch_size" in rows and "limits.max_image_pixels" in rows
    assert rows["models.box_threshold"].split()[1:3] == ["float", "0.3"]
    assert all(len(line.split(None, 3)) == 4 for line in rows.values()), "every key has a meaning"
    for stage in ("train", "eval", "bench", "bench-novel"):
        assert main(["config", "show", stage]) == 0
        assert all(len(line.split(None, 3)) == 4 for line in capsys.readouterr().out.splitlines()[2:])


def test_every_shipped_run_file_loads_with_its_stage(capsys):
    """Each file in configs/ validates with its stage's loader (`grain config check STAGE FILE`)."""
    import glob
    import os

    from infra.cli import main

    stage_of = {"annotate": "annotate", "eval": "eval", "bench": "bench", "tiny": "train", "vit": "train"}
    files = sorted(glob.glob(os.path.join(os.path.dirname(SMOKE_CONFIG), "*.yaml")))
    assert len(files) >= 8
    for path in files:
        name = os.path.basename(path)
        stage = "bench-novel" if name.startswith("bench-novel") else stage_of[name.split("-")[0]]
        extra = ["--set", "checkpoint=c.pt"] if stage == "eval" else []
        assert main(["config", "check", stage, path, *extra]) == 0, capsys.readouterr().err
    capsys.readouterr()


def test_one_pipeline_run_file_serves_every_stage(tmp_path):
    from annotators.config import load_config as load_annotate
    from evaluation.config import load_config as load_eval
    from trainers.config import load_config as load_train

    run = tmp_path / "pipeline.yaml"
    run.write_text("annotate:\n  run: {batch_size: 2}\ntrain:\n  optim: {lr: 3e-4}\n"
                   "eval:\n  checkpoint: c.pt\n  datasets: [flags]\n  limit: 5\n")
    assert load_annotate(profile="tiny", path=str(run)).run.batch_size == 2
    assert load_train(run, profile="tiny").optim.lr == 3e-4
    assert load_eval(run).limit == 5


def test_overrides_flatten():
    from grain.common.runconfig import flatten_overrides

    ov = {"run": {"batch_size": 4, "ray_address": None}, "models.mllm": "tiny", "input": ["/a", "/b"]}
    flat = flatten_overrides(ov)
    assert flat == {"run.batch_size": 4, "run.ray_address": None, "models.mllm": "tiny", "input": ["/a", "/b"]}
    with pytest.raises(TypeError, match="mapping"):
        flatten_overrides(["run.batch_size=4"])
