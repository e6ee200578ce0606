"""A run folder's layout and its lock. Torch-free: the engine, the launcher and the report all use it.

    <run_root>/<name>/
        config.yaml            the resolved config (written once the resume check has passed)
        checkpoints/latest.pt  the resume point; epoch_NNNN.pt the kept epoch checkpoints
        DONE                   training finished ("step N")
        metrics.json           evaluation results and their protocol
        mlflow_run_id          the MLflow run every attempt of this run logs to
        .lock                  held (flock) by the one process training this folder
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import socket
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
        self.lock = self.dir / ".lock"

    def epoch_checkpoint(self, epoch: int) -> Path:
        return self.checkpoints / f"epoch_{epoch:04d}.pt"


class RunBusy(UserError, RuntimeError):
    """Another live process holds the run folder's lock; the message names it."""


@contextlib.contextmanager
def locked(run_dir: str | os.PathLike):
    """Hold the run folder's lock for the duration, or raise RunBusy at once if another process holds it.

    An flock is released by the kernel when its holder dies (SIGKILL included), so a crashed run never
    leaves a stale lock. Within one host it is exact; on network file systems flock may be local to a node."""
    folder = RunFolder(run_dir)
    folder.dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder.lock, os.O_RDWR | os.O_CREAT, 0o664)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            raise RunBusy(f"{folder.dir} is in use by {holder}; wait for it to finish, or stop it first") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}".encode(), 0)
        yield folder
    finally:
        os.close(fd)  # closing the descriptor releases the lock
