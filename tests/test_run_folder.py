"""The run-folder lock: one holder at a time, released when the holder dies, even by SIGKILL."""
import os
import signal
import subprocess
import sys

import pytest

from qsattn.engine.run_folder import RunBusy, locked

HOLD = "import sys, time; from qsattn.engine.run_folder import locked\nwith locked(sys.argv[1]):\n    print('held', flush=True); time.sleep(60)"


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


def test_the_lock_is_reentrant_in_its_holder_and_still_refuses_others(tmp_path):
    """A sweep job holds its cell's lock for the whole cell and train() takes it again inside."""
    code = ("import sys; from qsattn.engine.run_folder import RunBusy, locked\n"
            "try:\n    locked(sys.argv[1]).__enter__()\nexcept RunBusy:\n    print('busy')")
    with locked(tmp_path):
        with locked(tmp_path):
            out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True)
            assert out.stdout.strip() == "busy"
        out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True)
        assert out.stdout.strip() == "busy", "still held after the inner block"
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True)
    assert out.stdout.strip() == "" and out.returncode == 0


def test_holder_names_a_live_holder_without_taking_the_lock(tmp_path):
    from qsattn.engine.run_folder import holder

    assert holder(tmp_path) is None  # no lock file yet
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        for _ in range(3):  # looking never takes it: the holder keeps it, and looking again says the same
            assert holder(tmp_path).startswith(f"pid {proc.pid} on ")
    finally:
        proc.kill()
        proc.wait()
    assert holder(tmp_path) is None  # the lock file stays, naming a dead process: not held
    assert f"pid {proc.pid}" in (tmp_path / ".lock").read_text()
