"""Metrics by name, in the style of stylegan3's metric_main: the CLI and the run evaluator loop over
names and never import a metric module themselves.

A metric is a function of `EvalOptions` returning a dict of values plus a 'protocol' sub-dict. Names
that one computation serves together (fid and kid share their features) map to the same function,
and `evaluate_folder_pair` runs it once (once per FID mode for the per-mode ones).

The values they return are declared here too (`VALUES`): each one's direction, its label, and at
which checkpoint its "best" is read (`at`). `PRIMARY` is the order in which a value picks the best
checkpoint where the others follow it; `select_best` is the one place that picks.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from eval.folders import EvalError
from eval.weights import FID_MODES
from qsattn.errors import did_you_mean


@dataclass(frozen=True)
class Value:
    """A value a metric returns: its name, direction and label, and the value whose best checkpoint it is
    reported at (`at`: itself when None, 'primary' for the first value of PRIMARY that was scored)."""
    name: str
    lower_is_better: bool
    label: str
    at: str | None = None


VALUES: dict[str, Value] = {}


def _declare(name: str, lower_is_better: bool, label: str, at: str | None = None) -> None:
    VALUES[name] = Value(name, lower_is_better, label, at)


for _mode in FID_MODES:
    _declare(f"fid_{_mode}", True, f"FID [{_mode}]")
    _declare(f"kid_{_mode}", True, f"KID [{_mode}]", at=f"fid_{_mode}")
    _declare(f"fid_standin_{_mode}", True, f"FID stand-in (not FID) [{_mode}]")
    _declare(f"kid_standin_{_mode}", True, f"KID stand-in (not KID) [{_mode}]", at=f"fid_standin_{_mode}")
for _name in ("mAP", "pixAcc", "classAcc"):
    _declare(_name, False, _name, at="primary")
_declare("gt_score", False, "GT score")
for _name in ("gt_l1", "background_l1"):
    _declare(_name, True, _name, at="primary")

# The value that picks "the best checkpoint" for the values that follow it (at='primary'): the papers'
# FID protocol first (pytorch-fid's), then clean-fid's, stand-ins only where no Inception was used.
PRIMARY = ("fid_legacy_pytorch", "fid_clean", "fid_standin_legacy_pytorch", "fid_standin_clean", "gt_score", "mAP")


def value_info(name: str) -> Value | None:
    return VALUES.get(name)


def lower_is_better(name: str) -> bool:
    """Direction of a value (unknown ones: lower, as losses and distances)."""
    info = VALUES.get(name)
    return True if info is None else info.lower_is_better


def primary_of(scored: set[str]) -> str | None:
    return next((p for p in PRIMARY if p in scored), None)


def select_best(history: dict[int, dict]) -> dict:
    """Best-checkpoint values from {epoch: values}: for each selecting value (one with at=None) the epoch
    where it is best, as `best_epoch_<value>`, and every value at the epoch of its selector, as
    `<value>_best`; `best_epoch` is the primary value's. The candidates are exactly the given epochs (the
    caller includes the final checkpoint). Selected on the test split, as the papers did: optimistic."""
    scored = {k for m in history.values() for k, v in m.items() if isinstance(v, (int, float))}
    primary = primary_of(scored)
    out: dict = {}
    picks: dict[str, int] = {}
    for name in sorted(scored):
        info = VALUES.get(name)
        if info is None or info.at is not None:
            continue
        have = {e: m[name] for e, m in history.items() if isinstance(m.get(name), (int, float))}
        picks[name] = (min if info.lower_is_better else max)(have, key=lambda e: (have[e], -e))
        out[f"best_epoch_{name}"] = picks[name]
    for name in sorted(scored):
        info = VALUES.get(name)
        selector = name if info is None or info.at is None else (primary if info.at == "primary" else info.at)
        if selector not in picks:
            continue
        value = history[picks[selector]].get(name)
        if isinstance(value, (int, float)):
            out[f"{name}_best"] = value
    if primary in picks:
        out["best_epoch"] = picks[primary]
    return out


@dataclass
class EvalOptions:
    """Everything any metric may need; each metric reads only its own fields."""
    gen_dir: str | Path
    ref_dir: str | Path | None = None          # FID/KID reference split (e.g. horse2zebra/testB)
    ref_stats: str | Path | None = None        # or its cached stats file
    test_input_dir: str | Path | None = None   # source test split: gen_dir must cover it
    mode: str = "clean"                        # FID mode of one call (set per mode by evaluate_folder_pair)
    modes: tuple[str, ...] = FID_MODES         # the FID modes to score: one FID and KID per mode
    dataset: str | None = None                 # names of the reference in the cache key
    split: str | None = None
    inception_path: str | Path | None = None
    feature_extractor: Callable | None = None  # stand-in: results labelled fid_standin
    cache_dir: str | Path | None = None
    device: str | None = None
    label_dir: str | Path | None = None        # Cityscapes labels of the test split
    label_ids: str = "labelIds"
    drn_weights: str | Path | None = None
    drn_arch: str = "drn_d_22"
    drn_sha256: str | None = None              # expected sha256 of drn_weights (checked where given)
    seg_size: tuple[int, int] = (256, 128)
    extra: dict = field(default_factory=dict)


_METRICS: dict[str, Callable[[EvalOptions], dict]] = {}
_PER_MODE: set[Callable] = set()


def register_metric(*names: str, per_mode: bool = False):
    """per_mode: run once for each of EvalOptions.modes (FID and KID), protocols named `<fn>_<mode>`."""
    def wrap(fn):
        for name in names:
            _METRICS[name] = fn
        if per_mode:
            _PER_MODE.add(fn)
        return fn
    return wrap


def list_metrics() -> list[str]:
    return sorted(_METRICS)


def get_metric(name: str) -> Callable[[EvalOptions], dict]:
    if name not in _METRICS:
        raise EvalError(f"unknown metric '{name}'.{did_you_mean(name, _METRICS)} Known: {', '.join(list_metrics())}.")
    return _METRICS[name]


@register_metric("fid", "kid", per_mode=True)
def fid_kid(opts: EvalOptions) -> dict:
    from eval.fid import DEFAULT_CACHE_DIR, compute_fid_kid

    return compute_fid_kid(opts.gen_dir, opts.ref_dir, ref_stats=opts.ref_stats, test_input_dir=opts.test_input_dir,
                           mode=opts.mode, dataset=opts.dataset, split=opts.split, device=opts.device,
                           inception_path=opts.inception_path, feature_extractor=opts.feature_extractor,
                           cache_dir=opts.cache_dir or DEFAULT_CACHE_DIR, **opts.extra)


@register_metric("synthetic_gt")
def synthetic_gt(opts: EvalOptions) -> dict:
    """The built-in synthetic set's paired ground truth (qsattn/data/synthetic.py); test_input_dir is its testA."""
    from qsattn.data.synthetic import score_translation

    if opts.test_input_dir is None:
        raise EvalError("synthetic_gt needs the synthetic test split (--test-input DATASET/testA).")
    data_dir = Path(opts.test_input_dir).parent
    scores = score_translation(opts.gen_dir, data_dir)
    scores["protocol"] = {"metric": "synthetic_gt", "data_dir": str(data_dir), "n_images": scores.get("n_images")}
    return scores


