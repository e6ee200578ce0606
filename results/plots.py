"""The report's figures, each saved as PNG (for looking) and PDF (for the paper).

- `primary_metric`: each dataset's primary metric (FID in the papers' mode, legacy_pytorch; the synthetic
  set's GT score) per method, last and best checkpoint (selected on the test split, labelled so), mean with
  the seeds' spread and every seed as a dot, the paper's number (same mode) as a star.
- `loss_curves`: training losses over steps per method (mean over seeds, band: their spread).
- `checkpoint_curves`: the primary metric over the scored epoch checkpoints; each run's best checkpoint
  and the last one marked.
- `qualitative_grid`: the same test inputs translated by every method (seed 0, last checkpoint).

All take the tidy frame of `results.runs.load_runs` / `load_run_dirs`; `make_plots` draws what the
data allow and says what it skipped.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from qsattn.data.files import is_image_file
from qsattn.engine.run_folder import RunFolder
from results.history import load_history
from results.naming import DATASET_ORDER, LOWER_IS_BETTER, METRIC_LABELS, in_order, method_order, row_label, table_metrics
from results.references import REFERENCE_LABELS, dataset_folder, synthetic_references

LOSSES = ("G", "NCE", "G_GAN", "D")  # plotted; NCE_Y (CUT only), D_real and D_fake are in MLflow
LOSS_LABELS = {"G": "generator total", "NCE": "PatchNCE (X)", "NCE_Y": "PatchNCE (Y, identity)", "D": "discriminator",
               "G_GAN": "generator GAN", "D_real": "D on real", "D_fake": "D on fake"}
WHICH_COLORS = {"last": "#4C72B0", "best": "#DD8452"}


def _style():
    import matplotlib

    matplotlib.use("Agg")
    import seaborn as sns

    sns.set_theme(context="paper", style="whitegrid", font_scale=1.35)
    return sns


def _save(fig, out: Path, stem: str) -> dict[str, Path]:
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    paths = {f"{stem}.png": out / f"{stem}.png", f"{stem}.pdf": out / f"{stem}.pdf"}
    fig.savefig(paths[f"{stem}.png"], dpi=160, bbox_inches="tight")
    fig.savefig(paths[f"{stem}.pdf"], bbox_inches="tight")
    plt.close(fig)
    return paths


def _with_labels(runs: pd.DataFrame) -> pd.DataFrame:
    runs = runs.copy()
    runs["label"] = [row_label(m, v) for m, v in zip(runs["method"], runs["variant"].fillna(""))]
    return runs


def _methods(labels) -> list[str]:
    return in_order(labels, method_order())


def primary_metric_of(dataset: str, df: pd.DataFrame) -> str:
    return table_metrics(dataset, df)[0]


def _direction(metric: str) -> str:
    return "lower is better" if metric in LOWER_IS_BETTER else "higher is better"


REFERENCE_STYLES = {"identity": dict(color="#555555", ls="--"), "fixed_striped": dict(color="#8172B3", ls=":")}


def primary_metric(df: pd.DataFrame, paper: pd.DataFrame, out: Path, references: dict | None = None) -> dict[str, Path]:
    """One panel per dataset: its primary metric per method, last vs best checkpoint, paper as a star;
    a synthetic dataset's references (results.references.synthetic_references) as horizontal lines."""
    references = references or {}
    sns = _style()
    import matplotlib.pyplot as plt

    rows = []
    finished = _with_labels(df[df["status"] == "finished"])
    datasets = in_order(df["dataset"], DATASET_ORDER)
    for dataset in datasets:
        metric = primary_metric_of(dataset, df)
        for which in ("last", "best"):
            sel = finished[(finished["dataset"] == dataset) & (finished["metric"] == f"{metric}_{which}")]
            rows += [dict(dataset=dataset, metric=metric, which=which, method=r.label, seed=r.seed, value=r.value)
                     for r in sel.itertuples()]
    data = pd.DataFrame(rows, columns=["dataset", "metric", "which", "method", "seed", "value"])
    if data.empty:
        return {}
    datasets = [d for d in datasets if d in set(data["dataset"])]
    methods = _methods(data["method"])
    fig, axes = plt.subplots(1, len(datasets), figsize=(max(7.0 / len(datasets), 5.0, 0.9 * len(methods) + 2.5) * len(datasets), 5.2),
                             squeeze=False)
    whiches = [w for w in ("last", "best") if w in set(data["which"])]
    has_paper = False
    for ax, dataset in zip(axes[0], datasets):
        sub = data[data["dataset"] == dataset]
        metric = sub["metric"].iloc[0]
        sns.barplot(sub, x="method", y="value", hue="which", order=methods, hue_order=whiches, ax=ax,
                    errorbar="sd", capsize=0.15, palette=WHICH_COLORS, alpha=0.85, err_kws={"linewidth": 1.5},
                    legend=False)
        sns.stripplot(sub, x="method", y="value", hue="which", order=methods, hue_order=whiches, ax=ax, dodge=True,
                      palette={k: "black" for k in whiches}, size=5, jitter=0, alpha=0.8, legend=False)
        ref = paper[(paper["dataset"] == dataset) & (paper["metric"] == metric) & paper["method"].isin(methods)]
        for r in ref.itertuples():
            x = methods.index(r.method)
            ax.plot([x - 0.42, x + 0.42], [r.value, r.value], color="#C44E52", lw=2, ls="--", zorder=4)
            ax.scatter([x], [r.value], marker="*", s=320, color="#C44E52", edgecolor="black", linewidth=0.8, zorder=5)
            has_paper = True
        ax.set_title(f"{dataset}: {METRIC_LABELS.get(metric, metric)} ({_direction(metric)})")
        ax.set_xlabel("")
        ax.set_ylabel(METRIC_LABELS.get(metric, metric))
        if len(methods) > 3:
            ax.tick_params(axis="x", rotation=25)
            for label in ax.get_xticklabels():
                label.set_ha("right")
        top = max(sub["value"].max(), ref["value"].max() if len(ref) else -np.inf)
        for name, scores in references.get(dataset, {}).items():
            if metric in scores:
                ax.axhline(scores[metric], lw=1.8, zorder=3, **REFERENCE_STYLES[name])
                top = max(top, scores[metric])
        if np.isfinite(top) and top > 0:
            ax.set_ylim(0, top * 1.1)
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    names = {"last": "final checkpoint", "best": "best checkpoint, selected on the test split (optimistic)"}
    handles = [Patch(color=WHICH_COLORS[w], alpha=0.85, label=f"{names[w]} (mean ± 1 sd)") for w in whiches]
    handles.append(Line2D([], [], marker="o", ls="", color="black", label="one seed"))
    if has_paper:
        handles.append(Line2D([], [], marker="*", ls="--", color="#C44E52", markeredgecolor="black", markersize=15,
                              label="paper (same FID mode)"))
    shown = {name for refs in references.values() for name in refs}
    handles += [Line2D([], [], lw=1.8, label=REFERENCE_LABELS[n], **REFERENCE_STYLES[n]) for n in REFERENCE_STYLES
                if n in shown]
    fig.tight_layout()
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(len(handles), 3),
               frameon=False)
    return _save(fig, out, "primary_metric")


