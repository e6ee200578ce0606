"""CUT's patch sampler F (official models/networks.py `PatchSampleF`, CUT's `mlp_sample`).

At each NCE layer the key side draws random positions, the query side reuses them; every sampled vector
goes through a two-layer MLP and L2 normalisation. QS-Attn replaces the random positions on some layers
by query-selected attention (qsattn/sampler.py subclasses this class and overrides `sample_layer`).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from baselines.networks import init_weights


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    """Official `Normalize(2)`: x / (‖x‖ + 1e-7) over dim 1."""
    return x / (x.pow(2).sum(1, keepdim=True).pow(0.5) + 1e-7)


class PatchSampleF(nn.Module):
    """CUT's `mlp_sample` projection head over random patches.

    forward(feats, patch_ids=None, attn_mats=None) -> (projected, ids, attns), one entry per layer:
    the key side calls it without ids (a fresh randperm per layer), the query side passes the key side's
    ids (and attns) back in. Projected features are (B·N, nc), L2-normalised. The MLPs are created lazily
    from the first batch's channel counts (or `build(channels)` when loading weights), as in the official
    code. `qs_layers`: the layers whose positions the sampler picks from the features itself (none here).
    """

    def __init__(self, nc: int = 256, num_patches: int = 256, init_type: str = "xavier", init_gain: float = 0.02,
                 use_mlp: bool = True):
        super().__init__()
        self.nc, self.num_patches = nc, num_patches
        self.init_type, self.init_gain, self.use_mlp = init_type, init_gain, use_mlp
        self.qs_layers: set[int] = set()
        self.channels: list[int] = []

    def build(self, channels: list[int], device=None) -> None:
        """Create one Linear(C, nc)-ReLU-Linear(nc, nc) per layer (named mlp_0, mlp_1, … as official)."""
        for i, c in enumerate(channels):
            mlp = nn.Sequential(nn.Linear(c, self.nc), nn.ReLU(), nn.Linear(self.nc, self.nc))
            setattr(self, f"mlp_{i}", mlp.to(device))
        init_weights(self, self.init_type, self.init_gain)
        self.channels = list(channels)

    def forward(self, feats, patch_ids=None, attn_mats=None):
        if self.use_mlp and not self.channels:
            self.build([f.shape[1] for f in feats], feats[0].device)
        out, ids_out, attn_out = [], [], []
        for i, feat in enumerate(feats):
            x, ids, attn = self.sample_layer(i, feat, patch_ids, attn_mats)
            if self.use_mlp:
                x = getattr(self, f"mlp_{i}")(x)
            out.append(l2_normalize(x))
            ids_out.append(ids)
            attn_out.append(attn)
        return out, ids_out, attn_out

    def sample_layer(self, i: int, feat: torch.Tensor, patch_ids, attn_mats):
        """Layer i's vectors (B·N, C) before the MLP, their positions and attention (None: random patches)."""
        f = feat.flatten(2).transpose(1, 2)  # (B, HW, C)
        ids = patch_ids[i] if patch_ids is not None else None
        if ids is None:
            ids = torch.randperm(f.shape[1], device=feat.device)[: min(self.num_patches, f.shape[1])]
        return f[:, ids, :].flatten(0, 1), ids, None


def build_sampler(cfg) -> PatchSampleF:
    """CUT's sampler for a config with qs_mode=none; QS-Attn's modes are qsattn.sampler.build_sampler's."""
    if getattr(cfg, "qs_mode", "none") != "none":
        raise ValueError(f"qs_mode={cfg.qs_mode} needs QS-Attn's sampler (qsattn.sampler.build_sampler); "
                         "CUT's samples random patches only")
    return PatchSampleF(cfg.netF_nc, cfg.num_patches, cfg.init_type, cfg.init_gain)
