"""How the table and the figures name, order and read the metrics, datasets and methods.

Shared by results/report.py (the table) and results/plots.py (the figures), so that neither imports the other.
"""
from __future__ import annotations

import pandas as pd

from qsattn.presets import METHODS

# The table's metrics per dataset (first match by name prefix), in column order.
TABLE_METRICS = (("cityscapes", ("fid", "mAP", "pixAcc", "classAcc")), ("synthetic", ("gt_score",)), ("", ("fid",)))
LOWER_IS_BETTER = {"fid", "kid", "fid_standin", "kid_standin", "background_l1", "gt_l1"}
METRIC_LABELS = {"fid": "FID", "kid": "KID", "fid_standin": "FID (stand-in)", "mAP": "mAP", "pixAcc": "pixAcc",
                 "classAcc": "classAcc", "gt_score": "GT score"}
DATASET_ORDER = ("horse2zebra", "cat2dog", "cityscapes")


def table_metrics(dataset: str, df: pd.DataFrame | None = None, paper: pd.DataFrame | None = None) -> list[str]:
    """The dataset's metrics in the table: its fixed list (FID; Cityscapes adds mAP, pixAcc, classAcc; the
    synthetic set: gt_score), FID's stand-in where only that was logged, then any other metric the paper
    reports for the dataset."""
    metrics = list(next(m for prefix, m in TABLE_METRICS if dataset.startswith(prefix)))
    if df is not None:
        logged = set(df.loc[df["dataset"] == dataset, "metric"].dropna())
        if "fid" in metrics and "fid_last" not in logged and "fid_standin_last" in logged:
            metrics[metrics.index("fid")] = "fid_standin"
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