def loss_curves(history: pd.DataFrame, out: Path) -> dict[str, Path]:
    """Rows: datasets; columns: the losses logged; lines: methods (mean over seeds, band: ±1 sd)."""
    sns = _style()
    if history.empty:
        return {}
    data = _with_labels(history)
    losses = [k for k in LOSSES if k in set(data["metric"])]
    data = data[data["metric"].isin(losses)].copy()
    data["loss"] = data["metric"].map(lambda k: f"{k}: {LOSS_LABELS.get(k, k)}")
    datasets = in_order(data["dataset"], DATASET_ORDER)
    g = sns.relplot(data, x="step", y="value", hue="label", hue_order=_methods(data["label"]), kind="line",
                    row="dataset", row_order=datasets, col="loss",
                    col_order=[f"{k}: {LOSS_LABELS.get(k, k)}" for k in losses], errorbar="sd",
                    facet_kws={"sharey": False, "sharex": "row", "margin_titles": True}, height=3.0, aspect=1.25,
                    linewidth=1.6)
    g.set_titles(row_template="{row_name}", col_template="{col_name}")
    g.set_axis_labels("training step", "loss")
    sns.move_legend(g, "upper center", bbox_to_anchor=(0.5, 0.0), ncol=len(set(data["label"])),
                    title="method (mean over seeds, band: ±1 sd)", frameon=False)
    return _save(g.figure, out, "loss_curves")


