"""The evaluation sets' npm packages: exact versions, a committed lockfile, `npm ci --ignore-scripts`."""

from __future__ import annotations

import inspect
import json
import os
import re
import shutil

import pytest

from evaluation import datasets as D

EXACT = re.compile(r"^\d+\.\d+\.\d+$")


def _read(name):
    with open(os.path.join(D.NPM_PROJECT, name), encoding="utf-8") as f:
        return json.load(f)


def test_versions_are_exact_and_the_lockfile_matches():
    pkg, lock = _read("package.json"), _read("package-lock.json")
    pins = D.pinned_versions()
    assert pins and all(EXACT.match(v) for v in pins.values()), pins  # no ^, ~, ranges or tags
    assert lock["lockfileVersion"] >= 2
    root = lock["packages"][""]
    assert root.get("dependencies") == pkg["dependencies"]  # npm ci refuses a lockfile out of sync
    assert root.get("optionalDependencies") == pkg["optionalDependencies"]
    for name, version in pins.items():
        entry = lock["packages"][f"node_modules/{name}"]
        assert entry["version"] == version, name
        assert entry["integrity"].startswith("sha512-"), name  # npm ci verifies every tarball against it
        # no `resolved` URL (omit-lockfile-registry-resolved): npm fetches from the configured registry and
        # the integrity hash decides what is accepted; where one is recorded it must be the public registry
        assert entry.get("resolved", "https://registry.npmjs.org/").startswith("https://registry.npmjs.org/"), name
    assert lock["packages"]["node_modules/openmoji"].get("optional") is True
    # every package a set spec can ask for is pinned
    needed = {p for n in D.all_set_names() for p in D.dataset_spec(n)["packages"]}
    assert needed <= set(pins), needed - set(pins)


def test_install_is_npm_ci_without_scripts():
    cmd = D.npm_ci_command("npm", "/x", with_optional=False)
    assert cmd[:2] == ["npm", "ci"] and "--ignore-scripts" in cmd and "--omit=optional" in cmd
    assert "--omit=optional" not in D.npm_ci_command("npm", "/x", with_optional=True)
    src = inspect.getsource(D)
    assert '"install"' not in src and "'install'" not in src  # no `npm install` left anywhere


def _fake_cache(tmp_path, versions: dict):
    for name, version in versions.items():
        d = tmp_path / "npm" / "node_modules" / name
        d.mkdir(parents=True)
        (d / "package.json").write_text(json.dumps({"name": name, "version": version}))


def test_pinned_packages_in_the_cache_are_used_and_others_reinstalled(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAIN_CACHE", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))  # no npm: any install attempt fails loudly
    pins = D.pinned_versions()
    _fake_cache(tmp_path, {"flag-icons": pins["flag-icons"], "emoji-datasource": "15.1.2"})
    D.ensure_npm_packages(["flag-icons"])  # pinned version present: nothing to do
    with pytest.raises(RuntimeError, match=r"npm is needed to install \['emoji-datasource'\]"):
        D.ensure_npm_packages(["flag-icons", "emoji-datasource"])  # wrong version: reinstall from the lockfile
    with pytest.raises(RuntimeError, match="not pinned"):
        D.ensure_npm_packages(["left-pad"])


@pytest.mark.slow  # ~10-30 s and ~230 MB: the real `npm ci` against the registry (or npm's cache)
def test_npm_ci_installs_exactly_the_locked_versions(tmp_path, monkeypatch):
    if shutil.which("npm") is None:
        pytest.skip("npm is not installed")
    monkeypatch.setenv("GRAIN_CACHE", str(tmp_path))
    D.ensure_npm_packages(["flag-icons", "emojibase-data"])
    pins = D.pinned_versions()
    for name in pins:
        if name in D.OPTIONAL_NPM:
            assert D._package_version(name) is None, f"{name} is optional: installed only when a set needs it"
        else:
            assert D._package_version(name) == pins[name], name
    with open(tmp_path / "npm" / "package-lock.json") as f:
        assert json.load(f)["packages"][""]["dependencies"] == _read("package.json")["dependencies"]
