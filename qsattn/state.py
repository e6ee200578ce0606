"""QS-Attn's training state: CUT's (baselines/state.py), with QS-Attn's patch sampler as F.

Everything else of the step (networks, losses, optimisers, `train_step`) is CUT's, unchanged.
"""
from __future__ import annotations

import torch

from baselines.model import TrainState
from baselines.state import create_state as create_cut_state
from qsattn.sampler import build_sampler


def create_state(cfg, device: torch.device | str = "cpu") -> TrainState:
    """G, D and F for any method (qs_mode=none samples exactly as CUT's sampler does)."""
    return create_cut_state(cfg, device, sampler=build_sampler(cfg))
