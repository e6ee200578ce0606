"""One grid cell end to end: train (or resume), translate the whole test split, evaluate, log.

`run_cell(cfg)` is what a sweep job calls. It is idempotent: a finished cell returns its saved
metrics; an unfinished one resumes training from its checkpoint. Metrics go to the cell's own MLflow
run (the one training opened) and to run_dir/metrics.json, with the evaluation protocol beside them.
Every checkpoint scored gets FID and KID in each of `fid_modes` (values named by mode). With
`eval_checkpoints: all` the kept epoch checkpoints are scored too, the final checkpoint always among
them, and both the final checkpoint's values (`_last`) and the best checkpoint's (`_best`, selected
on the test split as the papers did: optimistic; eval.registry.select_best) are reported.

`evaluate_run(cfg)` re-scores a finished run under the evaluation keys of `cfg` without training
(`python -m qsattn eval --run DIR`, `sweep GRID --stage eval`).
"""
from __future__ import annotations

import json
from pathlib import Path

from qsattn.engine.config import Config, fid_modes

BEST_SELECTION = "best checkpoint selected on the test split (optimistic, as the papers did)"


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


def label_dir(cfg: Config) -> Path:
    """Cityscapes: the label maps of the translated split (python -m qsattn data cityscapes writes them)."""
    src, _ = test_split(cfg)
    return src.parent / f"{src.name}_labelIds"


def evaluate_checkpoint(cfg: Config, checkpoint: Path, out_dir: Path, device="cpu", progress=True, **eval_options) -> dict:
    """Translate the test split with one checkpoint, then score it. -> {'metrics', 'protocol'}.

    Cityscapes without label maps (CUT's prepared cityscapes_val_for_CUT has none) is scored by FID/KID
    only; the protocol says why segmentation was skipped."""
    from eval.registry import evaluate_folder_pair
    from qsattn.engine.translate import load_generator, translate_folder, translation_identity

    src, ref = test_split(cfg)
    G, _ = load_generator(checkpoint, device)
    translate_folder(G, src, out_dir, cfg.crop_size, cfg.preprocess, device, progress,
                     identity=translation_identity(checkpoint, cfg.crop_size, cfg.preprocess))
    metrics = default_metrics(cfg)
    options = dict(test_input_dir=src, modes=fid_modes(cfg), dataset=cfg.dataset, split=ref.name,
                   inception_path=cfg.inception_weights or None, device=str(device))
    skipped = {}
    if "cityscapes_seg" in metrics:
        labels = label_dir(cfg)
        if labels.is_dir():
            options.update(label_dir=labels, drn_weights=cfg.drn_weights or None, drn_arch=cfg.drn_arch,
                           drn_sha256=cfg.drn_sha256 or None)
        else:
            metrics = [m for m in metrics if m != "cityscapes_seg"]
            skipped["cityscapes_seg"] = {"skipped": f"no label maps at {labels} (this prepared set has none): "
                                                    "segmentation scores need them; FID/KID only"}
    options.update(eval_options)
    result = evaluate_folder_pair(out_dir, ref, metrics=metrics, **options)
    result["protocol"].update(skipped)
    return result


def numbers(metrics: dict) -> dict:
    """The metric values worth logging (counts such as n_images belong to the protocol)."""
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not k.startswith("n_")}


def final_epoch(checkpoint: Path) -> int:
    """The epoch the final checkpoint stands at: the epochs completed, or the one it stopped inside."""
    from qsattn.engine.checkpoint import load

    state = load(checkpoint, mmap=True)
    epoch = int(state.get("epoch", 1))
    return epoch - 1 if int(state.get("position", 0)) == 0 else epoch


def run_cell(cfg: Config, progress: bool = True, **eval_options) -> dict:
    """Train, translate and evaluate one cell; returns {'metrics': ..., 'protocol': ..., 'history': ...}."""
    from qsattn.engine.train import Run, train

    run = Run(cfg)
    result_file = run.metrics
    if result_file.exists() and run.done.exists():
        return json.loads(result_file.read_text())
    train(cfg, progress)
    return evaluate_run(cfg, progress, **eval_options)


def log_qualitative(cfg: Config, run, tracker, checkpoints: list[str]) -> None:
    """The qualitative grid of each scored checkpoint (translations/<name>/): the artifact
    qualitative/<name>.png, and the run's images qualitative_last and qualitative_epoch (step: epoch)."""
    from qsattn.engine import qualitative

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
    """Score a trained run's final checkpoint and (eval_checkpoints: all) its kept epoch checkpoints; log and
    save the result. Holds the run folder's lock: a training of the same folder is never scored half-way."""
    from eval.registry import select_best
    from qsattn.engine.atomic import atomic_write_text
    from qsattn.engine.run_folder import locked
    from qsattn.engine.tracking import open_tracker
    from qsattn.engine.train import Run, pick_device

    run = Run(cfg)
    result_file = run.metrics
    if not run.latest.exists():
        raise FileNotFoundError(f"{run.latest} does not exist: train the run first (python -m qsattn train ...)")
    with locked(run.dir):
        device = pick_device(cfg.device)
        last_epoch = final_epoch(run.latest)
        last = evaluate_checkpoint(cfg, run.latest, run.dir / "translations" / "last", device, progress,
                                   **eval_options)
        metrics = {f"{k}_last": v for k, v in numbers(last["metrics"]).items()}
        metrics["final_epoch"] = last_epoch
        history = {last_epoch: last["metrics"]}
        kept = sorted(run.checkpoints.glob("epoch_*.pt")) if cfg.eval_checkpoints == "all" else []
        if kept:
            for ckpt in kept:
                epoch = int(ckpt.stem.split("_")[1])
                if epoch == last_epoch:
                    continue  # written at the same point as the final checkpoint: the same generator
                history[epoch] = evaluate_checkpoint(cfg, ckpt, run.dir / "translations" / ckpt.stem, device,
                                                     progress, **eval_options)["metrics"]
        if kept:  # (a kept checkpoint of the final epoch is the final checkpoint: one candidate for both)
            metrics.update(select_best({e: numbers(m) for e, m in history.items()}))
        protocol = {**last["protocol"], "checkpoints": {
            "scored": cfg.eval_checkpoints, "epochs": sorted(history), "final_epoch": last_epoch,
            "best": BEST_SELECTION if kept else "no epoch checkpoints scored"}}
        result = {"metrics": metrics, "protocol": protocol,
                  "history": {str(e): m for e, m in sorted(history.items())}}

        tracker = open_tracker(cfg, run.dir, {})
        tracker.log_metrics(metrics, step=0)
        for epoch, m in sorted(history.items()):
            tracker.log_metrics({f"checkpoint_{k}": v for k, v in numbers(m).items()}, step=epoch)
        log_qualitative(cfg, run, tracker, ["last"] + [f"epoch_{e:04d}" for e in sorted(history) if e != last_epoch])
        tracker.add_view_metrics()  # the experiment's comparison view gets these metrics as columns
        tracker.set_tags({f"protocol.{name}.{k}": v for name, p in protocol.items() for k, v in p.items()})
        atomic_write_text(result_file, json.dumps(result, indent=2, default=str))
        tracker.log_artifact(result_file)
        tracker.finish("FINISHED")
    return result
