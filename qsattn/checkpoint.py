"""Checkpoints that continue a run exactly, written so that a kill at any moment loses nothing.

A checkpoint holds G, D, F (with F's layer channel counts), the three optimisers and schedulers, the
step, epoch and position in the epoch, and every RNG the run draws from. It is written to a temporary
file in the same folder, flushed to disk, then renamed over the old one: a kill during the save leaves
the previous checkpoint intact. Everything is loaded with `weights_only=True`.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from qsattn.config import RESUMABLE_KEYS


def atomic_save(obj, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as fh:
        torch.save(obj, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def rng_states(device: torch.device) -> dict:
    states = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states


def set_rng_states(states: dict, device: torch.device) -> None:
    torch.set_rng_state(states["torch"])
    if device.type == "cuda" and "cuda" in states:
        torch.cuda.set_rng_state(states["cuda"], device)


def state_to_dict(state, position: int, data_rng, extra: dict | None = None) -> dict:
    device = next(state.G.parameters()).device
    ckpt = {
        "format": 1,
        "config": _plain(state.cfg.to_dict()),
        "step": state.step,
        "epoch": state.epoch,
        "position": position,  # batches done in the current epoch
        "F_channels": list(state.F.channels),
        "rng": rng_states(device),
        "data_rng": data_rng,
    }
    for name, module in state.modules().items():
        ckpt[f"net_{name}"] = module.state_dict()
    for name, opt in state.optimizers().items():
        ckpt[f"opt_{name}"] = opt.state_dict()
    ckpt["schedulers"] = [s.state_dict() for s in state.schedulers]
    ckpt.update(extra or {})
    return ckpt


def _plain(d: dict) -> dict:
    """Config values as weights_only-loadable plain types (tuples become lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def load(path: str | Path, map_location="cpu") -> dict:
    return torch.load(path, map_location=map_location, weights_only=True)


def config_mismatches(saved: dict, cfg) -> list[str]:
    now = _plain(cfg.to_dict())
    keys = sorted((set(saved) | set(now)) - RESUMABLE_KEYS)
    return [f"{k}: checkpoint {saved.get(k)!r} vs config {now.get(k)!r}" for k in keys if saved.get(k) != now.get(k)]


def restore(state, ckpt: dict) -> None:
    """Load a checkpoint into a freshly created TrainState (same config)."""
    device = next(state.G.parameters()).device
    for name, module in state.modules().items():
        module.load_state_dict(ckpt[f"net_{name}"], strict=True)
    for name, opt in state.optimizers().items():
        opt.load_state_dict(ckpt[f"opt_{name}"])
    adopt_optimizer_impl(state)
    for sched, sd in zip(state.schedulers, ckpt["schedulers"]):
        sched.load_state_dict(sd)
    state.step, state.epoch = ckpt["step"], ckpt["epoch"]
    set_rng_states(ckpt["rng"], device)


def adopt_optimizer_impl(state) -> None:
    """After loading optimizer states: keep this run's `adam_impl`, not the checkpoint's.

    `Optimizer.load_state_dict` takes the saved param groups wholesale, flags included, so a checkpoint
    written with adam_impl=plain would silently run plain again. The flags are reset to the config's,
    and each `step` counter is put where that implementation wants it (fused: float32 on the parameter's
    device; plain and foreach: a float32 scalar on the CPU). The Adam moments are the same tensors in
    every implementation."""
    from qsattn.model import adam_flags

    flags = adam_flags(state.cfg)
    for opt in state.optimizers().values():
        for group in opt.param_groups:
            group.update(flags)
            for p in group["params"]:
                st = opt.state.get(p)
                if st and "step" in st:
                    step = torch.as_tensor(st["step"], dtype=torch.float32)
                    st["step"] = step.to(p.device) if flags["fused"] else step.cpu()


def export_official(state, folder: str | Path) -> list[Path]:
    """Write latest_net_{G,D,F}.pth with the official key names, for use with the official test.py."""
    folder = Path(folder)
    paths = []
    for name, module in state.modules().items():
        path = folder / f"latest_net_{name}.pth"
        atomic_save({k: v.cpu() for k, v in module.state_dict().items()}, path)
        paths.append(path)
    return paths
