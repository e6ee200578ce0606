"""Float32 error bounds: how far any float32 evaluation of the official formula may be from the exact value.

Used where numbers of another machine are compared (the parity fixtures in tests/, made on one CPU)
and where only rounding is claimed (`qsattn parity` on the chunked path on CUDA). Another CPU (another
ISA, another BLAS kernel, FMA or not) sums in another order and uses another exp/log, so its float32
results differ by rounding, and near-tied entropies may sort differently. These helpers compute, in
float64 from the same float32 inputs, the exact value and a bound on how far ANY float32 evaluation
of the official formula may be from it; two machines then differ by at most twice the bound.

Derivation (u = 2^-24, the unit roundoff of float32; γ_n = n·u / (1 − n·u)):

1. Logits s_j = Σ_c k_jc·q_c over C terms: in any summation order, with or without FMA,
   |ŝ_j − s_j| ≤ γ_C · Σ_c |k_jc·q_c| =: σ_j (Higham, Accuracy and Stability of Numerical
   Algorithms, 2nd ed., Thm 3.1 / eq. 3.5).
2. Softmax a_j = exp(d_j) / Σ_l exp(d_l), d_j = s_j − max s. The max is an exact copy, and the
   error of ŝ at the max position shifts every d_l alike and cancels in the ratio. The shift
   rounds once (u·|d_j|), exp is within 1 ulp (Sleef expf_u10 used by ATen's vectorised kernels,
   glibc expf: relative ≤ 2u), so log ê_j is within λ_j = σ_j + u·|d_j| + 2u of the exact d_j.
   The sum of K terms adds γ_K, the division (or multiply by a reciprocal) 2u:
   |log â_j − log a_j| ≤ ℓ_j = λ_j + max_l λ_l + γ_K + 2u,  so  |â_j − a_j| ≤ a_j·expm1(ℓ_j) + τ,
   where τ = 2^-148 (two denormal spacings) covers results that underflow into denormals.
3. Entropy H = Σ_j t(a_j), t(x) = −x·log x (official: log 0 → 0 contribution). With â_j in
   [lo_j, hi_j] from 2., |t(â_j) − t(a_j)| ≤ max over that interval (t is concave with its
   maximum at 1/e, so the extremes are at lo, hi or 1/e); log and the product add 3u·t
   (logf within 1 ulp, one rounding), the sum of K terms γ_K·Σ t.
"""
from __future__ import annotations

import math

import torch

U = 2.0 ** -24
TINY = 2.0 ** -148


def gamma(n: int) -> float:
    return n * U / (1 - n * U)


def softmax_bound(keys: torch.Tensor, q: torch.Tensor):
    """keys (R, K, C), q (R, C) float32 -> exact a (R, K) float64 and the bound of step 2 on |â − a|."""
    terms = keys.double() * q.double()[:, None, :]
    s = terms.sum(-1)
    sigma = gamma(keys.shape[-1]) * terms.abs().sum(-1)
    d = s - s.max(-1, keepdim=True).values
    lam = sigma + U * d.abs() + 2 * U
    ell = lam + lam.max(-1, keepdim=True).values + gamma(keys.shape[1]) + 2 * U
    a = torch.softmax(s, dim=-1)
    return a, a * torch.expm1(ell) + TINY


def _t(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x > 0, -x * torch.log(x.clamp_min(1e-300)), torch.zeros_like(x))


def entropy_bound(a: torch.Tensor, da: torch.Tensor):
    """Exact a (R, K), its bound da -> exact entropy H (R,) and the bound of step 3 on |Ĥ − H|."""
    lo, hi = (a - da).clamp_min(0), (a + da).clamp_max(1)
    t = _t(a)
    peak = torch.where((lo < 1 / math.e) & (hi > 1 / math.e), torch.full_like(a, 1 / math.e), a)
    t_max = torch.maximum(torch.maximum(_t(lo), _t(hi)), _t(peak))
    dt = torch.maximum(torch.maximum((_t(lo) - t).abs(), (_t(hi) - t).abs()), (_t(peak) - t).abs())
    K = a.shape[-1]
    return t.sum(-1), (dt + 3 * U * t_max).sum(-1) + gamma(K) * t_max.sum(-1)


def local_rows(feat: torch.Tensor, window: int = 7, layout: str = "official"):
    """The official local attention's operands, per position: keys (B·HW, k², C), q (B·HW, C)."""
    from qsattn.sampler import local_windows

    return local_windows(feat, window, layout).flatten(0, 1), feat.flatten(2).transpose(1, 2).flatten(0, 1)


def global_rows(feat: torch.Tensor):
    """The global attention's operands, per position: keys (B·HW, HW, C), q (B·HW, C)."""
    f = feat.flatten(2).transpose(1, 2)  # (B, HW, C)
    B, L, C = f.shape
    return f[:, None].expand(B, L, L, C).flatten(0, 1), f.flatten(0, 1)


def check_selection(ids: torch.Tensor, H: torch.Tensor, dH: torch.Tensor) -> int:
    """Assert that `ids` (n,) is a valid "n lowest entropies, lowest first" of exact entropies H (L,)
    for some float32 evaluation within ±dH: every selected row could be below every unselected one,
    and every pair in the list could be in that order. Returns how many ranks the bound decides
    (their row is the same for every valid evaluation), so a test can show it is not vacuous."""
    lo, hi = H - dH, H + dH
    assert ids.unique().numel() == ids.numel(), "repeated indices"
    rest = torch.ones_like(H, dtype=torch.bool)
    rest[ids] = False
    if rest.any():
        assert lo[ids].max() <= hi[rest].min(), "a row outside the selection is surely below a selected one"
    sel_lo, sel_hi = lo[ids], hi[ids]
    later_surely_lower = sel_hi[None, :] < sel_lo[:, None]          # [r, r']: row r' surely below row r
    assert not torch.triu(later_surely_lower, 1).any(), "two selected rows are surely in the other order"
    others_overlap = (lo[None, :] <= hi[ids][:, None]) & (hi[None, :] >= lo[ids][:, None])
    return int((others_overlap.sum(1) == 1).sum())
