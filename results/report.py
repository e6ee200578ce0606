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

Library use: `load_runs` (MLflow) or `load_run_dirs` (folders) give one tidy DataFrame, one row per
run and metric; `table1_numbers` is the table as numbers (one row per method, dataset, metric and
last/best), `table1` the same as the formatted wide table; `write_report` writes Markdown, CSV and
LaTeX and the plots (results/plots.py).
"""
from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from qsattn.errors import UserError
from qsattn.engine.run_folder import RunFolder, read_records
from qsattn.engine.tracking import SWEEP_KIND
from results.references import REFERENCE_LABELS, synthetic_references
from qsattn.names import dataset_id, method_id
from results.naming import (DATASET_ORDER, LOWER_IS_BETTER, METRIC_LABELS, in_order, method_order, metric_id, row_label,
                            table_metrics, with_mode)

HERE = Path(__file__).resolve().parent
PAPER_CSV = HERE / "paper_numbers.csv"
DEFAULT_OUT = HERE / "out"


WHICH = ("last", "best")
WHICH_LABELS = {"last": "last", "best": "best (test-selected)", "paper": "paper"}
# The paper's checkpoint selection that each of our columns matches (paper_numbers.csv `selection`).
SELECTION_OF = {"last": "last", "best": "best-of-training"}
OUTSIDE_MARK = "†"
RUN_COLUMNS = ["sweep", "cell", "variant", "method", "dataset", "seed", "status", "status_detail", "run_id",
               "run_dir", "git_commit", "fid_mode", "drn_arch", "n_generated", "n_real", "start_time"]


class ReportError(UserError):
    """A problem the user can fix (wrong experiment name, no store); the message says how."""





PAPER_COLUMNS = ["method", "dataset", "metric", "value", "fid_mode", "selection", "generated", "reference", "source",
                 "paper_method"]
SELECTIONS = ("best-of-training", "last", "unknown")


def load_paper(path: str | Path = PAPER_CSV) -> pd.DataFrame:
    """The published numbers with our ids and their protocol: columns method, dataset, metric (with the FID
    mode: fid_legacy_pytorch), value, fid_mode, selection (best-of-training | last | unknown), generated and
    reference (image counts, NaN if unknown), source, paper_method. Protocol columns may be missing (then
    unknown: such a number is shown but never compared)."""
    paper = pd.read_csv(path, dtype={"method": str, "dataset": str, "metric": str, "source": str, "fid_mode": str,
                                     "selection": str})
    missing = {"method", "dataset", "metric", "value"} - set(paper.columns)
    if missing:
        raise ReportError(f"{path}: missing columns {sorted(missing)}; expected method,dataset,metric,value,"
                          "fid_mode,selection,generated,reference,source")
    paper = paper.rename(columns={"method": "paper_method"})
    for col, default in (("source", ""), ("fid_mode", ""), ("selection", "unknown"), ("generated", np.nan),
                         ("reference", np.nan)):
        if col not in paper:
            paper[col] = default
    paper["fid_mode"] = paper["fid_mode"].fillna("")
    paper["selection"] = paper["selection"].fillna("unknown")
    bad = sorted(set(paper["selection"]) - set(SELECTIONS))
    if bad:
        raise ReportError(f"{path}: selection {bad[0]!r} is not one of {', '.join(SELECTIONS)}")
    paper["method"] = paper["paper_method"].map(method_id)
    paper["dataset"] = paper["dataset"].map(dataset_id)
    paper["metric"] = [metric_id(m, mode) for m, mode in zip(paper["metric"], paper["fid_mode"])]
    paper["value"] = pd.to_numeric(paper["value"])
    for col in ("generated", "reference"):
        paper[col] = pd.to_numeric(paper[col], errors="coerce")
    dup = paper.duplicated(["method", "dataset", "metric"], keep=False)
    if dup.any():
        raise ReportError(f"{path}: several values for the same method, dataset, metric and FID mode:\n{paper[dup]}")
    return paper[PAPER_COLUMNS]


# --- loading runs -------------------------------------------------------------------------------------------

def _variant(run_name: str, method: str, dataset: str, seed) -> str:
    """The ablation label in a sweep's run name '<method>-<dataset>-s<seed>[-<label>]-<id8>' ('' if none)."""
    from qsattn.engine.tracking import variant_of

    return variant_of(run_name, method, dataset, seed)


