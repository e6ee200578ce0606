"""Several cells in one job (profile key `cells_per_gpu: K`): a batch-1 run leaves most of a large GPU idle.

A `PackedJob` is one job's submitit callable. It starts one process per unfinished cell (forked from a
fork server that imported torch once; all on the job's one GPU), each running the same `CellJob` as an
unpacked job: its own run folder, records, checkpoint, seed and MLflow run, and its own log,
<run_dir>/sweep/log.txt. It waits for all of them; a cell that fails leaves the others running. On USR2
(preemption, time limit) it passes the signal on, each cell saves at its next step boundary and exits,
then the pack checkpoints and requeues itself; the requeued pack resumes each cell that neither finished
nor failed from its own checkpoint.

Why processes inside one job rather than SLURM tasks (`tasks_per_node=K`): submitit acts on USR2 in rank 0
only, which requeues the job and exits, so the other ranks' cells are ended wherever they are; and the
same callable then behaves alike under the local executor and SLURM.
"""
from __future__ import annotations

import hashlib
import os
import signal
import sys
import time
from pathlib import Path

import submitit

from qsattn.engine.config import Config
from qsattn.engine.run_folder import RunFolder, Stopped, read_records, request_stop
from slurm.job import BUSY, CellJob, job_id_here, write_record

# Imported once by the pack's fork server, then shared by its K cells' processes: K cold imports of torch
# and MLflow at once take tens of seconds on a busy node. (Nothing here touches CUDA before the fork.)
PRELOAD = ("qsattn.engine.train", "qsattn.engine.translate", "eval.registry", "qsattn.engine.tracking", "mlflow", "slurm.pack")
PREEMPTED_EXIT = 75  # a cell's process stopped on USR2 after saving (EX_TEMPFAIL): resumed by the requeued pack
BUSY_EXIT = 73  # a cell's process found its run folder held by another live process (another sweep runs it)


class Preempted(BaseException):
    """USR2 outside the training loop (while starting, translating, evaluating): stop now, resume later.
    A BaseException, so that no `except Exception` in the cell mistakes it for the cell's failure."""


def pack_id(cfgs: list[Config]) -> str:
    names = sorted(Path(c.run_root, c.run_name()).as_posix() for c in cfgs)
    return hashlib.sha256("\n".join(names).encode()).hexdigest()[:8]


def run_dir(cfg: Config) -> Path:
    return Path(cfg.run_root) / cfg.run_name()


def is_finished(cfg: Config, stage: str) -> bool:
    """What `status` calls done (full) or trained (train): no need to start it again. An eval stage
    re-scores even a scored cell, so it is never finished beforehand."""
    folder = RunFolder(run_dir(cfg))
    trained = folder.done.exists()
    if stage == "eval":
        return False
    return trained if stage == "train" else trained and folder.metrics.exists()


def pack_job_id() -> str:
    """The SLURM job (array element) id, else submitit's local job id, so all cells show the pack's job."""
    if os.environ.get("SLURM_JOB_ID") or not os.environ.get("SUBMITIT_LOCAL_JOB_ID"):
        return job_id_here()
    return os.environ["SUBMITIT_LOCAL_JOB_ID"]


