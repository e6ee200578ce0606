"""Train one run: `python -m qsattn train --config FILE [key=value ...]`.

The run folder (runs/<name>/) holds the resolved config, checkpoints, sample grids, the final weights
under the official file names, and the MLflow run id. Starting the same run again resumes it from its
latest checkpoint and continues the same MLflow run; a finished run is not trained again unless a
larger max_steps / max_images lets it continue. One process at a time trains a run folder (its lock);
every input is checked before the first step; a non-finite loss or weight stops the run before
anything is saved over a good checkpoint. docs/reliability.md says what survives what.
"""
from __future__ import annotations

import logging
import math
import os
import random
import sys
import time
from pathlib import Path

import torch

from qsattn.engine import checkpoint as ckpt_io
from qsattn.engine.atomic import atomic_write_text, remove_temporaries
from qsattn.engine.config import Config, ConfigError, load
from qsattn.errors import UserError
from baselines.model import TrainState, configure_backends, end_epoch, generator_forward, train_step
from qsattn.state import create_state
from qsattn.engine.run_folder import RUNNING, STOP, RunFolder, Stopped, locked, request_stop  # see run_folder.py

log = logging.getLogger("qsattn.engine.train")

class NonFinite(UserError, FloatingPointError):
    """A loss or a weight became inf or NaN: the run stops before it saves or exports anything."""


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name} but CUDA is not available here; use device=cpu or device=auto")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"device={name} but this machine has {torch.cuda.device_count()} CUDA device(s) "
                          f"(cuda:0..cuda:{torch.cuda.device_count() - 1}); CUDA_VISIBLE_DEVICES renumbers them")
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
    from qsattn.data.unaligned import UnalignedDataset

    return UnalignedDataset(
        Path(cfg.data_root) / cfg.dataset, phase, direction=cfg.direction, preprocess=cfg.preprocess,
        load_size=cfg.load_size, crop_size=cfg.crop_size, no_flip=cfg.no_flip, serial_batches=cfg.serial_batches,
        max_dataset_size=cfg.max_dataset_size, skip_bad_images=cfg.skip_bad_images, seed=cfg.seed,
        same_size=cfg.batch_size > 1 or cfg.nce_idt)  # torch.stack / G(cat[A, B]) need one size


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


class Run(RunFolder):
    """The run folder of a config: <run_root>/<name>/ (paths in qsattn/engine/run_folder.py)."""

    def __init__(self, cfg: Config):
        super().__init__(Path(cfg.run_root) / cfg.run_name())


def train(cfg: Config, progress: bool = True) -> Path:
    """Train (or resume) the run described by cfg; returns its run folder. The run folder's lock is held
    throughout: a second process on the same folder stops at once with RunBusy, naming the holder."""
    run = Run(cfg)
    with locked(run.dir):
        return _train_locked(cfg, run, progress)


