"""Shared model fixtures for the annotation tests (session-scoped: a vLLM engine costs 17–50 s to start).

    llava_describer      Describer on the tiny LLaVA checkpoint (vLLM, enforce_eager, 64 new tokens), with
                         structured outputs (the tiny profile's setting: answers follow the prompt's layout)
    qwen2_vl_describer   Describer on the tiny Qwen2-VL checkpoint, free generation (32 new tokens)
    tiny_grounder        Grounder on the tiny OWLv2 (threshold 0.3, CPU)
    photos               non-square real photos from scikit-image, as PIL RGB images

Tests using a describer must be marked ``slow``. Engines are shut down at the end of the session.
"""

from __future__ import annotations

import pytest

DESCRIBER_KW = dict(enforce_eager=True, max_model_len=1024, max_new_tokens=32, seed=0)


# The tiny profile's bounds (configs/annotate-tiny.yaml), shortened to fit 64 tokens at ≥ 1 char per token.
STRUCTURED_KW = dict(structured_output=True, caption_max_chars=24, description_max_chars=12, max_new_tokens=64)


def _describer(path: str, **kw):
    from annotators.describer import Describer

    return Describer(path, **{**DESCRIBER_KW, **kw})


@pytest.fixture(scope="session")
def llava_describer(tiny_models):
    d = _describer(tiny_models["llava"], **STRUCTURED_KW)
    yield d
    d.close()


@pytest.fixture(scope="session")
def qwen2_vl_describer(tiny_models):
    d = _describer(tiny_models["qwen2-vl"])
    yield d
    d.close()


@pytest.fixture(scope="session")
def tiny_grounder(tiny_models):
    from annotators.grounder import Grounder

    return Grounder(tiny_models["owlv2"], threshold=0.3, device="cpu")  # CPU: the reference the GPU test compares to


@pytest.fixture(scope="session")
def photos():
    """{name: PIL RGB image}: landscape, portrait and odd-sized crops of real photos (scikit-image)."""
    import skimage.data as sd
    from PIL import Image

    return {
        "astronaut_portrait": Image.fromarray(sd.astronaut()[:, 100:340]),  # 240 × 512 (w × h)
        "chelsea": Image.fromarray(sd.chelsea()),  # 451 × 300
        "coffee": Image.fromarray(sd.coffee()),  # 600 × 400
        "rocket": Image.fromarray(sd.rocket()),  # 640 × 427
        "camera_gray": Image.fromarray(sd.camera()[:200, :317]).convert("RGB"),  # 317 × 200
    }
