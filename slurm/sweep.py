"""Run an experiment grid: every cell trained, translated and evaluated, locally or on SLURM.

    python -m qsattn sweep experiments/demo.yaml                     # local: jobs as processes here
    python -m qsattn sweep experiments/table1.yaml --cluster slurm --profile mycluster
    python -m qsattn sweep experiments/table1.yaml --only method=cut --only dataset=horse2zebra --dry-run
    python -m qsattn status experiments/table1.yaml

Clusters (all through submitit): `local` runs each cell as a process on this machine, at most
--max-parallel at a time (one per visible GPU, each job seeing only its GPU), and waits for them;
`slurm` submits one job array per sweep with a cluster profile (slurm/<profile>.yaml; override its keys
with --set key=value) and returns (add --wait to collect results); `debug` runs the cells one after
another in this process (for pdb).

Packing (profile key `cells_per_gpu: K`, K > 1): each job runs K cells side by side on its one GPU
(slurm/pack.py): locally K cells at once per visible GPU (on a CPU, K processes), on SLURM one job per
GPU, each array element K cells. Each cell keeps its own run folder, checkpoint, MLflow run and log.

Running a sweep again is always safe: finished cells are skipped, queued or running ones are left
alone, unfinished ones resume from their latest checkpoint (and continue their MLflow run), failed ones
are retried. A job preempted or near its time limit (USR2) checkpoints and requeues itself. Two sweeps
at once never run a cell twice: each job holds its cell's run-folder lock, and a job that finds it held
by another live process skips the cell ("running elsewhere").

Before submitting, the sweep prints its bill (GPU-hours and checkpoint disk: slurm/bill.py) and checks
what every cell will need (slurm/preflight.py); a problem stops it with one message. While it waits
for local jobs (or SLURM jobs with --wait) it prints each running cell's step, s/step and ETA.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from qsattn.engine.config import split_key_value
from qsattn.engine.run_folder import RunFolder
from slurm.grid import Cell, GridError, expand, select

PROFILE_DIR = Path(__file__).resolve().parent
PROFILE_KEYS = {
    "partition": "slurm_partition", "account": "slurm_account", "qos": "slurm_qos",
    "constraint": "slurm_constraint", "gpus_per_node": "gpus_per_node", "cpus_per_task": "cpus_per_task",
    "mem_gb": "mem_gb", "time_min": "timeout_min", "array_parallelism": "slurm_array_parallelism",
    "signal_delay_s": "slurm_signal_delay_s", "sbatch": "slurm_additional_parameters", "setup": "slurm_setup",
    "max_num_timeout": None, "max_parallel": None, "env": None, "description": None, "cells_per_gpu": None,
    "gpu_model": None,
}
DEFAULT_PROFILE = {"time_min": 60 * 24, "max_num_timeout": 20, "signal_delay_s": 120, "cpus_per_task": 2,
                   "gpus_per_node": 0, "mem_gb": 8}


def load_profile(name: str | None, sets: list[str] | None = None) -> dict:
    """A cluster profile: slurm/<name>.yaml (or a path), then --set key=value overrides."""
    profile = dict(DEFAULT_PROFILE)
    if name:
        path = Path(name) if name.endswith((".yaml", ".yml")) else PROFILE_DIR / f"{name}.yaml"
        if not path.exists():
            known = sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))
            raise GridError(f"no cluster profile '{name}' ({path}); known: {', '.join(known)}. "
                            "Copy slurm/example-cluster.yaml to slurm/<yours>.yaml and edit it.")
        values = yaml.safe_load(path.read_text()) or {}
        profile.update({k: v for k, v in values.items() if v is not None})
    for item in sets or []:
        key, value = split_key_value(item, "--set", GridError)
        profile[key] = yaml.safe_load(value)
    unknown = set(profile) - set(PROFILE_KEYS)
    if unknown:
        raise GridError(f"unknown profile keys {sorted(unknown)}; valid: {sorted(PROFILE_KEYS)}")
    k = profile.get("cells_per_gpu", 1)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise GridError(f"cells_per_gpu must be an integer >= 1 (cells run side by side per GPU), got {k!r}")
    profile["cells_per_gpu"] = k
    return profile


def visible_gpus() -> list[int]:
    """This machine's GPUs for local jobs, without importing torch: $CUDA_VISIBLE_DEVICES, else nvidia-smi."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        items = [x.strip() for x in env.split(",") if x.strip()]
        if not all(x.isdigit() for x in items):
            raise GridError(f"CUDA_VISIBLE_DEVICES={env!r}: give GPU indices (the local sweep pins one per job)")
        return [int(x) for x in items]
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return []
    return [int(x) for x in out.stdout.split() if x.strip().isdigit()] if out.returncode == 0 else []


