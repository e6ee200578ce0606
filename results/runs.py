"""A sweep's runs as one tidy DataFrame (one row per run and metric): from MLflow (`load_runs`), from
the run folders without MLflow (`load_run_dirs`), or the official released generators' scores
(`load_released`); and the papers' numbers with their protocol (`load_paper`)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from qsattn.engine.run_folder import RunFolder, read_records
from qsattn.engine.tracking import SWEEP_KIND
from qsattn.errors import UserError
from qsattn.names import dataset_id, method_id
from results.naming import metric_id, with_mode


HERE = Path(__file__).resolve().parent


PAPER_CSV = HERE / "paper_numbers.csv"


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
