"""Local-stack parts that need no services: config from env, artifact server, process-tree stopping."""

import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import psutil
import pytest

from infra import procs
from infra.stack_config import StackConfig


def test_config_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv("GRAIN_STACK_HOME", str(tmp_path))
    monkeypatch.setenv("GRAIN_PREFECT_PORT", "14999")
    cfg = StackConfig.from_env()
    assert cfg.api_url == "http://127.0.0.1:14999/api" and cfg.logs == str(tmp_path / "logs")
    env = cfg.flow_env()
    assert env["PREFECT_API_URL"] == cfg.api_url and env["RAY_ADDRESS"].startswith("127.0.0.1:")
    ports = list(cfg.ray_extra_ports().values())
    assert len(set(ports)) == len(ports) and cfg.ray_port not in ports
    monkeypatch.setenv("GRAIN_RAY_PORT", "seventy")
    with pytest.raises(ValueError, match="GRAIN_RAY_PORT"):
        StackConfig.from_env()


def test_artifact_server_serves_files_only_on_loopback(tmp_path):
    from infra.artifact_server import serve

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "a.png").write_bytes(b"\x89PNG fake")
    server = serve(str(tmp_path), 0, allow_origin="http://127.0.0.1:4242")
    host, port = server.server_address
    assert host == "127.0.0.1"
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/run/a.png") as r:
            assert r.read() == b"\x89PNG fake"
            assert r.headers["Access-Control-Allow-Origin"] == "http://127.0.0.1:4242"  # the Prefect UI only
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/run/")
        assert e.value.code == 404  # no directory listings
    finally:
        server.shutdown()
        server.server_close()


def test_artifact_server_does_not_serve_outside_its_folder(tmp_path):
    """A file beside the served folder, asked for through `..` (plain and percent-encoded, sent as raw request
    lines: no client-side normalisation) is never served; served from one level up, the same name is (the
    control: the requests aim at a file that exists)."""
    import http.client

    from infra.artifact_server import serve

    (tmp_path / "served" / "run").mkdir(parents=True)
    (tmp_path / "secret.txt").write_bytes(b"top secret")
    paths = ["/../secret.txt", "/run/../../secret.txt", "/%2e%2e/secret.txt", "/run/%2E%2E/%2e%2e/secret.txt",
             "/..%2fsecret.txt", "//../secret.txt"]

    def get(root, path):
        server = serve(str(root), 0)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=5)
            conn.putrequest("GET", path, skip_host=True, skip_accept_encoding=True)
            conn.putheader("Host", "127.0.0.1")
            conn.endheaders()
            r = conn.getresponse()
            return r.status, r.read()
        finally:
            server.shutdown()
            server.server_close()

    for path in paths:
        status, body = get(tmp_path / "served", path)
        assert status == 404 and b"top secret" not in body, (path, status)
    assert get(tmp_path, "/secret.txt") == (200, b"top secret")


def test_artifact_server_cors_is_the_prefect_ui_origin_only(tmp_path, monkeypatch):
    from infra.artifact_server import serve

    monkeypatch.delenv("GRAIN_ARTIFACT_ALLOW_ORIGIN", raising=False)
    monkeypatch.setenv("GRAIN_PREFECT_PORT", "4311")
    (tmp_path / "a.png").write_bytes(b"png")
    server = serve(str(tmp_path), 0)  # default: the local stack's Prefect UI
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        req = urllib.request.Request(f"http://127.0.0.1:{server.server_address[1]}/a.png",
                                     headers={"Origin": "http://evil.example"})
        with urllib.request.urlopen(req) as r:
            assert r.headers.get_all("Access-Control-Allow-Origin") == ["http://127.0.0.1:4311"]
            assert "Origin" in r.headers["Vary"]
    finally:
        server.shutdown()
        server.server_close()
    for bad in ("*", "http://127.0.0.1:4200/ui", "null", "file:///x"):
        with pytest.raises(ValueError, match="allowed origin"):
            serve(str(tmp_path), 0, allow_origin=bad)


def test_stop_tree_stops_a_service_and_its_children(tmp_path):
    code = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); time.sleep(60)"
    proc = procs.spawn([sys.executable, "-c", code], dict(os.environ), str(tmp_path / "logs" / "x.log"))
    deadline = time.time() + 20
    while time.time() < deadline and not psutil.Process(proc.pid).children():
        time.sleep(0.2)
    child = psutil.Process(proc.pid).children()[0]
    assert procs.alive(proc.pid, procs.create_time(proc.pid))
    assert procs.stop_tree(proc.pid, grace=5) == 2
    proc.wait(timeout=5)
    assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE
    assert procs.stop_tree(None) == 0  # stopping nothing is fine
    assert not procs.alive(proc.pid, 0.0)


def test_stack_status_when_down(monkeypatch, tmp_path, capsys):
    from infra import stack

    monkeypatch.setenv("GRAIN_STACK_HOME", str(tmp_path))
    monkeypatch.setenv("GRAIN_PREFECT_PORT", "1")  # nothing listens there
    assert stack.main(["status"]) == 3
    assert "stopped" in capsys.readouterr().out
    assert stack.main(["down"]) == 0  # down when down is fine
