"""Test aids for the stages' fault paths: the real model with one injected raising call, and a stage built
around a model the session already has (tests/annotators/test_describer.py, test_ground_stage.py)."""

from __future__ import annotations


class FailsOnSize:
    """The real model, with one injected fault: a call whose batch holds an image of ``size`` raises, as a
    model call does (RuntimeError). Records each call's batch size."""

    def __init__(self, model, size):
        self.model, self.size, self.calls = model, size, []

    def describe(self, images):
        self.calls.append(len(images))
        if any(im.size == self.size for im in images):
            raise RuntimeError("device-side assert triggered (injected)")
        return self.model.describe(images)

    def ground(self, images, descriptions):
        self.calls.append(len(images))
        if any(im.size == self.size for im in images):
            raise RuntimeError("device-side assert triggered (injected)")
        return self.model.ground(images, descriptions)


def stage_around(cls, model, **attrs):
    """A stage whose model is ``model`` (the session's engine; the stage's own __init__ would start another)."""
    from annotators.stages import _ModelStage

    stage = cls.__new__(cls)
    _ModelStage.__init__(stage, threads=None, inject=None)
    stage.__dict__.update(attrs)
    return stage


def three_rows(bad_size=(67, 41)):
    """Rows of three decoded images, the middle one of ``bad_size``."""
    from PIL import Image

    from annotators.badinputs import encode
    from annotators.stages import decode_batch, to_batch

    ims = [Image.new("RGB", (96, 80), "red"), Image.new("RGB", bad_size, "green"), Image.new("RGB", (80, 96), "blue")]
    rows = [dict(shard="s", shard_rows=3, key=f"k{i}", source=f"k{i}", image=encode(im), status="ok", flags=[],
                 descriptions=["a red square", "a green square"]) for i, im in enumerate(ims)]
    return decode_batch(to_batch(rows), max_image_pixels=10**8, min_image_side=8)
