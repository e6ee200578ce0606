"""The CUT-family training step: one D update, then one G+F update (official qs_model.py / cut_model.py).

`TrainState` holds the networks, optimisers and schedulers; `train_step(state, real_A, real_B)` is a
plain function of the batch and that state. Nothing here knows about files, MLflow or SLURM.

Speed options (config "speed" section) change how the step runs, not what it computes, unless they are
labelled "changes numerics": `key_reuse` takes the key-side NCE features from G's forward pass,
`adam_impl` picks torch's Adam kernels, `compile` runs the three pieces of
the step (G forward, D loss, G/F loss) through torch.compile, `amp` autocasts them to bfloat16, and
`flush_denormal` runs the G/F backward with subnormals flushed (baselines/denormals.py), and
`configure_backends` sets the process-wide cuDNN / TF32 switches. The compiled variant of the step lives
in baselines/compiled_step.py; baselines/state.py builds the state (with the compiled step where asked).
"""
from __future__ import annotations

import contextlib
import logging
import warnings
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from baselines.denormals import flushed
from baselines.losses import gan_loss, patch_nce_loss
from baselines.sampler import PatchSampleF

log = logging.getLogger("baselines.model")


@dataclass
class TrainState:
    cfg: object
    G: nn.Module
    D: nn.Module
    F: PatchSampleF
    opt_G: torch.optim.Optimizer
    opt_D: torch.optim.Optimizer
    opt_F: torch.optim.Optimizer
    schedulers: list = field(default_factory=list)
    step: int = 0    # optimisation steps done
    epoch: int = 1   # the epoch in progress (1-based, as official)
    compiled: object = None  # a baselines.compiled_step.CompiledStep with cfg.compile != off
    exact_keys: dict = field(default_factory=dict)  # input shape -> batched_keys_exact (key_reuse=auto)

    def modules(self) -> dict[str, nn.Module]:
        return {"G": self.G, "D": self.D, "F": self.F}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"G": self.opt_G, "D": self.opt_D, "F": self.opt_F}


def linear_decay(n_epochs: int, n_epochs_decay: int, epoch_count: int = 1):
    """Official 'linear' policy: constant for n_epochs, then linearly towards zero over n_epochs_decay."""
    def factor(epoch: int) -> float:
        return 1.0 - max(0, epoch + epoch_count - n_epochs) / float(n_epochs_decay + 1)
    return factor


def encoder_channels(G: nn.Module, layers, input_nc: int) -> list[int]:
    """Channel count of each NCE layer, from a dry run on a small input (F's MLP input sizes)."""
    device = next(G.parameters()).device
    with torch.no_grad():
        return [f.shape[1] for f in G.encode(torch.zeros(1, input_nc, 32, 32, device=device), layers)]


def adam_flags(cfg) -> dict:
    """torch.optim.Adam's implementation flags for cfg.adam_impl (plain | foreach | fused)."""
    impl = getattr(cfg, "adam_impl", "plain")
    return {"foreach": impl == "foreach", "fused": impl == "fused"}


def make_optimizer(params, cfg) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), **adam_flags(cfg))


def configure_backends(cfg, device: torch.device | str) -> list[str]:
    """Process-wide switches of the speed options; returns notes on what was overridden.

    cudnn_benchmark is forced off under `deterministic` (benchmarking may pick a non-deterministic
    algorithm). matmul_tf32 changes numerics; cuDNN convolutions keep torch's default (TF32 allowed on
    Ampere and later, as in the official code)."""
    notes = []
    benchmark = bool(cfg.cudnn_benchmark)
    if benchmark and cfg.deterministic:
        benchmark = False
        notes.append("cudnn_benchmark=true ignored: deterministic=true needs cuDNN's fixed algorithm choice")
    torch.backends.cudnn.benchmark = benchmark
    torch.set_float32_matmul_precision("high" if cfg.matmul_tf32 else "highest")
    for note in notes:
        log.warning(note)
    return notes