def checkpoint_curves(df: pd.DataFrame, history: pd.DataFrame, out: Path) -> dict[str, Path]:
    """The primary metric at each scored epoch checkpoint; per run, its best checkpoint (star) and the
    last checkpoint (square) are marked. One panel per dataset."""
    sns = _style()
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    if history.empty:
        return {}
    data = _with_labels(history)
    datasets = [d for d in in_order(data["dataset"], DATASET_ORDER)
                if f"checkpoint_{primary_metric_of(d, df)}" in set(data.loc[data["dataset"] == d, "metric"])]
    if not datasets:
        return {}
    fig, axes = plt.subplots(1, len(datasets), figsize=(max(6.4 * len(datasets), 9.0), 4.8), squeeze=False)
    palette = dict(zip(_methods(data["label"]), sns.color_palette("deep")))
    legend: dict = {}
    for ax, dataset in zip(axes[0], datasets):
        metric = primary_metric_of(dataset, df)
        sub = data[(data["dataset"] == dataset) & (data["metric"] == f"checkpoint_{metric}")]
        sns.lineplot(sub, x="step", y="value", hue="label", hue_order=[m for m in palette if m in set(sub["label"])],
                     palette=palette, errorbar="sd", marker="o", ax=ax, linewidth=1.6)
        pick = min if metric in LOWER_IS_BETTER else max
        for (label, run_id), run in sub.groupby(["label", "run_id"]):
            run = run.sort_values("step")
            best = run.loc[run["value"].idxmin() if pick is min else run["value"].idxmax()]
            last = run.iloc[-1]
            ax.scatter(best["step"], best["value"], marker="*", s=180, color=palette[label], edgecolor="black",
                       linewidth=0.7, zorder=5)
            ax.scatter(last["step"], last["value"], marker="s", s=55, facecolor="white", edgecolor=palette[label],
                       linewidth=1.6, zorder=4)
        ax.set_title(f"{dataset}: {METRIC_LABELS.get(metric, metric)} over training ({_direction(metric)})")
        ax.set_xlabel("epoch")
        ax.set_ylabel(METRIC_LABELS.get(metric, metric))
        handles, labels = ax.get_legend_handles_labels()
        handles += [Line2D([], [], marker="*", ls="", color="grey", markeredgecolor="black", markersize=13),
                    Line2D([], [], marker="s", ls="", markerfacecolor="white", markeredgecolor="grey", markersize=8)]
        labels += ["best checkpoint (per run; selected on the test split)", "final checkpoint (per run)"]
        legend.update(zip(labels, handles))
        ax.get_legend().remove()
        epochs = sorted(sub["step"].unique())
        if len(epochs) <= 12:
            ax.set_xticks(epochs)
            if len(epochs) == 1:
                ax.set_xlim(epochs[0] - 1, epochs[0] + 1)
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    labels = [f"{label}: mean ± 1 sd over seeds" if label in palette else label for label in legend]
    fig.tight_layout()
    fig.legend(list(legend.values()), labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(len(handles), 3),
               frameon=False)
    return _save(fig, out, "checkpoint_curves")


def _test_inputs(run_params: dict, data_root: str | None) -> Path | None:
    import yaml

    folder = dataset_folder(run_params["run_dir"], run_params["dataset"], data_root)
    if folder is None:
        return None
    try:
        cfg = yaml.safe_load(RunFolder(run_params["run_dir"]).config.read_text()) or {}
    except (OSError, ValueError):
        cfg = {}
    return folder / ("testA" if cfg.get("direction", "AtoB") == "AtoB" else "testB")


