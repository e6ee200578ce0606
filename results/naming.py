"""How the table and the figures name, order and read the metrics, datasets and methods.

Shared by results/stats.py and results/tables.py (the table) and results/plots.py (the figures), so that neither imports the
other. The published method and dataset names are read by qsattn/names.py.
"""
from __future__ import annotations

import pandas as pd

from eval.registry import VALUES
from qsattn.names import key
from qsattn.presets import METHODS

METRIC_ALIASES = {"fid": "fid", "kid": "kid", "map": "mAP", "pixacc": "pixAcc", "classacc": "classAcc",
                  "gtscore": "gt_score"}
MODED = ("fid", "kid", "fid_standin", "kid_standin")  # values that exist once per FID mode (fid_clean, ...)

# The table's metrics per dataset (first match by name prefix), in column order: both FID modes, the papers'
# (legacy_pytorch) first.
_FIDS = ("fid_legacy_pytorch", "fid_clean")
TABLE_METRICS = (("cityscapes", (*_FIDS, "mAP", "pixAcc", "classAcc")), ("synthetic", ("gt_score",)), ("", _FIDS))


def _value_tables():
    """Directions and labels, from the one place they are declared (eval.registry.VALUES)."""
    lower = {name for name, v in VALUES.items() if v.lower_is_better} | {"fid", "kid", "fid_standin", "kid_standin"}
    labels = {name: v.label for name, v in VALUES.items()} | {"fid": "FID [mode unknown]", "kid": "KID [mode unknown]"}
    return lower, labels


LOWER_IS_BETTER, METRIC_LABELS = _value_tables()
DATASET_ORDER = ("horse2zebra", "cat2dog", "cityscapes")


def metric_id(name: str, fid_mode: str = "") -> str:
    """A paper's metric name -> ours; FID and KID carry their mode (fid_legacy_pytorch), 'fid' if unknown."""
    base = METRIC_ALIASES.get(key(name), str(name))
    mode = "" if fid_mode is None or fid_mode != fid_mode else str(fid_mode).strip()
    return f"{base}_{mode}" if base in MODED and mode and mode != "unknown" else base


def with_mode(metric: str, fid_mode: str) -> str:
    """A run's value logged without its mode (fid_last, checkpoint_kid: stores written before the modes were
    scored side by side) -> its name with the mode the run's protocol records ('' leaves it alone)."""
    if not fid_mode or fid_mode != fid_mode:
        return metric
    prefix = "checkpoint_" if metric.startswith("checkpoint_") else ""
    core = metric[len(prefix):]
    for base in sorted(MODED, key=len, reverse=True):
        for suffix in ("_last", "_best", ""):
            if core == base + suffix:
                return f"{prefix}{base}_{fid_mode}{suffix}"
    return metric


def table_metrics(dataset: str, df: pd.DataFrame | None = None, paper: pd.DataFrame | None = None) -> list[str]:
    """The dataset's metrics in the table: its fixed list (FID; Cityscapes adds mAP, pixAcc, classAcc; the
    synthetic set: gt_score), FID's stand-in where only that was logged, then any other metric the paper
    reports for the dataset."""
    metrics = list(next(m for prefix, m in TABLE_METRICS if dataset.startswith(prefix)))
    if df is not None:
        logged = set(df.loc[df["dataset"] == dataset, "metric"].dropna())
        for i, m in enumerate(metrics):
            standin = m.replace("fid_", "fid_standin_", 1)
            if m.startswith("fid_") and f"{m}_last" not in logged and f"{standin}_last" in logged:
                metrics[i] = standin
        if "fid_last" in logged:  # runs whose mode nothing records: a column of their own, compared with nothing
            metrics.append("fid")
    if paper is not None:
        metrics += [m for m in paper.loc[paper["dataset"] == dataset, "metric"] if m not in metrics]
    return metrics


def in_order(values, preferred) -> list:
    """The distinct values (None and NaN left out): those in `preferred` in its order, then the rest sorted."""
    values = list(dict.fromkeys(v for v in values if v is not None and v == v))
    return [v for v in preferred if v in values] + sorted((v for v in values if v not in preferred), key=str)


def method_order() -> list[str]:
    """Our methods in the order they are declared (qsattn/presets.py)."""
    return list(METHODS)


def row_label(method: str, variant: str = "") -> str:
    return f"{method} [{variant}]" if variant else method