def _train_locked(cfg: Config, run: Run, progress: bool) -> Path:
    remove_stale_temporaries(run)
    if run.done.exists() and finished_with_same_caps(cfg, run):
        log.info("%s is already finished (%s); nothing to do.", run.dir, run.done.read_text().strip())
        return run.dir

    device = pick_device(cfg.device)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    seed_everything(cfg.seed, cfg.deterministic)
    configure_backends(cfg, device)
    dataset = make_dataset(cfg)
    state = create_state(cfg, device)
    check_against_network(cfg, state)
    position, window = 0, None
    if run.latest.exists():
        saved = ckpt_io.load(run.latest)
        bad = ckpt_io.config_mismatches(saved["config"], cfg)
        if bad:
            raise ConfigError(f"{run.latest} was written with another config; mismatched keys: " + "; ".join(bad)
                              + ". Use a new run name (name=...), or the same config to resume.")
        ckpt_io.restore(state, saved)
        dataset.set_rng_state(saved["data_rng"])
        position = saved["position"]
        window = saved.get("log_window")
        log.info("resumed %s at epoch %d, step %d", run.dir, state.epoch, state.step)

    n_batches = len(dataset) // cfg.batch_size  # drop_last, as the official training loader
    if n_batches == 0:
        raise ConfigError(f"batch_size={cfg.batch_size} is larger than the dataset ({len(dataset)} images)")
    max_steps = _step_cap(cfg, n_batches)
    if run.done.exists():  # finished, rerun with another cap
        if state.step >= max_steps:
            log.info("%s finished at step %d; the caps now allow %d steps: nothing to do.", run.dir, state.step,
                     max_steps)
            return run.dir
        log.info("%s finished at step %d; continuing to step %d (a larger cap)", run.dir, state.step, max_steps)
        run.done.unlink()
    atomic_write_text(run.config, _yaml(cfg))  # only now: a refused resume leaves the run's own config
    log.info("config:\n%s", cfg.dumps())

    from qsattn.engine.tracking import git_commit, grouped_params, open_tracker

    tags = {"git_commit": git_commit(), "run_dir": str(run.dir.absolute())}
    tracker = open_tracker(cfg, run.dir, tags)
    if state.step == 0:
        tracker.log_params(grouped_params(cfg))
        tracker.log_artifact(run.config)

    def save(pos: int, path: Path = run.latest) -> None:
        assert_finite(state, running, run)  # a NaN never replaces a good checkpoint
        # the loss sums since the last readout: a resumed run averages its first window over all its steps
        extra = {"log_window": {"since": step_last, "sums": {k: v.detach().cpu() for k, v in running.items()}}}
        ckpt_io.atomic_save(ckpt_io.state_to_dict(state, pos, dataset.get_rng_state(), extra), path)

    def save_epoch_checkpoint(epoch: int) -> None:
        assert_finite(state, running, run)
        ckpt_io.atomic_save(epoch_checkpoint(state, position, dataset.get_rng_state()), run.epoch_checkpoint(epoch))

    bar = _progress(progress, max_steps, state.step, run.dir.name)
    write_progress(run.dir, state.step, max_steps, None)
    running: dict[str, torch.Tensor] = {k: v.to(device) for k, v in (window or {}).get("sums", {}).items()}
    step_last = (window or {}).get("since", state.step)
    t_last, timed_from = time.time(), state.step  # images_per_s: the steps this process timed
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
                    metrics["images_per_s"] = (state.step - timed_from) * cfg.batch_size / max(now - t_last, 1e-9)
                    metrics["lr"] = state.opt_G.param_groups[0]["lr"]
                    assert_finite(state, running, run)
                    tracker.log_metrics(metrics, state.step, skip_logged=True)  # a retraced step is logged once
                    write_progress(run.dir, state.step, max_steps, (now - t_last) / (state.step - timed_from))
                    bar.set_postfix({k: f"{metrics[k]:.3g}" for k in ("G", "NCE", "D", "images_per_s") if k in metrics})
                    running, t_last, step_last, timed_from = {}, now, state.step, state.step
                if cfg.sample_every and state.step % cfg.sample_every == 0:
                    path = run.dir / "samples" / f"step_{state.step:07d}.png"
                    sample_grid(state, real_A, real_B, path)
                    tracker.log_image(path, "train_samples", state.step)
                if cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0:
                    save(position)
                bar.update(1)
            if position >= n_batches:  # the epoch is complete
                end_epoch(state)
                position = 0
                # the kept epoch checkpoint first: once latest.pt is past the epoch, nothing writes it again
                if cfg.keep_epoch_checkpoints and (state.epoch - 1) % cfg.keep_epoch_checkpoints == 0:
                    save_epoch_checkpoint(state.epoch - 1)
                save(position)
        save(position)  # checks the weights are finite before the export
        ckpt_io.export_official(state, run.dir)
        if state.step > 0:
            real_A, real_B = collate([dataset[i] for i in range(min(4, len(dataset)))])
            sample_grid(state, real_A.to(device), real_B.to(device), run.dir / "samples" / "final.png")
            tracker.log_image(run.dir / "samples" / "final.png", "train_samples", state.step)
        tracker.set_tags({"weights": str((run.dir / "latest_net_G.pth").absolute())})  # the final generator
        status = "FINISHED"
    except (KeyboardInterrupt, Stopped):
        status = "KILLED"  # stopped (SIGTERM, SIGINT, preemption): resumable from run.latest
        raise
    finally:
        RUNNING.clear()
        bar.close()
        tracker.finish(status)  # a resume sets it RUNNING again
    # DONE last: a run stopped while its tracking is being sent (a preemption) is not finished, and its
    # resume (nothing left to train) sends the rest into the same MLflow run
    atomic_write_text(run.done, f"step {state.step}\n")
    return run.dir


