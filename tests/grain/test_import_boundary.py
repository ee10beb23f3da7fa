"""grain/ is the library: importing every module must not pull in Ray, Prefect or vLLM."""

import pkgutil
import subprocess
import sys

import grain


def test_no_ray_prefect_vllm():
    modules = sorted(f"grain.{m.name}" for m in pkgutil.iter_modules(grain.__path__))
    assert {"grain.model", "grain.losses", "grain.data", "grain.zeroshot", "grain.checkpoint"} <= set(modules)
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "import grain.model, grain.config\n"
        "grain.model.build_model(grain.config.ModelConfig.preset('tiny'))  # open_clip fully loaded too\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'prefect', 'vllm'))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "", f"grain imports pulled in: {out.stdout.strip()[:500]}"
