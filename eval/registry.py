"""Metrics by name, in the style of stylegan3's metric_main: the CLI and the run evaluator loop over
names and never import a metric module themselves.

A metric is a function of `EvalOptions` returning a dict of values plus a 'protocol' sub-dict. Names
that one computation serves together (fid and kid share their features) map to the same function,
and `evaluate_folder_pair` runs it once.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from eval.folders import EvalError


@dataclass
class EvalOptions:
    """Everything any metric may need; each metric reads only its own fields."""
    gen_dir: str | Path
    ref_dir: str | Path | None = None          # FID/KID reference split (e.g. horse2zebra/testB)
    ref_stats: str | Path | None = None        # or its cached stats file
    test_input_dir: str | Path | None = None   # source test split: gen_dir must cover it
    mode: str = "clean"                        # FID mode: clean | legacy_pytorch
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
    seg_size: tuple[int, int] = (256, 128)
    extra: dict = field(default_factory=dict)


_METRICS: dict[str, Callable[[EvalOptions], dict]] = {}


def register_metric(*names: str):
    def wrap(fn):
        for name in names:
            _METRICS[name] = fn
        return fn
    return wrap


def list_metrics() -> list[str]:
    return sorted(_METRICS)


def get_metric(name: str) -> Callable[[EvalOptions], dict]:
    if name not in _METRICS:
        close = difflib.get_close_matches(name, _METRICS, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise EvalError(f"unknown metric '{name}'.{hint} Known: {', '.join(list_metrics())}.")
    return _METRICS[name]


@register_metric("fid", "kid")
def fid_kid(opts: EvalOptions) -> dict:
    from eval.fid import DEFAULT_CACHE_DIR, compute_fid_kid

    return compute_fid_kid(opts.gen_dir, opts.ref_dir, ref_stats=opts.ref_stats, test_input_dir=opts.test_input_dir,
                           mode=opts.mode, dataset=opts.dataset, split=opts.split, device=opts.device,
                           inception_path=opts.inception_path, feature_extractor=opts.feature_extractor,
                           cache_dir=opts.cache_dir or DEFAULT_CACHE_DIR, **opts.extra)


@register_metric("synthetic_gt")
def synthetic_gt(opts: EvalOptions) -> dict:
    """The built-in synthetic set's paired ground truth (qsattn/synthetic.py); test_input_dir is its testA."""
    from qsattn.synthetic import score_translation

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
                            label_ids=opts.label_ids, device=opts.device)


def evaluate_folder_pair(gen_dir: str | Path, ref_dir: str | Path | None = None, *,
                         metrics: tuple[str, ...] | list[str] = ("fid", "kid"), **options) -> dict:
    """Score one folder of translations with the named metrics.

    The entry point for evaluating a run's checkpoints or a released model: translate into a folder,
    then call this. `options` are `EvalOptions` fields. Returns {'metrics': {value name: number},
    'protocol': {metric function: its protocol}}; stand-in values keep their '_standin' names.
    """
    opts = EvalOptions(gen_dir=gen_dir, ref_dir=ref_dir, **options)
    out: dict = {"metrics": {}, "protocol": {}}
    done = set()
    for name in metrics:
        fn = get_metric(name)
        if fn in done:
            continue
        done.add(fn)
        result = dict(fn(opts))
        out["protocol"][fn.__name__] = result.pop("protocol")
        result.pop("metric_name", None)
        out["metrics"].update(result)
    return out