def _images(folder: Path | None, stems) -> dict[str, Path]:
    """stem -> image file in `folder`, for the wanted stems ({} if the folder does not exist)."""
    if folder is None or not folder.is_dir():
        return {}
    return {p.stem: p for p in folder.iterdir() if p.stem in stems and is_image_file(p.name)}


def qualitative_grid(df: pd.DataFrame, out: Path, data_root: str | None = None, n_images: int = 4) -> dict[str, Path]:
    """Per dataset: rows = the first test inputs that every method translated, columns = input, ground truth
    (where the dataset has one, e.g. the synthetic set's testA_gt), methods. Uses each method's lowest
    finished seed and its last checkpoint's translations."""
    _style()
    import matplotlib.pyplot as plt
    from PIL import Image

    paths: dict[str, Path] = {}
    runs = _with_labels(df[df["status"] == "finished"].drop_duplicates("run_id"))
    runs = runs[runs["run_dir"].astype(bool)]
    for dataset in in_order(runs["dataset"], DATASET_ORDER):
        chosen = {}
        for label in _methods(runs.loc[runs["dataset"] == dataset, "label"]):
            cand = runs[(runs["dataset"] == dataset) & (runs["label"] == label)].sort_values("seed", key=lambda s: s.astype(str))
            for r in cand.itertuples():
                folder = Path(r.run_dir) / "translations" / "last"
                if folder.is_dir() and any(folder.glob("*.png")):
                    chosen[label] = (r, folder)
                    break
        if not chosen:
            continue
        stems = set.intersection(*({p.stem for p in f.glob("*.png")} for _, f in chosen.values()))
        stems = sorted(stems)[:n_images]
        if not stems:
            continue
        first = next(iter(chosen.values()))[0]
        src = _test_inputs(first._asdict(), data_root)
        fixed = {"input": _images(src, stems), "ground truth": _images(src and src.parent / f"{src.name}_gt", stems)}
        fixed = {col: images for col, images in fixed.items() if images}
        columns = list(fixed) + list(chosen)
        fig, axes = plt.subplots(len(stems), len(columns), figsize=(2.3 * len(columns), 2.3 * len(stems) + 0.6),
                                 squeeze=False)
        for i, stem in enumerate(stems):
            for j, col in enumerate(columns):
                ax = axes[i][j]
                path = fixed[col].get(stem) if col in fixed else chosen[col][1] / f"{stem}.png"
                if path is not None and Path(path).exists():
                    ax.imshow(np.asarray(Image.open(path).convert("RGB")), interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                for side in ax.spines.values():
                    side.set_visible(False)
                if i == 0:
                    seed = "" if col in fixed else f"\n(seed {chosen[col][0].seed})"
                    ax.set_title(f"{col}{seed}", fontsize=12)
                if j == 0:
                    ax.set_ylabel(f"test image {int(stem)}" if stem.isdigit() else stem, fontsize=11)
        fig.suptitle(f"{dataset}: test inputs translated by each method (last checkpoint)", y=1.0)
        fig.tight_layout()
        paths.update(_save(fig, out, f"qualitative_{dataset}"))
    return paths


def make_plots(df: pd.DataFrame, paper: pd.DataFrame, out: str | Path, data_root: str | None = None) -> dict[str, Path]:
    """Every figure the data allow, into `out`; what could not be drawn is said on stderr."""
    import sys

    out = Path(out)
    paths: dict[str, Path] = {}
    references = synthetic_references(df, data_root)
    steps = [("primary metric", lambda: primary_metric(df, paper, out, references)),
             ("training losses", lambda: loss_curves(load_history(df, keys=LOSSES), out)),
             ("checkpoint curves", lambda: checkpoint_curves(df, load_history(df, prefix="checkpoint_"), out)),
             ("qualitative grid", lambda: qualitative_grid(df, out, data_root))]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module="seaborn")
        for name, draw in steps:
            made = draw()
            if not made:
                print(f"plots: no {name} figure (nothing logged for it)", file=sys.stderr)
            paths.update(made)
    return paths
