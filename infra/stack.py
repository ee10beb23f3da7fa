"""The local stack: Prefect server + Ray head + process worker + artifact file server, one command each.

    grain stack up        start what is not running, register the deployments (idempotent)
    grain stack status    URLs, PIDs, health (``--json`` for scripts)
    grain stack down      stop everything this stack started (fine when already down)

Everything binds to 127.0.0.1. Ports and the stack's folder come from the environment (see
``infra/stack_config.py``); logs go to ``$GRAIN_STACK_HOME/logs``. Services:

- ``prefect-server``: ``prefect server start --host 127.0.0.1`` with SQLite under ``$GRAIN_STACK_HOME/prefect``.
- ``ray-head``: ``ray start --head --block`` on 127.0.0.1 (its own temp dir and ports), dashboard on.
- ``artifacts``: ``infra.artifact_server`` serving ``$GRAIN_STACK_HOME/artifacts`` (artifact PNGs).
- ``worker``: ``prefect worker start`` on the process pool; flow runs inherit ``RAY_ADDRESS`` etc. and
  send heartbeats; an automation (``infra/zombies.py``) marks a run Crashed when they stop.
Deployments come from ``prefect.yaml`` (``prefect deploy --all``), each named like its flow.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from grain.common.storage import atomic_open
from infra import procs
from infra.stack_config import HOST, REPO_ROOT, StackConfig, ensure_ray_token

SERVICES = ("artifacts", "prefect-server", "ray-head", "worker")  # start order; stop is reversed
_BIN = os.path.dirname(sys.executable)


def _exe(name: str) -> str:
    path = os.path.join(_BIN, name)
    return path if os.path.exists(path) else name


def _base_env(cfg: StackConfig) -> dict[str, str]:
    env = dict(os.environ)
    env.update(cfg.flow_env())
    env.update(RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env["PYTHONPATH"] = REPO_ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def load_state(cfg: StackConfig) -> dict:
    try:
        with open(cfg.state_file) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return {"services": {}}


def _save_state(cfg: StackConfig, state: dict) -> None:
    os.makedirs(cfg.home, exist_ok=True)
    with atomic_open(cfg.state_file, commit=False) as fh:
        fh.write(json.dumps(state, indent=2).encode())


def _running(state: dict, name: str) -> bool:
    s = state["services"].get(name) or {}
    return procs.alive(s.get("pid"), s.get("create_time"))


def _command(cfg: StackConfig, name: str) -> list[str]:
    if name == "artifacts":
        return [sys.executable, "-m", "infra.artifact_server", "--dir", cfg.artifacts, "--port", str(cfg.artifact_port)]
    if name == "prefect-server":
        return [_exe("prefect"), "server", "start", "--host", HOST, "--port", str(cfg.prefect_port)]
    if name == "ray-head":
        cmd = [_exe("ray"), "start", "--head", "--block", "--node-ip-address", HOST, "--port", str(cfg.ray_port),
               "--include-dashboard", "true", "--dashboard-host", HOST, "--dashboard-port", str(cfg.dashboard_port),
               "--temp-dir", cfg.ray_tmp, "--disable-usage-stats"]
        for flag, port in cfg.ray_extra_ports().items():
            cmd += [flag, str(port)]
        if cfg.ray_num_cpus:
            cmd += ["--num-cpus", str(cfg.ray_num_cpus)]
        return cmd
    if name == "worker":
        return [_exe("prefect"), "worker", "start", "--pool", cfg.work_pool, "--type", "process",
                "--name", f"{cfg.work_pool}-worker"]
    raise KeyError(name)


def _ports(cfg: StackConfig, name: str) -> dict[str, int]:
    return {
        "artifacts": {"GRAIN_ARTIFACT_PORT": cfg.artifact_port},
        "prefect-server": {"GRAIN_PREFECT_PORT": cfg.prefect_port},
        "ray-head": {"GRAIN_RAY_PORT": cfg.ray_port, "GRAIN_RAY_DASHBOARD_PORT": cfg.dashboard_port},
        "worker": {},
    }[name]


def _ready(cfg: StackConfig, name: str) -> bool:
    if name == "artifacts":
        return procs.port_open(cfg.artifact_port)
    if name == "prefect-server":
        return procs.http_ok(f"{cfg.api_url}/health")
    if name == "ray-head":
        # The dashboard answers 401 without the stack's Ray token (cfg.ray_token_file): a listening port is enough.
        # The raylet aborts the head when the dashboard agent has not written its port file within ~60 s
        # (a loaded machine): ready only once that file exists and the raylet's port is open.
        import glob

        agent = glob.glob(os.path.join(cfg.ray_tmp, "session_latest", "dashboard_agent_listen_port_*"))
        return bool(agent) and all(procs.port_open(p) for p in (cfg.ray_port, cfg.dashboard_port, cfg.ray_port + 6))
    return True


def _prefect_cli(cfg: StackConfig, args: list[str], timeout: float = 180) -> None:
    """Run a ``prefect`` CLI command against the stack's server; raise with its output on failure."""
    log = os.path.join(cfg.logs, "deploy.log")
    r = subprocess.run([_exe("prefect"), "--no-prompt", *args], env=_base_env(cfg), cwd=REPO_ROOT,
                       capture_output=True, text=True, timeout=timeout)
    with open(log, "a") as fh:
        fh.write(f"\n=== prefect {' '.join(args)} (rc={r.returncode})\n{r.stdout}\n{r.stderr}\n")
    if r.returncode != 0:
        raise RuntimeError(f"`prefect {' '.join(args)}` failed (rc={r.returncode}); see {log}\n{r.stdout[-2000:]}{r.stderr[-2000:]}")