class PackedJob(submitit.helpers.Checkpointable):
    """Runs K cells side by side in one job; requeues itself, with its unfinished cells, when preempted."""

    def __init__(self, cfgs: list[Config], stage: str = "full", pack: str = "", failed: tuple[str, ...] = ()):
        self.cfgs, self.stage = list(cfgs), stage
        self.pack = pack or pack_id(self.cfgs)
        self.failed = set(failed)  # run names of cells that failed in an earlier attempt: not started again

    def __call__(self) -> dict:
        job_id = pack_job_id()
        names = [c.run_name() for c in self.cfgs]
        outcomes: dict[str, dict] = {}
        todo = []
        for cfg in self.cfgs:
            if is_finished(cfg, self.stage):
                outcomes[cfg.run_name()] = {"state": "finished", "result": self._result(cfg)}
            elif cfg.run_name() in self.failed:
                error = read_records(run_dir(cfg)).get("failed", {}).get("error", "failed in an earlier attempt")
                outcomes[cfg.run_name()] = {"state": "failed", "error": error}
            else:
                todo.append(cfg)
        print(f"pack {self.pack} (job {job_id}): {len(todo)} of {len(self.cfgs)} cells to run", flush=True)

        submitit_handler = signal.getsignal(signal.SIGUSR2)
        procs: dict[str, object] = {}
        launched: dict[str, float] = {}
        preempted = []

        def on_usr2(signum, frame):
            preempted.append(time.time())
            for proc in procs.values():  # (no is_alive() here: it reads the sentinel the main loop waits on)
                try:
                    os.kill(proc.pid, signal.SIGUSR2)
                except OSError:
                    pass

        signal.signal(signal.SIGUSR2, on_usr2)
        try:
            import multiprocessing

            ctx = multiprocessing.get_context("forkserver")
            ctx.set_forkserver_preload(list(PRELOAD))
            context = {"job_id": job_id, "pack": self.pack, "pack_cells": names, "pack_pid": os.getpid()}
            for cfg in todo:
                if preempted:
                    break
                # USR2 blocked until the cell's own handler is in place (the fork server, started by the
                # first start(), and the cells forked from it inherit the mask)
                old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2})
                try:
                    proc = ctx.Process(target=run_packed_cell, args=(cfg, self.stage, context),
                                       name=cfg.run_name(), daemon=False)
                    launched[cfg.run_name()] = time.time()
                    proc.start()
                    procs[cfg.run_name()] = proc
                finally:
                    signal.pthread_sigmask(signal.SIG_SETMASK, old)
                print(f"  {cfg.run_name()}: process {proc.pid}, log {RunFolder(run_dir(cfg)).sweep_log}", flush=True)
            from multiprocessing.connection import wait

            while any(p.is_alive() for p in procs.values()):
                wait([p.sentinel for p in procs.values() if p.is_alive()], timeout=5.0)
        finally:
            signal.signal(signal.SIGUSR2, submitit_handler)

        by_name = {c.run_name(): c for c in self.cfgs}
        for name, proc in procs.items():
            outcomes[name] = self._outcome(by_name[name], proc.exitcode, bool(preempted), job_id, launched[name])
            if outcomes[name]["state"] == "failed":
                self.failed.add(name)
        for cfg in todo:  # not started: USR2 came first
            outcomes.setdefault(cfg.run_name(), {"state": "preempted"})
        for name, out in outcomes.items():
            print(f"  {name}: {out['state']}" + (f" ({out['error']})" if out.get("error") else ""), flush=True)
        waiting = [n for n, o in outcomes.items() if o["state"] == "preempted"]
        if waiting and callable(submitit_handler):
            submitit_handler(signal.SIGUSR2, None)  # checkpoint() + requeue, then exits
        return {"pack": self.pack, "job_id": job_id, "cells": outcomes}

    def _outcome(self, cfg: Config, exitcode: int | None, preempted: bool, job_id: str, launched: float) -> dict:
        folder = run_dir(cfg)
        records = read_records(folder)
        if exitcode == 0:
            return {"state": "finished", "result": self._result(cfg)}
        if exitcode == BUSY_EXIT:
            return {"state": BUSY}
        if exitcode == PREEMPTED_EXIT or (preempted and exitcode is not None and exitcode < 0):
            write_record(folder, "preempted", job_id=job_id, pack=self.pack,
                         restarts=int(os.environ.get("SLURM_RESTART_COUNT", "0")))
            return {"state": "preempted"}
        failed = records.get("failed", {})
        if failed.get("time", 0) >= launched and failed.get("error"):  # written by the cell's CellJob
            return {"state": "failed", "error": failed["error"]}
        how = f"killed by signal {-exitcode}" if exitcode is not None and exitcode < 0 else f"exit code {exitcode}"
        error = f"the cell's process ended without a result ({how}); see {RunFolder(folder).sweep_log}"
        write_record(folder, "failed", job_id=job_id, pack=self.pack, error=error)
        return {"state": "failed", "error": error}

    def _result(self, cfg: Config):
        return read_records(run_dir(cfg)).get("finished", {}).get("result", {})

    def checkpoint(self, *args, **kwargs) -> submitit.helpers.DelayedSubmission:
        """Called by submitit on USR2 once every cell has saved and stopped: the requeued copy starts the
        cells that neither finished nor failed, each resuming from its own checkpoint (and reports all)."""
        return submitit.helpers.DelayedSubmission(type(self)(self.cfgs, self.stage, self.pack, tuple(self.failed)))


def run_packed_cell(cfg: Config, stage: str, context: dict) -> None:
    """One packed cell, in its own process: log to its run folder, save and stop on USR2, exit with
    PREEMPTED_EXIT when stopped, 1 on failure (recorded by CellJob), 0 when finished."""
    requested = []

    def on_usr2(signum, frame):
        if requested:
            return
        requested.append(time.time())
        if not request_stop():  # else the loop saves at its next step boundary and raises Stopped
            raise Preempted("USR2 outside training")

    _die_with_parent()
    log = RunFolder(run_dir(cfg)).sweep_log
    log.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush(), sys.stderr.flush()
    os.dup2(fd, 1), os.dup2(fd, 2)
    os.close(fd)
    sys.stdout.reconfigure(line_buffering=True)
    print(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} job {context['job_id']} pack {context['pack']} "
          f"process {os.getpid()} ({stage})", flush=True)
    job = CellJob(cfg, stage, context)
    signal.signal(signal.SIGUSR2, on_usr2)
    try:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR2})  # (blocked by the pack while starting us)
        result = job.run_recorded(job.run_cell)
    except Preempted:
        print("stopped on USR2 outside training; the requeued pack starts this stage again", flush=True)
        sys.exit(PREEMPTED_EXIT)
    except Stopped as exc:
        print(f"stopped on USR2: {exc}", flush=True)
        sys.exit(PREEMPTED_EXIT)
    if isinstance(result, dict) and result.get("state") == BUSY:
        sys.exit(BUSY_EXIT)


def _die_with_parent() -> None:
    """Linux: end this cell if the pack's process is killed (SIGKILL leaves no chance to stop children)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:
        os._exit(1)