@dataclasses.dataclass
class Layout:
    """How a sweep's cells map onto jobs: `k` cells per job (1: unpacked), `slots` local jobs at once
    (a GPU index each, or None on the CPU), and each cell's torch threads."""
    k: int
    slots: list
    threads: int

    def jobs(self, cells: list[Cell]) -> list[list[Cell]]:
        return [cells[i:i + self.k] for i in range(0, len(cells), self.k)]


def layout(cluster: str, profile: dict, cells: list[Cell], max_parallel: int | None) -> Layout:
    """max_parallel counts cells at once (--max-parallel, else the profile's max_parallel)."""
    k = int(profile.get("cells_per_gpu") or 1)
    cores = os.cpu_count() or 1
    if cluster == "slurm":
        cpus = int(profile.get("cpus_per_task") or 0)  # per job: shared by its k cells
        return Layout(k, [], max(1, cpus // k) if cpus else 0)
    if cluster == "debug":
        return Layout(1, [None], 0)  # in this process, one after another: packing would defeat pdb
    gpus = [] if all(c.config.device == "cpu" for c in cells) else visible_gpus()
    if gpus:
        slots = gpus[:max(1, max_parallel // k)] if max_parallel else gpus
    else:
        slots = [None] * (max(1, max_parallel // k) if max_parallel else (1 if k > 1 else max(1, cores // 2)))
    return Layout(k, slots, max(1, cores // (len(slots) * k)))


def slurm_parameters(profile: dict) -> dict:
    params = {}
    for key, value in profile.items():
        target = PROFILE_KEYS[key]
        if target and value not in (None, "", [], {}):
            params[target] = value
    if profile.get("env"):
        exports = [f"export {k}={v!s}" for k, v in profile["env"].items()]
        params["slurm_setup"] = list(params.get("slurm_setup", [])) + exports
    return params


def make_executor(cluster: str, folder: Path, profile: dict):
    import submitit

    if cluster == "debug":
        return submitit.DebugExecutor(folder)
    if cluster == "local":
        ex = submitit.LocalExecutor(folder, max_num_timeout=int(profile["max_num_timeout"]))
        ex.update_parameters(timeout_min=int(profile["time_min"]), gpus_per_node=int(profile.get("gpus_per_node") or 0),
                             signal_delay_s=int(profile["signal_delay_s"]))
        return ex
    if cluster == "slurm":
        params = slurm_parameters(profile)
        if int(profile.get("cells_per_gpu") or 1) > 1 and params.get("gpus_per_node"):
            params["gpus_per_node"] = 1  # a pack shares one GPU
        ex = submitit.AutoExecutor(folder, cluster="slurm", slurm_max_num_timeout=int(profile["max_num_timeout"]))
        ex.update_parameters(name="qsattn", **params)
        return ex
    raise GridError(f"--cluster {cluster}: expected local, slurm or debug")


def for_jobs(cell: Cell, threads: int = 0) -> Cell:
    """Run and data folders and the MLflow store made absolute (jobs may start in another folder), and
    torch's CPU threads set to the job's share of cores where the grid leaves num_threads at 0:
    several processes each using every core run many times slower."""
    from qsattn.engine.tracking import resolve_uri

    cfg = cell.config
    uri = cfg.tracking_uri if cfg.tracking_uri == "off" else resolve_uri(cfg.tracking_uri)
    changes = dict(run_root=str(Path(cfg.run_root).absolute()), data_root=str(Path(cfg.data_root).absolute()),
                   tracking_uri=uri)
    if threads and hasattr(cfg, "num_threads") and not cfg.num_threads:
        changes["num_threads"] = threads
    return dataclasses.replace(cell, config=dataclasses.replace(cfg, **changes))


def prepare_tracking(cells: list[Cell]) -> None:
    """Create each MLflow store and experiment (its kind, description and view) once, here, before any
    job starts, under the store's lock: two sweeps creating a fresh SQLite store at once corrupt it.
    A store that does not answer is left to the jobs (they train anyway and keep their records)."""
    from qsattn.engine.tracking import ensure_experiment, open_client

    for uri, experiment in sorted({(c.config.tracking_uri, c.config.experiment) for c in cells}):
        if uri == "off":
            continue
        try:
            ensure_experiment(open_client(uri), experiment, uri)
        except Exception as exc:  # noqa: BLE001 - preflight has said what it found; training never waits on it
            print(f"warning: MLflow at {uri} does not answer ({type(exc).__name__}); the cells train anyway and "
                  f"keep their records for it (docs/tracking.md)", file=sys.stderr)


def plan(cells: list[Cell], stage: str, retry_failed: bool = True) -> tuple[list[Cell], dict[str, str]]:
    """Which cells to (re)submit, and why each other cell is left alone. A cell whose run folder is
    locked by a live process (another sweep's job, a `train` by hand) is running, whatever its records say."""
    from slurm.status import cell_status, live_jobs

    live = live_jobs()
    todo, skipped = [], {}
    for cell in cells:
        st = cell_status(cell, live)
        done = st.state == "done" or (stage == "train" and st.state == "trained")
        if stage == "eval" and not st.holder and st.state in ("done", "trained"):
            todo.append(cell)  # re-scored under the grid's evaluation keys, without training
            continue
        if stage == "eval" and not st.holder and st.state not in ("running", "queued"):
            skipped[cell.name] = f"not trained ({st.state}): train it first (--stage train or full)"
            continue
        if done:
            skipped[cell.name] = "done"
        elif st.holder:
            skipped[cell.name] = f"running elsewhere ({st.holder})"
        elif st.state in ("running", "queued"):
            skipped[cell.name] = f"{st.state} (job {st.job_id})"
        elif st.state == "failed" and not retry_failed:
            skipped[cell.name] = "failed (--no-retry)"
        else:
            todo.append(cell)
    return todo, skipped


def make_job(cells: list[Cell], stage: str, k: int):
    """A cell's job (CellJob), or with k > 1 a pack of cells sharing one job and GPU (PackedJob)."""
    from slurm.job import CellJob
    from slurm.pack import PackedJob

    return CellJob(cells[0].config, stage) if k == 1 else PackedJob([c.config for c in cells], stage)


def submit(cells: list[Cell], cluster: str, profile: dict, folder: Path, stage: str, lay: Layout,
           wait: bool, progress_every: float = 30.0) -> int:
    """Submit the cells' jobs; returns the number of cells that failed (when waited for). While waiting,
    prints the progress of the running cells every `progress_every` seconds (0: never)."""
    from slurm.job import write_record

    executor = make_executor(cluster, folder, profile)
    units = lay.jobs(cells)
    watch = ProgressPrinter(progress_every)

    def submitted(unit: list[Cell], job_id: str, job) -> None:
        pack = {"pack": job.pack, "pack_cells": [c.config.run_name() for c in unit]} if lay.k > 1 else {}
        for cell in unit:
            write_record(cell.run_dir, "submitted", job_id=job_id, cluster=cluster, folder=str(folder), **pack)

    if cluster == "slurm":
        jobs = [make_job(unit, stage, lay.k) for unit in units]
        with executor.batch():  # one job array per sweep
            pending = [executor.submit(job) for job in jobs]
        out = []
        for unit, job, handle in zip(units, jobs, pending):
            submitted(unit, handle.job_id, job)
            print(f"submitted {_names(unit)} as job {handle.job_id} (log {log_path(folder, handle.job_id)})")
            out.append((unit, handle))
        if not wait:
            print(f"{len(out)} jobs in array {out[0][1].job_id.split('_')[0]}; "
                  f"follow them with `python -m qsattn status`, logs in {folder}")
            return 0
        failed = 0
        while out:
            for item in [o for o in out if o[1].done()]:
                failed += _collect(*item)
                out.remove(item)
            if out:
                watch.tick([c for unit, _ in out for c in unit])
                time.sleep(5.0)
        return failed
    if cluster == "debug":
        failed = 0
        for unit in units:
            job = make_job(unit, stage, lay.k)
            handle = executor.submit(job)
            submitted(unit, f"debug-{os.getpid()}", job)
            failed += _collect(unit, handle)
        return failed
    # local: one job per slot (a GPU, or a share of the CPU), the next started as one finishes
    queue, running, free, failed = list(units), [], list(range(len(lay.slots))), 0
    while queue or running:
        while queue and free:
            unit, slot = queue.pop(0), free.pop(0)
            gpu = lay.slots[slot]
            executor.update_parameters(gpus_per_node=0 if gpu is None else 1,
                                       visible_gpus=() if gpu is None else (gpu,))
            job = make_job(unit, stage, lay.k)
            handle = executor.submit(job)
            submitted(unit, handle.job_id, job)
            where = "" if gpu is None else f" on GPU {gpu}"
            print(f"started {_names(unit)} (job {handle.job_id}{where}, log {log_path(folder, handle.job_id)})",
                  flush=True)
            running.append((unit, handle, slot))
        finished = [r for r in running if r[1].done()]
        running = [r for r in running if not r[1].done()]
        for unit, handle, slot in finished:
            failed += _collect(unit, handle)
            free.append(slot)
        if running:
            watch.tick([c for unit, _, _ in running for c in unit])
            time.sleep(1.0)
    return failed


def log_path(folder: Path, job_id: str) -> Path:
    """The job's stderr (where its progress bar and traceback go), as submitit names it."""
    from submitit.core.utils import JobPaths

    return JobPaths(folder, job_id, 0).stderr


class ProgressPrinter:
    """Every `every` seconds, one line per running cell whose progress moved: step, s/step, ETA."""

    def __init__(self, every: float):
        self.every, self.last, self.shown = every, time.time(), {}

    def tick(self, cells: list[Cell]) -> None:
        from slurm.status import progress_text, read_progress

        if not self.every or time.time() - self.last < self.every:
            return
        self.last = time.time()
        for cell in cells:
            text = progress_text(read_progress(cell.run_dir), trained=RunFolder(cell.run_dir).done.exists())
            if text and self.shown.get(cell.name) != text:
                print(f"{time.strftime('%H:%M:%S')} {cell.name}: {text}", flush=True)
                self.shown[cell.name] = text


def _names(unit: list[Cell]) -> str:
    return unit[0].name if len(unit) == 1 else f"pack [{', '.join(c.name for c in unit)}]"


def _collect(unit: list[Cell], job) -> int:
    """Print each cell's result; returns how many failed. A pack's result holds one outcome per cell."""
    from slurm.job import BUSY

    try:
        result = job.result()
    except Exception as exc:  # noqa: BLE001 - one failed job never stops the others
        last = str(exc).strip().splitlines()[-1:] or [type(exc).__name__]
        for cell in unit:
            print(f"FAILED  {cell.name}: {last[0][:300]} (details: python -m qsattn status --errors)", flush=True)
        return len(unit)
    if not (isinstance(result, dict) and "pack" in result):
        if isinstance(result, dict) and result.get("state") == BUSY:
            print(f"skip    {unit[0].name}: {BUSY} ({result.get('detail', '')})", flush=True)
            return 0
        metrics = result.get("metrics", result) if isinstance(result, dict) else result
        print(f"done    {unit[0].name}: {_short(metrics)}", flush=True)
        return 0
    failed = 0
    for cell in unit:
        out = result["cells"].get(cell.config.run_name(), {"state": "missing"})
        if out["state"] == BUSY:
            print(f"skip    {cell.name}: {BUSY} (another process holds its run folder)", flush=True)
        elif out["state"] == "finished":
            res = out.get("result")
            metrics = res.get("metrics", res) if isinstance(res, dict) else res
            print(f"done    {cell.name}: {_short(metrics)}", flush=True)
        elif out["state"] == "preempted":
            print(f"stopped {cell.name}: preempted; its requeued job resumes it", flush=True)
        else:
            failed += 1
            error = (out.get("error") or out["state"]).strip().splitlines()[0][:300]  # "Type: message"
            print(f"FAILED  {cell.name}: {error} (details: python -m qsattn status --errors)", flush=True)
    return failed


def _short(metrics) -> str:
    if not isinstance(metrics, dict):
        return str(metrics)[:200]
    items = [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in list(metrics.items())[:6]]
    return ", ".join(items)


def add_arguments(parser) -> None:
    parser.add_argument("grid", help="grid file, e.g. experiments/table1.yaml")
    parser.add_argument("--cluster", choices=("local", "slurm", "debug"), default="local",
                        help="local: processes on this machine (default); slurm: one job array; debug: in-process")
    parser.add_argument("--profile", default=None,
                        help="cluster profile slurm/NAME.yaml (default for --cluster slurm: $QSATTN_SLURM_PROFILE "
                             "or 'local', the test cluster of slurm/local-cluster.sh)")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="override a profile key, e.g. --set partition=gpu --set time_min=120")
    parser.add_argument("--only", action="append", default=[], metavar="KEY=VALUE",
                        help="only cells whose config key (or id, name, ablation) equals VALUE; repeat: AND "
                             "across keys, OR for the same key; KEY=a|b also ORs")
    parser.add_argument("--dry-run", action="store_true", help="list the cells and what would be submitted")
    parser.add_argument("--max-parallel", type=int, default=None,
                        help="cells at once (default: profile max_parallel; else locally one job per visible GPU, "
                             "or on a CPU 1 cell per 2 cores, or cells_per_gpu cells when packing); slurm: sets "
                             "array parallelism to this / cells_per_gpu jobs")
    parser.add_argument("--stage", choices=("full", "train", "eval"), default="full",
                        help="full: train, translate, evaluate (default); train: training only; eval: re-score "
                             "trained cells under the grid's evaluation keys (fid_modes, eval_checkpoints, "
                             "drn_*), no training")
    parser.add_argument("--no-retry", action="store_true", help="leave failed cells alone")
    parser.add_argument("--wait", action="store_true", help="slurm: wait for the jobs and print their results")
    parser.add_argument("--folder", default=None,
                        help="submitit logs and pickles (default: <run_root of the first cell>/_submitit)")
    parser.add_argument("--estimate", action="store_true",
                        help="print the bill (GPU-hours, checkpoint disk) and exit; exit code 2 where a real run "
                             "would stop because GPU cells would run on this machine's CPU (see --allow-cpu)")
    parser.add_argument("--allow-cpu", action="store_true",
                        help="--cluster local without a GPU: run device=auto cells on the CPU anyway (without it "
                             "such a sweep stops at once with its bill and the command for a cluster)")
    parser.add_argument("--progress-every", type=float, default=30.0, metavar="SECONDS",
                        help="while waiting, print each running cell's step, s/step and ETA this often "
                             "(default 30; 0: never)")


def run(args) -> int:
    from slurm.bill import bill
    from slurm.preflight import format_problems, preflight

    try:
        cells = select(expand(args.grid), args.only)
        if not cells:
            print(f"no cells of {args.grid} match --only {' '.join(args.only)}", file=sys.stderr)
            return 2
        profile_name = args.profile
        if args.cluster == "slurm" and not profile_name:
            profile_name = os.environ.get("QSATTN_SLURM_PROFILE", "local")
        profile = load_profile(profile_name, args.sets)
        k = profile["cells_per_gpu"]
        if args.max_parallel:
            profile["max_parallel"] = args.max_parallel
            profile["array_parallelism"] = max(1, args.max_parallel // k)  # jobs, each k cells
        todo, skipped = plan(cells, args.stage, retry_failed=not args.no_retry)
        lay = layout(args.cluster, profile, todo or cells, int(profile.get("max_parallel") or 0) or None)
    except GridError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for name, why in skipped.items():
        print(f"skip    {name}: {why}")
    print(f"{len(cells)} cells, {len(todo)} to run on {args.cluster}"
          + (f" (profile {profile_name})" if profile_name else ""))
    if todo and args.stage == "eval":  # no training: the bill (training GPU-hours, checkpoints) does not apply
        print(f"stage eval: {len(todo)} trained cells re-scored under the grid's evaluation keys, nothing trained",
              flush=True)
    elif todo:
        print(bill(todo, args.cluster, profile)[0], flush=True)
    blocked = cpu_gate(todo, args, lay)
    if args.estimate:
        if blocked:
            print(f"stopped: {blocked}", file=sys.stderr)
        return 2 if blocked else 0
    folder = (Path(args.folder) if args.folder else Path((todo or cells)[0].config.run_root) / "_submitit").absolute()
    if args.cluster == "slurm":
        folder = folder / "%j"  # one folder per job; local jobs' files sit side by side (see log_path)
    gpus_here = visible_gpus() if args.cluster == "local" else []
    if args.dry_run:
        for cell in todo:
            print(f"would run {cell.name}  id={cell.id}  -> {cell.run_dir}")
        if todo:
            print(describe(lay, args.cluster, profile, todo))
            problems, notes = preflight(todo, cluster=args.cluster, stage=args.stage, profile=profile,
                                        folder=folder, gpus_here=gpus_here, dry_run=True)
            for note in notes:
                print(f"preflight: {note}")
            print(format_problems(problems, dry_run=True) if problems else "preflight: no problem found")
            if blocked:
                print(f"a real run would stop: {blocked}")
        return 0
    if not todo:
        return 0
    if blocked:
        print(f"stopped: {blocked}", file=sys.stderr)
        return 2
    problems, notes = preflight(todo, cluster=args.cluster, stage=args.stage, profile=profile, folder=folder,
                                gpus_here=gpus_here)
    for note in notes:
        print(f"preflight: {note}")
    if problems:
        print(format_problems(problems), file=sys.stderr)
        return 2
    todo = [for_jobs(c, lay.threads) for c in todo]
    prepare_tracking(todo)
    failed = submit(todo, args.cluster, profile, folder, args.stage, lay, args.wait, args.progress_every)
    return 1 if failed else 0


def cpu_gate(cells: list[Cell], args, lay: Layout) -> str:
    """Why a local sweep must not start here ('' if it may): cells meant for a GPU (device=auto) on a
    machine without one would run on its CPU, for far longer than their bill says."""
    if args.cluster != "local" or args.allow_cpu or any(g is not None for g in lay.slots):
        return ""
    meant_for_gpu = [c for c in cells if c.config.device == "auto"]
    if not meant_for_gpu:
        return ""
    only = "".join(f" --only {o}" for o in args.only)
    return (f"{len(meant_for_gpu)} cells are meant for a GPU (device=auto) and this machine has none; on its CPU "
            f"they would take many times the GPU-hours above.\n"
            f"  on a SLURM cluster: python -m qsattn sweep {args.grid}{only} --cluster slurm --profile <yours>\n"
            f"    (copy slurm/example-cluster.yaml to slurm/<yours>.yaml; docs/sweeps.md; for Table 1: "
            f"make reproduce-table1 CLUSTER=slurm PROFILE=<yours>)\n"
            f"  or go ahead on this CPU anyway: add --allow-cpu (make reproduce-table1 ALLOW_CPU=1)")


def describe(lay: Layout, cluster: str, profile: dict, cells: list[Cell]) -> str:
    """--dry-run: how the cells are packed into jobs and where those run."""
    units = lay.jobs(cells)
    threads = f"{lay.threads} torch threads per cell" if lay.threads else "torch's default threads"
    if cluster == "slurm":
        gpus = int(profile.get("gpus_per_node") or 0)
        each = f"{min(gpus, 1) if lay.k > 1 else gpus} GPU(s), {profile.get('cpus_per_task')} CPUs"
        at_once = f"at most {profile['array_parallelism']} jobs at once" if profile.get("array_parallelism") else ""
        head = f"{len(units)} jobs in one array ({each} each{'; ' + at_once if at_once else ''}), {threads}"
    elif cluster == "debug":
        head = "one cell after another in this process" + (" (cells_per_gpu ignored)" if profile["cells_per_gpu"] > 1
                                                            else "")
        return head
    else:
        where = ", ".join("CPU" if g is None else f"GPU {g}" for g in lay.slots)
        head = f"{len(units)} jobs, {len(lay.slots)} at once ({where}), {threads}"
    if lay.k == 1:
        return f"{head}; one cell per job (cells_per_gpu: 1)"
    lines = [f"{head}; {lay.k} cells per job side by side (cells_per_gpu: {lay.k}):"]
    lines += [f"  job {i + 1}: {', '.join(c.name for c in unit)}" for i, unit in enumerate(units)]
    return "\n".join(lines)
