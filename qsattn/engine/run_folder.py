"""A run folder's layout and its lock. Torch-free: the engine, the launcher and the report all use it.

    <run_root>/<name>/
        config.yaml            the resolved config (written once the resume check has passed)
        checkpoints/latest.pt  the resume point; epoch_NNNN.pt the kept epoch checkpoints
        DONE                   training finished ("step N")
        metrics.json           evaluation results and their protocol
        mlflow_run_id          the MLflow run every attempt of this run logs to
        progress.json          step, total steps, s/step of the training, rewritten at each log step
        tracking.jsonl         every MLflow record of the run, in order (qsattn/engine/tracking.py sends it)
        tracking.json          how far tracking.jsonl is sent, and whether the store answered
        sweep/<kind>.json      the sweep job's records (submitted, started, finished, failed, preempted)
        sweep/log.txt          a packed cell's stdout and stderr, every attempt appended
        .lock                  held (flock) by the one process training this folder

It also owns the stop request to the training loop (`request_stop`, `Stopped`), which the launcher's
signal handlers use without importing the engine (or torch).
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import threading
import time
from pathlib import Path

from qsattn.errors import UserError


class RunFolder:
    """The paths of one run folder."""

    def __init__(self, path: str | os.PathLike):
        self.dir = Path(path)
        self.config = self.dir / "config.yaml"
        self.checkpoints = self.dir / "checkpoints"
        self.latest = self.checkpoints / "latest.pt"
        self.done = self.dir / "DONE"
        self.metrics = self.dir / "metrics.json"
        self.mlflow_run_id = self.dir / "mlflow_run_id"
        self.progress = self.dir / "progress.json"
        self.tracking_journal = self.dir / "tracking.jsonl"
        self.tracking_state = self.dir / "tracking.json"
        self.sweep = self.dir / "sweep"
        self.sweep_log = self.sweep / "log.txt"
        self.lock = self.dir / ".lock"

    def epoch_checkpoint(self, epoch: int) -> Path:
        return self.checkpoints / f"epoch_{epoch:04d}.pt"

    def record(self, kind: str) -> Path:
        """A sweep job's record of `kind` (one of RECORDS; slurm/job.py writes them)."""
        return self.sweep / f"{kind}.json"


RECORDS = ("submitted", "started", "finished", "failed", "preempted")


def read_records(run_dir: str | os.PathLike) -> dict[str, dict]:
    """The sweep job's records of the folder that exist and parse: kind -> its fields."""
    out = {}
    for kind in RECORDS:
        try:
            out[kind] = json.loads(RunFolder(run_dir).record(kind).read_text())
        except (OSError, ValueError):
            pass
    return out


# Set (by `request_stop`, from a preemption signal handler) to make the training loop save at its next
# step boundary and raise `Stopped`: a preempted job then loses no step. `RUNNING` is set while a loop
# runs in this process, so that a handler knows whether one will see the request.
STOP = threading.Event()
RUNNING = threading.Event()


class Stopped(Exception):
    """Training stopped on request after saving its checkpoint; run again to resume."""


def request_stop() -> bool:
    """Ask this process's training loop to save and stop; False (nothing asked) when no loop runs."""
    if not RUNNING.is_set():
        return False
    STOP.set()
    return True


class RunBusy(UserError, RuntimeError):
    """Another live process holds the run folder's lock; the message names it."""


# Run folders whose lock this process holds (path -> depth): a sweep job holds its cell's lock for the
# whole cell (train, translate, evaluate) and train() takes it again inside; flock would refuse the second
# open file description of the same process.
_HELD: dict[tuple[int, Path], int] = {}


@contextlib.contextmanager
def locked(run_dir: str | os.PathLike):
    """Hold the run folder's lock for the duration, or raise RunBusy at once if another process holds it.
    Re-entrant within one process.

    An flock is released by the kernel when its holder dies (SIGKILL included), so a crashed run never
    leaves a stale lock. Within one host it is exact; on network file systems flock may be local to a node."""
    folder = RunFolder(run_dir)
    folder.dir.mkdir(parents=True, exist_ok=True)
    key = (os.getpid(), folder.dir.resolve())
    if _HELD.get(key):
        _HELD[key] += 1
        try:
            yield folder
        finally:
            _HELD[key] -= 1
        return
    fd = os.open(folder.lock, os.O_RDWR | os.O_CREAT, 0o664)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            raise RunBusy(f"{folder.dir} is in use by {holder}; wait for it to finish, or stop it first") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}".encode(), 0)
        _HELD[key] = 1
        try:
            yield folder
        finally:
            del _HELD[key]
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def holder(run_dir: str | os.PathLike) -> str | None:
    """Who holds the run folder's lock ("pid N on HOST since ..."), or None when nobody on this host does.

    Looks without taking the lock (taking it, even for a moment, could make a job that starts in that
    moment meet RunBusy): the kernel's lock table, /proc/locks, lists every flock by file; where it cannot
    be read, the pid written in the lock file is checked for life. Locks held on other nodes of a network
    file system are not seen here (the sweep asks SLURM about those jobs)."""
    lock = RunFolder(run_dir).lock
    try:
        st = os.stat(lock)
        text = lock.read_text(errors="replace").strip()
    except OSError:
        return None
    ident = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        with open("/proc/locks") as table:
            rows = [line.split() for line in table]
    except OSError:
        rows = None
    if rows is not None:
        held = any(len(r) >= 6 and r[1] == "FLOCK" and r[5] == ident for r in rows)  # ("->" rows: waiters)
        return (text or "a process on this host") if held else None
    parts = text.split()
    if len(parts) >= 4 and parts[0] == "pid" and parts[3] == socket.gethostname() and parts[1].isdigit():
        try:
            os.kill(int(parts[1]), 0)
            return text
        except ProcessLookupError:
            return None
        except PermissionError:
            return text
    return None