def _records(run_dir: str | None) -> dict[str, dict]:
    """The sweep's job records (slurm/job.py: <run_dir>/sweep/<kind>.json), where the folder is readable."""
    return read_records(run_dir) if run_dir else {}


def run_status(mlflow_status: str | None, tags: dict, evaluated: bool, records: dict,
               folder_state: str = "") -> tuple[str, str]:
    """(finished | failed | running | interrupted, why). MLflow's own status is not enough: training that
    fails ends FAILED or KILLED (older stores: the tag last_status) and a resume reopens it; the pipeline
    reopens a trained run to log its evaluation; the sweep's job records say when a job failed after training; a run left open
    by a killed job is running only if its folder says so (`folder_state`: slurm.status.folder_status)."""
    latest = max(records, key=lambda k: records[k].get("time", 0)) if records else ""
    if latest == "failed":
        return "failed", str(records["failed"].get("error", "job failed"))[:200]
    if mlflow_status in ("FAILED", "KILLED"):
        return "failed", f"MLflow run {mlflow_status.lower()}"
    if evaluated and mlflow_status in ("FINISHED", None):
        return "finished", ""
    if tags.get("last_status") in ("FAILED", "KILLED") and latest not in ("started", "submitted"):
        return "failed", f"training stopped ({tags['last_status'].lower()}); the next sweep resumes it"
    if folder_state in ("interrupted", "pending"):  # no live process or job holds the run folder
        return "interrupted", "stopped without a result; the next sweep resumes it"
    if mlflow_status == "FINISHED" or (mlflow_status is None and records.get("finished")):
        return "running", "trained, evaluation not finished"
    if latest == "submitted":
        return "running", "queued"
    return "running", "training"


def _folder_state(run_dir: str, live: dict) -> str:
    """The run folder's own state where it is readable here ('' if not: then nothing is inferred)."""
    if not run_dir or not Path(run_dir).is_dir():
        return ""
    from slurm.status import folder_status

    return folder_status(run_dir, live).state


def _is_orphan(run_id: str, run_dir: str) -> bool:
    """An MLflow run that is not the one its run folder logs to (a duplicate: the folder names another)."""
    try:
        return RunFolder(run_dir).mlflow_run_id.read_text().strip() not in ("", run_id)
    except OSError:
        return False