def _step_cap(cfg: Config, n_batches: int) -> int:
    cap = total_epochs(cfg) * n_batches
    if cfg.max_steps:
        cap = min(cap, cfg.max_steps)
    if cfg.max_images:
        cap = min(cap, math.ceil(cfg.max_images / cfg.batch_size))
    return cap


def write_progress(run_dir: Path, step: int, total: int, sec_per_step: float | None) -> None:
    """<run_dir>/progress.json for the sweep's terminal and `status` (they never read the job's log)."""
    import json

    from qsattn.engine.atomic import atomic_write_text
    from qsattn.engine.run_folder import RunFolder

    atomic_write_text(RunFolder(run_dir).progress, json.dumps(
        {"step": step, "total_steps": total, "sec_per_step": sec_per_step, "updated": time.time()}))


def epoch_checkpoint(state: TrainState, position: int, data_rng) -> dict:
    """What a kept epoch checkpoint holds: only what best-vs-last evaluation reads (the generator, the config,
    where it stands), not D, F and the optimisers: 45.6 MB instead of 176.6 MB at ngf=64. The resume point
    is latest.pt. When it is written, relative to latest.pt, is the loop's business (train)."""
    return {"format": 1, "config": ckpt_io._plain(state.cfg.to_dict()), "step": state.step, "epoch": state.epoch,
            "position": position, "net_G": state.G.state_dict()}


def remove_stale_temporaries(run: Run) -> None:
    """Temporary files of saves a kill interrupted (a SIGKILL cannot clean up): safe to remove, as the
    caller holds the run folder's lock, so no other process is writing these files."""
    ours = (run.config.name, run.done.name, run.mlflow_run_id.name, run.progress.name, run.tracking_state.name,
            *(f"latest_net_{n}.pth" for n in "GDF"))
    removed = remove_temporaries(run.checkpoints) + remove_temporaries(run.dir, ours)
    if removed:
        log.info("removed %d temporary file(s) of interrupted saves: %s", len(removed),
                 ", ".join(p.name for p in removed))


def finished_with_same_caps(cfg: Config, run: Run) -> bool:
    """A finished run rerun: refused (ConfigError) with another config, as a resume would be; True when
    its step caps are unchanged (nothing to do). With other caps the caller compares the new cap with
    the step it finished at."""
    if run.latest.exists():
        saved = ckpt_io.load(run.latest, mmap=True)["config"]  # mmap: the config without reading the tensors
    else:
        import yaml

        saved = yaml.safe_load(run.config.read_text()) if run.config.exists() else {}
    if not saved:
        raise UserError(f"{run.done} says the run finished, but neither {run.latest} nor {run.config} is there; "
                        f"delete {run.done} to train the run again")
    bad = ckpt_io.config_mismatches(saved, cfg)
    if bad:
        raise ConfigError(f"{run.dir} is finished ({run.done.read_text().strip()}) with another config; mismatched "
                          f"keys: {'; '.join(bad)}. Use a new run name (name=...), or the same config.")
    return all(saved.get(k) == getattr(cfg, k) for k in ("max_steps", "max_images"))


