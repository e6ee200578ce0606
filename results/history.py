"""Metric histories of a sweep's runs (losses over steps, scores over epoch checkpoints), for the figures."""
from __future__ import annotations

import json

import pandas as pd

from qsattn.engine.run_folder import RunFolder
from results.naming import with_mode


def load_history(df: pd.DataFrame, keys=None, prefix: str | None = None) -> pd.DataFrame:
    """Metric histories of the frame's runs, tidy: run_id, method, variant, dataset, seed, metric, step,
    value. `keys`: metric names; `prefix`: every logged metric starting with it (e.g. 'checkpoint_').
    From MLflow where the frame came from MLflow, else from the run folders' metrics.json."""
    runs = df.drop_duplicates("run_id")
    logged = df.groupby("run_id")["metric"].apply(lambda s: set(s.dropna()))
    cols = ["run_id", "method", "variant", "dataset", "seed", "status", "metric", "step", "value"]
    rows = []
    client = None
    if df.attrs.get("source") == "mlflow":
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=df.attrs["tracking_uri"])
    for _, run in runs.iterrows():
        names = [k for k in logged.get(run.run_id, set())
                 if (keys and k in keys) or (prefix and k.startswith(prefix))]
        ident = {c: run[c] for c in cols[:6]}
        if client is not None:
            logged_as = {with_mode(k, run.get("fid_mode", "")): k for k in client.get_run(run.run_id).data.metrics} \
                if run.get("fid_mode") else {}
            for k in sorted(names):
                rows += [dict(ident, metric=k, step=m.step, value=m.value)
                         for m in client.get_metric_history(run.run_id, logged_as.get(k, k))]
        elif run.run_dir:
            try:
                history = json.loads(RunFolder(run.run_dir).metrics.read_text()).get("history", {})
            except (OSError, ValueError):
                history = {}
            mode = run.get("fid_mode", "")
            for epoch, m in history.items():
                rows += [dict(ident, metric=with_mode(f"checkpoint_{k}", mode), step=int(epoch), value=float(v))
                         for k, v in m.items()
                         if with_mode(f"checkpoint_{k}", mode) in names and isinstance(v, (int, float))]
    return pd.DataFrame(rows, columns=cols)
