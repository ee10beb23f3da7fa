"""Where the local stack lives and which ports it uses; every value can be set by environment.

The stack's home defaults to ``.grain/stack`` in the repository (git-ignored), so each checkout has
its own stack; set ``GRAIN_STACK_HOME`` to put it elsewhere (tests use a temp dir).

| variable                     | default                  | what                                   |
|------------------------------|--------------------------|----------------------------------------|
| ``GRAIN_STACK_HOME``         | ``<repo>/.grain/stack``  | PREFECT_HOME, logs/, artifacts/, state |
| ``GRAIN_PREFECT_PORT``       | 4200                     | Prefect API + UI                       |
| ``GRAIN_RAY_PORT``           | 6380                     | Ray GCS; P+1..P+309 are Ray's too      |
| ``GRAIN_RAY_DASHBOARD_PORT`` | 8265                     | Ray dashboard                          |
| ``GRAIN_ARTIFACT_PORT``      | 8790                     | static server for artifact images      |
| ``GRAIN_RAY_TMP``            | ``/tmp/grain-ray-<hash>``| Ray temp dir (short: socket path limit)|
| ``GRAIN_RAY_NUM_CPUS``       | all cores                | CPUs the Ray head offers               |
| ``GRAIN_WORK_POOL``          | ``grain-local``          | Prefect process work pool              |
| ``GRAIN_HEARTBEAT_S``        | 30                       | flow-run heartbeat period (≥ 30)       |
| ``GRAIN_ZOMBIE_AFTER_S``     | 120                      | no heartbeat for this long → Crashed   |

Everything binds to 127.0.0.1.

Ray runs in token mode (``RAY_AUTH_MODE=token``). The stack makes its own token on first use
(:func:`ensure_ray_token`): ``$GRAIN_STACK_HOME/ray_auth_token``, mode 0600, 256 random bits, passed to the
head, the worker and every flow run through Ray's documented ``RAY_AUTH_TOKEN_PATH``. It never depends on
``~/.ray/auth_token`` (which only ``ray.init`` of a local cluster creates) and is never printed.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import stat
from dataclasses import dataclass

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOST = "127.0.0.1"


def _int_env(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not an integer") from None
    if not 1 <= value <= 65535:
        raise ValueError(f"{name}={value} is outside 1..65535")
    return value


@dataclass(frozen=True)
class StackConfig:
    home: str
    prefect_port: int
    ray_port: int
    dashboard_port: int
    artifact_port: int
    ray_tmp: str
    ray_num_cpus: int | None
    work_pool: str
    heartbeat_s: int = 30
    zombie_after_s: int = 120

    @classmethod
    def from_env(cls) -> "StackConfig":
        home = os.path.abspath(os.environ.get("GRAIN_STACK_HOME") or os.path.join(REPO_ROOT, ".grain", "stack"))
        tag = hashlib.sha1(home.encode()).hexdigest()[:8]
        cpus = os.environ.get("GRAIN_RAY_NUM_CPUS")
        return cls(
            home=home,
            prefect_port=_int_env("GRAIN_PREFECT_PORT", 4200),
            ray_port=_int_env("GRAIN_RAY_PORT", 6380),
            dashboard_port=_int_env("GRAIN_RAY_DASHBOARD_PORT", 8265),
            artifact_port=_int_env("GRAIN_ARTIFACT_PORT", 8790),
            ray_tmp=os.environ.get("GRAIN_RAY_TMP") or f"/tmp/grain-ray-{tag}",
            ray_num_cpus=int(cpus) if cpus else None,
            work_pool=os.environ.get("GRAIN_WORK_POOL", "grain-local"),
            heartbeat_s=max(30, _int_env("GRAIN_HEARTBEAT_S", 30)),  # Prefect's minimum period is 30 s
            zombie_after_s=_int_env("GRAIN_ZOMBIE_AFTER_S", 120),
        )

    # Derived locations ---------------------------------------------------------------------
    @property
    def logs(self) -> str:
        return os.path.join(self.home, "logs")

    @property
    def prefect_home(self) -> str:
        return os.path.join(self.home, "prefect")

    @property
    def artifacts(self) -> str:
        """Folder served by the static server; flows write artifact PNGs here."""
        return os.path.join(self.home, "artifacts")

    @property
    def ray_token_file(self) -> str:
        """The stack's Ray auth token (mode 0600), made by :func:`ensure_ray_token`."""
        return os.path.join(self.home, "ray_auth_token")

    @property
    def state_file(self) -> str:
        return os.path.join(self.home, "state.json")

    @property
    def api_url(self) -> str:
        return f"http://{HOST}:{self.prefect_port}/api"

    @property
    def ui_url(self) -> str:
        return f"http://{HOST}:{self.prefect_port}"

    @property
    def ray_address(self) -> str:
        return f"{HOST}:{self.ray_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://{HOST}:{self.dashboard_port}"

    @property
    def artifact_url(self) -> str:
        return f"http://{HOST}:{self.artifact_port}"

    def ray_extra_ports(self) -> dict[str, int]:
        """Ray's other fixed ports, packed after the GCS port so two stacks never collide."""
        p = self.ray_port
        return {
            "--ray-client-server-port": p + 1,
            "--dashboard-agent-listen-port": p + 2,
            "--dashboard-agent-grpc-port": p + 3,
            "--metrics-export-port": p + 4,
            "--runtime-env-agent-port": p + 5,
            "--node-manager-port": p + 6,
            "--object-manager-port": p + 7,
            # Worker ports: Ray's default range 10002-19999 would collide with ports chosen in it.
            "--min-worker-port": p + 10,
            "--max-worker-port": p + 309,
        }

    def flow_env(self) -> dict[str, str]:
        """Environment for the worker and thus every flow run: where Prefect, Ray and artifacts are."""
        return {
            "PREFECT_HOME": self.prefect_home,
            "PREFECT_API_URL": self.api_url,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_WORKER_WEBSERVER_HOST": HOST,  # only used with --with-healthcheck, keep it local
            "PREFECT_RUNNER_SERVER_HOST": HOST,
            "RAY_ADDRESS": self.ray_address,
            # Flow runs send a heartbeat event every heartbeat_s; the stack's zombie automation
            # (infra/zombies.py) marks a Running flow run Crashed when they stop (its worker died).
            "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(self.heartbeat_s),
            # Ray's single-machine mode: the head, its workers and every driver use 127.0.0.1 and
            # listen on loopback only. Ray otherwise binds gRPC servers on all interfaces and the
            # machine's external address even with --node-ip-address 127.0.0.1 (docs/reliability.md).
            # No other machine could join a head advertised on 127.0.0.1 anyway.
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
            # Ray 2.60 head nodes require a token; clients given an explicit address only send it when
            # token mode is set. The token is the stack's own file (ensure_ray_token), not ~/.ray/auth_token.
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": self.ray_token_file,
            "GRAIN_ARTIFACT_DIR": self.artifacts,
            "GRAIN_ARTIFACT_URL": self.artifact_url,
            "GRAIN_RAY_DASHBOARD_URL": self.dashboard_url,
            "GRAIN_STACK_HOME": self.home,
            "GRAIN_WORK_POOL": self.work_pool,
        }


def ensure_ray_token(cfg: StackConfig) -> str:
    """Create the stack's Ray auth token file if it is missing (0600, 64 hex chars); return its path.

    An existing token is kept (a running head keeps accepting its clients); a file readable by others
    is narrowed to 0600; an empty one is refused, as Ray would abort on it."""
    path = cfg.ray_token_file
    os.makedirs(cfg.home, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        if stat.S_IMODE(os.stat(path).st_mode) & 0o077:
            os.chmod(path, 0o600)
        with open(path) as fh:
            if not fh.read().strip():
                raise ValueError(f"{path} is empty: delete it and run `grain stack up` again to make a new token")
        return path
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_hex(32))
    return path
