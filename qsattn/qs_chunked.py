"""QS-Attn's query selection without the full attention matrices: the same indices, the same result.

`qs_impl: chunked`. The naive sampler (`qsattn.sampler`, the reference) builds the HW×HW global
attention, or the (B, C·k², HW) unfolded windows, for every position, with autograd, and then keeps
N rows. Here:

- Selection needs no gradient (it yields indices), so the row entropies are computed under
  `no_grad`, a chunk of rows at a time: memory O(chunk·HW) (global) or O(chunk·k²·C) (local).
- Only the N selected rows are then recomputed with autograd for routing: O(N·HW) (global) or
  O(N·k²·C) (local), forward and backward. The forward values are the naive ones bitwise on CPU
  (tested); the gradients sum the same terms in another order, so they are equal to rounding.

Selection must pick exactly the naive indices. With the official init the raw features have huge
norms, attention rows are nearly one-hot, and the entropies near the top-N cut-off are ~1e-24 and
differ by ~1e-26, so any change of formula (e.g. logsumexp(s) − Σ softmax(s)·s, or k² shifted dot
products with another summation order) changes which rows are picked. Each chunk therefore runs
the naive operations on complete rows: the same matmul kernel on the same operands, the same
softmax over the same row, the same Σ −a log a. These are row-wise, so every entropy is bitwise the
naive one on CPU (tested), and `torch.sort` then returns the same indices, ties included. One caveat
found by testing: CPU BLAS takes other code paths for very short GEMMs (here 1–3, 5–7 and 9–11 rows
gave last-bit differences from the same rows of the full product), so no chunk is ever shorter than
`MIN_ROWS`: the rows are split into floor(L / chunk) nearly equal chunks of chunk to 2·chunk rows. On CUDA,
cuBLAS may pick another GEMM algorithm for a chunk's shape than for the full matrix (e.g. split-K),
so entropies can differ in the last bit there; selection then agrees except between rows whose
entropies are within rounding of each other.

Local windows: the entropies unfold one band of image rows at a time (`F.unfold` of the zero-padded
rows the band needs), and the N selected windows are gathered from the padded map by index; both are
copies, so they equal the naive `F.unfold` columns bitwise, for either `local_layout`. The k² logits
and their softmax are the naive (official) bmm and softmax(dim=1) on them, which are row-wise (tested). (k² shifted dot products, Σ_c f·shift(f), would avoid even the band's
copy, but sum in another order, and that changes which near-tied rows are selected.)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from qsattn.selection import gather_rows, row_entropy, select_rows


MIN_ROWS = 64


def row_chunks(length: int, chunk: int, min_rows: int = MIN_ROWS) -> list[slice]:
    """Split range(length) into floor(length / chunk) nearly equal slices, none shorter than
    min(length, chunk, min_rows) (see module doc: short GEMMs round differently)."""
    chunk = max(chunk, min_rows)
    n = max(1, length // chunk)
    bounds = [length * i // n for i in range(n + 1)]
    return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]


# --- global ---------------------------------------------------------------------------------------

@torch.no_grad()
def global_entropy(f: torch.Tensor, chunk: int) -> torch.Tensor:
    """f (B, HW, C) -> the entropy of each row of softmax(f fᵀ), (B, HW), `chunk` rows at a time."""
    ft = f.transpose(1, 2)
    return torch.cat([row_entropy(torch.bmm(f[:, rows], ft).softmax(dim=2))
                      for rows in row_chunks(f.shape[1], chunk)], dim=1)


def global_rows(f: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """The rows `ids` (B, N) of softmax(f fᵀ), (B, N, HW), with autograd through f: O(N·HW).

    Fewer than MIN_ROWS rows are padded with copies of the first one for the GEMM (see module doc:
    short GEMMs round differently), so the rows are the naive ones bit for bit."""
    n, pad = ids.shape[1], max(0, min(MIN_ROWS, f.shape[1]) - ids.shape[1])
    rows = torch.cat([ids, ids[:, :1].expand(-1, pad)], dim=1) if pad else ids
    return torch.bmm(gather_rows(f, rows), f.transpose(1, 2)).softmax(dim=2)[:, :n]


def global_select(f: torch.Tensor, n: int, selection: str = "entropy", chunk: int = 1024):
    """Same as `sampler.global_select`: -> ids (B, n), attention rows (B, n, HW)."""
    if selection == "entropy":
        ids = select_rows(global_entropy(f, chunk), n, selection)
    else:  # random rows: no entropy needed (the naive path draws the same randperm)
        ids = select_rows(f.new_empty(f.shape[:2]), n, selection)
    return ids, global_rows(f, ids)


# --- local ----------------------------------------------------------------------------------------

def _window_index(H: int, W: int, window: int, device) -> torch.Tensor:
    """(k², HW) flat indices into the zero-padded (H+2r)×(W+2r) map: offset-major, as `F.unfold`."""
    Wp = W + 2 * (window // 2)
    dy, dx = torch.meshgrid(torch.arange(window, device=device), torch.arange(window, device=device), indexing="ij")
    y, x = torch.meshgrid(torch.arange(H, device=device), torch.arange(W, device=device), indexing="ij")
    return ((y.reshape(1, -1) + dy.reshape(-1, 1)) * Wp + x.reshape(1, -1) + dx.reshape(-1, 1))


# The keys are built contiguous, in their final layout, straight from the zero-padded map. The naive
# keys are a strided view of `F.unfold`'s output (positions innermost), which the CPU bmm copies one
# (k², C) matrix at a time into exactly this layout before its GEMM: the same GEMM operands, hence
# bitwise the naive logits (tested), without the unfold and the per-matrix gathers (which were most
# of the local sampler's CPU time).

def _band_keys(padded: torch.Tensor, window: int, layout: str) -> torch.Tensor:
    """Keys (B, P, k², C) of every position of a band, from the zero-padded rows it needs (B, C, rows+2r, W+2r)."""
    B, C = padded.shape[:2]
    win = padded.unfold(2, window, 1).unfold(3, window, 1)              # (B, C, rows, W, k, k), a view
    order = (0, 2, 3, 1, 4, 5) if layout == "official" else (0, 2, 3, 4, 5, 1)
    if layout not in ("official", "corrected"):
        raise ValueError(f"unknown local_layout '{layout}' (official | corrected)")
    return win.permute(order).reshape(B, win.shape[2] * win.shape[3], window * window, C)


def _row_keys(feat: torch.Tensor, ids: torch.Tensor, window: int, layout: str) -> torch.Tensor:
    """Keys (B, N, k², C) of the positions ids (B, N), with autograd: one gather from the padded map
    (its backward is a scatter-add into that small map, not a fold of every window), by an (N·k²)
    index expanded over the channels, so that autograd keeps O(N·k²) indices, not O(N·k²·C)."""
    B, C, H, W = feat.shape
    n, kk, r = ids.shape[1], window * window, window // 2
    padded = F.pad(feat, (r, r, r, r)).flatten(2)                       # (B, C, H'W')
    index = _window_index(H, W, window, feat.device).t()[ids].reshape(B, -1)  # (B, N·k²) into H'W'
    cols = torch.gather(padded, 2, index[:, None].expand(B, C, -1)).view(B, C, n, kk)
    if layout == "official":   # row (c, offset) of the unfold column, read as (k², C)
        return cols.transpose(1, 2).reshape(B, n, kk, C)
    if layout == "corrected":
        return cols.permute(0, 2, 3, 1).contiguous()
    raise ValueError(f"unknown local_layout '{layout}' (official | corrected)")


def _local_softmax(keys: torch.Tensor, f: torch.Tensor, naive_rows: int) -> torch.Tensor:
    """keys (B, P, k², C), f (B, P, C) -> the local attention (B, P, k²) with the official op sequence
    (`sampler.local_attention`): bmm on (B·P, k², C) by (B·P, C, 1), softmax over dim 1. A bmm of one
    product takes another BLAS path (mm) than the same product in a longer batch, so a single row
    is padded to two unless the naive bmm (of `naive_rows` = B·HW products) has one row too."""
    B, P, kk, C = keys.shape
    keys, q = keys.flatten(0, 1), f.reshape(B * P, C, 1)
    if B * P == 1 < naive_rows:
        keys, q = keys.expand(2, -1, -1), q.expand(2, -1, -1)
    return torch.bmm(keys, q)[: B * P].softmax(dim=1).reshape(B, P, kk)


@torch.no_grad()
def local_entropy(feat: torch.Tensor, window: int, layout: str, chunk: int) -> torch.Tensor:
    """feat (B, C, H, W) -> entropy of each position's local attention, (B, HW), a band of image rows
    (about `chunk` positions, at least MIN_ROWS) at a time, each from the zero-padded rows it needs."""
    B, C, H, W = feat.shape
    r = window // 2
    padded = F.pad(feat, (r, r, r, r))
    rows_per_band = -(-max(chunk, MIN_ROWS) // W)
    out = []
    for band in row_chunks(H, rows_per_band, min_rows=1):                           # >= rows_per_band rows each
        keys = _band_keys(padded[:, :, band.start:band.stop + 2 * r], window, layout)
        f = feat[:, :, band].flatten(2).transpose(1, 2)                  # (B, rows·W, C)
        out.append(row_entropy(_local_softmax(keys, f, B * H * W)))
    return torch.cat(out, dim=1)


def local_rows(feat: torch.Tensor, ids: torch.Tensor, window: int, layout: str) -> torch.Tensor:
    """Local attention rows of the positions `ids` (B, N), (B, N, k²), with autograd: O(N·k²·C)."""
    flat = feat.flatten(2)                                               # (B, C, HW)
    f = torch.gather(flat, 2, ids[:, None, :].expand(-1, flat.shape[1], -1)).transpose(1, 2)
    return _local_softmax(_row_keys(feat, ids, window, layout), f, f.shape[0] * flat.shape[2])


def local_select(feat: torch.Tensor, n: int, window: int, layout: str, selection: str = "entropy",
                 chunk: int = 1024):
    """Same as `sampler.local_select`: -> ids (B, n), local attention rows (B, n, k²)."""
    if selection == "entropy":
        ids = select_rows(local_entropy(feat, window, layout, chunk), n, selection)
    else:
        ids = select_rows(feat.new_empty(feat.shape[0], feat.shape[2] * feat.shape[3]), n, selection)
    return ids, local_rows(feat, ids, window, layout)


def local_values(feat: torch.Tensor, ids: torch.Tensor, window: int, layout: str,
                 num_patches: int | None = None) -> torch.Tensor:
    """Same as `sampler.local_values` (the official layout's patch/channel transpose included)."""
    B, C = feat.shape[:2]
    n, kk = ids.shape[1], window * window
    if layout == "corrected":
        return _row_keys(feat, ids, window, layout)
    picked = _row_keys(feat, ids, window, layout).view(B, n, C * kk)     # (B, n, C·k²), as naive gathers it
    # the naive op sequence, so that the values also have the naive strides (and matmul rounding)
    num_patches = n if num_patches is None else num_patches
    return picked.permute(0, 2, 1).flatten(0, 1).view(B * num_patches, kk, C).view(B, num_patches, kk, C)
