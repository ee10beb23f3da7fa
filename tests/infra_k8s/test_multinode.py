"""The two-node test harness itself (tests/infra_k8s/multinode.py). The two-node cluster runs in
test_multinode_pipeline.py: annotation and training through it, with S3 and a lost node."""

from __future__ import annotations

import os
import subprocess
import sys
import time


def test_node_processes_are_found_by_their_exact_marker():
    """The harness kills a node's processes by environment marker: only exact matches, children included."""
    from tests.infra_k8s.multinode import MARKER, pids_with_marker, process_titles

    code = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)']); time.sleep(30)"
    parent = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, MARKER: "t-0"}, start_new_session=True)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], env={**os.environ, MARKER: "t-01"})
    try:
        deadline = time.monotonic() + 10
        while len(pids_with_marker("t-0")) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        pids = pids_with_marker("t-0")
        assert parent.pid in pids and len(pids) == 2  # the parent and its child; "t-01" is another node
        assert other.pid not in pids and pids_with_marker("t-01") == [other.pid]
        assert any("time.sleep(30)" in t for t in process_titles("t-0"))
    finally:
        for pid in pids_with_marker("t-0") + pids_with_marker("t-01"):
            os.kill(pid, 9)
        parent.wait()
        other.wait()
