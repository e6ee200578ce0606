"""Train one run: `python -m qsattn train --config FILE [key=value ...]`.

The run folder (runs/<name>/) holds the resolved config, checkpoints, sample grids, the final weights
under the official file names, and the MLflow run id. Starting the same run again resumes it from its
latest checkpoint and continues the same MLflow run; a finished run is not trained again.
"""
from __future__ import annotations

import logging
import math
import os
import random
import threading
import time
from pathlib import Path

import torch

from qsattn import checkpoint as ckpt_io
from qsattn.config import Config, ConfigError, load
from qsattn.model import TrainState, configure_backends, create_state, end_epoch, generator_forward, train_step

log = logging.getLogger("qsattn.train")

DONE_FILE = "DONE"

# Set (e.g. from a preemption signal handler) to make the loop save at the next step boundary and raise
# `Stopped`: a preempted job then loses no step. `RUNNING` tells a handler whether a loop will see it.
STOP = threading.Event()
RUNNING = threading.Event()


class Stopped(Exception):
    """Training stopped on request after saving its checkpoint; run again to resume."""


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name} but CUDA is not available here; use device=cpu or device=auto")
    return device


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:
        pass
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


def make_dataset(cfg: Config, phase: str = "train"):
    from qsattn.data import UnalignedDataset

    return UnalignedDataset(
        Path(cfg.data_root) / cfg.dataset, phase, direction=cfg.direction, preprocess=cfg.preprocess,
        load_size=cfg.load_size, crop_size=cfg.crop_size, no_flip=cfg.no_flip, serial_batches=cfg.serial_batches,
        max_dataset_size=cfg.max_dataset_size, skip_bad_images=cfg.skip_bad_images, seed=cfg.seed)


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The order of domain-A images in an epoch: a permutation drawn from (seed, epoch) alone, so a
    resumed run sees the same order without saving sampler state (official: DataLoader shuffle)."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=g)


