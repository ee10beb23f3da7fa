"""The stack's Ray head on a machine that has never run Ray: it makes its own token and comes up.

Only ``ray.init`` of a local cluster ever creates ``~/.ray/auth_token``, so a head started in token mode on a
fresh machine must make its own token. These tests start the head with
``HOME`` pointing at an empty folder, so nothing a previous test or run left behind can help, and show
that the token is enforced: a client without it, or with a wrong one, is refused; one with it works.
"""

import dataclasses
import os
import stat
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from infra.stack_config import StackConfig, ensure_ray_token
from tests.procs import free_port_base


def test_ensure_ray_token_makes_a_private_token_once(tmp_path):
    cfg = dataclasses.replace(StackConfig.from_env(), home=str(tmp_path / "stack"))
    path = ensure_ray_token(cfg)
    assert path == cfg.ray_token_file and cfg.flow_env()["RAY_AUTH_TOKEN_PATH"] == path
    token = open(path).read()
    assert len(token) == 64 and int(token, 16) >= 0
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert ensure_ray_token(cfg) == path and open(path).read() == token  # kept: a running head keeps its clients
    os.chmod(path, 0o644)
    ensure_ray_token(cfg)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600  # narrowed
    open(path, "w").close()
    with pytest.raises(ValueError, match="ray_auth_token is empty"):
        ensure_ray_token(cfg)


def _clients(envs: dict[str, dict], addr: str) -> dict[str, tuple[int, str, str]]:
    """Run one Ray driver per env at once: name → (rc, stdout, stderr)."""
    code = ("import ray; ray.init(address=%r, log_to_driver=False); "
            "print('sum', ray.get(ray.remote(lambda: 40 + 2).remote()))" % addr)
    procs = {k: subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True) for k, env in envs.items()}
    out = {}
    for k, p in procs.items():
        try:
            stdout, stderr = p.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            p.kill()
            stdout, stderr = p.communicate()
        out[k] = (p.returncode, stdout, stderr)
    return out


def test_stack_ray_head_comes_up_with_an_empty_home_and_enforces_its_token(tmp_path, monkeypatch):
    from infra import stack

    home = tmp_path / "home"
    home.mkdir()
    base = free_port_base(330)
    monkeypatch.setenv("HOME", str(home))  # the stack and every process it starts see an empty home
    for k, v in {"GRAIN_STACK_HOME": str(tmp_path / "stack"), "GRAIN_RAY_PORT": str(base),
                 "GRAIN_RAY_DASHBOARD_PORT": str(base + 320), "GRAIN_RAY_TMP": f"/tmp/gr-tok-{base}",
                 "GRAIN_RAY_NUM_CPUS": "1"}.items():
        monkeypatch.setenv(k, v)
    for k in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE", "RAY_ADDRESS"):
        monkeypatch.delenv(k, raising=False)
    cfg = StackConfig.from_env()
    try:
        st = stack.up(cfg, services=("ray-head",), timeout=180)
        assert st["started"] == ["ray-head"] and st["services"]["ray-head"]["ready"]
        assert not (home / ".ray" / "auth_token").exists()  # it never relied on Ray's default token file
        token = open(cfg.ray_token_file).read()
        assert token not in open(st["services"]["ray-head"]["log"]).read()  # never logged

        # A driver as the stack's flow runs start one (single-machine mode: loopback), minus the token.
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("RAY_")},
               **{k: v for k, v in cfg.flow_env().items() if not k.startswith("RAY_AUTH")}, "PYTHONPATH": os.getcwd()}
        refused = {**env, "RAY_NUM_REDIS_GET_RETRIES": "2"}  # a refused driver gives up after 2 tries, not 20
        runs = _clients({"no token": {**refused, "RAY_AUTH_MODE": "disabled"},
                         "wrong token": {**refused, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 64},
                         "the stack's token": {**env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": cfg.ray_token_file}},
                        cfg.ray_address)
        rc, stdout, stderr = runs.pop("the stack's token")
        assert rc == 0 and "sum 42" in stdout, stderr[-3000:]
        for what, (rc, stdout, stderr) in runs.items():
            assert rc != 0 and "sum 42" not in stdout, (what, stdout[-2000:])
            assert "InvalidAuthToken" in stderr, (what, stderr[-3000:])  # refused by the head, not unreachable

        # The dashboard (job API) wants the same token.
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"{cfg.dashboard_url}/api/version", timeout=30)
        assert e.value.code == 401
        req = urllib.request.Request(f"{cfg.dashboard_url}/api/version", headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(req, timeout=30) as r:
            assert r.status == 200 and b"ray_version" in r.read()
    finally:
        stack.down(cfg)
