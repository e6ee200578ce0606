"""Run an experiment grid: every cell trained, translated and evaluated, locally or on SLURM.

    python -m qsattn sweep experiments/demo.yaml                     # local: jobs as processes here
    python -m qsattn sweep experiments/table1.yaml --cluster slurm --profile mycluster
    python -m qsattn sweep experiments/table1.yaml --only method=cut --only dataset=horse2zebra --dry-run
    python -m qsattn status experiments/table1.yaml

Clusters (all through submitit): `local` runs each cell as a process on this machine, at most
--max-parallel at a time, and waits for them; `slurm` submits one job array per sweep with a cluster
profile (slurm/<profile>.yaml; override its keys with --set key=value) and returns (add --wait to
collect results); `debug` runs the cells one after another in this process (for pdb).

Running a sweep again is always safe: finished cells are skipped, queued or running ones are left
alone, unfinished ones resume from their latest checkpoint (and continue their MLflow run), failed ones
are retried. A job preempted or near its time limit (USR2) checkpoints and requeues itself.
"""
from __future__ import annotations

import dataclasses
import os
import sys
import time
from pathlib import Path

import yaml

from slurm.grid import Cell, GridError, expand, select

PROFILE_DIR = Path(__file__).resolve().parent
PROFILE_KEYS = {
    "partition": "slurm_partition", "account": "slurm_account", "qos": "slurm_qos",
    "constraint": "slurm_constraint", "gpus_per_node": "gpus_per_node", "cpus_per_task": "cpus_per_task",
    "mem_gb": "mem_gb", "time_min": "timeout_min", "array_parallelism": "slurm_array_parallelism",
    "signal_delay_s": "slurm_signal_delay_s", "sbatch": "slurm_additional_parameters", "setup": "slurm_setup",
    "max_num_timeout": None, "max_parallel": None, "env": None, "description": None, "cells_per_gpu": None,
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
        if "=" not in item:
            raise GridError(f"--set {item!r} is not of the form key=value")
        key, value = item.split("=", 1)
        profile[key.strip()] = yaml.safe_load(value)
    unknown = set(profile) - set(PROFILE_KEYS)
    if unknown:
        raise GridError(f"unknown profile keys {sorted(unknown)}; valid: {sorted(PROFILE_KEYS)}")
    return profile


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
        ex = submitit.AutoExecutor(folder, cluster="slurm", slurm_max_num_timeout=int(profile["max_num_timeout"]))
        ex.update_parameters(name="qsattn", **slurm_parameters(profile))
        return ex
    raise GridError(f"--cluster {cluster}: expected local, slurm or debug")


def for_jobs(cell: Cell, threads: int = 0) -> Cell:
    """Run and data folders and the MLflow store made absolute (jobs may start in another folder), and
    torch's CPU threads set to the job's share of cores where the grid leaves num_threads at 0:
    several processes each using every core run many times slower."""
    from qsattn.tracking import resolve_uri

    cfg = cell.config
    uri = cfg.tracking_uri if cfg.tracking_uri == "off" else resolve_uri(cfg.tracking_uri)
    changes = dict(run_root=str(Path(cfg.run_root).absolute()), data_root=str(Path(cfg.data_root).absolute()),
                   tracking_uri=uri)
    if threads and hasattr(cfg, "num_threads") and not cfg.num_threads:
        changes["num_threads"] = threads
    return dataclasses.replace(cell, config=dataclasses.replace(cfg, **changes))


def prepare_tracking(cells: list[Cell]) -> None:
    """Create each MLflow store and experiment once, here, before any job starts: many jobs creating a
    fresh SQLite store at the same moment race on its schema migration."""
    import mlflow

    from qsattn.tracking import artifact_root

    for uri, experiment in sorted({(c.config.tracking_uri, c.config.experiment) for c in cells}):
        if uri == "off":
            continue
        client = mlflow.MlflowClient(tracking_uri=uri)
        if client.get_experiment_by_name(experiment) is None:
            try:
                client.create_experiment(experiment, artifact_location=artifact_root(uri))
            except Exception:  # noqa: BLE001 - created meanwhile by someone else
                if client.get_experiment_by_name(experiment) is None:
                    raise


def plan(cells: list[Cell], stage: str, retry_failed: bool = True) -> tuple[list[Cell], dict[str, str]]:
    """Which cells to (re)submit, and why each other cell is left alone."""
    from slurm.status import cell_status, live_jobs

    live = live_jobs()
    todo, skipped = [], {}
    for cell in cells:
        st = cell_status(cell, live)
        done = st.state == "done" or (stage == "train" and st.state == "trained")
        if done:
            skipped[cell.name] = "done"
        elif st.state in ("running", "queued"):
            skipped[cell.name] = f"{st.state} (job {st.job_id})"
        elif st.state == "failed" and not retry_failed:
            skipped[cell.name] = "failed (--no-retry)"
        else:
            todo.append(cell)
    return todo, skipped


def submit(cells: list[Cell], cluster: str, profile: dict, folder: Path, stage: str, max_parallel: int,
           wait: bool) -> int:
    """Submit the cells' jobs; returns the number of cells that failed (when waited for)."""
    from slurm.job import CellJob, write_record

    executor = make_executor(cluster, folder, profile)
    jobs = []
    if cluster == "slurm":
        with executor.batch():  # one job array per sweep
            pending = [(cell, executor.submit(CellJob(cell.config, stage))) for cell in cells]
        for cell, job in pending:
            write_record(cell.run_dir, "submitted", job_id=job.job_id, cluster=cluster, folder=str(folder))
            print(f"submitted {cell.name} as job {job.job_id}")
            jobs.append((cell, job))
        if not wait:
            print(f"{len(jobs)} jobs in array {jobs[0][1].job_id.split('_')[0]}; "
                  f"follow them with `python -m qsattn status`, logs in {folder}")
            return 0
        return _collect(jobs)
    if cluster == "debug":
        failed = 0
        for cell in cells:
            job = executor.submit(CellJob(cell.config, stage))
            write_record(cell.run_dir, "submitted", job_id=f"debug-{os.getpid()}", cluster=cluster)
            failed += _collect([(cell, job)])
        return failed
    # local: at most max_parallel processes at once, started as earlier ones finish
    queue, running, failed = list(cells), [], 0
    while queue or running:
        while queue and len(running) < max_parallel:
            cell = queue.pop(0)
            job = executor.submit(CellJob(cell.config, stage))
            write_record(cell.run_dir, "submitted", job_id=job.job_id, cluster=cluster, folder=str(folder))
            print(f"started {cell.name} (process {job.job_id})", flush=True)
            running.append((cell, job))
        finished = [(c, j) for c, j in running if j.done()]
        running = [(c, j) for c, j in running if not j.done()]
        failed += _collect(finished) if finished else 0
        if running:
            time.sleep(1.0)
    return failed


def _collect(jobs) -> int:
    failed = 0
    for cell, job in jobs:
        try:
            result = job.result()
            metrics = result.get("metrics", result) if isinstance(result, dict) else result
            print(f"done    {cell.name}: {_short(metrics)}", flush=True)
        except Exception as exc:  # noqa: BLE001 - one failed cell never stops the others
            failed += 1
            last = str(exc).strip().splitlines()[-1:] or [type(exc).__name__]
            print(f"FAILED  {cell.name}: {last[0][:300]} (details: python -m qsattn status --errors)", flush=True)
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
                        help="local: processes at once (default: profile max_parallel, else 1 per 2 CPU cores); "
                             "slurm: array parallelism")
    parser.add_argument("--stage", choices=("full", "train"), default="full",
                        help="full: train, translate, evaluate (default); train: training only")
    parser.add_argument("--no-retry", action="store_true", help="leave failed cells alone")
    parser.add_argument("--wait", action="store_true", help="slurm: wait for the jobs and print their results")
    parser.add_argument("--folder", default=None,
                        help="submitit logs and pickles (default: <run_root of the first cell>/_submitit)")


