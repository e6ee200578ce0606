"""The discrete step QS-Attn shares between its naive and chunked paths: entropy of attention rows,
the N rows it keeps, and gathering them (official ops and shapes: docs/faithfulness.md)."""
from __future__ import annotations

import torch


def row_entropy(attn: torch.Tensor) -> torch.Tensor:
    """Σ −a log a over the last axis; entries whose log is −inf count as 0 (official formula)."""
    neg_log = -torch.log(attn)
    neg_log = torch.where(torch.isinf(neg_log), torch.zeros_like(neg_log), neg_log)
    return (attn * neg_log).sum(-1)


def select_rows(entropy: torch.Tensor, n: int, selection: str) -> torch.Tensor:
    """(B, L) -> (B, n) row indices: lowest entropy first, or random rows (the ablation)."""
    if selection == "entropy":
        return torch.sort(entropy, dim=1).indices[:, :n]
    if selection == "random":
        B, L = entropy.shape
        return torch.stack([torch.randperm(L, device=entropy.device)[:n] for _ in range(B)])
    raise ValueError(f"unknown qs_selection '{selection}' (entropy | random)")


def gather_rows(x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """x (B, L, ...), ids (B, N) -> (B, N, ...)."""
    return x[torch.arange(x.shape[0], device=x.device)[:, None], ids]