def collate(items: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.stack([it["A"] for it in items]), torch.stack([it["B"] for it in items])


def to_device(batch: tuple[torch.Tensor, ...], device: torch.device, pin_memory: bool) -> tuple[torch.Tensor, ...]:
    """Copy a host batch to the device. With pin_memory on a GPU the batch is page-locked first, so the
    non-blocking copy really overlaps the step (from pageable memory it is synchronous); same bytes."""
    if pin_memory and device.type == "cuda":
        batch = tuple(t.pin_memory() for t in batch)
    return tuple(t.to(device, non_blocking=True) for t in batch)


def total_epochs(cfg: Config) -> int:
    return cfg.n_epochs + cfg.n_epochs_decay


def sample_grid(state: TrainState, real_A, real_B, path: Path) -> None:
    """real A | fake B | real B | idt B (as the official visuals), one row per image in the batch."""
    from torchvision.utils import save_image

    with torch.no_grad():
        fake_B, idt_B = generator_forward(state, real_A, real_B)
    tiles = [real_A, fake_B, real_B] + ([idt_B] if idt_B is not None else [])
    grid = torch.stack(tiles, 1).flatten(0, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image((grid + 1) / 2, path, nrow=len(tiles))


class Run:
    """Paths of one run folder."""

    def __init__(self, cfg: Config):
        self.dir = Path(cfg.run_root) / cfg.run_name()
        self.latest = self.dir / "checkpoints" / "latest.pt"
        self.done = self.dir / DONE_FILE

    def epoch_checkpoint(self, epoch: int) -> Path:
        return self.dir / "checkpoints" / f"epoch_{epoch:04d}.pt"


def train(cfg: Config, progress: bool = True) -> Path:
    """Train (or resume) the run described by cfg; returns its run folder."""
    run = Run(cfg)
    if run.done.exists():
        log.info("%s is already finished (%s exists); nothing to do.", run.dir, run.done)
        return run.dir
    run.dir.mkdir(parents=True, exist_ok=True)
    (run.dir / "config.yaml").write_text(_yaml(cfg))

    device = pick_device(cfg.device)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    seed_everything(cfg.seed, cfg.deterministic)
    configure_backends(cfg, device)
    dataset = make_dataset(cfg)
    state = create_state(cfg, device)
    position = 0
    if run.latest.exists():
        saved = ckpt_io.load(run.latest)
        bad = ckpt_io.config_mismatches(saved["config"], cfg)
        if bad:
            raise ConfigError(f"{run.latest} was written with another config; mismatched keys:\n  " + "\n  ".join(bad)
                              + "\nUse a new run name, or the same config to resume.")
        ckpt_io.restore(state, saved)
        dataset.set_rng_state(saved["data_rng"])
        position = saved["position"]
        log.info("resumed %s at epoch %d, step %d", run.dir, state.epoch, state.step)

    from qsattn.tracking import git_commit, open_tracker

    tags = {"method": cfg.method, "dataset": cfg.dataset, "seed": cfg.seed, "git_commit": git_commit(),
            "run_dir": str(run.dir.absolute())}
    tracker = open_tracker(cfg, run.dir, tags)
    if state.step == 0:
        tracker.log_params(cfg.to_dict())
        tracker.log_artifact(run.dir / "config.yaml")

    n_batches = len(dataset) // cfg.batch_size  # drop_last, as the official training loader
    if n_batches == 0:
        raise ConfigError(f"batch_size={cfg.batch_size} is larger than the dataset ({len(dataset)} images)")
    max_steps = _step_cap(cfg, n_batches)
    log.info("config:\n%s", cfg.dumps())

    def save(pos: int, path: Path = run.latest) -> None:
        ckpt_io.atomic_save(ckpt_io.state_to_dict(state, pos, dataset.get_rng_state()), path)

    bar = _progress(progress, max_steps, state.step, run.dir.name)
    running: dict[str, torch.Tensor] = {}
    t_last, step_last = time.time(), state.step
    status = "FAILED"
    RUNNING.set()
    try:
        while state.epoch <= total_epochs(cfg) and state.step < max_steps:
            dataset.set_epoch(state.epoch, cfg.n_epochs)  # official: no resize-crop while lr decays
            order = epoch_order(len(dataset), cfg.seed, state.epoch)
            while position < n_batches and state.step < max_steps:
                if STOP.is_set():
                    save(position)
                    raise Stopped(f"stopped on request at step {state.step}; {run.latest} holds it")
                idx = order[position * cfg.batch_size:(position + 1) * cfg.batch_size].tolist()
                real_A, real_B = to_device(collate([dataset[i] for i in idx]), device, cfg.pin_memory)
                losses = train_step(state, real_A, real_B)
                position += 1
                for k, v in losses.items():
                    running[k] = running.get(k, 0) + v
                if state.step % cfg.log_every == 0:
                    now = time.time()
                    metrics = {k: (v / (state.step - step_last)).item() for k, v in running.items()}
                    metrics["images_per_s"] = (state.step - step_last) * cfg.batch_size / max(now - t_last, 1e-9)
                    metrics["lr"] = state.opt_G.param_groups[0]["lr"]
                    _check_finite(metrics, state.step)
                    tracker.log_metrics(metrics, state.step)
                    bar.set_postfix({k: f"{metrics[k]:.3g}" for k in ("G", "NCE", "D", "images_per_s") if k in metrics})
                    running, t_last, step_last = {}, now, state.step
                if cfg.sample_every and state.step % cfg.sample_every == 0:
                    path = run.dir / "samples" / f"step_{state.step:07d}.png"
                    sample_grid(state, real_A, real_B, path)
                    tracker.log_artifact(path, "samples")
                if cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0:
                    save(position)
                bar.update(1)
            if position >= n_batches:  # the epoch is complete
                end_epoch(state)
                position = 0
                save(position)
                if cfg.keep_epoch_checkpoints and (state.epoch - 1) % cfg.keep_epoch_checkpoints == 0:
                    save(position, run.epoch_checkpoint(state.epoch - 1))
        save(position)
        ckpt_io.export_official(state, run.dir)
        if state.step > 0:
            real_A, real_B = collate([dataset[i] for i in range(min(4, len(dataset)))])
            sample_grid(state, real_A.to(device), real_B.to(device), run.dir / "samples" / "final.png")
            tracker.log_artifact(run.dir / "samples" / "final.png", "samples")
        run.done.write_text(f"step {state.step}\n")
        status = "FINISHED"
    except (KeyboardInterrupt, Stopped):
        status = "STOPPED"
        raise
    finally:
        RUNNING.clear()
        bar.close()
        if status != "FINISHED":
            # the latest checkpoint on disk is the resume point; the MLflow run stays open for it
            tracker.set_tags({"last_status": status})
        else:
            tracker.finish("FINISHED")
    return run.dir


def _step_cap(cfg: Config, n_batches: int) -> int:
    cap = total_epochs(cfg) * n_batches
    if cfg.max_steps:
        cap = min(cap, cfg.max_steps)
    if cfg.max_images:
        cap = min(cap, math.ceil(cfg.max_images / cfg.batch_size))
    return cap


def _check_finite(metrics: dict, step: int) -> None:
    bad = [k for k, v in metrics.items() if not math.isfinite(v)]
    if bad:
        raise FloatingPointError(f"non-finite losses {bad} at step {step}; the last checkpoint is the last good state")


def _progress(enabled: bool, total: int, initial: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="step", disable=not enabled, dynamic_ncols=True)


def _yaml(cfg: Config) -> str:
    import yaml

    return yaml.safe_dump({k: list(v) if isinstance(v, tuple) else v for k, v in cfg.to_dict().items()},
                          sort_keys=False)


def add_arguments(parser) -> None:
    parser.add_argument("--config", help="YAML file of config keys (see `python -m qsattn methods NAME`)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config keys overriding the file")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")


def run(args) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    cfg = load(args.config, args.overrides)
    run_dir = train(cfg, progress=not args.no_progress)
    print(f"run folder: {run_dir}")
    return 0
