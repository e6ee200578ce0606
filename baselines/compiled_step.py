"""`compile`: torch.compile of the training step's three pieces (docs/performance.md, "Faster steps").

Kept apart from baselines/model.py, which stays the readable reference step: this is only how the same
step runs with fewer kernel launches (CUDA graphs with mode=reduce-overhead).
"""
from __future__ import annotations

import logging
import warnings

import torch

from baselines.model import TrainState, autocast, discriminator_loss, generator_loss, step_forward

log = logging.getLogger("baselines.model")


class CompiledStep:
    """torch.compile of the step's three pieces: G forward, D loss, G/F loss (and their backward).

    Shapes must be static: the first batch's shapes are compiled (`dynamic=False`), and a batch of any
    other shape (a last partial batch, a test image) runs the eager step instead, with one warning. A
    compile error also falls back to eager for the rest of the run, with a warning. Random draws stay
    outside the compiled code (inductor would draw from its own RNG stream, and a CUDA graph would
    replay the same numbers): the random layers' patch indices are drawn before the step, in the order
    the eager step draws them, so both paths see the same patches. With `qs_selection=random` (random
    draws inside the sampler) the step stays eager. mode=reduce-overhead adds CUDA graphs on a GPU (on
    the CPU torch skips them and it is the default mode)."""

    def __init__(self, state: TrainState):
        cfg = state.cfg
        self.state, self.mode = state, cfg.compile
        self.shapes: tuple | None = None
        self.disabled = ""
        self._warned: set[str] = set()
        self._sizes: dict[tuple, list[int]] = {}
        if state.F.qs_layers and cfg.qs_selection == "random":
            self._disable("qs_selection=random draws inside the sampler; compile is not used")
        self.tried = False
        self.failed: dict[str, str] = {}   # piece -> error, for pieces that run eager
        kw = dict(mode=None if self.mode == "default" else self.mode, dynamic=False, backend=COMPILE_BACKEND)
        self.forward_G = self._guarded("G forward", torch.compile(step_forward, **kw), step_forward)
        self.loss_D = self._guarded("D loss", torch.compile(discriminator_loss, **kw), discriminator_loss)
        self.loss_G = self._guarded("G/F loss", torch.compile(generator_loss, **kw), generator_loss)

    def _warn(self, message: str) -> None:
        if message not in self._warned:
            self._warned.add(message)
            warnings.warn(f"compile={self.mode}: {message}", RuntimeWarning, stacklevel=3)
            log.warning("compile=%s: %s", self.mode, message)

    def _disable(self, reason: str) -> None:
        self.disabled = reason
        self._warn(reason + "; running the eager step from now on")

    def _guarded(self, name, compiled, eager):
        def call(*args):
            if not self.disabled and name not in self.failed:
                return compiled(*args)
            return eager(*args)
        return call

    def accepts(self, real_A: torch.Tensor, real_B: torch.Tensor) -> bool:
        """True when this batch has the compiled shapes (the first batch's); else eager, one warning."""
        if self.disabled:
            return False
        shapes = (tuple(real_A.shape), tuple(real_B.shape), real_A.dtype, real_A.device)
        if self.shapes is None:
            self.shapes = shapes
        if shapes != self.shapes:
            self._warn(f"batch of shape {tuple(real_A.shape)} differs from the compiled {self.shapes[0]}: "
                       "that step runs eager")
            return False
        return True

    def try_compiled(self, real_A, real_B, flipped, with_keys, ids, ids_idt) -> None:
        """Compile each piece, forward and backward, on the first batch before the real step, so that
        a compiler error (raised at the first forward or, for the backward, at the first backward)
        changes nothing: the failing piece runs eager from then on. Gradients are dropped and module
        buffers (batch-norm statistics) restored afterwards; nothing random is drawn."""
        self.tried = True
        state, cfg = self.state, self.state.cfg
        buffers = {n: {k: v.clone() for k, v in m.named_buffers()} for n, m in state.modules().items()}
        amp = autocast(cfg, real_A.device)

        def attempt(name, run):
            try:
                run()
            except Exception as e:  # noqa: BLE001 -- any compiler failure: fall back, visibly
                self.failed[name] = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}"
                self._warn(f"the {name} piece failed to compile or run ({self.failed[name]}); it runs eager")

        def fwd():
            with amp:
                fake, idt, keys = self.forward_G(state, real_A, real_B, flipped, with_keys)
            loss = fake.float().sum() + (idt.float().sum() if idt is not None else 0)
            for f in [f for side in (keys or ()) for f in (side or ())]:
                loss = loss + f.float().sum()  # the features' backward too (key reuse)
            loss.backward()
        attempt("G forward", fwd)
        with torch.no_grad(), amp:
            fake_B, idt_B, keys = step_forward(state, real_A, real_B, flipped, with_keys)

        def leaf(t):
            return t.detach().requires_grad_(True) if t is not None else None
        fake_B, idt_B = leaf(fake_B), leaf(idt_B)
        if keys is not None:
            keys = tuple([leaf(f) for f in side] if side is not None else None for side in keys)
        if cfg.lambda_GAN > 0:
            state.D.requires_grad_(True)

            def d():
                with amp:
                    loss = self.loss_D(state, fake_B, real_B)[0]
                loss.backward()
            attempt("D loss", d)
        state.D.requires_grad_(False)

        def g():
            with amp:
                loss = self.loss_G(state, real_A, real_B, fake_B, idt_B, flipped, ids, ids_idt, keys)["G"]
            loss.backward()
        attempt("G/F loss", g)
        for opt in state.optimizers().values():
            opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            for n, m in state.modules().items():
                for k, v in m.named_buffers():
                    v.copy_(buffers[n][k])

    def begin_step(self) -> None:
        if self.mode == "reduce-overhead" and hasattr(torch.compiler, "cudagraph_mark_step_begin"):
            torch.compiler.cudagraph_mark_step_begin()

    def layer_sizes(self, x: torch.Tensor) -> list[int]:
        """H·W of each NCE layer for inputs shaped like x (one no-grad encoder pass per new shape)."""
        key = tuple(x.shape[1:])
        if key not in self._sizes:
            G, cfg = self.state.G, self.state.cfg
            was_training = G.training
            G.eval()  # no batch-norm statistics updated by this dry run
            with torch.no_grad():
                feats = G.encode(torch.zeros((1, *key), device=x.device, dtype=x.dtype), cfg.nce_layers)
            G.train(was_training)
            self._sizes[key] = [f.shape[2] * f.shape[3] for f in feats]
        return self._sizes[key]

    def draw_patch_ids(self, real_A: torch.Tensor):
        """The random layers' indices for the NCE term (and its identity term), as PatchSampleF draws them."""
        cfg, F = self.state.cfg, self.state.F
        if cfg.lambda_NCE <= 0:
            return None, None

        def draw():
            return [None if i in F.qs_layers else torch.randperm(hw, device=real_A.device)[:min(F.num_patches, hw)]
                    for i, hw in enumerate(self.layer_sizes(real_A))]
        ids = draw()
        return ids, (draw() if cfg.nce_idt else None)


# Which torch.compile backend `compile` uses; tests on a CPU without time for inductor set "aot_eager".
COMPILE_BACKEND = "inductor"
