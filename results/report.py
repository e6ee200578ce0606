"""Table 1 beside the paper, from a sweep's MLflow runs (or, without MLflow, from its run folders).

    python -m qsattn report --experiment table1                  # the store of $MLFLOW_TRACKING_URI / mlruns.db
    python -m qsattn report --experiment demo --out results/out/demo
    python -m qsattn report --runs-dir runs/demo                 # no MLflow: each run folder's metrics.json
    python -m qsattn report --released results/out/released      # official generators (python -m results.released)

Each cell of the table is the mean ± standard deviation over the seeds that finished, with the number
of seeds and a 95% confidence interval (Student t; one seed gives no interval, and the cell says so).
Both the last checkpoint's value and the best checkpoint's value are shown, labelled: "best" is
selected on the test split (optimistic, as the papers did), other metrics are read at the FID-best
epoch (docs/evaluation.md). Every FID/KID column is one mode (clean or legacy_pytorch): values of
two modes are never averaged or compared. The paper's number comes from results/paper_numbers.csv
(never from this code) with its protocol (FID mode, checkpoint selection, image counts); a cell gives
the difference to it, and a dagger where it lies outside our interval, only where the protocols
match; otherwise it says why not. A cell without a value says why: not run, failed, still running,
or not logged.

The report command, by job: results/runs.py loads the runs (`load_runs` from MLflow, `load_run_dirs`
from folders: one tidy DataFrame, one row per run and metric), results/stats.py computes the table as
numbers (`table1_numbers`), results/tables.py formats it (`table1`, Markdown, CSV, LaTeX), results/plots.py
draws the figures; `write_report` here writes the tables and the figures of one sweep.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from results.runs import HERE, PAPER_CSV, ReportError, load_paper, load_released, load_run_dirs, load_runs
from results.tables import write_tables


DEFAULT_OUT = HERE / "out"


def write_report(df: pd.DataFrame, paper: pd.DataFrame | None = None, out: str | Path | None = None,
                 plots: bool = True, data_root: str | None = None) -> dict[str, Path]:
    """Tables and (unless plots=False) figures of one sweep into `out` (default results/out/<experiment>)."""
    paper = load_paper() if paper is None else paper
    experiment = df.attrs.get("experiment") or "report"
    out = Path(out) if out else DEFAULT_OUT / str(experiment)
    title = f"Table 1 — sweep '{experiment}'"
    paths = write_tables(df, paper, out, title, data_root)
    if plots:
        from results.plots import make_plots

        paths.update(make_plots(df, paper, out, data_root=data_root))
    return paths


def add_arguments(parser) -> None:
    parser.add_argument("--experiment", default=None,
                        help="the sweep's MLflow experiment (its grid's `experiment:` key, e.g. table1, demo); "
                             "default: the grid's name of --runs-dir, else 'table1'")
    parser.add_argument("--tracking-uri", default="",
                        help="MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///mlruns.db here)")
    parser.add_argument("--runs-dir", default=None,
                        help="read the run folders under DIR (metrics.json) instead of MLflow, e.g. runs/demo")
    parser.add_argument("--released", default=None, metavar="DIR",
                        help="the official released generators scored by `python -m results.released --out DIR`")
    parser.add_argument("--out", default=None, help="output folder (default: results/out/<experiment>/)")
    parser.add_argument("--paper", default=str(PAPER_CSV),
                        help="published numbers, CSV method,dataset,metric,value,fid_mode,selection,generated,reference,source "
             "(default: %(default)s)")
    parser.add_argument("--data-root", default=None,
                        help="where the datasets are, for the qualitative grid's inputs (default: each run's "
                             "data_root)")
    parser.add_argument("--no-plots", action="store_true", help="tables only")


def run(args) -> int:
    try:
        paper = load_paper(args.paper)
        if args.released:
            df = load_released(args.released)
        elif args.runs_dir:
            df = load_run_dirs(args.runs_dir)
            if args.experiment:
                df.attrs["experiment"] = args.experiment
        else:
            df = load_runs(args.tracking_uri, args.experiment or "table1")
        paths = write_report(df, paper, args.out, plots=not args.no_plots, data_root=args.data_root)
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if df.attrs.get("source") == "mlflow":
        from qsattn.engine.tracking import log_report

        log_report(df.attrs["tracking_uri"], df.attrs["experiment"], list(paths.values()))
    print(paths["md"].read_text(encoding="utf-8"))
    print("written:\n" + "\n".join(f"  {p}" for p in paths.values()))
    return 0
