"""`python -m qsattn mlflow ui|sync`: the MLflow UI set up for comparing runs, and sending what an outage left.

  ui    refresh each experiment's comparison view (the name tags and the primary metrics as columns),
        print its link, then serve `mlflow ui` on the store
  sync  send the records that run folders kept while the store did not answer (tracking.jsonl) into
        their MLflow runs; a run is complete in MLflow once this says 0 left
docs/tracking.md explains both.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    ui = sub.add_parser("ui", help="the UI with each experiment's comparison view (prints the links)")
    ui.add_argument("--tracking-uri", default="", help="default: $MLFLOW_TRACKING_URI, else sqlite:///mlruns.db")
    ui.add_argument("--host", default="127.0.0.1")
    ui.add_argument("--port", type=int, default=5000)
    ui.add_argument("--links-only", action="store_true", help="set up the views and print the links; no server")
    sync = sub.add_parser("sync", help="send the records run folders kept during an outage")
    sync.add_argument("run_dirs", nargs="*", help="run folders (default: every folder under --runs-dir)")
    sync.add_argument("--runs-dir", default="runs", help="where to look for run folders (default: %(default)s)")
    sync.add_argument("--timeout", type=float, default=60.0, help="seconds per run folder (default: %(default)s)")


def run(args) -> int:
    return ui(args) if args.action == "ui" else sync(args)


def ui(args) -> int:
    from qsattn.engine.tracking import open_client, refresh_view, resolve_uri, view_url

    uri = resolve_uri(args.tracking_uri)
    client = open_client(uri)
    base = f"http://{args.host}:{args.port}"
    experiments = [e for e in client.search_experiments() if e.name != "Default" or client.search_runs(
        [e.experiment_id], max_results=1)]
    for exp in experiments:
        metrics = refresh_view(client, exp.experiment_id)
        print(f"{exp.name}: {view_url(base, exp.experiment_id)}"
              + (f"  (columns: method, dataset, seed, variant, {', '.join(metrics)})" if metrics else ""))
    if not experiments:
        print(f"no experiments in {uri} yet: run a sweep or `python -m qsattn train` first")
    if args.links_only:
        return 0
    sys.stdout.flush()
    mlflow = Path(sys.executable).with_name("mlflow")
    os.execv(str(mlflow), [str(mlflow), "ui", "--backend-store-uri", uri, "--host", args.host,
                           "--port", str(args.port)])
    return 0  # not reached


def sync(args) -> int:
    from qsattn.engine import tracking
    from qsattn.engine.run_folder import RunFolder

    dirs = [Path(d) for d in args.run_dirs] or sorted(p.parent for p in Path(args.runs_dir).glob("*/tracking.jsonl"))
    left_total = 0
    for run_dir in dirs:
        if not RunFolder(run_dir).tracking_journal.exists():
            print(f"{run_dir}: no tracking journal (tracking off, or not a run folder)")
            continue
        sent, left = tracking.sync(run_dir, args.timeout)
        left_total += left
        print(f"{run_dir}: {sent} records sent, {left} left" + (" (the store did not answer)" if left else ""))
    return 1 if left_total else 0
