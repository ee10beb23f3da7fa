"""Stage output (prints from any thread, logging, tqdm bars) reaches the run logger, once, throttled."""

import io
import logging
import sys
import threading

from flows.logbridge import LineTee, StageLogBridge, clean_line


class _Capture(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def _logger(name):
    lg = logging.getLogger(name)
    lg.propagate = False
    lg.handlers[:] = []
    cap = _Capture()
    lg.addHandler(cap)
    lg.setLevel(logging.DEBUG)
    return lg, cap


def test_clean_line_strips_colours_and_noise():
    assert clean_line("\x1b[36m(RayTrainWorker pid=1)\x1b[0m [grain train] step 2/14 loss 4.1  ") == \
        "(RayTrainWorker pid=1) [grain train] step 2/14 loss 4.1"
    assert clean_line("(RayTrainWorker pid=1) Reporting training result 3: TrainingReport(checkpoint=None)") is None
    assert clean_line("   \n") is None


def test_line_tee_splits_lines_and_throttles_progress_bars():
    now = [0.0]
    got, raw = [], io.StringIO()
    tee = LineTee(raw, got.append, progress_interval=10.0, clock=lambda: now[0])
    tee.write("first li")
    assert got == []  # no newline yet
    tee.write("ne\nsecond\n")
    for i in range(1, 6):  # tqdm: "\r" + state, many times a second
        now[0] += 3.0
        tee.write(f"\rbar {i}/5")
    tee.write("\n")
    # t=3 and t=15 are ≥ 10 s apart; the final state (newline) equals the last one sent: not repeated
    assert got == ["first line", "second", "bar 1/5", "bar 5/5"]
    for i in range(1, 4):
        now[0] += 1.0
        tee.write(f"\rbar {i}/3")
    tee.write("\n")
    assert got[4:] == ["bar 3/3"]  # within the interval: only the final state
    assert raw.getvalue().count("bar") == 8  # the real stream still gets every update


def test_bridge_forwards_other_threads_and_stage_logging_then_restores():
    lg, cap = _logger("test-bridge-target")
    before = (sys.stdout, sys.stderr)
    stage_log = logging.getLogger("trainers.fake_stage")
    with StageLogBridge(lg):
        t = threading.Thread(target=lambda: print("(RayTrainWorker pid=7) [grain train] step 5/14 loss 3.9"))
        t.start()
        t.join()
        print("main thread line", file=sys.stderr)
        stage_log.info("shard %s: %d rows", "00001", 30)
        sys.stderr.write("\rannotate: 12img")  # a bar left without its newline
    assert (sys.stdout, sys.stderr) == before
    assert "(RayTrainWorker pid=7) [grain train] step 5/14 loss 3.9" in cap.lines
    assert "main thread line" in cap.lines
    assert "trainers.fake_stage: shard 00001: 30 rows" in cap.lines
    assert cap.lines[-1] == "annotate: 12img"
    assert len(cap.lines) == len(set(cap.lines))  # each line once
    stage_log.info("after the bridge")
    assert not any("after the bridge" in x for x in cap.lines)


def test_nested_bridges_do_not_forward_twice():
    outer_lg, outer = _logger("test-bridge-outer")
    inner_lg, inner = _logger("test-bridge-inner")
    with StageLogBridge(outer_lg):
        with StageLogBridge(inner_lg):
            print("once")
    assert inner.lines == ["once"] and outer.lines == []


def test_stale_stream_handler_follows_the_running_stage_and_duplicates_are_dropped():
    """Ray binds a StreamHandler to sys.stderr at its first ray.init (inside stage 1's bridge)."""
    a_lg, a = _logger("test-bridge-stage-a")
    b_lg, b = _logger("test-bridge-stage-b")
    with StageLogBridge(a_lg):
        handler = logging.StreamHandler(sys.stderr)  # bound to stage a's tee
    lib = logging.getLogger("test-bridge-lib")
    lib.propagate, lib.handlers[:] = False, [handler]
    lib.warning("between stages")  # no stage runs: goes to the real stderr only
    with StageLogBridge(b_lg):
        lib.warning("connecting to the cluster")
        print("dup line")
        print("dup line")
    assert a.lines == [] and b.lines == ["connecting to the cluster", "dup line"]