def autocast(cfg, device: torch.device):
    """bfloat16 autocast with amp=bf16 (changes numerics); a no-op context otherwise."""
    if getattr(cfg, "amp", "off") == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def nce_loss(G, F, src, tgt, cfg, patch_ids=None, flipped: bool = False, feat_k=None):
    """PatchNCE between G's encoder features of src (keys) and tgt (queries), averaged over layers.

    Returns (loss, per-layer losses, key-side ids, key-side attention). With `patch_ids`, the random
    layers use those indices instead of drawing new ones (parity tests, shared samples). With `feat_k`
    (key reuse: src's features from the generator's forward pass), src is not encoded again.
    """
    feat_q = G.encode(tgt, cfg.nce_layers)
    if flipped:
        feat_q = [torch.flip(f, [3]) for f in feat_q]
    if feat_k is None:
        feat_k = G.encode(src, cfg.nce_layers)
    pool_k, ids, attns = F(feat_k, patch_ids=patch_ids)
    pool_q, _, _ = F(feat_q, patch_ids=ids, attn_mats=attns)
    # official order (qs_model.py / cut_model.py calculate_NCE_loss): weight each patch, then the mean,
    # then 0.0 + layer 0 + layer 1 + ..., divided by the number of layers
    per_layer = [(patch_nce_loss(q, k, cfg.nce_T, cfg.batch_size) * cfg.lambda_NCE).mean()
                 for q, k in zip(pool_q, pool_k)]
    return sum(per_layer, 0.0) / len(per_layer), per_layer, ids, attns


def reuses_keys(state: TrainState, real_A, flipped: bool = False) -> bool:
    """Key reuse (cfg.key_reuse, docs/performance.md): take the key-side NCE features of real_A and real_B
    from the generator forward's own activations at the NCE layers (the same layers with the same weights
    on the same images) instead of a second encoder pass. Never on a flipped FastCUT step, whose forward
    saw the flipped images. `auto` reuses only where the step stays bit for bit the same: CUT's keys
    carry no gradient (they are detached) and the batched forward's features equal the per-image pass's
    (batched_keys_exact). QS-Attn's keys do carry gradients, through the reused attention rows, which
    reuse sums in another order: `always` (rounding)."""
    cfg = state.cfg
    if cfg.key_reuse == "never" or cfg.lambda_NCE <= 0 or flipped:
        return False
    if cfg.key_reuse == "always":
        return True
    if state.F.qs_layers or cfg.normG == "batch":
        return False
    return batched_keys_exact(state, real_A)


def batched_keys_exact(state: TrainState, real_A) -> bool:
    """Whether G's forward on the step's batch gives each image's NCE-layer features bit for bit as a
    pass on that image alone. Not at every size: torch's CPU convolution runs a 3×3 conv on one small
    image (≤ 20480 values) with its native kernel but on two images with oneDNN's (ATen's use_mkldnn
    rule), and cuDNN may choose by batch size. Kernels depend on shapes, not values, so this is probed
    once per input shape on random images (own generator: the run's RNG streams are untouched)."""
    cfg = state.cfg
    if not cfg.nce_idt:  # the forward's batch is real_A alone, as the key pass's
        return True
    shape = (tuple(real_A.shape), real_A.dtype, str(real_A.device), getattr(cfg, "amp", "off"))
    if shape not in state.exact_keys:
        n = real_A.shape[0]
        g = torch.Generator().manual_seed(0)
        x = (torch.rand((2 * n, *real_A.shape[1:]), generator=g) * 2 - 1).to(real_A.device, real_A.dtype)
        with torch.no_grad(), autocast(cfg, real_A.device):
            _, feats = state.G(x, cfg.nce_layers)
            alone = [state.G.encode(x[:n], cfg.nce_layers), state.G.encode(x[n:], cfg.nce_layers)]
        state.exact_keys[shape] = all(torch.equal(f[:n], a) and torch.equal(f[n:], b)
                                      for f, a, b in zip(feats, *alone))
    return state.exact_keys[shape]


def _generator_pass(state: TrainState, real_A, real_B, flipped: bool, with_keys: bool):
    real = torch.cat([real_A, real_B]) if state.cfg.nce_idt else real_A
    if flipped:
        real = torch.flip(real, [3])
    n, keys = real_A.shape[0], None
    if with_keys:
        fake, feats = state.G(real, state.cfg.nce_layers)
        keys = ([f[:n] for f in feats], [f[n:] for f in feats] if state.cfg.nce_idt else None)
    else:
        fake = state.G(real)
    return fake[:n], (fake[n:] if state.cfg.nce_idt else None), keys


def generator_forward(state: TrainState, real_A, real_B, flipped: bool = False):
    """fake = G(A) (and idt = G(B) with nce_idt), in one batched call as the official code does."""
    return _generator_pass(state, real_A, real_B, flipped, with_keys=False)[:2]


def step_forward(state: TrainState, real_A, real_B, flipped: bool = False, with_keys: bool = False):
    """The training step's generator pass: (fake_B, idt_B, keys). With keys (reuses_keys), keys =
    (real_A's, real_B's) features at the NCE layers from this same pass (real_B's None without
    nce_idt); else None."""
    return _generator_pass(state, real_A, real_B, flipped, with_keys)


