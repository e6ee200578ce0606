"""Show the cells of a sweep: pending, queued, running, interrupted, failed, trained, done.

    python -m qsattn status experiments/table1.yaml [--only key=value] [--errors] [--json]

Reads each cell's run folder (metrics.json, the DONE file, mlflow_run_id, progress.json, its lock and
the job records in <run_dir>/sweep/) and `squeue` for live SLURM jobs; it never needs SLURM accounting
(sacct), which small clusters often run without. A cell is `running` only while a live process holds its
run folder's lock (or SLURM lists its job): records or an MLflow run left behind by a killed job never
make it so. `interrupted` means a job started and then stopped without a result (killed, node lost):
the next sweep resumes it from its checkpoint. Running cells show their step, s/step and ETA, and the
bill (slurm/bill.py) follows the table, with the GPU-hours still to spend. Packed cells (cells_per_gpu
> 1) are listed like any other; the `pack` column says which cells share a job.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from eval.registry import PRIMARY
from qsattn.engine.run_folder import RunFolder, holder, read_records
from slurm.grid import Cell, GridError, expand, select

# The value a finished cell shows: the last checkpoint's primary value, in the order the metrics' registry
# declares it (eval.registry.PRIMARY); then the names of runs scored before the FID modes were named.
PRIMARY_METRICS = tuple(f"{name}_last" for name in PRIMARY) + ("fid_last", "gt_score")
TRAIN_METRICS = ("NCE", "G", "D")


@dataclass
class CellStatus:
    name: str
    id: str
    state: str          # pending | queued | running | interrupted | failed | trained | done
    job_id: str = ""
    mlflow_run_id: str = ""
    metric: str = ""    # "name=value" of the last result (or the last training loss)
    error: str = ""
    run_dir: str = ""
    pack: str = ""      # a packed cell (cells_per_gpu > 1): the pack's id; its neighbours share job and pack
    holder: str = ""    # the live process holding the run folder's lock ("pid N on HOST since ...")
    step: int = 0       # training progress (progress.json): steps done, of total_steps
    total_steps: int = 0
    sec_per_step: float | None = None
    eta_s: float | None = None
    log: str = ""       # the job's log file (stderr), where its progress bar and any traceback go
    tracking: str = ""  # "tracking offline (N records kept)" while its MLflow store does not answer


def live_jobs() -> dict[str, str]:
    """job id (array elements as 123_4) -> SLURM state, from squeue; empty where SLURM is absent."""
    if not shutil.which("squeue"):
        return {}
    try:
        out = subprocess.run(["squeue", "-h", "-r", "-o", "%i|%T"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return {}
    jobs = {}
    for line in out.stdout.splitlines():
        if "|" in line:
            job, state = line.strip().split("|", 1)
            jobs[job] = state
    return jobs


def _pid_alive(record: dict) -> bool:
    if record.get("host") != socket.gethostname() or not record.get("pid"):
        return False
    try:
        os.kill(int(record["pid"]), 0)
    except (OSError, ValueError):
        return False
    return True


def _result_metric(run_dir: Path) -> str:
    try:
        metrics = json.loads(RunFolder(run_dir).metrics.read_text()).get("metrics", {})
    except (OSError, ValueError, AttributeError):
        return ""
    for key in PRIMARY_METRICS:
        if isinstance(metrics.get(key), (int, float)):
            return f"{key}={metrics[key]:.4g}"
    for key, value in metrics.items():
        if isinstance(value, (int, float)):
            return f"{key}={value:.4g}"
    return ""


def read_progress(run_dir: Path | str) -> dict | None:
    """<run_dir>/progress.json as training wrote it (step, total_steps, sec_per_step, updated), or None."""
    try:
        data = json.loads(RunFolder(run_dir).progress.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and "step" in data else None


def eta_seconds(progress: dict | None) -> float | None:
    if not progress or not progress.get("sec_per_step"):
        return None
    return max(0, progress["total_steps"] - progress["step"]) * progress["sec_per_step"]


def duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds >= 86400:
        return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def progress_text(progress: dict | None, trained: bool = False) -> str:
    """'step 300/1200 (25%), 0.12 s/step, ETA 1m48s'; after training, what the cell does next."""
    if trained:
        return "trained; translating and scoring the test split"
    if not progress:
        return ""
    step, total = progress["step"], progress["total_steps"]
    text = f"step {step}/{total} ({100 * step / max(total, 1):.0f}%)"
    if progress.get("sec_per_step"):
        text += f", {progress['sec_per_step']:.3g} s/step, ETA {duration(eta_seconds(progress))}"
    return text


def _log_file(record: dict, job_id: str, run_dir: Path) -> str:
    if record.get("pack"):
        return str(RunFolder(run_dir).sweep_log)
    if not record.get("folder") or not job_id or job_id.startswith("debug"):
        return ""
    from submitit.core.utils import JobPaths

    return str(JobPaths(record["folder"], job_id, 0).stderr)


def cell_status(cell: Cell, live: dict[str, str]) -> CellStatus:
    return folder_status(cell.run_dir, live, cell.name, cell.id)


def folder_status(run_dir: Path | str, live: dict[str, str], name: str = "", cell_id: str = "") -> CellStatus:
    """The state of one run folder (`live`: live_jobs()); the report asks this too."""
    run_dir = Path(run_dir)
    folder = RunFolder(run_dir)
    st = CellStatus(name or run_dir.name, cell_id, "pending", run_dir=str(run_dir))
    id_file = folder.mlflow_run_id
    if id_file.exists():
        st.mlflow_run_id = id_file.read_text().strip()
    records = read_records(run_dir)
    latest_kind = max(records, key=lambda k: records[k]["time"]) if records else ""
    latest = records.get(latest_kind, {})
    st.job_id = str(latest.get("job_id", ""))
    st.pack = str(latest.get("pack") or records.get("submitted", {}).get("pack") or "")
    st.log = _log_file(records.get("submitted", {}), st.job_id, run_dir)
    from qsattn.engine.tracking import tracking_note

    st.tracking = tracking_note(run_dir)
    progress = read_progress(run_dir)
    if progress:
        st.step, st.total_steps = int(progress["step"]), int(progress["total_steps"])
        st.sec_per_step, st.eta_s = progress.get("sec_per_step"), eta_seconds(progress)
    if folder.metrics.exists():
        st.state, st.metric = "done", _result_metric(run_dir)
        return st
    if latest_kind == "finished" and folder.done.exists():
        st.state = "trained"  # a `--stage train` sweep's result
        return st
    st.holder = holder(run_dir) or ""
    if st.holder:
        st.state = "running"  # a live process holds the run folder: this sweep's job, another's, a `train`
    elif latest_kind == "failed":
        st.state, st.error = "failed", latest.get("error", "")
    elif st.job_id in live:
        st.state = "queued" if live[st.job_id] in ("PENDING", "CONFIGURING", "REQUEUED") else "running"
    elif latest_kind == "submitted" and _pid_alive({"host": latest.get("host"), "pid": latest.get("job_id")}):
        st.state = "queued"  # a local job (its id is its controller's pid) that has not taken the lock yet
    elif folder.done.exists():
        st.state = "trained"
    elif latest_kind:
        st.state = "interrupted"
    return st


def statuses(cells: list[Cell], with_mlflow: bool = True) -> list[CellStatus]:
    live = live_jobs()
    out = [cell_status(c, live) for c in cells]
    if with_mlflow:
        _add_training_metrics(cells, out)
    return out


def _add_training_metrics(cells: list[Cell], out: list[CellStatus]) -> None:
    """The latest training loss of cells without a result, from their MLflow run (best effort)."""
    wanted = [(c, s) for c, s in zip(cells, out) if s.mlflow_run_id and not s.metric]
    if not wanted:
        return
    try:
        import mlflow

        from qsattn.engine.tracking import resolve_uri

        clients = {}
        for cell, st in wanted:
            uri = resolve_uri(cell.config.tracking_uri)
            if cell.config.tracking_uri == "off":
                continue
            client = clients.setdefault(uri, mlflow.MlflowClient(tracking_uri=uri))
            metrics = client.get_run(st.mlflow_run_id).data.metrics
            for key in TRAIN_METRICS:
                if key in metrics:
                    st.metric = f"{key}={metrics[key]:.4g}"
                    break
    except Exception as exc:  # noqa: BLE001 - status works without MLflow
        print(f"(MLflow not read: {type(exc).__name__}: {exc})", file=sys.stderr)


def format_table(rows: list[CellStatus], errors: bool = False) -> str:
    head = ("state", "cell", "id", "job", "mlflow run", "metric")
    data = [(r.state, r.name, r.id[:8], r.job_id, r.tracking or r.mlflow_run_id[:12], r.metric) for r in rows]
    if any(r.pack for r in rows):  # packed cells (cells_per_gpu > 1): which pack, beside the job
        head = head[:4] + ("pack",) + head[4:]
        data = [row[:4] + (r.pack,) + row[4:] for row, r in zip(data, rows)]
    if any(r.total_steps and r.state in ("running", "interrupted", "queued") for r in rows):
        head = head + ("step", "s/step", "ETA")
        data = [row + _progress_columns(r) for row, r in zip(data, rows)]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *data)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip() for row in [head, *data]]
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.state] = counts.get(r.state, 0) + 1
    lines.append(", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    for r in rows:
        if r.error and errors:
            lines.append(f"\n{r.name} ({r.run_dir}):\n  {r.error}")
        elif r.error:
            lines.append(f"failed {r.name}: {r.error.splitlines()[0][:200]}")
    for r in rows:
        if r.state == "running" and r.holder and r.log:
            lines.append(f"log of {r.name}: {r.log}")
    return "\n".join(lines)


def _progress_columns(r: CellStatus) -> tuple[str, str, str]:
    if not r.total_steps or r.state not in ("running", "interrupted", "queued"):
        return "", "", ""
    return (f"{r.step}/{r.total_steps}", f"{r.sec_per_step:.3g}" if r.sec_per_step else "",
            duration(r.eta_s) if r.eta_s is not None and r.state == "running" else "")


def steps_left(cells: list[Cell], rows: list[CellStatus]) -> dict[str, int]:
    """Training steps each cell still has to run (0 once trained), for the bill's "left" column."""
    out = {}
    for cell, r in zip(cells, rows):
        if r.state in ("done", "trained"):
            out[cell.name] = 0
        elif r.total_steps:
            out[cell.name] = max(0, r.total_steps - r.step)
    return out


def add_arguments(parser) -> None:
    parser.add_argument("grid", help="grid file, e.g. experiments/table1.yaml")
    parser.add_argument("--only", action="append", default=[], metavar="KEY=VALUE", help="as for sweep")
    parser.add_argument("--errors", action="store_true", help="show the full error of failed cells")
    parser.add_argument("--json", action="store_true", help="one JSON object per cell instead of the table")
    parser.add_argument("--no-mlflow", action="store_true", help="do not read training losses from MLflow")
    parser.add_argument("--gpu", default=None, metavar="MODEL",
                        help="price the bill on this GPU model (default: this machine's GPU, else the one measured)")
    parser.add_argument("--no-bill", action="store_true", help="do not print the bill under the table")


def run(args) -> int:
    try:
        cells = select(expand(args.grid), args.only)
    except GridError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    rows = statuses(cells, with_mlflow=not args.no_mlflow)
    if args.json:
        for r in rows:
            print(json.dumps(asdict(r)))
        return 0
    print(format_table(rows, errors=args.errors))
    if not args.no_bill:
        from slurm.bill import bill

        print(bill(cells, "local", {"gpu_model": args.gpu} if args.gpu else {}, left=steps_left(cells, rows))[0])
    return 0