@register_metric("cityscapes_seg")
def cityscapes_seg(opts: EvalOptions) -> dict:
    from eval.folders import check_coverage
    from eval.segmentation import score_cityscapes

    if opts.label_dir is None or opts.drn_weights is None:
        raise EvalError("cityscapes_seg needs the label maps (--labels DIR) and DRN weights (--drn-weights PATH).")
    if opts.test_input_dir is not None:
        check_coverage(opts.gen_dir, opts.test_input_dir)
    return score_cityscapes(opts.gen_dir, opts.label_dir, opts.drn_weights, opts.drn_arch, opts.seg_size,
                            label_ids=opts.label_ids, device=opts.device, expected_sha256=opts.drn_sha256)


def evaluate_folder_pair(gen_dir: str | Path, ref_dir: str | Path | None = None, *,
                         metrics: tuple[str, ...] | list[str] = ("fid", "kid"), **options) -> dict:
    """Score one folder of translations with the named metrics.

    The entry point for evaluating a run's checkpoints or a released model: translate into a folder,
    then call this. `options` are `EvalOptions` fields. Returns {'metrics': {value name: number},
    'protocol': {metric function [_mode]: its protocol}}; stand-in values keep their '_standin' names.
    """
    opts = EvalOptions(gen_dir=gen_dir, ref_dir=ref_dir, **options)
    opts.modes = tuple(opts.modes)
    bad = [m for m in opts.modes if m not in FID_MODES]
    if bad or not opts.modes:
        raise EvalError(f"unknown FID mode(s) {bad}; choose from {', '.join(FID_MODES)}.")
    out: dict = {"metrics": {}, "protocol": {}}
    done = set()
    for name in metrics:
        fn = get_metric(name)
        if fn in done:
            continue
        done.add(fn)
        for mode in (opts.modes if fn in _PER_MODE else (None,)):
            result = dict(fn(dataclasses.replace(opts, mode=mode) if mode else opts))
            out["protocol"][fn.__name__ + (f"_{mode}" if mode else "")] = result.pop("protocol")
            result.pop("metric_name", None)
            out["metrics"].update(result)
    return out
