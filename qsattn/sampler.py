"""QS-Attn's patch sampler F: CUT's (baselines/sampler.py) with query-selected attention on some layers.

QS-Attn (Hu et al., CVPR 2022) changes only the sampler. On the QS layers, the key side (features of
the source image) computes an attention matrix from the raw features, keeps the N rows with the
lowest entropy (the queries whose attention is most peaked, i.e. most distinctive), and routes the
features through those rows. The query side (features of the translated image) reuses the key side's
indices and attention rows unchanged, so gradients flow through the reused attention into the source
features. Other layers keep CUT's random sampling. Every routed/sampled vector then goes through a
two-layer MLP and L2 normalisation (CUT's `mlp_sample`).

Modes (official models/networks_{global,local,local_global}.py, `PatchSampleF.forward`):
  global        A = softmax(f fᵀ) over all HW positions; select by entropy; route A_sel f.
  local         each position attends to its k×k neighbourhood (zero padded); select by entropy;
                route the selected rows over their windows.
  global+local  select by the local entropy, route with the global attention rows.

`local_layout` names how the k×k windows are laid out. The official code views `F.unfold`'s
(B, C·k², L) output as (B, L, k², C) although the channel is the outer index, so its "neighbours" are
mixtures of channels and offsets (`official`, kept bit for bit for reproducing the paper); `corrected`
uses the true windows, whose centre is the position's own feature. In local mode the official code
also gathers the values with a `view` that, at batch 1, transposes patches and channels and only works
when num_patches equals the channel count; `official` keeps that too (and fails the same way).

Wherever a result feeds a discrete choice (the entropy sort) or the official `view`, the same ops run
on the same shapes as in the official code, so that the selection is the official one bit for bit on
any one machine (docs/faithfulness.md has the table, step by step).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from baselines import sampler as cut
from qsattn import qs_chunked as qc
from qsattn.errors import UserError
from qsattn.selection import gather_rows, row_entropy, select_rows

QS_MODES = ("none", "global", "local", "global+local")


# --- global ---------------------------------------------------------------------------------------

def global_attention(f: torch.Tensor) -> torch.Tensor:
    """f (B, HW, C) -> softmax(f fᵀ) (B, HW, HW); raw features, no scaling (official)."""
    return torch.bmm(f, f.transpose(1, 2)).softmax(dim=2)


def global_select(f: torch.Tensor, n: int, selection: str = "entropy"):
    """-> ids (B, n), attention rows (B, n, HW)."""
    attn = global_attention(f)
    ids = select_rows(row_entropy(attn), n, selection)
    return ids, gather_rows(attn, ids)


# --- local ----------------------------------------------------------------------------------------

def local_windows(feat: torch.Tensor, window: int, layout: str) -> torch.Tensor:
    """feat (B, C, H, W) -> the k² neighbours each position attends over, (B, HW, k², C)."""
    B, C = feat.shape[:2]
    unfolded = F.unfold(feat, kernel_size=window, padding=window // 2)  # (B, C·k², L), channel outer
    L = unfolded.shape[2]
    if layout == "official":
        return unfolded.permute(0, 2, 1).reshape(B, L, window * window, C)
    if layout == "corrected":
        return unfolded.reshape(B, C, window * window, L).permute(0, 3, 2, 1)
    raise ValueError(f"unknown local_layout '{layout}' (official | corrected)")


def local_attention(feat: torch.Tensor, window: int, layout: str) -> torch.Tensor:
    """Softmax over each position's k² window of dot products with its own feature: (B, HW, k²).

    The official op sequence (networks_local.py:573-577): bmm of (B·L, k², C) by (B·L, C, 1), softmax
    over dim 1 of the (B·L, k², 1) result. A softmax over the last axis of (B, L, k²) rounds other
    than that (up to 2.4e-7), and at the official init the entropy gaps near the top-N cut-off are
    smaller, so it reorders the selected indices."""
    B, C = feat.shape[:2]
    f = feat.flatten(2).transpose(1, 2)  # (B, HW, C), the official feat_reshape's strides
    L = f.shape[1]
    dots = torch.bmm(local_windows(feat, window, layout).flatten(0, 1), f.reshape(B * L, C, 1))
    return dots.softmax(dim=1).reshape(B, L, -1)


def local_select(feat: torch.Tensor, n: int, window: int, layout: str, selection: str = "entropy"):
    """-> ids (B, n), local attention rows (B, n, k²)."""
    attn = local_attention(feat, window, layout)
    ids = select_rows(row_entropy(attn), n, selection)
    return ids, gather_rows(attn, ids)


def local_values(feat: torch.Tensor, ids: torch.Tensor, window: int, layout: str,
                 num_patches: int | None = None) -> torch.Tensor:
    """The values the selected rows are applied to, (B, num_patches, k², C).

    Official (networks_local.py:585-586): gather (B, n, C·k²), then reinterpret the memory with
    `view(B·num_patches, k², C)` (num_patches: the option, default n). That needs n == num_patches;
    at batch 1 `flatten` does not copy, and the view then also needs n == C, where value [i, j, c]
    is channel i of the selected patch c; at batch > 1 it reads a contiguous copy in memory order."""
    B, C = feat.shape[:2]
    n, kk = ids.shape[1], window * window
    if layout == "corrected":
        return gather_rows(local_windows(feat, window, layout), ids)
    num_patches = n if num_patches is None else num_patches
    unfolded = F.unfold(feat, kernel_size=window, padding=window // 2)
    picked = unfolded[torch.arange(B, device=feat.device)[:, None], :, ids]  # (B, n, C·k²)
    return picked.permute(0, 2, 1).flatten(0, 1).view(B * num_patches, kk, C).view(B, num_patches, kk, C)


def route_local(attn: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """attn (B, n, k²), values (B, n, k², C) -> (B·n, C): the official bmm of (B·n, 1, k²) by
    (B·n, k², C) (networks_local.py:584, 587)."""
    return torch.bmm(attn.flatten(0, 1).unsqueeze(1), values.flatten(0, 1)).flatten(0, 1)


class PatchSampleF(cut.PatchSampleF):
    """CUT's `mlp_sample` projection head with QS-Attn's query selection on `qs_layers`.

    forward(feats, patch_ids=None, attn_mats=None) -> (projected, ids, attns), one entry per layer:
      - key side: call with attn_mats=None; random layers use patch_ids[i] if given (else randperm),
        QS layers compute their own selection.
      - query side: pass the key side's ids and attns back in; they are reused unchanged.
    The other layers, the MLPs and the normalisation are CUT's (baselines/sampler.py).
    """

    def __init__(self, nc: int = 256, num_patches: int = 256, qs_mode: str = "none", qs_layers=(3, 4),
                 selection: str = "entropy", window: int = 7, local_layout: str = "official",
                 init_type: str = "xavier", init_gain: float = 0.02, use_mlp: bool = True,
                 impl: str = "naive", chunk: int = 1024):
        super().__init__(nc, num_patches, init_type, init_gain, use_mlp)
        if qs_mode not in QS_MODES:
            raise ValueError(f"unknown qs_mode '{qs_mode}' ({' | '.join(QS_MODES)})")
        if impl not in ("naive", "chunked"):
            raise ValueError(f"unknown qs_impl '{impl}' (naive | chunked)")
        self.impl, self.chunk = impl, chunk  # chunked: same result, O(N·HW) memory (qsattn/qs_chunked.py)
        self.qs_mode = qs_mode
        self.qs_layers = set(qs_layers) if qs_mode != "none" else set()
        self.selection, self.window, self.local_layout = selection, window, local_layout

    def sample_layer(self, i, feat, patch_ids, attn_mats):
        if i not in self.qs_layers:
            return super().sample_layer(i, feat, patch_ids, attn_mats)
        self._check_positions(i, feat)
        f = feat.flatten(2).transpose(1, 2)  # (B, HW, C)
        ids = patch_ids[i] if attn_mats is not None else None
        attn = attn_mats[i] if attn_mats is not None else None
        return self._query_selected(feat, f, ids, attn)

    def _check_positions(self, i: int, feat: torch.Tensor) -> None:
        """The official local layout views the selected windows as num_patches rows: with fewer positions
        than num_patches that view fails inside the step; say so in one line instead."""
        positions = feat.shape[2] * feat.shape[3]
        if self.qs_mode == "local" and self.local_layout == "official" and positions < self.num_patches:
            raise UserError(f"num_patches={self.num_patches}: QS layer {i} has only {feat.shape[2]}x{feat.shape[3]}"
                            f" = {positions} positions at this image size, and the official local layout needs "
                            f"num_patches of them; use num_patches <= {positions}, a larger crop_size, or "
                            f"local_layout=corrected")

    def _query_selected(self, feat, f, ids, attn):
        if self.impl == "chunked":
            return self._query_selected_chunked(feat, f, ids, attn)
        n, mode = self.num_patches, self.qs_mode
        if attn is None:  # key side: select
            if mode == "global":
                ids, attn = global_select(f, n, self.selection)
            else:
                ids, attn_local = local_select(feat, n, self.window, self.local_layout, self.selection)
                attn = attn_local if mode == "local" else gather_rows(global_attention(f), ids)
        if mode == "local":
            return route_local(attn, local_values(feat, ids, self.window, self.local_layout, n)), ids, attn
        return torch.bmm(attn, f).flatten(0, 1), ids, attn

    def _query_selected_chunked(self, feat, f, ids, attn):
        n, mode, k, layout = self.num_patches, self.qs_mode, self.window, self.local_layout
        if attn is None:
            if mode == "global":
                ids, attn = qc.global_select(f, n, self.selection, self.chunk)
            else:
                ids, attn_local = qc.local_select(feat, n, k, layout, self.selection, self.chunk)
                attn = attn_local if mode == "local" else qc.global_rows(f, ids)
        if mode == "local":
            return route_local(attn, qc.local_values(feat, ids, k, layout, n)), ids, attn
        return torch.bmm(attn, f).flatten(0, 1), ids, attn


def build_sampler(cfg) -> PatchSampleF:
    return PatchSampleF(cfg.netF_nc, cfg.num_patches, cfg.qs_mode, cfg.qs_layers, cfg.qs_selection,
                        cfg.local_window, cfg.local_layout, cfg.init_type, cfg.init_gain,
                        impl=getattr(cfg, "qs_impl", "naive"), chunk=getattr(cfg, "qs_chunk", 1024))
