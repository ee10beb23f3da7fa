"""The paper profile loads its hub models at pinned commits; the pin reaches the loader (grain supply chain)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

from annotators.config import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHA = re.compile(r"^[0-9a-f]{40}$")


def test_paper_models_are_pinned_to_documented_commits():
    m = load_config(profile="paper").models
    assert SHA.match(m.mllm_revision or "") and SHA.match(m.detector_revision or ""), (m.mllm_revision, m.detector_revision)
    with open(os.path.join(ROOT, "docs", "reliability.md"), encoding="utf-8") as fh:
        doc = fh.read()
    for model, rev in ((m.mllm, m.mllm_revision), (m.detector, m.detector_revision)):
        assert model in doc and rev in doc, f"{model}@{rev} is not documented in docs/reliability.md"


def test_revision_is_overridable_and_labels_the_rows():
    from annotators.pipeline import resolve_models

    other = "abcdef0123" * 4
    cfg = load_config(profile="paper", overrides=[f"models.detector_revision={other}"])
    models = resolve_models(cfg)
    assert models["detector_revision"] == other and models["detector_id"] == f"google/owlv2-base-patch16-ensemble@{other}"
    assert models["mllm_id"] == f"llava-hf/llava-1.5-7b-hf@{cfg.models.mllm_revision}"
    # a revision means nothing for a local checkpoint: not passed on, not in the label
    tiny = load_config(profile="tiny", overrides=[f"models.mllm_revision={other}"])
    models = resolve_models(tiny)
    assert models["mllm_revision"] is None and "@" + other not in models["mllm_id"]


@pytest.mark.slow  # ~10 s: a fresh interpreter loads the tiny OWLv2 twice
def test_grounder_loads_the_pinned_snapshot_and_not_the_default_branch(tiny_models, tmp_path):
    """An offline HF cache holding only snapshot <sha> of a hub id: loading at that revision works,
    loading without one (the default branch) does not. So the revision is what selects the files."""
    sha = "1234567890abcdef1234567890abcdef12345678"
    snap = tmp_path / "hub" / "models--google--owlv2-base-patch16-ensemble" / "snapshots" / sha
    shutil.copytree(os.path.join(tiny_models["owlv2"]), snap)
    code = (
        "from annotators.grounder import Grounder\n"
        "try:\n"
        "    Grounder('google/owlv2-base-patch16-ensemble', device='cpu')\n"
        "    print('DEFAULT-LOADED')\n"
        "except OSError as e:\n"
        "    print('DEFAULT-REFUSED')\n"
        f"g = Grounder('google/owlv2-base-patch16-ensemble', device='cpu', revision='{sha}')\n"
        "print('PINNED-LOADED', g.max_text_len)\n"
    )
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": ROOT}
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "DEFAULT-REFUSED" in r.stdout and "PINNED-LOADED" in r.stdout, r.stdout
