"""Table 1 as numbers: per method, dataset, metric and checkpoint (last | best), the mean, sample std and
95% confidence interval over the seeds that finished, and the difference to the paper's number where the
protocols match (`table1_numbers`); the synthetic set's references as rows of the same table."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from results.naming import DATASET_ORDER, LOWER_IS_BETTER, in_order, method_order, row_label, table_metrics
from results.references import REFERENCE_LABELS
from results.runs import load_paper


WHICH = ("last", "best")


# The paper's checkpoint selection that each of our columns matches (paper_numbers.csv `selection`).
SELECTION_OF = {"last": "last", "best": "best-of-training"}


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