def load_runs(tracking_uri: str = "", experiment: str = "qsattn") -> pd.DataFrame:
    """Every run of an MLflow experiment (a sweep), tidy: one row per run and metric (the metric's
    latest value), with the run's sweep, cell, method, dataset, seed, status and protocol. A run with
    no metric yet has one row with metric NaN, so that it still counts as run."""
    from mlflow import MlflowClient

    from qsattn.engine.tracking import resolve_uri

    uri = resolve_uri(tracking_uri)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
        raise ReportError(f"no MLflow store at {uri}; run a sweep first, pass --tracking-uri, or use --runs-dir")
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        known = ", ".join(sorted(e.name for e in client.search_experiments())) or "none"
        raise ReportError(f"no experiment '{experiment}' in {uri} (experiments there: {known}); "
                          "pass --experiment NAME (a sweep's experiments: key)")
    runs, token = [], None
    while True:
        page = client.search_runs([exp.experiment_id], max_results=1000, page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            break
    from slurm.status import live_jobs

    live = live_jobs()
    rows = []
    for run in runs:
        tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
        if tags.get("qsattn.kind") == SWEEP_KIND:
            continue  # the sweep-level run holding this report, not a cell
        method = tags.get("method") or params.get("method", "")
        dataset = tags.get("dataset") or params.get("dataset", "")
        seed = tags.get("seed") or params.get("seed", "")
        run_dir = tags.get("run_dir", "")
        name = tags.get("run_folder") or tags.get("mlflow.runName") or run.info.run_name or params.get("name", "")
        evaluated = any(k.endswith("_last") for k in metrics)
        status, why = run_status(run.info.status, tags, evaluated, _records(run_dir), _folder_state(run_dir, live))
        if _is_orphan(run.info.run_id, run_dir):
            status, why = "orphan", "not the MLflow run its run folder logs to (a duplicate); ignored"
        base = dict(
            sweep=tags.get("sweep") or experiment, cell=tags.get("cell_id") or name,
            variant=tags.get("ablation") or _variant(name, method, dataset, seed),
            method=method, dataset=dataset, seed=int(seed) if str(seed).lstrip("-").isdigit() else seed,
            status=status, status_detail=why, run_id=run.info.run_id, run_dir=run_dir,
            git_commit=tags.get("git_commit", ""),
            **_protocol_columns({k[len("protocol."):]: v for k, v in tags.items() if k.startswith("protocol.")},
                                params.get("fid_mode", "")),
            drn_arch=tags.get("protocol.cityscapes_seg.segmenter") or params.get("drn_arch", ""),
            start_time=run.info.start_time)
        metrics = {with_mode(k, base["fid_mode"]): v for k, v in metrics.items()}
        rows += [dict(base, metric=k, value=float(v)) for k, v in sorted(metrics.items())] or \
            [dict(base, metric=np.nan, value=np.nan)]
    df = pd.DataFrame(rows, columns=RUN_COLUMNS + ["metric", "value"])
    df.attrs.update(source="mlflow", tracking_uri=uri, experiment=experiment)
    return df


def _protocol_columns(flat: dict, fid_mode: str = "") -> dict:
    """fid_mode (only for runs scored in one mode, without the mode in their names), n_generated, n_real from
    protocol entries {'fid_kid_<mode>.n_real': ...} (MLflow tags) or {'fid_kid_<mode>': {...}} (metrics.json)."""
    nested: dict = {}
    for k, v in flat.items():
        if isinstance(v, dict):
            nested[k] = v
        elif "." in k:
            name, field = k.split(".", 1)
            nested.setdefault(name, {})[field] = v
    old = nested.get("fid_kid", {})  # one mode, its values logged without it
    counts = next((p for name, p in sorted(nested.items()) if name.startswith("fid_kid")), {})

    def num(v):
        try:
            return float(v)
        except (TypeError, ValueError):
            return np.nan
    return dict(fid_mode=old.get("mode") or fid_mode or "", n_generated=num(counts.get("n_generated")),
                n_real=num(counts.get("n_real")))


def load_run_dirs(runs_dir: str | Path) -> pd.DataFrame:
    """The same frame from run folders (config.yaml, metrics.json, DONE, sweep/ records), for when the
    MLflow store is not at hand. Training losses are not in the folders, so only evaluation metrics."""
    import yaml

    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise ReportError(f"{runs_dir} is not a folder; pass the sweep's run_root (e.g. runs/demo)")
    from slurm.status import live_jobs

    live = live_jobs()
    rows = []
    for cfg_file in sorted(runs_dir.glob("*/config.yaml")):
        run_dir = cfg_file.parent
        cfg = yaml.safe_load(cfg_file.read_text()) or {}
        try:
            metrics = json.loads(RunFolder(run_dir).metrics.read_text())
        except (OSError, ValueError):
            metrics = {}
        evaluated = bool(metrics.get("metrics"))
        records = _records(str(run_dir))
        if evaluated:
            status, why = ("finished", "") if records.get("finished") or not records else \
                run_status(None, {}, True, records)
        elif records:
            status, why = run_status(None, {}, False, records, _folder_state(str(run_dir), live))
        elif _folder_state(str(run_dir), live) == "running":
            status, why = "running", "training (no job records)"
        else:
            status, why = "interrupted", ("trained, evaluation not finished" if RunFolder(run_dir).done.exists()
                                          else "stopped without a result (no job records)")
        protocol = metrics.get("protocol", {})
        base = dict(sweep=cfg.get("experiment", runs_dir.name), cell=run_dir.name,
                    variant=_variant(run_dir.name, cfg.get("method"), cfg.get("dataset"), cfg.get("seed")),
                    method=cfg.get("method", ""), dataset=cfg.get("dataset", ""), seed=cfg.get("seed", ""),
                    status=status, status_detail=why, run_id=run_dir.name, run_dir=str(run_dir.absolute()),
                    git_commit="", **_protocol_columns(protocol, cfg.get("fid_mode", "")),
                    drn_arch=protocol.get("cityscapes_seg", {}).get("segmenter") or cfg.get("drn_arch", ""),
                    start_time=int(cfg_file.stat().st_mtime * 1000))
        values = {k: v for k, v in metrics.get("metrics", {}).items() if isinstance(v, (int, float))}
        for epoch, m in metrics.get("history", {}).items():  # the latest checkpoint's, as MLflow shows it
            for k, v in m.items():
                if isinstance(v, (int, float)):
                    values[f"checkpoint_{k}"] = v
        values = {with_mode(k, base["fid_mode"]): v for k, v in values.items()}
        rows += [dict(base, metric=k, value=float(v)) for k, v in sorted(values.items())] or \
            [dict(base, metric=np.nan, value=np.nan)]
    if not rows:
        raise ReportError(f"no run folders (with config.yaml) under {runs_dir}")
    df = pd.DataFrame(rows, columns=RUN_COLUMNS + ["metric", "value"])
    df.attrs.update(source="run_dirs", runs_dir=str(runs_dir), experiment=df["sweep"].iloc[0])
    return df


REAL_PHOTOS_ROW = "real photos (upper bound)"


def load_released(folder: str | Path) -> pd.DataFrame:
    """The same frame from scored official released generators (<folder>/<NAME>.json, written by
    `python -m results.released`): one finished run per generator, seed 'released', values as `_last`."""
    from eval.released import RELEASED

    from results.released import REAL_PHOTOS

    folder = Path(folder)
    rows = []
    for path in sorted(folder.glob("*.json")):
        entry = RELEASED.get(path.stem)
        if path.stem == REAL_PHOTOS:  # the segmentation scores' upper bound: real photos against their labels
            from eval.released import Released

            entry = Released(REAL_PHOTOS, REAL_PHOTOS_ROW, "cityscapes", "the prepared Cityscapes testB photos")
        if entry is None:
            continue
        result = json.loads(path.read_text())
        protocol = result.get("protocol", {})
        base = dict(sweep="released", cell=path.stem, variant="", method=entry.method, dataset=entry.dataset,
                    seed="released", status="finished", status_detail=entry.source, run_id=path.stem, run_dir="",
                    git_commit="", **_protocol_columns(protocol),
                    drn_arch=protocol.get("cityscapes_seg", {}).get("segmenter", ""),
                    start_time=int(path.stat().st_mtime * 1000))
        rows += [dict(base, metric=with_mode(f"{k}_last", base["fid_mode"]), value=float(v))
                 for k, v in result.get("metrics", {}).items() if isinstance(v, (int, float)) and not k.startswith("n_")]
    if not rows:
        raise ReportError(f"no scored released generators in {folder}; run `python -m results.released --out {folder}`")
    df = pd.DataFrame(rows, columns=RUN_COLUMNS + ["metric", "value"])
    df.attrs.update(source="released", experiment="released")
    return df


# --- the table ------------------------------------------------------------------------------------------

def _seeds_text(seeds) -> str:
    seeds = sorted(seeds, key=str)
    return ("seed " if len(seeds) == 1 else "seeds ") + ", ".join(map(str, seeds))


def ci95(values) -> tuple[float, float, float, float]:
    """(mean, sample std, CI low, CI high) with Student's t at 95%; std, CI NaN where undefined."""
    from scipy import stats

    x = np.asarray(values, dtype=float)
    n = len(x)
    if n == 0:
        return (np.nan,) * 4
    mean = float(x.mean())
    if n == 1:
        return mean, np.nan, np.nan, np.nan
    std = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.975, n - 1)) * std / math.sqrt(n)
    return mean, std, mean - half, mean + half


