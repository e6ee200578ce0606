"""One sweep job: a checkpointable callable around one cell (dino's run_with_submitit `Trainer`).

`__call__` runs the cell (train or resume, translate, evaluate: `qsattn.engine.pipeline.run_cell`) holding the
run folder's lock (`qsattn.engine.run_folder.locked`) for all of it, and leaves small status records in the
cell's run folder, `<run_dir>/sweep/{submitted,started,finished,failed}.json`, so that `status` needs neither sacct nor the submitit folder (a packed cell, slurm/pack.py, runs the same
CellJob in its own process, and its records also name its pack). `checkpoint()` is what submitit calls on
preemption or near the time limit (signal USR2): it returns a fresh copy of the job to requeue; the
requeued job resumes from the run folder's latest checkpoint and continues the same MLflow run (its id
is kept in the run folder).

A job whose cell is already being run by another process (a second sweep started at the same time)
meets the lock, writes no record and returns `{"state": "running elsewhere"}`: skipped, not failed.
"""
from __future__ import annotations

import json
import os
import socket
import time
import traceback
from pathlib import Path

import submitit

from qsattn.engine.config import Config
from qsattn.engine.run_folder import RECORDS, RunBusy, RunFolder, Stopped, locked, read_records, request_stop  # noqa: F401

STAGES = ("full", "train", "eval")
BUSY = "running elsewhere"  # the result state of a job whose cell another live process holds


def write_record(run_dir: Path | str, kind: str, **fields) -> None:
    """Atomically write <run_dir>/sweep/<kind>.json with a timestamp."""
    assert kind in RECORDS, kind
    from qsattn.engine.atomic import atomic_write_text

    data = {"time": time.time(), "host": socket.gethostname(), **fields}
    atomic_write_text(RunFolder(run_dir).record(kind), json.dumps(data, indent=1, default=str))


def job_id_here() -> str:
    """The SLURM array element id (123_4) or job id, else submitit's local job id, else this process's id.

    Under submitit's local executor the job id is the pid of its controller process (which names the log
    files), and the job runs in a child of it: os.getpid() there is another number."""
    env = os.environ
    if env.get("SLURM_ARRAY_JOB_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env.get('SLURM_ARRAY_TASK_ID', '0')}"
    return env.get("SLURM_JOB_ID") or env.get("SUBMITIT_LOCAL_JOB_ID") or str(os.getpid())


def train_only(cfg: Config) -> dict:
    """`--stage train`: train or resume, nothing else (translate and evaluate later)."""
    from qsattn.engine.train import train

    run_dir = train(cfg, progress=False)
    done = RunFolder(run_dir).done
    return {"run_dir": str(run_dir), "trained": done.read_text().strip() if done.exists() else ""}


def eval_only(cfg: Config) -> dict:
    """`--stage eval`: re-score a trained cell under the grid's evaluation keys (no training)."""
    from qsattn.engine.pipeline import evaluate_run

    return evaluate_run(cfg, progress=False)


def full_cell(cfg: Config) -> dict:
    from qsattn.engine.pipeline import run_cell  # imported in the job: the launcher never imports torch

    return run_cell(cfg)


class CellJob(submitit.helpers.Checkpointable):
    """Runs one cell; requeues itself when preempted or near its time limit."""

    context: dict = {}  # (a job pickled before `context` existed)

    def __init__(self, cfg: Config, stage: str = "full", context: dict | None = None):
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
        self.cfg, self.stage = cfg, stage
        self.context = dict(context or {})  # fields added to its records (a packed cell: its pack and job)

    def record(self, kind: str, **fields) -> None:
        write_record(self.run_dir, kind, **{"job_id": job_id_here(), **fields, **self.context})

    @property
    def run_dir(self) -> Path:
        return Path(self.cfg.run_root) / self.cfg.run_name()

    def __call__(self) -> dict:
        return self.run_recorded(self._run_saving_on_preemption)

    def run_recorded(self, body) -> dict:
        """body() with the started / finished / failed records around it (a stop on request is no failure),
        under the run folder's lock; {"state": BUSY} without touching the folder if another process has it."""
        try:
            with locked(self.run_dir):
                return self._run_recorded(body)
        except RunBusy as exc:
            print(f"{self.cfg.run_name()}: {BUSY}: {exc}", flush=True)
            return {"state": BUSY, "detail": str(exc)}

    def _run_recorded(self, body) -> dict:
        import logging

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
        self.record("started", pid=os.getpid(), stage=self.stage,
                    restarts=int(os.environ.get("SLURM_RESTART_COUNT", "0")))
        try:
            result = body()
        except Exception as exc:  # recorded for `status`, then re-raised so submitit reports it too
            if not isinstance(exc, Stopped):
                self.record("failed", error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc(limit=20))
            raise
        self.record("finished", stage=self.stage, result=result if isinstance(result, dict) else str(result))
        return result

    def run_cell(self) -> dict:
        return {"full": full_cell, "train": train_only, "eval": eval_only}[self.stage](self.cfg)

    def _run_saving_on_preemption(self) -> dict:
        """submitit's USR2 handler requeues and exits at once, losing the steps since the last checkpoint.
        While training runs, USR2 instead asks the loop to save at its next step boundary and stop
        (`qsattn.engine.run_folder.request_stop`); then submitit's own handler is called (checkpoint() and requeue)."""
        import signal

        submitit_handler = signal.getsignal(signal.SIGUSR2)
        if not callable(submitit_handler):
            return self.run_cell()

        def on_usr2(signum, frame):
            if not request_stop():
                submitit_handler(signum, frame)

        signal.signal(signal.SIGUSR2, on_usr2)
        try:
            return self.run_cell()
        except Stopped:
            submitit_handler(signal.SIGUSR2, None)  # checkpoint() + requeue, then exits
            raise
        finally:
            signal.signal(signal.SIGUSR2, submitit_handler)

    def checkpoint(self, *args, **kwargs) -> submitit.helpers.DelayedSubmission:
        """Called by submitit on USR2 (preemption, time limit), after the training saved its checkpoint
        (see _run_saving_on_preemption); the requeued copy resumes from it."""
        try:
            self.record("preempted", restarts=int(os.environ.get("SLURM_RESTART_COUNT", "0")))
        except OSError:
            pass
        return submitit.helpers.DelayedSubmission(type(self)(self.cfg, self.stage, self.context))
