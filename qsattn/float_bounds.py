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
    a = torch.softmax(s, dim=-1)
    return a, _softmax_error(s, a, gamma(keys.shape[-1]) * terms.abs().sum(-1), -1)


def _softmax_error(s: torch.Tensor, a: torch.Tensor, sigma, dim: int) -> torch.Tensor:
    """Step 2: the bound on |â − a| of a softmax over `dim` of logits s known to within sigma."""
    d = s - s.amax(dim, keepdim=True)
    lam = sigma + U * d.abs() + 2 * U
    ell = lam + lam.amax(dim, keepdim=True) + gamma(s.shape[dim]) + 2 * U
    return a * torch.expm1(ell) + TINY


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


# --- first-order bounds of whole computations (networks, losses) -------------------------------------
#
# A float32 evaluation of a composition of ops y_i = op_i(...) rounds each op's output: ŷ_i = y_i + ε_i
# with |ε_i| ≤ r_i, the op's rounding bound below (for exact float32 inputs; errors of the inputs are
# the earlier ops' and propagate through the graph). To first order in u, a scalar φ of the result then
# moves by Σ_i ∂φ/∂y_i · ε_i, so |φ̂ − φ| ≤ Σ_i |∂φ/∂y_i| · r_i: one float64 forward that records every
# op (a zero perturbation z_i added to its output, r_i beside it) and one backward for ∂φ/∂z_i. Two
# machines that both evaluate the same op sequence then differ in φ by at most twice that; for tensors,
# φ = Σ sign(ŷ_a − ŷ_b)·y bounds the L1 distance Σ|ŷ_a − ŷ_b| the same way. Terms of order u² are
# dropped (relative K·u ≈ 1e-5 of the bound here). Op bounds (Higham, 2nd ed.: Thm 3.1 for sums and
# dot products in any order, with or without FMA; libm functions within 2 ulp ≤ 4u·|y|):
#   elementwise + − × ÷: one rounding u|y|, plus the float32 rounding of a Python-float operand;
#   sum / mean over K terms, conv / linear / (b)mm with fan-in K (direct or GEMM summation, as on CPU):
#     γ_K · (the same op on |operands|); instance norm, softmax, cross entropy, MSE: derived at their rules.

def _abs_args(args):
    return [a.abs() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args]


def _arg(args, kwargs, i, name, default=None):
    return args[i] if len(args) > i else kwargs.get(name, default)


_ADDITIVE = ("add", "__add__", "__radd__", "sub", "__sub__", "__rsub__")
_MULTIPLICATIVE = ("mul", "__mul__", "__rmul__", "div", "__truediv__", "__rtruediv__")


def _elementwise(out, args, kwargs, name):
    r = U * out.abs()
    scalars = [a for a in args if isinstance(a, float)]
    if name in _ADDITIVE:
        return r + sum(U * abs(s) for s in scalars)          # c rounds to float32 by at most u|c|
    return r + (U * out.abs() if scalars else 0)              # × or ÷ by a rounded c: relative u more