def check_against_network(cfg: Config, state: TrainState) -> None:
    """What only the built networks can check, before the first step: layer indices and the official
    local layout's num_patches rule (whose `view` otherwise fails inside the first step)."""
    n_layers = len(state.G.model)
    bad = [i for i in cfg.nce_layers if i >= n_layers]
    if bad:
        which = f"{','.join(map(str, bad))} {'is not a layer' if len(bad) == 1 else 'are not layers'}"
        raise ConfigError(f"nce_layers: {which} of this generator (netG={cfg.netG}"
                          f"{', no_antialias' if cfg.no_antialias else ''}: layers 0..{n_layers - 1}); the "
                          f"official choice is 0,4,8,12,16")
    if cfg.qs_mode == "local" and cfg.local_layout == "official" and cfg.batch_size == 1:
        channels = sorted({state.F.channels[i] for i in cfg.qs_layers})
        if channels != [cfg.num_patches]:
            fix = f"set num_patches={channels[0]}, or" if len(channels) == 1 else "no single num_patches fits; use"
            raise ConfigError(
                f"num_patches={cfg.num_patches}: the official local layout (qs_mode=local, local_layout=official) "
                f"needs num_patches equal to the channel count of the QS layers ({' and '.join(map(str, channels))}"
                f" here, layers {','.join(str(cfg.nce_layers[i]) for i in sorted(set(cfg.qs_layers)))}); {fix} "
                f"local_layout=corrected (the fixed layout, any num_patches)")


def assert_finite(state: TrainState, running: dict, run: Run) -> None:
    """At each loss readout, before each save and before the export: the losses summed since the last
    readout and every weight. A few host syncs each time; the steps in between never sync for this."""
    losses = [k for k, v in running.items() if not bool(torch.isfinite(v).all())]
    nets = []
    for name, module in state.modules().items():
        tensors = [t for t in module.state_dict().values() if t.is_floating_point()]
        if tensors and not bool(torch.stack([t.isfinite().all() for t in tensors]).all()):
            nets.append(name)
    if losses or nets:
        what = " and ".join(f"{kind} ({', '.join(names)})" for kind, names in (("losses", losses), ("weights", nets))
                            if names)
        last = f"{run.latest} is the last good state" if run.latest.exists() else "no checkpoint was written"
        raise NonFinite(f"non-finite {what} at step {state.step}: training stopped before saving, nothing was "
                        f"exported; {last}. Lower lr or check the data, and start a new run (name=...)")


def _progress(enabled: bool, total: int, initial: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="step", disable=not enabled, dynamic_ncols=True)


def _yaml(cfg: Config) -> str:
    import yaml

    return yaml.safe_dump({k: list(v) if isinstance(v, tuple) else v for k, v in cfg.to_dict().items()},
                          sort_keys=False)


def add_arguments(parser) -> None:
    from qsattn.engine.config import describe_keys

    parser.epilog = ("config keys by section (key=default  meaning), set in the --config file or as key=value;\n"
                     "a method's values: `python -m qsattn methods NAME`; the reference: docs/config.md\n\n"
                     + describe_keys())
    parser.add_argument("--config", help="YAML file of config keys (see `python -m qsattn methods NAME`)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config keys overriding the file")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")


def _on_sigterm(signum, frame) -> None:
    """`kill PID` of a `train`: inside the loop, save at the next step and stop (Stopped); elsewhere
    stop at once. Either way the MLflow run ends KILLED and the run resumes from its checkpoint."""
    if not request_stop():
        raise Stopped("terminated (SIGTERM) outside the training loop")


def run(args) -> int:
    import signal

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    cfg = load(args.config, args.overrides)
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        run_dir = train(cfg, progress=not args.no_progress)
    except Stopped as exc:
        print(f"stopped: {exc}; run the same command again to resume", file=sys.stderr)
        return 128 + signal.SIGTERM
    print(f"run folder: {run_dir}")
    return 0
