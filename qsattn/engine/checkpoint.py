"""Checkpoints that continue a run exactly, written so that a kill at any moment loses nothing.

A checkpoint holds G, D, F (with F's layer channel counts), the three optimisers and schedulers, the
step, epoch and position in the epoch, and every RNG the run draws from. It is written to a temporary
file in the same folder, flushed to disk, then renamed over the old one: a kill during the save leaves
the previous checkpoint intact. Everything is loaded with `weights_only=True`.
"""
from __future__ import annotations

from pathlib import Path

import torch

from qsattn.engine.atomic import replacing
from qsattn.engine.config import RESUMABLE_KEYS
from qsattn.errors import UserError


class CheckpointError(UserError):
    """A checkpoint or weights file that cannot be used as asked; the message says what it holds."""


def atomic_save(obj, path: str | Path) -> None:
    """torch.save through a temporary file (qsattn/engine/atomic.py): removed on any error, a full disk refused
    up front (the tensors' bytes are a lower bound of the file's size) or reported as DiskFull."""
    with replacing(path, needed=tensor_bytes(obj), sync=True) as fh:
        torch.save(obj, fh)


def tensor_bytes(obj) -> int:
    """Bytes of the tensor storages in a (nested) checkpoint, each storage once: what torch.save writes."""
    seen, total, todo = set(), 0, [obj]
    while todo:
        item = todo.pop()
        if isinstance(item, torch.Tensor):
            storage = item.untyped_storage()
            if storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                total += storage.nbytes()
        elif isinstance(item, dict):
            todo.extend(item.values())
        elif isinstance(item, (list, tuple)):
            todo.extend(item)
    return total


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


def load(path: str | Path, map_location="cpu", mmap: bool = False) -> dict:
    """A checkpoint or weights file (weights_only: a crafted file cannot run code); CheckpointError if the
    file is not one (a text file, a truncated copy). mmap: tensors are read only when used."""
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist") from None
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError, KeyError, ... for non-checkpoints
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({_what_it_is(path, exc)}); pass a "
                              f"checkpoint from runs/NAME/checkpoints/ or an official latest_net_G.pth") from exc
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a checkpoint or a state dict")
    return obj


def _what_it_is(path, exc: Exception) -> str:
    with open(path, "rb") as fh:
        head = fh.read(512)
    try:
        if head and b"\0" not in head:
            head.decode("utf-8")
            return "it is a text file"
    except UnicodeDecodeError:
        pass
    first = str(exc).splitlines()[0].split(". ")[0] if str(exc) else ""  # torch's first sentence says it
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


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
    from baselines.model import adam_flags

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
