"""CpuMeter counts the CPU time of a session's processes, including one re-parented away from its starter."""

import subprocess
import sys
import time

from infra.cpu_meter import CpuMeter

BURN = "import time\nt=time.process_time()\nwhile time.process_time()-t<{s}: pass\n"


def test_meter_counts_session_processes_and_ignores_others():
    # A session leader whose child burns ~1 s of CPU; the leader itself sleeps.
    leader = subprocess.Popen([sys.executable, "-c", f"import subprocess,sys; subprocess.run([sys.executable,'-c',{BURN.format(s=1.0)!r}])"],
                              start_new_session=True)
    try:
        with CpuMeter([leader.pid], interval=0.2) as m:
            outsider = subprocess.Popen([sys.executable, "-c", BURN.format(s=1.0)])  # our session: not counted
            leader.wait(timeout=60)
            outsider.wait(timeout=60)
            time.sleep(0.3)
        # The burner's last sample may be up to one interval short; interpreter start-up adds a little.
        assert 0.6 <= m.cpu_seconds <= 2.0, m.cpu_seconds
    finally:
        leader.kill()
