"""The CUT-family training state, built: G, D and F with the official init, their optimisers and
learning-rate schedules, and the compiled step where `compile` asks for it.

Apart from the step (model.py) because the compiled step (compiled_step.py) is built on the step's pieces:
this module imports both, neither imports it.
"""
from __future__ import annotations

import torch

from baselines.compiled_step import CompiledStep
from baselines.model import TrainState, encoder_channels, linear_decay, make_optimizer
from baselines.networks import build_discriminator, build_generator
from baselines.sampler import PatchSampleF, build_sampler


def create_state(cfg, device: torch.device | str = "cpu", sampler: PatchSampleF | None = None) -> TrainState:
    """Build G, D and F with the official init, in that order, from the current torch RNG state.

    `sampler`: F, not yet built (QS-Attn passes its own, qsattn/state.py); CUT's random sampler if None.

    F's MLPs are created here from the encoder's channel counts rather than lazily at the first batch,
    so that a checkpoint always has the same keys; the result is the same module (see README).
    """
    G = build_generator(cfg).to(device)
    D = build_discriminator(cfg).to(device)
    F = (build_sampler(cfg) if sampler is None else sampler).to(device)
    F.build(encoder_channels(G, cfg.nce_layers, cfg.input_nc), device)
    opts = [make_optimizer(m.parameters(), cfg) for m in (G, D, F)]
    rule = linear_decay(cfg.n_epochs, cfg.n_epochs_decay)
    schedulers = [torch.optim.lr_scheduler.LambdaLR(o, lr_lambda=rule) for o in opts]
    state = TrainState(cfg, G, D, F, *opts, schedulers=schedulers)
    if getattr(cfg, "compile", "off") != "off":
        state.compiled = CompiledStep(state)
    return state