def table1_numbers(df: pd.DataFrame, paper: pd.DataFrame | None = None) -> pd.DataFrame:
    """Table 1 as numbers: one row per method (and ablation variant), dataset, metric and which (last or
    best checkpoint), with n, mean, std, ci_low, ci_high, seeds, paper, paper_source, diff (ours minus
    paper), paper_outside_ci and note (why a value is missing, or which seeds are left out)."""
    paper = load_paper() if paper is None else paper
    runs = df.drop_duplicates("run_id")
    datasets = in_order(runs["dataset"], DATASET_ORDER)
    keyed = df.dropna(subset=["metric"]).set_index(["run_id", "metric"])["value"]
    rows_methods = list(dict.fromkeys(zip(runs["method"], runs["variant"].fillna(""))))
    paper_here = paper[paper["dataset"].isin(datasets)]
    rows_methods += [(m, "") for m in paper_here["method"] if (m, "") not in rows_methods]
    order = method_order()
    rows_methods.sort(key=lambda mv: (order.index(mv[0]) if mv[0] in order else len(order), mv[0], mv[1]))
    lookup = {(r.method, r.dataset, r.metric): r for r in paper.itertuples()}
    out = []
    for dataset in datasets:
        for method, variant in rows_methods:
            cell = runs[(runs["dataset"] == dataset) & (runs["method"] == method) & (runs["variant"].fillna("") == variant)]
            # one value per seed: the latest finished run of that seed
            done = cell[cell["status"] == "finished"].sort_values("start_time").drop_duplicates("seed", keep="last")
            failed = sorted(set(cell.loc[cell["status"] == "failed", "seed"]) - set(done["seed"]), key=str)
            running = sorted(set(cell.loc[cell["status"] == "running", "seed"]) - set(done["seed"]), key=str)
            stopped = sorted(set(cell.loc[cell["status"] == "interrupted", "seed"]) - set(done["seed"]) - set(running),
                             key=str)
            for metric in table_metrics(dataset, df, paper):
                ref = lookup.get((method, dataset, metric)) if not variant else None
                for which in WHICH:
                    name = f"{metric}_{which}"
                    have = [(s, keyed[(r, name)]) for s, r in zip(done["seed"], done["run_id"]) if (r, name) in keyed.index]
                    seeds = [s for s, _ in have]
                    mean, std, lo, hi = ci95([v for _, v in have])
                    notes = []
                    if running:
                        notes.append(f"running ({_seeds_text(running)})")
                    if stopped:
                        notes.append(f"interrupted ({_seeds_text(stopped)}; the next sweep resumes it)")
                    if failed:
                        notes.append(f"failed ({_seeds_text(failed)})")
                    unlogged = sorted(set(done["seed"]) - set(seeds), key=str)
                    if unlogged:
                        why = "no epoch checkpoints scored" if which == "best" else "not logged"
                        notes.append(f"{why} ({_seeds_text(unlogged)})")
                    if cell.empty:
                        notes = ["not run"]
                    paper_value = float(ref.value) if ref is not None else np.nan
                    why_not = _not_comparable(ref, which, done) if ref is not None and have else ""
                    comparable = bool(ref is not None and have and not why_not)
                    outside = bool(comparable and len(have) > 1 and not lo <= paper_value <= hi)
                    out.append(dict(method=row_label(method, variant), dataset=dataset, metric=metric, which=which,
                                    n=len(have), mean=mean, std=std, ci_low=lo, ci_high=hi,
                                    seeds=",".join(map(str, seeds)), paper=paper_value,
                                    paper_source=ref.source if ref is not None else "",
                                    paper_fid_mode=ref.fid_mode if ref is not None else "",
                                    paper_selection=ref.selection if ref is not None else "",
                                    selection=("best checkpoint selected on the test split" if which == "best"
                                               else "final checkpoint"),
                                    comparable=comparable, not_comparable=why_not,
                                    diff=mean - paper_value if comparable else np.nan, paper_outside_ci=outside,
                                    note="; ".join(notes), lower_is_better=metric in LOWER_IS_BETTER))
    return pd.DataFrame(out)


