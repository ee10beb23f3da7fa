"""The describer actor's engine watchdog (annotators.stages.watch_engine): a dead engine process is noticed."""

import subprocess
import sys
import threading

from annotators.stages import _in_ray_actor, engine_processes, watch_engine


def test_engine_processes_finds_engine_children_only():
    engine = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)  # VLLM::EngineCore"])
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        found = {p.pid for p in engine_processes()}  # may also hold the session's own vLLM engines
        assert engine.pid in found and other.pid not in found
    finally:
        engine.kill(), other.kill(), engine.wait(), other.wait()


def test_watchdog_reports_a_killed_engine_once():
    engine = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)  # VLLM::EngineCore"])
    dead, seen = threading.Event(), []
    mine = [p for p in engine_processes() if p.pid == engine.pid]  # not the session's vLLM engines
    assert len(mine) == 1
    t = watch_engine(mine, lambda pid: (seen.append(pid), dead.set()), period=0.1)
    assert t is not None and not dead.wait(0.5)  # alive: nothing reported
    engine.kill()
    engine.wait()
    assert dead.wait(10) and seen == [engine.pid]
    t.join(5)
    assert not t.is_alive()
    assert watch_engine([], lambda pid: None) is None  # in-process engine: nothing to watch


def test_not_an_actor_outside_ray():
    assert not _in_ray_actor()