def register_deployments(cfg: StackConfig) -> None:
    """Create the process work pool (idempotent) and apply every deployment of prefect.yaml."""
    _prefect_cli(cfg, ["work-pool", "create", cfg.work_pool, "--type", "process", "--overwrite"])
    _prefect_cli(cfg, ["deploy", "--all", "--prefect-file", os.path.join(REPO_ROOT, "prefect.yaml")])
    from infra.zombies import ensure_zombie_automation

    ensure_zombie_automation(cfg.api_url, cfg.zombie_after_s)  # a dead worker's runs end Crashed


def up(cfg: StackConfig, redeploy: bool = False, timeout: float = 120, services: tuple[str, ...] = SERVICES) -> dict:
    """Start every service (of ``services``, default all) that is not running; register deployments when
    the worker starts or ``redeploy``."""
    for d in (cfg.logs, cfg.prefect_home, cfg.artifacts):
        os.makedirs(d, exist_ok=True)
    ensure_ray_token(cfg)  # before the head starts: it and every client read it through RAY_AUTH_TOKEN_PATH
    state = load_state(cfg)
    started = []
    for name in SERVICES:
        if name not in services or _running(state, name):
            continue
        if name == "worker":
            register_deployments(cfg)  # the pool must exist before its worker polls it
            redeploy = False
        for var, port in _ports(cfg, name).items():
            if procs.port_open(port):
                raise RuntimeError(f"{name}: port {port} is taken by another process; set {var} to a free port")
        log = os.path.join(cfg.logs, f"{name}.log")
        env = _base_env(cfg)
        if name == "ray-head":
            # On a loaded 2-core machine the dashboard agent can take ~45 s to come up; Ray's default
            # waits are shorter and the raylet then aborts the whole head.
            env.setdefault("RAY_agent_register_timeout_ms", "240000")
            env.setdefault("RAY_raylet_start_wait_time_s", "240")
        for attempt in (1, 2):  # Ray's head can abort on a loaded machine (see _ready): one retry
            proc = procs.spawn(_command(cfg, name), env, log, cwd=REPO_ROOT)
            state["services"][name] = {"pid": proc.pid, "create_time": procs.create_time(proc.pid), "log": log}
            _save_state(cfg, state)
            try:
                procs.wait_for(lambda n=name: _ready(cfg, n), timeout, name, proc, log)
                break
            except (RuntimeError, TimeoutError):
                procs.stop_tree(proc.pid, cfg.ray_tmp if name == "ray-head" else None)
                if attempt == 2 or name != "ray-head":
                    raise
        started.append(name)
    if redeploy:
        register_deployments(cfg)
    state["config"] = cfg.__dict__
    _save_state(cfg, state)
    return {"started": started, **status(cfg)}


