"""Losses of the CUT family: PatchNCE and the GAN objectives (official models/patchnce.py, networks.GANLoss)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def patch_nce_loss(feat_q: torch.Tensor, feat_k: torch.Tensor, tau: float = 0.07, batch_size: int = 1) -> torch.Tensor:
    """InfoNCE over patches: each query's positive is the key at the same location, its negatives the
    other keys of the same image. Inputs (B·N, D); returns the per-patch loss (B·N,).

    Keys are detached; the negative block's diagonal (the positive again) is filled with −10 so that
    exp(−10/τ) ≈ 0, as in the official code.
    """
    n_total, dim = feat_q.shape
    feat_k = feat_k.detach()
    l_pos = torch.bmm(feat_q.view(n_total, 1, -1), feat_k.view(n_total, -1, 1)).view(n_total, 1)
    q = feat_q.view(batch_size, -1, dim)
    k = feat_k.view(batch_size, -1, dim)
    n = q.shape[1]
    l_neg = torch.bmm(q, k.transpose(2, 1))
    diagonal = torch.eye(n, device=feat_q.device, dtype=torch.bool)[None]
    l_neg = l_neg.masked_fill(diagonal, -10.0).view(-1, n)
    logits = torch.cat([l_pos, l_neg], dim=1) / tau
    return F.cross_entropy(logits, torch.zeros(n_total, dtype=torch.long, device=feat_q.device), reduction="none")


def gan_loss(prediction: torch.Tensor, target_is_real: bool, mode: str = "lsgan") -> torch.Tensor:
    """Scalar GAN loss of a discriminator output against the real (1) or fake (0) label."""
    if mode == "lsgan":
        target = torch.full_like(prediction, 1.0 if target_is_real else 0.0)
        return F.mse_loss(prediction, target)
    if mode == "vanilla":
        target = torch.full_like(prediction, 1.0 if target_is_real else 0.0)
        return F.binary_cross_entropy_with_logits(prediction, target)
    if mode == "nonsaturating":
        bs = prediction.shape[0]
        sign = -1.0 if target_is_real else 1.0
        return F.softplus(sign * prediction).view(bs, -1).mean(dim=1).mean()
    raise ValueError(f"unknown gan_mode '{mode}' (lsgan | vanilla | nonsaturating)")
