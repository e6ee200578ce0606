"""One grid cell end to end: train (or resume), translate the whole test split, evaluate, log.

`run_cell(cfg)` is what a sweep job calls. It is idempotent: a finished cell returns its saved
metrics; an unfinished one resumes training from its checkpoint. Metrics go to the cell's own MLflow
run (the one training opened) and to run_dir/metrics.json, with the evaluation protocol beside them.
When epoch checkpoints are kept, every one is scored too, and both the last checkpoint's and the best
checkpoint's values are reported, labelled, because published figures are often best-of-training.
"""
from __future__ import annotations

import json
from pathlib import Path

from qsattn.config import Config

# The value that picks the best checkpoint, and whether lower is better.
PRIMARY = (("fid", True), ("gt_score", False), ("fid_standin", True), ("mAP", False))


def default_metrics(cfg: Config) -> list[str]:
    if cfg.eval_metrics != "auto":
        return [m.strip() for m in cfg.eval_metrics.split(",") if m.strip()]
    if cfg.dataset == "synthetic":
        return ["synthetic_gt"]
    return ["fid", "kid"] + (["cityscapes_seg"] if cfg.dataset.startswith("cityscapes") else [])


def test_split(cfg: Config) -> tuple[Path, Path]:
    """(source test folder, target-domain reference folder), following `direction`."""
    root = Path(cfg.data_root) / cfg.dataset
    src, ref = ("testA", "testB") if cfg.direction == "AtoB" else ("testB", "testA")
    return root / src, root / ref


def evaluate_checkpoint(cfg: Config, checkpoint: Path, out_dir: Path, device="cpu", progress=True, **eval_options) -> dict:
    """Translate the test split with one checkpoint, then score it. -> {'metrics', 'protocol'}."""
    from eval.registry import evaluate_folder_pair
    from qsattn.translate import load_generator, translate_folder

    src, ref = test_split(cfg)
    G, _ = load_generator(checkpoint, device)
    translate_folder(G, src, out_dir, cfg.crop_size, cfg.preprocess, device, progress)
    options = dict(test_input_dir=src, mode=cfg.fid_mode, dataset=cfg.dataset, split=ref.name,
                   inception_path=cfg.inception_weights or None, device=str(device))
    if cfg.dataset.startswith("cityscapes"):
        options.update(label_dir=src.parent / f"{src.name}_labelIds", drn_weights=cfg.drn_weights or None,
                       drn_arch=cfg.drn_arch)
    options.update(eval_options)
    return evaluate_folder_pair(out_dir, ref, metrics=default_metrics(cfg), **options)


def numbers(metrics: dict) -> dict:
    """The metric values worth logging (counts such as n_images belong to the protocol)."""
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not k.startswith("n_")}


def best_of(history: dict[int, dict]) -> tuple[int, dict] | None:
    for key, lower in PRIMARY:
        scored = {e: m for e, m in history.items() if key in m}
        if scored:
            pick = (min if lower else max)(scored, key=lambda e: scored[e][key])
            return pick, scored[pick]
    return None


def run_cell(cfg: Config, progress: bool = True, **eval_options) -> dict:
    """Train, translate and evaluate one cell; returns {'metrics': ..., 'protocol': ..., 'history': ...}."""
    from qsattn.train import Run, train

    run = Run(cfg)
    result_file = run.dir / "metrics.json"
    if result_file.exists() and run.done.exists():
        return json.loads(result_file.read_text())
    train(cfg, progress)
    return evaluate_run(cfg, progress, **eval_options)


def log_qualitative(cfg: Config, run, tracker, checkpoints: list[str]) -> None:
    """The qualitative grid of each scored checkpoint (translations/<name>/): the artifact
    qualitative/<name>.png, and the run's images qualitative_last and qualitative_epoch (step: epoch)."""
    from qsattn import qualitative

    src, _ = test_split(cfg)
    for name in checkpoints:
        path = qualitative.grid(src, run.dir / "translations" / name, run.dir / "qualitative" / f"{name}.png",
                                cfg.method)
        tracker.log_artifact(path, "qualitative")  # the run page's Artifacts tab shows qualitative/<name>.png
        if name == "last":
            tracker.log_image(path, "qualitative_last", 0)
        else:
            tracker.log_image(path, "qualitative_epoch", int(name.split("_")[1]))


def evaluate_run(cfg: Config, progress: bool = True, **eval_options) -> dict:
    """Score a trained run's last checkpoint and its kept epoch checkpoints; log and save the result."""
    from qsattn.atomic import atomic_write_text
    from qsattn.tracking import open_tracker
    from qsattn.train import Run, pick_device

    run = Run(cfg)
    result_file = run.dir / "metrics.json"
    if not run.latest.exists():
        raise FileNotFoundError(f"{run.latest} does not exist: train the run first (python -m qsattn train ...)")
    device = pick_device(cfg.device)
    last = evaluate_checkpoint(cfg, run.latest, run.dir / "translations" / "last", device, progress, **eval_options)
    metrics = {f"{k}_last": v for k, v in numbers(last["metrics"]).items()}
    history = {}
    for ckpt in sorted((run.dir / "checkpoints").glob("epoch_*.pt")):
        epoch = int(ckpt.stem.split("_")[1])
        history[epoch] = evaluate_checkpoint(cfg, ckpt, run.dir / "translations" / ckpt.stem, device, progress,
                                             **eval_options)["metrics"]
    best = best_of(history)
    if best:
        metrics.update({f"{k}_best": v for k, v in numbers(best[1]).items()})
        metrics["best_epoch"] = best[0]
    result = {"metrics": metrics, "protocol": last["protocol"],
              "history": {str(e): m for e, m in history.items()}}

    tracker = open_tracker(cfg, run.dir, {})
    tracker.log_metrics(metrics, step=0)
    for epoch, m in history.items():
        tracker.log_metrics({f"checkpoint_{k}": v for k, v in numbers(m).items()}, step=epoch)
    log_qualitative(cfg, run, tracker, ["last"] + [f"epoch_{e:04d}" for e in sorted(history)])
    tracker.add_view_metrics()  # the experiment's comparison view gets these metrics as columns
    tracker.set_tags({f"protocol.{name}.{k}": v for name, p in last["protocol"].items() for k, v in p.items()})
    atomic_write_text(result_file, json.dumps(result, indent=2, default=str))
    tracker.log_artifact(result_file)
    tracker.finish("FINISHED")
    return result