def _not_comparable(ref, which: str, done: pd.DataFrame) -> str:
    """Why our value (column `which`) and the paper's are not measured the same way ('' when they are): the
    FID mode is in the metric's name already; here the checkpoint selection and the image counts."""
    if ref.selection == "unknown":
        return "no Δ: the paper's checkpoint selection is unknown"
    if ref.selection != SELECTION_OF[which]:
        return f"no Δ: the paper's is {ref.selection}, this column is {SELECTION_OF[which]}"
    for col, what in (("generated", "generated"), ("reference", "reference")):
        ours = {v for v in done[f"n_{'real' if col == 'reference' else 'generated'}"] if v == v}
        theirs = getattr(ref, col)
        if theirs == theirs and ours and ours != {theirs}:
            return (f"no Δ: {what} images differ (paper {theirs:.0f}, ours "
                    f"{', '.join(f'{v:.0f}' for v in sorted(ours))})")
    return ""


def _digits(*values) -> int:
    """Decimals to print: two for FID-sized numbers (published FIDs are compared to 0.01), at least three
    significant figures below 1."""
    finite = [abs(v) for v in values if v is not None and v == v and v != 0]
    big = max(finite) if finite else 0
    if big >= 1 or big == 0:
        return 2
    return max(3, 2 - math.floor(math.log10(big)))