def down(cfg: StackConfig) -> dict:
    """Stop every service of this stack (and everything they started); fine when nothing runs."""
    state = load_state(cfg)
    stopped = {}
    for name in reversed(SERVICES):
        s = state["services"].get(name) or {}
        pid = s.get("pid") if procs.alive(s.get("pid"), s.get("create_time")) else None
        marker = cfg.ray_tmp if name == "ray-head" else None  # Ray daemons name their temp dir
        stopped[name] = procs.stop_tree(pid, marker)
        state["services"].pop(name, None)
    _save_state(cfg, state)
    return stopped


def status(cfg: StackConfig) -> dict:
    state = load_state(cfg)
    services = {}
    for name in SERVICES:
        s = state["services"].get(name) or {}
        running = _running(state, name)
        services[name] = {"pid": s.get("pid") if running else None, "running": running,
                          "ready": running and _ready(cfg, name), "log": os.path.join(cfg.logs, f"{name}.log")}
    return {
        "home": cfg.home,
        "ui": cfg.ui_url,
        "api": cfg.api_url,
        "ray_address": cfg.ray_address,
        "ray_dashboard": cfg.dashboard_url,
        "ray_token_file": cfg.ray_token_file,
        "artifacts": cfg.artifact_url,
        "logs": cfg.logs,
        "services": services,
        "up": all(v["ready"] for v in services.values()),
    }


def _print_status(st: dict) -> None:
    print(f"stack home     {st['home']}   (logs: {st['logs']})")
    print(f"Prefect UI     {st['ui']}")
    print(f"Ray dashboard  {st['ray_dashboard']}   (RAY_ADDRESS={st['ray_address']})")
    print(f"Ray token      {st['ray_token_file']}   (paste its contents at the dashboard's login)")
    print(f"artifacts      {st['artifacts']}")
    for name, s in st["services"].items():
        state = "ready" if s["ready"] else ("starting" if s["running"] else "stopped")
        print(f"  {name:15s} {state:8s} pid={s['pid'] or '-'}")
    if st["up"]:
        print(f"\nUse it: export PREFECT_API_URL={st['api']} RAY_ADDRESS={st['ray_address']} "
              f"RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH={st['ray_token_file']}")
        print("        prefect deployment run grain-pipeline/grain-pipeline    |    grain stack down")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="grain stack", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=("up", "down", "status"))
    p.add_argument("--json", action="store_true", help="print machine-readable status")
    p.add_argument("--redeploy", action="store_true", help="up: re-apply prefect.yaml even if all runs")
    p.add_argument("--timeout", type=float, default=240, help="seconds to wait for each service (default: %(default)s)")
    args = p.parse_args(argv)
    try:
        cfg = StackConfig.from_env()
        if args.action == "up":
            t0 = time.time()
            st = up(cfg, redeploy=args.redeploy, timeout=args.timeout)
            if not args.json:
                print(f"started: {', '.join(st['started']) or 'nothing (already up)'} in {time.time() - t0:.0f} s")
        elif args.action == "down":
            stopped = down(cfg)
            st = status(cfg)
            if not args.json:
                done = ", ".join(f"{k} ({v} processes)" for k, v in stopped.items() if v)
                print(f"stopped: {done or 'nothing was running'}")
                return 0
        else:
            st = status(cfg)
    except (RuntimeError, TimeoutError, ValueError) as e:
        print(f"grain stack {args.action}: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(st, indent=2))
    else:
        _print_status(st)
    return 0 if (args.action != "status" or st["up"]) else 3


if __name__ == "__main__":
    raise SystemExit(main())
