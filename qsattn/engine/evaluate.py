"""Score a folder of translations: FID/KID against a reference split, and Cityscapes segmentation scores.

examples:
  python -m qsattn eval --gen out/h2z/test --ref data/horse2zebra/testB --test-input data/horse2zebra/testA \\
      --out metrics.json                                   # FID and KID in both modes
  python -m qsattn eval --run runs/table1/cut-horse2zebra-s0-1a2b3c4d --fid-modes legacy_pytorch   # re-score
  python -m qsattn eval --released horse2zebra_cut_pretrained --expect results/released_model_fids.csv
  python -m qsattn eval --metrics cityscapes_seg --gen out/city/test --labels data/cityscapes/testA_labelIds \\
      --drn-weights weights/drn_d_22_cityscapes.pth --drn-arch drn_d_22

FID needs Inception weights (each file is checked against its pinned sha256, eval/fid.py). With internet,
clean-fid's files are fetched on first use; offline, download them elsewhere and pass
--inception-weights clean=PATH,legacy_pytorch=PATH (or set QSATTN_INCEPTION_WEIGHTS to the same):
  clean           https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt
  legacy_pytorch  https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth
legacy_pytorch is the protocol of the CUT paper FIDs (and, as far as records show, QS-Attn's). DRN Cityscapes weights
(drn_d_22_cityscapes.pth, drn-d-105_ms_cityscapes.pth): http://go.yf.io/drn-cityscapes-models (fyu/drn).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from eval.folders import EvalError
from qsattn.engine.config import FID_MODES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from eval.registry import list_metrics

    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--gen", metavar="DIR", help="folder of generated (translated) images")
    source.add_argument("--run", metavar="DIR", help="a training run folder (runs/NAME): translate the test split "
                        "with its final and kept epoch checkpoints, score them, log to its MLflow run (no training)")
    source.add_argument("--released", metavar="NAME", help="an official released generator under "
                        "checkpoints/released/NAME/latest_net_G.pth (see eval/released.py for the names)")
    parser.add_argument("--ref", metavar="DIR", help="reference split for FID/KID (e.g. horse2zebra/testB)")
    parser.add_argument("--ref-stats", metavar="NPZ", help="cached reference statistics instead of --ref "
                        "(one --fid-modes mode: the file is of one mode)")
    parser.add_argument("--test-input", metavar="DIR",
                        help="source test split (e.g. testA): --gen must hold one translation per image, matched by stem")
    parser.add_argument("--metrics", default="fid,kid",
                        help=f"comma-separated metric names (default: fid,kid; known: {', '.join(list_metrics())})")
    parser.add_argument("--fid-modes", "--mode", dest="fid_modes", metavar="MODES", default=None,
                        help=f"FID/KID protocols, comma list of {', '.join(FID_MODES)} (default: both; with --run: "
                             "the run's fid_modes). legacy_pytorch is the papers' (pytorch-fid)")
    parser.add_argument("--inception-weights", metavar="MODE=PATH,...", help="local Inception files (see below)")
    parser.add_argument("--dataset", help="dataset name in the reference cache key (default: parent folder of --ref); "
                        "without --test-input, a known dataset's split sizes are checked")
    parser.add_argument("--split", help="split name in the reference cache key (default: name of --ref)")
    parser.add_argument("--cache-dir", metavar="DIR", help="where reference statistics are cached "
                        "(default: $QSATTN_EVAL_CACHE or ~/.cache/qsattn/eval)")
    parser.add_argument("--labels", metavar="DIR", help="Cityscapes label maps of the test split (cityscapes_seg)")
    parser.add_argument("--label-ids", default="labelIds", choices=("labelIds", "trainIds"),
                        help="label maps hold Cityscapes labelIds (gtFine_labelIds, default) or trainIds")
    parser.add_argument("--drn-weights", metavar="PATH",
                        help="drn_d_22_cityscapes.pth or drn-d-105_ms_cityscapes.pth (http://go.yf.io/drn-cityscapes-models)")
    parser.add_argument("--drn-arch", default=None, choices=("drn_d_22", "drn_d_105"),
                        help="architecture of --drn-weights (default: drn_d_22; with --run: the run's)")
    parser.add_argument("--drn-sha256", metavar="HEX", help="refuse --drn-weights unless its sha256 is this")
    parser.add_argument("--checkpoints", choices=("all", "last"), default=None,
                        help="--run: score the final and every kept epoch checkpoint (all) or the final one only "
                             "(default: the run's eval_checkpoints)")
    parser.add_argument("--expect", metavar="CSV", help="--released: compare the FIDs with published ones "
                        "(results/released_model_fids.csv) and exit 1 where one differs by more than 0.02")
    parser.add_argument("--data-root", metavar="DIR", help="--released: where the datasets are (default: datasets)")
    parser.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--out", metavar="JSON", help="also write the result (values and protocol) here")


def run(args: argparse.Namespace) -> int:
    result = _run_or_released(args) if args.gen is None else _folders(args)
    text = json.dumps(result, indent=2, default=str)
    print(text)
    if args.out:
        from qsattn.engine.atomic import atomic_write_text

        atomic_write_text(args.out, text + "\n")
    if args.expect:
        from eval.released import check_expected

        return check_expected(args.released, result, args.expect)
    return 0


def _overrides(args: argparse.Namespace) -> dict:
    """Evaluation keys given on the command line (the others stay the run's, or the defaults)."""
    pairs = (("fid_modes", args.fid_modes), ("drn_arch", args.drn_arch), ("drn_sha256", args.drn_sha256),
             ("eval_checkpoints", args.checkpoints), ("inception_weights", args.inception_weights),
             ("drn_weights", args.drn_weights), ("device", args.device), ("data_root", args.data_root))
    return {k: v for k, v in pairs if v}


def _run_or_released(args: argparse.Namespace) -> dict:
    """A run folder or a released checkpoint: translate its test split, then the same metrics."""
    import yaml

    from qsattn.engine.config import resolve
    from qsattn.engine.pipeline import evaluate_checkpoint, evaluate_run
    from qsattn.engine.run_folder import RunFolder

    if args.expect and not args.released:
        raise EvalError("--expect compares a released generator's FIDs: use it with --released NAME.")
    options = dict(cache_dir=args.cache_dir, label_ids=args.label_ids)
    overrides = _overrides(args)
    if args.run:
        config_file = RunFolder(args.run).config
        if not config_file.exists():
            raise EvalError(f"{config_file} not found: --run takes a run folder written by `python -m qsattn train`")
        values = yaml.safe_load(config_file.read_text())
        values["run_root"], values["name"] = str(Path(args.run).parent), Path(args.run).name
        return evaluate_run(resolve({**values, **overrides}), **options)
    from eval.released import RELEASED, checkpoint_path, translations_dir

    path = checkpoint_path(args.released)
    entry = RELEASED[args.released]
    cfg = resolve({"method": entry.method, "dataset": args.dataset or entry.dataset, "crop_size": 256,
                   "load_size": 286, **overrides})
    device = cfg.device if cfg.device != "auto" else None
    from qsattn.engine.train import pick_device

    return evaluate_checkpoint(cfg, path, translations_dir(args.released), pick_device(device or "auto"), **options)


def _folders(args: argparse.Namespace) -> dict:
    from eval.registry import evaluate_folder_pair

    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    modes = tuple(m.strip() for m in (args.fid_modes or ",".join(FID_MODES)).split(",") if m.strip())
    if {"fid", "kid"} & set(metrics) and args.test_input is None and (args.dataset or args.ref):
        from eval.folders import check_known_counts

        # the dataset named, else the folder above --ref (datasets/horse2zebra/testB -> horse2zebra)
        check_known_counts(args.dataset or Path(args.ref).resolve().parent.name, args.gen, args.ref)
    return evaluate_folder_pair(
        args.gen, args.ref, metrics=metrics, ref_stats=args.ref_stats, test_input_dir=args.test_input,
        modes=modes, dataset=args.dataset, split=args.split, inception_path=args.inception_weights,
        cache_dir=args.cache_dir, device=args.device, label_dir=args.labels, label_ids=args.label_ids,
        drn_weights=args.drn_weights, drn_arch=args.drn_arch or "drn_d_22", drn_sha256=args.drn_sha256)