def format_cell(r, latex: bool = False) -> str:
    """One of our cells as text: value, spread, seeds, interval, difference to the paper, mark."""
    if r.n == 0:
        return f"\\textit{{{_tex(r.note)}}}" if latex else (r.note or "no value")
    d = _digits(r.mean, r.paper)
    if getattr(r, "reference", False) == True:  # noqa: E712 (numpy and pandas booleans too)
        return f"{r.mean:.{d}f} ({_tex(r.note) if latex else r.note})"
    pm = " $\\pm$ " if latex else " ± "
    text = f"{r.mean:.{d}f}"
    if r.n == 1:
        extra = "n=1, no CI"
    else:
        text += f"{pm}{r.std:.{d}f}"
        extra = f"n={r.n}, CI [{r.ci_low:.{d}f}, {r.ci_high:.{d}f}]"
    if r.comparable:
        extra += f", Δ {r.diff:+.{d}f}" if not latex else f", $\\Delta$ {r.diff:+.{d}f}"
    elif r.not_comparable:
        extra += f", {r.not_comparable}"
    mark = ("$^\\dagger$" if latex else f" {OUTSIDE_MARK}") if r.paper_outside_ci else ""
    note = f"; {r.note}" if r.note else ""
    if latex:
        return f"{text}{mark} {{\\scriptsize ({extra}{_tex(note)})}}"
    return f"{text}{mark} ({extra}{note})"


def format_paper(r, latex: bool = False) -> str:
    if r.paper != r.paper:
        return "\\textit{no published value}" if latex else "no published value"
    text = f"{r.paper:.{_digits(r.paper)}f}"
    return f"{text} ({_tex(r.paper_selection) if latex else r.paper_selection})" if r.paper_selection else text


def metric_label(metric: str) -> str:
    label = METRIC_LABELS.get(metric, metric)
    return f"{label} {'↓' if metric in LOWER_IS_BETTER else '↑'}"


def which_label(metric: str, which: str) -> str:
    """'best (test-selected)' for a value that picks its checkpoint, 'at FID-best epoch (test-selected)' for
    one read at another value's best checkpoint (eval.registry.VALUES[...].at)."""
    from eval.registry import VALUES

    if which == "best" and metric in VALUES and VALUES[metric].at is not None:
        return "at the FID-best epoch (test-selected)"
    return WHICH_LABELS[which]


def table1(df: pd.DataFrame, paper: pd.DataFrame | None = None, numbers: pd.DataFrame | None = None) -> pd.DataFrame:
    """Table 1 as text: rows = methods, columns = (dataset, metric, last | best | paper). Our cells read
    'mean ± std (n=…, CI […], Δ vs paper)', with † where the paper's number is outside our 95% CI."""
    numbers = table1_numbers(df, paper) if numbers is None else numbers
    cells = {}
    fields = {}
    for r in numbers.itertuples():
        cells[(r.method, (r.dataset, metric_label(r.metric), which_label(r.metric, r.which)))] = format_cell(r)
        cells[(r.method, (r.dataset, metric_label(r.metric), "paper"))] = format_paper(r)
        fields.setdefault((r.dataset, metric_label(r.metric)), [which_label(r.metric, w) for w in WHICH] + ["paper"])
    rows = list(dict.fromkeys(m for m, _ in cells))
    cols = [(d, m, f) for (d, m), names in fields.items() for f in names]
    table = pd.DataFrame([[cells.get((m, c), "") for c in cols] for m in rows], index=pd.Index(rows, name="method"),
                         columns=pd.MultiIndex.from_tuples(cols, names=["dataset", "metric", "value"]))
    return table


