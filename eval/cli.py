"""Score a folder of translations: FID/KID against a reference split, and Cityscapes segmentation scores.

examples:
  python -m qsattn eval --gen out/h2z/test --ref data/horse2zebra/testB --test-input data/horse2zebra/testA \\
      --mode legacy_pytorch --out metrics.json
  python -m qsattn eval --metrics cityscapes_seg --gen out/city/test --labels data/cityscapes/val_labels \\
      --drn-weights weights/drn_d_22_cityscapes.pth --drn-arch drn_d_22

FID needs Inception weights. With internet, clean-fid's files are fetched on first use; offline, download
them elsewhere and pass --inception-weights PATH (or set QSATTN_INCEPTION_WEIGHTS):
  clean           https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt
  legacy_pytorch  https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth
Use legacy_pytorch to compare with the FIDs printed in the CUT / QS-Attn papers.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from eval.folders import EvalError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from eval.registry import list_metrics

    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--gen", metavar="DIR", help="folder of generated (translated) images")
    source.add_argument("--run", metavar="DIR", help="a training run folder (runs/NAME): translate the test split "
                        "with its last and kept epoch checkpoints, score them, log to its MLflow run")
    source.add_argument("--released", metavar="NAME", help="an official released generator under "
                        "checkpoints/released/NAME/latest_net_G.pth (see eval/released.py for the names)")
    parser.add_argument("--ref", metavar="DIR", help="reference split for FID/KID (e.g. horse2zebra/testB)")
    parser.add_argument("--ref-stats", metavar="NPZ", help="cached reference statistics instead of --ref")
    parser.add_argument("--test-input", metavar="DIR",
                        help="source test split (e.g. testA): --gen must hold one translation per image, matched by stem")
    parser.add_argument("--metrics", default="fid,kid",
                        help=f"comma-separated metric names (default: fid,kid; known: {', '.join(list_metrics())})")
    parser.add_argument("--mode", default="clean", choices=("clean", "legacy_pytorch"),
                        help="FID protocol: clean (clean-fid's) or legacy_pytorch (pytorch-fid, as the papers) (default: clean)")
    parser.add_argument("--inception-weights", metavar="PATH", help="local Inception weights file for --mode (see below)")
    parser.add_argument("--dataset", help="dataset name in the reference cache key (default: parent folder of --ref)")
    parser.add_argument("--split", help="split name in the reference cache key (default: name of --ref)")
    parser.add_argument("--cache-dir", metavar="DIR", help="where reference statistics are cached "
                        "(default: $QSATTN_EVAL_CACHE or ~/.cache/qsattn/eval)")
    parser.add_argument("--labels", metavar="DIR", help="Cityscapes label maps of the test split (cityscapes_seg)")
    parser.add_argument("--label-ids", default="labelIds", choices=("labelIds", "trainIds"),
                        help="label maps hold Cityscapes labelIds (gtFine_labelIds, default) or trainIds")
    parser.add_argument("--drn-weights", metavar="PATH", help="drn_d_22_cityscapes.pth or drn_d_105_cityscapes.pth")
    parser.add_argument("--drn-arch", default="drn_d_22", choices=("drn_d_22", "drn_d_105"),
                        help="architecture of --drn-weights (default: drn_d_22)")
    parser.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--out", metavar="JSON", help="also write the result (values and protocol) here")


def run(args: argparse.Namespace) -> int:
    try:
        result = _run_or_released(args) if args.gen is None else _folders(args)
    except EvalError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    text = json.dumps(result, indent=2, default=str)
    print(text)
    if args.out:
        from qsattn.atomic import atomic_write_text

        atomic_write_text(args.out, text + "\n")
    return 0


def _run_or_released(args: argparse.Namespace) -> dict:
    """A run folder or a released checkpoint: translate its test split, then the same metrics."""
    import yaml

    from qsattn.config import resolve
    from qsattn.pipeline import evaluate_checkpoint, evaluate_run
    from qsattn.run_folder import RunFolder

    options = dict(cache_dir=args.cache_dir, label_ids=args.label_ids)
    overrides = {"fid_mode": args.mode, "drn_arch": args.drn_arch}
    overrides.update({k: v for k, v in (("inception_weights", args.inception_weights),
                                        ("drn_weights", args.drn_weights), ("device", args.device)) if v})
    if args.run:
        config_file = RunFolder(args.run).config
        if not config_file.exists():
            raise EvalError(f"{config_file} not found: --run takes a run folder written by `python -m qsattn train`")
        values = yaml.safe_load(config_file.read_text())
        values["run_root"], values["name"] = str(Path(args.run).parent), Path(args.run).name
        return evaluate_run(resolve({**values, **overrides}), **options)
    from eval.released import RELEASED, checkpoint_path

    entry = RELEASED.get(args.released)
    path = checkpoint_path(args.released)
    cfg = resolve({"method": entry.method, "dataset": args.dataset or entry.dataset, "crop_size": 256, **overrides})
    out_dir = Path("results") / "released" / args.released / cfg.fid_mode
    return evaluate_checkpoint(cfg, path, out_dir, cfg.device if cfg.device != "auto" else "cpu", **options)


def _folders(args: argparse.Namespace) -> dict:
    from eval.registry import evaluate_folder_pair

    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    return evaluate_folder_pair(
        args.gen, args.ref, metrics=metrics, ref_stats=args.ref_stats, test_input_dir=args.test_input,
        mode=args.mode, dataset=args.dataset, split=args.split, inception_path=args.inception_weights,
        cache_dir=args.cache_dir, device=args.device, label_dir=args.labels, label_ids=args.label_ids,
        drn_weights=args.drn_weights, drn_arch=args.drn_arch)
