"""The run-folder lock: one holder at a time, released when the holder dies, even by SIGKILL."""
import os
import signal
import subprocess
import sys

import pytest

from qsattn.run_folder import RunBusy, locked

HOLD = "import sys, time; from qsattn.run_folder import locked\nwith locked(sys.argv[1]):\n    print('held', flush=True); time.sleep(60)"


def test_a_second_holder_is_refused_with_the_first_ones_pid(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(RunBusy, match=f"pid {proc.pid} on "):
            with locked(tmp_path):
                pass
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        with locked(tmp_path) as folder:  # the kernel released the dead holder's lock
            assert f"pid {os.getpid()} " in folder.lock.read_text()
    finally:
        proc.kill()
        proc.wait()


def test_the_lock_is_free_again_after_the_block(tmp_path):
    with locked(tmp_path):
        pass
    with locked(tmp_path):  # a lock left held would conflict with this new open file description
        pass