# --- the synthetic set's references: the scores a translation must beat -----------------------------------

def reference_numbers(references: dict[str, dict[str, dict]]) -> pd.DataFrame:
    """The references as rows of `table1_numbers` (reference=True; the same value as last and best)."""
    rows = []
    for dataset, refs in references.items():
        for name, scores in refs.items():
            for metric in table_metrics(dataset):
                for which in WHICH:
                    rows.append(dict(method=REFERENCE_LABELS[name], dataset=dataset, metric=metric, which=which, n=1,
                                     mean=scores[metric], std=np.nan, ci_low=np.nan, ci_high=np.nan, seeds="",
                                     paper=np.nan, paper_source="", diff=np.nan, paper_outside_ci=False,
                                     note="not trained: the score to beat", lower_is_better=metric in LOWER_IS_BETTER,
                                     reference=True))
    return pd.DataFrame(rows)


# --- writers --------------------------------------------------------------------------------------------

LEGEND = (f"Each cell: mean ± sample std over the seeds that finished (n), 95% CI (Student t; n=1 has none), "
          f"Δ = ours − paper, given only where the paper's protocol matches (same FID mode, checkpoint selection "
          f"and image counts; otherwise the cell says why not). {OUTSIDE_MARK}: the paper's number lies outside "
          "our 95% CI. Each FID column is one mode: legacy_pytorch (pytorch-fid's Inception and resize, the "
          "papers' protocol) or clean (clean-fid's); modes are never mixed. 'last': the final checkpoint; "
          "'best (test-selected)': the best of the scored checkpoints (the final one included), selected on the "
          "test split, as the papers did (optimistic); other metrics are read at the FID-best epoch. "
          "↓ lower is better, ↑ higher is better.")


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(map(esc, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(esc, row)) + " |" for row in rows]
    return "\n".join(lines)


def runs_summary(df: pd.DataFrame) -> pd.DataFrame:
    runs = df.drop_duplicates("run_id")
    return runs.groupby(["dataset", "method", "status"]).size().unstack("status", fill_value=0)


def protocol_lines(df: pd.DataFrame) -> list[str]:
    runs = df.drop_duplicates("run_id")
    fid_runs = df.loc[df["metric"].isin(["fid_last", "fid_standin_last"]), "run_id"]
    seg_runs = df.loc[df["metric"] == "mAP_last", "run_id"]
    modes = sorted({m.split("_", 1)[1].rsplit("_", 1)[0].removeprefix("standin_") for m in df["metric"].dropna()
                    if re.fullmatch(r"fid_(standin_)?(clean|legacy_pytorch)_last", m)})
    lines = [f"FID/KID modes scored: {', '.join(modes)} (each column names its mode)"] if modes else []
    for col, label, which in (("fid_mode", "FID mode of runs without it in their names", fid_runs),
                              ("drn_arch", "DRN (Cityscapes scores)", seg_runs),
                              ("git_commit", "git commit", runs["run_id"])):
        sel = runs.loc[runs["run_id"].isin(which), col]
        vals = sorted({str(v)[:12] for v in sel if v not in ("", None) and v == v})
        if vals:
            lines.append(f"{label}: {', '.join(vals)}")
    return lines


