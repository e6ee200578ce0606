"""Show the cells of a sweep: pending, queued, running, interrupted, failed, trained, done.

    python -m qsattn status experiments/table1.yaml [--only key=value] [--errors] [--json]

Reads each cell's run folder (metrics.json, the DONE file, mlflow_run_id and the job records in
<run_dir>/sweep/) and `squeue` for live SLURM jobs; it never needs SLURM accounting (sacct), which
small clusters often run without. `interrupted` means a job started and then stopped without a
result (killed, node lost): the next sweep resumes it from its checkpoint. Packed cells (cells_per_gpu > 1)
are listed like any other; the `pack` column says which cells share a job.
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

from slurm.grid import Cell, GridError, expand, select

PRIMARY_METRICS = ("fid_last", "fid", "gt_score_last", "gt_score", "fid_standin_last", "mAP_last", "kid_last")
TRAIN_METRICS = ("NCE", "G", "D")
DONE_FILE = "DONE"  # qsattn.train.DONE_FILE; not imported from there, which would import torch


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
        metrics = json.loads((run_dir / "metrics.json").read_text()).get("metrics", {})
    except (OSError, ValueError, AttributeError):
        return ""
    for key in PRIMARY_METRICS:
        if isinstance(metrics.get(key), (int, float)):
            return f"{key}={metrics[key]:.4g}"
    for key, value in metrics.items():
        if isinstance(value, (int, float)):
            return f"{key}={value:.4g}"
    return ""


def cell_status(cell: Cell, live: dict[str, str]) -> CellStatus:
    from slurm.job import read_records

    run_dir = cell.run_dir
    st = CellStatus(cell.name, cell.id, "pending", run_dir=str(run_dir))
    id_file = run_dir / "mlflow_run_id"
    if id_file.exists():
        st.mlflow_run_id = id_file.read_text().strip()
    records = read_records(run_dir)
    latest_kind = max(records, key=lambda k: records[k]["time"]) if records else ""
    latest = records.get(latest_kind, {})
    st.job_id = str(latest.get("job_id", ""))
    st.pack = str(latest.get("pack") or records.get("submitted", {}).get("pack") or "")
    if (run_dir / "metrics.json").exists():
        st.state, st.metric = "done", _result_metric(run_dir)
        return st
    if latest_kind == "finished" and (run_dir / DONE_FILE).exists():
        st.state = "trained"  # a `--stage train` sweep's result
        return st
    if latest_kind == "failed":
        st.state, st.error = "failed", latest.get("error", "")
        return st
    if st.job_id in live:
        st.state = "queued" if live[st.job_id] in ("PENDING", "CONFIGURING", "REQUEUED") else "running"
    elif latest_kind in ("started", "preempted") and _pid_alive(records.get("started", {})):
        st.state = "running"
    elif latest_kind == "submitted" and _pid_alive({"host": latest.get("host"), "pid": latest.get("job_id")}):
        st.state = "running"  # a local job (its id is the process id) that has not written `started` yet
    elif (run_dir / DONE_FILE).exists():
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

        from qsattn.tracking import resolve_uri

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
    data = [(r.state, r.name, r.id[:8], r.job_id, r.mlflow_run_id[:12], r.metric) for r in rows]
    if any(r.pack for r in rows):  # packed cells (cells_per_gpu > 1): which pack, beside the job
        head = head[:4] + ("pack",) + head[4:]
        data = [row[:4] + (r.pack,) + row[4:] for row, r in zip(data, rows)]
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
    return "\n".join(lines)


def add_arguments(parser) -> None:
    parser.add_argument("grid", help="grid file, e.g. experiments/table1.yaml")
    parser.add_argument("--only", action="append", default=[], metavar="KEY=VALUE", help="as for sweep")
    parser.add_argument("--errors", action="store_true", help="show the full error of failed cells")
    parser.add_argument("--json", action="store_true", help="one JSON object per cell instead of the table")
    parser.add_argument("--no-mlflow", action="store_true", help="do not read training losses from MLflow")


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
    else:
        print(format_table(rows, errors=args.errors))
    return 0