def discriminator_loss(state: TrainState, fake_B, real_B):
    cfg = state.cfg
    loss_fake = gan_loss(state.D(fake_B.detach()), False, cfg.gan_mode)
    loss_real = gan_loss(state.D(real_B), True, cfg.gan_mode)
    return (loss_fake + loss_real) * 0.5, loss_fake, loss_real


def generator_loss(state: TrainState, real_A, real_B, fake_B, idt_B, flipped=False, patch_ids=None,
                   patch_ids_idt=None, keys=None) -> dict[str, torch.Tensor]:
    """G's losses; `keys` from step_forward (key reuse) or None (real_A and real_B encoded here)."""
    cfg, zero = state.cfg, fake_B.new_zeros(())
    keys_A, keys_B = keys if keys is not None else (None, None)
    g_gan = gan_loss(state.D(fake_B), True, cfg.gan_mode) * cfg.lambda_GAN if cfg.lambda_GAN > 0 else zero
    nce = (nce_loss(state.G, state.F, real_A, fake_B, cfg, patch_ids, flipped, keys_A)[0]
           if cfg.lambda_NCE > 0 else zero)
    losses = {"G_GAN": g_gan, "NCE": nce}
    if cfg.nce_idt and cfg.lambda_NCE > 0:
        # fake_B and idt_B are encoded in separate calls: one batched call is not bitwise the same
        losses["NCE_Y"] = nce_loss(state.G, state.F, real_B, idt_B, cfg, patch_ids_idt, flipped, keys_B)[0]
        nce_both = (nce + losses["NCE_Y"]) * 0.5
    else:
        nce_both = nce
    losses["G"] = g_gan + nce_both
    return losses


def draw_flip(cfg) -> bool:
    """FastCUT's flip-equivariance coin (official: np.random.random() < 0.5); drawn on the CPU, no sync."""
    return bool(cfg.flip_equivariance and torch.rand(()).item() < 0.5)


def train_step(state: TrainState, real_A: torch.Tensor, real_B: torch.Tensor) -> dict[str, torch.Tensor]:
    """One optimisation step. Returns the losses as detached device tensors (read them rarely: each
    `.item()` is a host sync)."""
    cfg = state.cfg
    flipped = draw_flip(cfg)
    with_keys = reuses_keys(state, real_A, flipped)
    fast = state.compiled if state.compiled is not None and state.compiled.accepts(real_A, real_B) else None
    amp = autocast(cfg, real_A.device)
    if fast is not None:
        # the random layers' patches, drawn before the step in the order the eager step draws them
        ids, ids_idt = fast.draw_patch_ids(real_A)
        if not fast.tried:
            fast.try_compiled(real_A, real_B, flipped, with_keys, ids, ids_idt)
        fast.begin_step()
        forward_G, loss_D_fn = fast.forward_G, fast.loss_D

        def loss_G_fn(*args, keys):
            return fast.loss_G(*args, ids, ids_idt, keys)
    else:
        forward_G, loss_D_fn = step_forward, discriminator_loss

        def loss_G_fn(*args, keys):
            return generator_loss(*args, None, None, keys)

    with amp:
        fake_B, idt_B, keys = forward_G(state, real_A, real_B, flipped, with_keys)
    state.D.requires_grad_(True)
    state.opt_D.zero_grad(set_to_none=True)
    if cfg.lambda_GAN > 0:
        with amp:
            # detached out here: inside a compiled region the detach would still tie the backward to G's graph
            loss_D, loss_D_fake, loss_D_real = loss_D_fn(state, fake_B.detach(), real_B)
        loss_D.backward()
        state.opt_D.step()
    else:  # no adversarial term: D is not used at all (official: loss_D = 0)
        loss_D = loss_D_fake = loss_D_real = fake_B.new_zeros(())

    state.D.requires_grad_(False)
    state.opt_G.zero_grad(set_to_none=True)
    state.opt_F.zero_grad(set_to_none=True)
    with amp:
        losses = loss_G_fn(state, real_A, real_B, fake_B, idt_B, flipped, keys=keys)
    with flushed(getattr(cfg, "flush_denormal", False), real_A.device):
        losses["G"].backward()
    state.opt_G.step()
    state.opt_F.step()
    state.step += 1
    losses.update(D=loss_D, D_fake=loss_D_fake, D_real=loss_D_real)
    # clone under CUDA graphs: their outputs live in buffers that the next step's replay overwrites
    return {k: (v.detach().clone() if fast is not None else v.detach()) for k, v in losses.items()}


def end_epoch(state: TrainState) -> None:
    """Official `update_learning_rate()` at the end of each epoch."""
    import warnings

    with warnings.catch_warnings():  # D's optimiser never steps when lambda_GAN is 0: torch's warning is noise
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step()` before")
        for s in state.schedulers:
            s.step()
    state.epoch += 1
