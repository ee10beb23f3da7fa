"""The resume guard: a rerun into an output folder with finished shards refuses to start when any setting
that changes a row's content differs, naming each differing key with both values (fast: no engine, no Ray)."""

from __future__ import annotations

import json

import pytest

from annotators import pipeline, prompts
from annotators.config import load_config
from annotators.manifest import CONTENT_KEYS, ManifestMismatch, RunManifest, content_settings

MODELS = {"mllm": "/cache/tiny-llava", "detector": "/cache/tiny-owlv2",
          "mllm_id": "tiny-llava@abc123", "detector_id": "tiny-owlv2@def456"}

# One changed value per content key (each differs from the tiny profile's value).
CHANGES = {
    "models.mllm": "llava-hf/llava-1.5-7b-hf",
    "models.mllm_family": "qwen2_vl",
    "models.detector": "google/owlv2-base-patch16-ensemble",
    "models.max_new_tokens": 64,
    "models.structured_output": False,
    "models.structured_output_backend": "xgrammar",
    "models.caption_max_chars": 41,
    "models.description_max_chars": 31,
    "models.max_descriptions": 9,
    "models.box_threshold": 0.25,
    "models.max_boxes": 20,
    "models.nms_iou": 0.5,
    "models.max_model_len": 1024,
    "models.extra_engine_args": {"revision": "a1b2c3"},
    "limits.max_image_pixels": 1000000,
    "limits.max_image_bytes": 1024,
    "limits.min_image_side": 16,
    "limits.max_caption_chars": 100,
    "limits.max_json_bytes": 4096,
}


def _finished_folder(tmp_path, cfg, models=MODELS) -> str:
    out = str(tmp_path / "annotated")
    m = RunManifest(out)
    m.start_run(cfg.to_dict(), models)
    m.mark_done("00000", {"rows": 3, "counts": {"ok": 3}})
    return out


def _override(key: str, value) -> str:
    return f"{key}={json.dumps(value)}"  # JSON is YAML: the override parser reads it back as the same value


def test_every_content_key_has_a_case():
    assert set(CHANGES) == set(CONTENT_KEYS)


@pytest.mark.parametrize("key", sorted(CHANGES))
def test_changing_a_content_setting_refuses_naming_key_and_both_values(tmp_path, key, monkeypatch):
    monkeypatch.setenv("GRAIN_ALLOW_TEST_HOOKS", "1")  # models.extra_engine_args is a test hook (grain/common/safety.py)
    base = load_config(profile="tiny")
    out = _finished_folder(tmp_path, base)
    changed = load_config(profile="tiny", overrides=[_override(key, CHANGES[key])])
    section, field = key.split(".")
    old = getattr(getattr(base, section), field)
    with pytest.raises(ManifestMismatch) as e:
        RunManifest(out).start_run(changed.to_dict(), MODELS)
    msg = str(e.value)
    line = next(ln for ln in msg.splitlines() if ln.strip().startswith(f"{key}:"))
    assert repr(old) in line and repr(CHANGES[key]) in line, line
    assert "annotated" in msg and "fresh --output" in msg
    # The refused run recorded nothing: the manifest still describes the finished shards.
    assert json.loads(open(f"{out}/manifest.json").read())["config"] == base.to_dict()


@pytest.mark.parametrize("label", ["mllm_id", "detector_id"])
def test_a_different_resolved_model_refuses(tmp_path, label):
    """Same config (``tiny``), but the tiny checkpoint was rebuilt from another spec: another label."""
    cfg = load_config(profile="tiny")
    out = _finished_folder(tmp_path, cfg)
    with pytest.raises(ManifestMismatch, match=rf"models\.{label}: 'tiny-\w+@\w+' \(finished shards\) → 'other@1'"):
        RunManifest(out).start_run(cfg.to_dict(), {**MODELS, label: "other@1"})


def test_a_changed_prompt_text_refuses(tmp_path, monkeypatch):
    cfg = load_config(profile="tiny")
    out = _finished_folder(tmp_path, cfg)
    monkeypatch.setattr(prompts, "DESCRIBE_TEMPLATE", prompts.DESCRIBE_TEMPLATE.replace("up to {", "at most {"))
    with pytest.raises(ManifestMismatch) as e:
        RunManifest(out).start_run(cfg.to_dict(), MODELS)
    assert "prompt.text:" in str(e.value) and "at most 10" in str(e.value)


def test_several_differences_are_all_named(tmp_path):
    out = _finished_folder(tmp_path, load_config(profile="tiny"))
    changed = load_config(profile="tiny", overrides=["models.box_threshold=0.5", "limits.min_image_side=32"])
    with pytest.raises(ManifestMismatch, match=r"differs in 2 key\(s\)") as e:
        RunManifest(out).start_run(changed.to_dict(), MODELS)
    assert "models.box_threshold: 0.3" in str(e.value) and "limits.min_image_side: 8" in str(e.value)


def test_run_shape_settings_resume_and_content_is_recorded(tmp_path):
    cfg = load_config(profile="tiny")
    out = _finished_folder(tmp_path, cfg)
    shaped = load_config(profile="tiny", overrides=["run.batch_size=2", "run.describer_actors=2", "models.enforce_eager=false"])
    m = RunManifest(out)
    m.start_run(shaped.to_dict(), MODELS)  # batching, actors, eager mode: same rows, resume allowed
    content = json.loads(open(f"{out}/manifest.json").read())["content"]
    assert content == content_settings(shaped.to_dict(), MODELS)
    assert content["prompt.text"].startswith("USER: <image>\n") and content["prompt.answer_regex"].startswith(" ?Caption: ")
    assert content["models.mllm_id"] == "tiny-llava@abc123"


def test_manifest_without_content_record_is_not_resumed(tmp_path):
    """A manifest written before the prompt was recorded cannot vouch for it: refused, saying so."""
    cfg = load_config(profile="tiny")
    out = _finished_folder(tmp_path, cfg)
    path = tmp_path / "annotated" / "manifest.json"
    data = json.loads(path.read_text())
    del data["content"]
    path.write_text(json.dumps(data))
    with pytest.raises(ManifestMismatch, match=r"prompt.text: '<not recorded>' \(finished shards\)"):
        RunManifest(out).start_run(cfg.to_dict(), MODELS)


def test_run_annotation_refuses_before_ray_starts(tmp_path, monkeypatch):
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (16, 12), "red").save(images / "a.png")
    (images / "a.txt").write_text("a red square")
    cfg = load_config(profile="tiny", overrides=[f"input=[{images}]", f"output={tmp_path / 'annotated'}"])
    _finished_folder(tmp_path, cfg)
    monkeypatch.setattr(pipeline, "resolve_models", lambda _cfg: dict(MODELS))

    def no_ray(_cfg):
        raise AssertionError("Ray was started although the resume guard should have refused")

    monkeypatch.setattr(pipeline, "_ensure_ray", no_ray)
    cfg.models.box_threshold = 0.5
    with pytest.raises(ManifestMismatch, match="models.box_threshold: 0.3"):
        pipeline.run_annotation(cfg)