def to_markdown(table: pd.DataFrame, df: pd.DataFrame, title: str) -> str:
    parts = [f"# {title}", "", LEGEND, ""]
    parts += [f"- {line}" for line in protocol_lines(df)] + [""]
    for dataset in dict.fromkeys(table.columns.get_level_values("dataset")):
        sub = table[dataset]
        header = ["method"] + [f"{metric} {value}" for metric, value in sub.columns]
        parts += [f"## {dataset}", "", _md_table(header, [[m] + list(row) for m, row in zip(sub.index, sub.values)]), ""]
    summary = runs_summary(df)
    parts += ["## Runs", "", _md_table(["dataset", "method"] + list(summary.columns),
                                       [list(i) + [str(v) for v in row] for i, row in zip(summary.index, summary.values)]),
              ""]
    return "\n".join(parts)


def _tex(text: str) -> str:
    for a, b in (("\\", "\\textbackslash{}"), ("&", "\\&"), ("%", "\\%"), ("_", "\\_"), ("#", "\\#"),
                 ("↓", "$\\downarrow$"), ("↑", "$\\uparrow$"), ("Δ", "$\\Delta$"), ("±", "$\\pm$"),
                 ("†", "$^\\dagger$")):
        text = str(text).replace(a, b)
    return text


def to_latex(numbers: pd.DataFrame, title: str) -> str:
    """A booktabs table (needs \\usepackage{booktabs,graphicx}): datasets over metrics over last/best/paper."""
    cols = list(dict.fromkeys(zip(numbers["dataset"], numbers["metric"])))
    methods = list(dict.fromkeys(numbers["method"]))
    by = {(r.method, r.dataset, r.metric, r.which): r for r in numbers.itertuples()}
    lines = ["\\begin{table*}[t]", "\\centering", f"\\caption{{{_tex(title)}. {_tex(LEGEND)}}}",
             "\\resizebox{\\textwidth}{!}{%", "\\begin{tabular}{l" + "ccc" * len(cols) + "}", "\\toprule"]
    datasets = list(dict.fromkeys(d for d, _ in cols))
    spans = [(d, sum(1 for dd, _ in cols if dd == d)) for d in datasets]
    lines.append(" & " + " & ".join(f"\\multicolumn{{{3 * k}}}{{c}}{{{_tex(d)}}}" for d, k in spans) + " \\\\")
    lines.append(" & " + " & ".join(f"\\multicolumn{{3}}{{c}}{{{_tex(metric_label(m))}}}" for _, m in cols) + " \\\\")
    lines.append("method & " + " & ".join("last & best (test-sel.) & paper" for _ in cols) + " \\\\")
    lines.append("\\midrule")
    for method in methods:
        cells = []
        for d, m in cols:
            last, best = by.get((method, d, m, "last")), by.get((method, d, m, "best"))
            cells += [format_cell(last, True), format_cell(best, True), format_paper(last, True)]
        lines.append(f"{_tex(method)} & " + " & ".join(cells) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}}", "\\end{table*}", ""]
    return "\n".join(lines)


def write_tables(df: pd.DataFrame, paper: pd.DataFrame, out: Path, title: str,
                 data_root: str | None = None) -> dict[str, Path]:
    """table1.md, table1.csv (the text table), table1_numbers.csv (the numbers), table1.tex, runs.csv.
    A synthetic dataset's table also has the references' rows (`synthetic_references`)."""
    out.mkdir(parents=True, exist_ok=True)
    numbers = table1_numbers(df, paper).assign(reference=False)
    references = reference_numbers(synthetic_references(df, data_root))
    if not references.empty:
        numbers = pd.concat([numbers, references], ignore_index=True)
    table = table1(df, paper, numbers)
    paths = {"md": out / "table1.md", "csv": out / "table1.csv", "numbers": out / "table1_numbers.csv",
             "tex": out / "table1.tex", "runs": out / "runs.csv"}
    paths["md"].write_text(to_markdown(table, df, title), encoding="utf-8")
    flat = table.copy()
    flat.columns = [" | ".join(c) for c in table.columns]
    flat.to_csv(paths["csv"], encoding="utf-8")
    numbers.to_csv(paths["numbers"], index=False, encoding="utf-8")
    paths["tex"].write_text(to_latex(numbers, title), encoding="utf-8")
    df.to_csv(paths["runs"], index=False, encoding="utf-8")
    return paths


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


# --- command line ---------------------------------------------------------------------------------------

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
