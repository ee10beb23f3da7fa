"""An S3-compatible server for tests: moto's server in its own process, on 127.0.0.1 and a free port.

A real HTTP server (not an in-process mock): s3fs, pyarrow and Ray worker processes all reach it
through ``GRAIN_S3_ENDPOINT_URL``, exactly as they would reach MinIO or AWS. Used by the session
fixture ``s3_server`` in tests/conftest.py.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager

# Dummy credentials: moto accepts any; botocore refuses to sign without some.
S3_ENV = {
    "AWS_ACCESS_KEY_ID": "grain-test",
    "AWS_SECRET_ACCESS_KEY": "grain-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def moto_s3_server(timeout_s: float = 30.0):
    """Start ``moto_server`` on 127.0.0.1:<free port>; yield its endpoint URL; stop it on exit.

    The environment of this process is set (and restored afterwards) so that ``grain.common.storage`` and
    any subprocess (Ray workers) find the endpoint and the dummy credentials."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    exe = os.path.join(os.path.dirname(sys.executable), "moto_server")
    cmd = [exe] if os.path.exists(exe) else [sys.executable, "-m", "moto.server"]
    # moto logs every request to stderr. It goes to a file, never to a pipe: an unread pipe fills
    # (64 KiB, a few hundred requests) and then every request handler blocks on its log line — the
    # server hangs, and so does every test that talks to it.
    log = tempfile.NamedTemporaryFile(prefix="moto-server-", suffix=".log", delete=False)
    proc = subprocess.Popen(
        [*cmd, "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # own process group: we stop exactly what we started
    )
    saved = {k: os.environ.get(k) for k in [*S3_ENV, "GRAIN_S3_ENDPOINT_URL"]}
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"moto_server exited early: {_tail(log.name)}")
            try:
                # moto serves a dashboard API; any HTTP answer means it is up.
                urllib.request.urlopen(f"{url}/moto-api/", timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server on {url} not ready after {timeout_s}s") from None
                time.sleep(0.2)
        os.environ.update(S3_ENV)
        os.environ["GRAIN_S3_ENDPOINT_URL"] = url
        yield url
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()
        os.unlink(log.name)


def _tail(path: str, chars: int = 2000) -> str:
    with open(path, "rb") as fh:
        return fh.read().decode(errors="replace")[-chars:]
