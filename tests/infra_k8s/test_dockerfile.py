"""infra/docker/Dockerfile cannot be built here (no Docker engine): check it statically against the repo."""

from __future__ import annotations

import os
import re
import tomllib

from tests.infra_k8s.conftest import REPO

DOCKERFILE = os.path.join(REPO, "infra", "docker", "Dockerfile")


def _stages() -> dict[str, list[str]]:
    """stage name → its instructions (continuation lines joined)."""
    with open(DOCKERFILE) as fh:
        text = re.sub(r"\\\n\s*", " ", fh.read())
    stages, current = {}, None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.match(r"FROM\s+\S+\s+AS\s+(\S+)", line, re.I)
        if m:
            current = m.group(1)
            stages[current] = []
        elif current:
            stages[current].append(line)
    return stages


def _froms() -> dict[str, str]:
    """stage name → its base image, with ``${ARG}`` / ``$ARG`` replaced by the ARG defaults declared before it."""
    with open(DOCKERFILE) as fh:
        text = re.sub(r"\\\n\s*", " ", fh.read())
    args, froms = {}, {}
    for line in text.splitlines():
        line = line.strip()
        if m := re.match(r"ARG\s+(\w+)=(\S+)$", line, re.I):
            args[m.group(1)] = m.group(2)
        elif m := re.match(r"FROM\s+(?:--platform=\S+\s+)?(\S+)\s+AS\s+(\S+)$", line, re.I):
            image = re.sub(r"\$\{?(\w+)\}?", lambda a: args.get(a.group(1), a.group(0)), m.group(1))
            froms[m.group(2)] = image
    return froms


def _pyproject() -> dict:
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as fh:
        return tomllib.load(fh)


def test_targets_exist():
    assert {"base", "cpu", "gpu"} <= set(_stages())


def test_copy_sources_exist_and_cover_every_package():
    copied = set()
    for lines in _stages().values():
        for line in lines:
            if line.upper().startswith("COPY "):
                *sources, _dest = line.split()[1:]
                for src in sources:
                    assert os.path.exists(os.path.join(REPO, src)), f"COPY {src}: not in the repository"
                    copied.add(src.rstrip("/"))
    packages = _pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]
    for pattern in packages:
        assert pattern.rstrip("*") in copied, f"package {pattern} is installed from pyproject but never copied"
    assert "configs" in copied and "constraints" in copied


def test_variants_use_their_constraints_and_extras():
    stages = _stages()
    extras = _pyproject()["project"]["optional-dependencies"]
    for variant in ("cpu", "gpu"):
        installs = [line for line in stages[variant] if "pip install" in line]
        assert installs, variant
        assert all(f"-c constraints/{variant}.txt" in line for line in installs), variant
        assert os.path.exists(os.path.join(REPO, "constraints", f"{variant}.txt"))
        assert any(f'".[{variant},s3]"' in line for line in installs), f"{variant}: extras [{variant},s3]"
        assert variant in extras and "s3" in extras
        users = [line.split()[1] for line in stages[variant] if line.upper().startswith("USER ")]
        assert users and users[-1] not in ("root", "0"), f"{variant}: runs as root"


def test_kuberay_probe_and_shell_tools_installed():
    """KubeRay's default probes call wget; its ray start command runs under bash."""
    base = " ".join(_stages()["base"])
    assert re.search(r"apt-get install[^&]*\bwget\b", base)
    # base is the official Debian-based Python image (bash, apt-get), in the Python the package
    # supports; cpu and gpu build on it, not on some other image.
    froms = _froms()
    m = re.fullmatch(r"python:(3\.\d+)(?:\.\d+)?-(?:slim-)?(bookworm|bullseye|trixie)", froms["base"])
    assert m, f"base stage: FROM {froms['base']} is not a Debian-based python image (no bash/apt-get)"
    requires = _pyproject()["project"]["requires-python"]
    lo = re.search(r">=\s*3\.(\d+)", requires)
    assert lo and int(m.group(1).split(".")[1]) >= int(lo.group(1)), f"python {m.group(1)} vs requires-python {requires}"
    assert froms["cpu"] == "base" and froms["gpu"] == "base", froms
