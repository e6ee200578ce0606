"""The synthetic set's references that are not trained (identity, one fixed striped image): the scores to
beat, for the table (results/stats.py) and the figures (results/plots.py)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from qsattn.engine.run_folder import RunFolder
from results.naming import DATASET_ORDER, in_order

REFERENCE_LABELS = {"identity": "reference: identity (output = input)",
                    "fixed_striped": "reference: one fixed striped image"}


def dataset_folder(run_dir, dataset: str, data_root: str | None = None) -> Path | None:
    """The dataset folder a run trained on (its config.yaml's data_root, or `data_root`); None if unknown."""
    import yaml

    try:
        cfg = yaml.safe_load(RunFolder(run_dir).config.read_text()) or {}
    except (OSError, ValueError):
        cfg = {} if data_root else None
    if cfg is None:
        return None
    return Path(data_root or cfg.get("data_root", "datasets")) / cfg.get("dataset", dataset)


def synthetic_references(df: pd.DataFrame, data_root: str | None = None) -> dict[str, dict[str, dict]]:
    """{dataset: qsattn.data.synthetic.reference_scores(...)} for each synthetic dataset the runs trained on."""
    from qsattn.data.synthetic import reference_scores

    out = {}
    runs = df.drop_duplicates("run_id")
    for dataset in in_order(runs["dataset"], DATASET_ORDER):
        if not str(dataset).startswith("synthetic"):
            continue
        for run_dir in runs.loc[runs["dataset"] == dataset, "run_dir"]:
            folder = dataset_folder(run_dir, dataset, data_root) if run_dir else None
            if folder is not None and (folder / "testA_gt").is_dir():
                out[dataset] = reference_scores(folder)
                break
    return out
