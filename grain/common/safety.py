"""Test hooks stay out of production: fault injection and raw engine pass-through need an opt-in.

Run files and flow parameters come from whoever can edit a file or trigger a deployment. Settings that
exist only for tests (``run.inject`` can ``os._exit`` a model actor or slow every batch;
``debug_fail_at_step`` makes a training rank raise) and settings handed to an engine unchecked
(``models.extra_engine_args``: any vLLM engine argument) are refused from those sources unless the
environment of the process that loads the config says otherwise:

    GRAIN_ALLOW_TEST_HOOKS=1     # tests, and operators who know why (never set on the cluster)

The stages call :func:`refuse_test_hooks` where a config is loaded from a file or overrides, and
again just before a run starts (a config built in code gets the same check).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

ALLOW_TEST_HOOKS_ENV = "GRAIN_ALLOW_TEST_HOOKS"


class TestHookRefused(ValueError):
    """A test hook or raw pass-through setting was given where the environment does not allow it."""

    __test__ = False  # not a pytest test class, despite the name


def hooks_allowed(environ: Mapping[str, str] | None = None) -> bool:
    """True only when ``GRAIN_ALLOW_TEST_HOOKS`` is exactly ``1`` in ``environ`` (default: os.environ)."""
    env = os.environ if environ is None else environ
    return env.get(ALLOW_TEST_HOOKS_ENV, "") == "1"


def refuse_test_hooks(settings: Mapping[str, object], where: str, environ: Mapping[str, str] | None = None) -> None:
    """Raise :class:`TestHookRefused` naming the first set key of ``settings`` (dotted key → value;
    None / empty values count as unset) unless test hooks are allowed in the environment."""
    used = [k for k, v in settings.items() if v not in (None, {}, [], "", ())]
    if used and not hooks_allowed(environ):
        raise TestHookRefused(
            f"{where}: {used[0]!r} is a test hook / raw engine pass-through and is refused from run files, "
            f"flow parameters and overrides (set {ALLOW_TEST_HOOKS_ENV}=1 in the environment of the process "
            f"that runs the stage to allow it; never on a production worker)")

