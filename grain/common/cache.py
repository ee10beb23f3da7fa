"""The machine-local cache root every stage and tool shares: ``$GRAIN_CACHE``, default ``~/.cache/grain``.

Tiny model checkpoints, evaluation sets, npm packages, the img2dataset venv, Ray's temp dir and the demo
corpus all live under it, so the one resolution here keeps them in the same place.
"""

from __future__ import annotations

import os

DEFAULT_CACHE = "~/.cache/grain"


def grain_cache() -> str:
    """The absolute cache root: ``$GRAIN_CACHE`` (``~`` expanded; an empty value counts as unset, so it
    never resolves to the working directory by accident), else ``~/.cache/grain``. Not created here."""
    return os.path.abspath(os.path.expanduser(os.environ.get("GRAIN_CACHE") or DEFAULT_CACHE))


__all__ = ["DEFAULT_CACHE", "grain_cache"]