def run(args) -> int:
    try:
        cells = select(expand(args.grid), args.only)
        if not cells:
            print(f"no cells of {args.grid} match --only {' '.join(args.only)}", file=sys.stderr)
            return 2
        profile_name = args.profile
        if args.cluster == "slurm" and not profile_name:
            profile_name = os.environ.get("QSATTN_SLURM_PROFILE", "local")
        profile = load_profile(profile_name, args.sets)
        if args.max_parallel:
            profile["array_parallelism"] = profile["max_parallel"] = args.max_parallel
    except GridError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    todo, skipped = plan(cells, args.stage, retry_failed=not args.no_retry)
    for name, why in skipped.items():
        print(f"skip    {name}: {why}")
    print(f"{len(cells)} cells, {len(todo)} to run on {args.cluster}"
          + (f" (profile {profile_name})" if profile_name else ""))
    if args.dry_run:
        for cell in todo:
            print(f"would run {cell.name}  id={cell.id}  -> {cell.run_dir}")
        return 0
    if not todo:
        return 0
    max_parallel = int(profile.get("max_parallel") or max(1, (os.cpu_count() or 2) // 2))
    threads = {"local": max(1, (os.cpu_count() or 1) // max_parallel),
               "slurm": int(profile.get("cpus_per_task") or 0)}.get(args.cluster, 0)
    todo = [for_jobs(c, threads) for c in todo]
    prepare_tracking(todo)
    folder = Path(args.folder) if args.folder else Path(todo[0].config.run_root) / "_submitit"
    failed = submit(todo, args.cluster, profile, folder.absolute() / "%j", args.stage, max_parallel, args.wait)
    return 1 if failed else 0