def _reduction(out, args, kwargs, name):
    K = max(1, args[0].numel() // max(out.numel(), 1))
    r = gamma(K) * getattr(torch, name)(args[0].abs(), *args[1:], **kwargs)
    return r + (U * out.abs() if name == "mean" else 0)       # mean: one more rounding for ÷K


def _contraction(out, args, kwargs, name):
    a, w = args[0], args[1]
    if name in ("conv2d", "conv_transpose2d"):
        groups = _arg(args, kwargs, 6, "groups", 1)
        fan = w[0].numel() if name == "conv2d" else (w.shape[0] // groups) * w[0, 0].numel()
    else:
        fan = w.shape[-1] if name == "linear" else a.shape[-1]
    bias = _arg(args, kwargs, 2, "bias") if name in ("conv2d", "conv_transpose2d", "linear") else None
    fn = getattr(torch.nn.functional, name) if name in ("conv2d", "conv_transpose2d", "linear") else getattr(torch, name)
    return gamma(fan + (bias is not None)) * fn(*_abs_args(args), **kwargs)


def _instance_norm(out, args, kwargs, name):
    """y = (x − μ)·s, s = 1/√(v + eps), per sample and channel over K = H·W. μ: γ_K·mean|x|. v by any
    algorithm (two-pass, Welford or mean(x²) − μ², the worst): γ_{2K+6}·(mean x² + μ²) + 2|μ|·e_μ.
    s: half v's relative error, plus the eps add and a 2-ulp rsqrt. The output, as x·s + (−μ·s) with or
    without FMA: s·(e_μ + 2u(|x| + |μ|)) + |y|·(e_s + 2u)."""
    x = args[0]
    if _arg(args, kwargs, 3, "weight") is not None or not _arg(args, kwargs, 5, "use_input_stats", True):
        raise NotImplementedError("first-order bound of instance_norm: only affine=False with input statistics")
    eps = _arg(args, kwargs, 7, "eps", 1e-5)
    dims = tuple(range(2, x.dim()))
    K = x[0, 0].numel()
    mu, v = x.mean(dims, keepdim=True), x.var(dims, unbiased=False, keepdim=True)
    e_mu = gamma(K) * x.abs().mean(dims, keepdim=True)
    e_v = gamma(2 * K + 6) * ((x * x).mean(dims, keepdim=True) + mu * mu) + 2 * mu.abs() * e_mu
    s = (v + eps).rsqrt()
    e_s = 0.5 * e_v / (v + eps) + U + 4 * U
    return s * (e_mu + 2 * U * (x.abs() + mu.abs())) + out.abs() * (e_s + 2 * U)


def _softmax(out, args, kwargs, name):
    """Step 2 of the module docstring with exact logits (their errors are the earlier ops')."""
    return _softmax_error(args[0], out.abs(), 0.0, _arg(args, kwargs, 1, "dim"))


def _cross_entropy(out, args, kwargs, name):
    """CE = m + log Σ exp(l − m) − l_t per row (reduction none): the shifts u|l − m|, exp 2u relative
    (weighted by the softmax), the sum γ_K, log 2u·log s, the two adds u|lse| and u|CE|."""
    logits = args[0]
    if _arg(args, kwargs, 5, "reduction", "mean") != "none" or logits.dim() != 2:
        raise NotImplementedError("first-order bound of cross_entropy: (N, K) logits, reduction='none' only")
    m = logits.amax(1, keepdim=True)
    d = logits - m
    a = torch.softmax(logits, 1)
    log_s = torch.logsumexp(d, 1)
    lse = m[:, 0] + log_s
    return ((a * (U * d.abs() + 2 * U)).sum(1) + gamma(logits.shape[1]) + 2 * U + 2 * U * log_s
            + U * lse.abs() + U * out.abs())


def _mse(out, args, kwargs, name):
    """mean((x − t)²): the difference u, the square 2u, the mean γ_N and its division u."""
    if _arg(args, kwargs, 4, "reduction", "mean") != "mean":
        raise NotImplementedError("first-order bound of mse_loss: reduction='mean' only")
    sq = (args[0] - args[1]) ** 2
    return gamma(sq.numel() + 4) * sq.mean()


_RULES = {}
for _names, _rule in (
        (_ADDITIVE + _MULTIPLICATIVE, _elementwise),
        (("sum", "mean"), _reduction),
        (("conv2d", "conv_transpose2d", "linear", "bmm", "mm", "matmul"), _contraction),
        (("instance_norm",), _instance_norm), (("softmax",), _softmax), (("cross_entropy",), _cross_entropy),
        (("mse_loss",), _mse)):
    for _n in _names:
        _RULES[_n] = _rule
_LIBM = ("tanh", "exp", "log", "sqrt", "rsqrt", "sigmoid", "pow", "__pow__")   # within 2 ulp: 4u|y|
_LEAKY = ("leaky_relu",)                                                        # x·slope on x < 0: u|y|
# Ops that only move, select or compare values (or make constants): no rounding.
_EXACT = {"__get__", "__getitem__", "view", "reshape", "flatten", "unflatten", "permute", "transpose", "t",
          "unsqueeze", "squeeze", "expand", "expand_as", "contiguous", "clone", "detach", "to", "double", "float",
          "cat", "stack", "pad", "unfold", "relu", "relu_", "masked_fill", "where", "gather", "index_select",
          "narrow", "select", "split", "chunk", "flip", "repeat", "max", "amax", "min", "amin", "sort", "topk",
          "argsort", "eye", "zeros", "ones", "full", "zeros_like", "ones_like", "full_like", "new_zeros", "new_full",
          "__neg__", "neg", "abs"}


class FirstOrderBound(torch.overrides.TorchFunctionMode):
    """Run a float64 computation inside `with FirstOrderBound() as tape:`; then `tape.bound(phi)` is the
    first-order bound on |φ̂ − φ| of any float32 evaluation of the same op sequence (see above). An op
    without a rule raises, so that no rounding is left out silently."""

    def __init__(self):
        super().__init__()
        self.taps: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = getattr(func, "__name__", str(func))
        if not isinstance(out, torch.Tensor) or not out.is_floating_point() or name in _EXACT:
            return out
        if out.dtype != torch.float64:
            raise TypeError(f"FirstOrderBound needs a float64 computation; {name} returned {out.dtype}")
        with torch.no_grad():
            if name in _LIBM:
                r = 4 * U * out.abs()
            elif name in _LEAKY:
                r = U * out.abs()
            elif name in _RULES:
                r = _RULES[name](out.detach(), [a.detach() if isinstance(a, torch.Tensor) else a for a in args],
                                 kwargs, name)
            else:
                raise NotImplementedError(f"FirstOrderBound: no float32 rounding rule for '{name}'")
            r = torch.nan_to_num(torch.as_tensor(r, dtype=out.dtype).expand(out.shape), posinf=math.inf)
        z = torch.zeros_like(out, requires_grad=True)
        self.taps.append((z, r))
        return out + z

    def bound(self, phi: torch.Tensor, lam: float | None = None) -> float:
        """Worst case Σ|∂φ/∂z_i|·r_i; with `lam`, the probabilistic bound λ·(Σ(∂φ/∂z_i·r_i)²)^½: if the
        rounding errors of different output elements are independent, mean zero and within r_i (the
        model of Higham & Mary, SIAM J. Sci. Comput. 41(5), 2019), Hoeffding's inequality gives
        P(|φ̂ − φ| > that) ≤ 2·exp(−λ²/2), e.g. 2.5e-14 for λ = 8 (never more than the worst case)."""
        if not phi.requires_grad:  # no rounding op led to φ: it is exact
            return 0.0
        grads = torch.autograd.grad(phi, [z for z, _ in self.taps], allow_unused=True, retain_graph=True)
        terms = [torch.where(g == 0, 0.0, g.abs() * r) for g, (_, r) in zip(grads, self.taps) if g is not None]
        worst = float(sum(t.sum() for t in terms))
        if lam is None:
            return worst
        return min(worst, lam * float(sum((t * t).sum() for t in terms)) ** 0.5)  # the worst case always holds


def assert_within_bound(a: torch.Tensor, b: torch.Tensor, exact: torch.Tensor, tape: FirstOrderBound, what: str,
                        lam: float | None = None):
    """Two float32 evaluations a, b of the computation that gave `exact` (float64, inside `tape`):
    Σ|a − b| ≤ 2·bound(Σ sign(a − b)·exact). Returns (the L1 distance, the bound)."""
    d = a.detach().double() - b.detach().double()
    distance, limit = float(d.abs().sum()), 2 * tape.bound((d.sign() * exact).sum(), lam)
    assert distance <= limit, f"{what}: L1 distance {distance:.3g} exceeds the float32 bound {limit:.3g}"
    return distance, limit
