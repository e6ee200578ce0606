"""qs_impl=chunked selects the naive indices and gives the naive routed features and gradients."""
from pathlib import Path

import pytest
import torch

from qsattn import qs_chunked as qc
from qsattn import sampler as naive
from qsattn.engine.config import resolve
from baselines.model import nce_loss, train_step
from qsattn.state import create_state
from qsattn.sampler import PatchSampleF
from qsattn.selection import gather_rows
from qsattn.float_bounds import check_selection, entropy_bound, global_rows, local_rows, softmax_bound

FIXTURES = Path(__file__).parent / "fixtures"
LAYOUTS = ("official", "corrected")
# (batch, channels, side, chunk): chunks that divide HW, that don't, and one below MIN_ROWS
SHAPES = [(1, 16, 8, 64), (2, 16, 8, 7), (1, 32, 16, 100), (2, 32, 16, 64), (1, 32, 32, 300), (2, 16, 32, 1024)]


def features(B, C, side, kind, seed=0):
    """Random features; `saturated`: huge norms as with the official init (nearly one-hot rows, many
    entropies exactly 0); `ties`: duplicated positions and a constant region (tied entropies)."""
    g = torch.Generator().manual_seed(seed)
    feat = torch.randn(B, C, side, side, generator=g, dtype=torch.float32)
    if kind == "saturated":
        feat = feat * 40
    elif kind == "ties":
        feat[:, :, : side // 2] = feat[:, :, :1, :1]                 # a constant top half
        feat[:, :, -1] = feat[:, :, -2]                               # a duplicated row of the image
    return feat


@pytest.mark.float_paths
@pytest.mark.parametrize("kind", ["random", "saturated", "ties"])
@pytest.mark.parametrize("B,C,side,chunk", SHAPES)
def test_entropies_are_bitwise_naive(B, C, side, chunk, kind):
    feat = features(B, C, side, kind)
    f = feat.flatten(2).transpose(1, 2)
    assert torch.equal(qc.global_entropy(f, chunk), naive.row_entropy(naive.global_attention(f)))
    for layout in LAYOUTS:
        ref = naive.row_entropy(naive.local_attention(feat, 7, layout))
        assert torch.equal(qc.local_entropy(feat, 7, layout, chunk), ref), layout


def test_saturated_features_have_exact_zero_and_tied_entropies():
    """The test inputs really exercise ties at the cut-off (else the equality tests prove little)."""
    f = features(1, 16, 16, "saturated").flatten(2).transpose(1, 2)
    ent = qc.global_entropy(f, 64)
    assert (ent == 0).sum() > 16 and ent.unique().numel() < ent.numel()


def test_row_chunks_cover_all_rows_and_are_never_short():
    for length in (1, 63, 64, 65, 127, 128, 1000, 4096):
        for chunk in (1, 7, 64, 100, 1024):
            parts = qc.row_chunks(length, chunk)
            assert [i for s in parts for i in range(s.start, s.stop)] == list(range(length))
            assert all(s.stop - s.start >= min(length, qc.MIN_ROWS) for s in parts)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_window_keys_are_the_naive_windows_bitwise(layout):
    """The chunked keys (a band's from the padded rows, the selected rows' by a gather) are copies of
    the naive `F.unfold` windows in the same layout: equal bit for bit, and contiguous."""
    feat = features(2, 5, 9, "random")
    full = naive.local_windows(feat, 7, layout)                         # (B, HW, k², C)
    padded = torch.nn.functional.pad(feat, (3, 3, 3, 3))
    band = qc._band_keys(padded[:, :, 2:2 + 3 + 6], 7, layout)          # image rows 2-4
    assert band.is_contiguous() and torch.equal(band, full[:, 18:45])
    ids = torch.tensor([[0, 8, 40, 80], [3, 3, 77, 1]])
    rows = qc._row_keys(feat, ids, 7, layout)
    assert rows.is_contiguous() and torch.equal(rows, gather_rows(full, ids))


def _select_route(impl, mode, feat, n, layout, chunk):
    """Key-side selection and routing of one QS layer, as PatchSampleF does it; -> ids, routed (B, n, C)."""
    f = feat.flatten(2).transpose(1, 2)
    m = naive if impl == "naive" else qc
    kw = {} if impl == "naive" else {"chunk": chunk}
    if mode == "global":
        ids, attn = m.global_select(f, n, **kw)
        return ids, torch.bmm(attn, f)
    ids, attn = m.local_select(feat, n, 7, layout, **kw)
    if mode == "local":
        return ids, torch.matmul(attn.unsqueeze(2), m.local_values(feat, ids, 7, layout)).squeeze(2)
    attn = gather_rows(naive.global_attention(f), ids) if impl == "naive" else qc.global_rows(f, ids)
    return ids, torch.bmm(attn, f)


@pytest.mark.parametrize("mode", ["global", "local", "global+local"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("kind", ["random", "saturated", "ties"])
@pytest.mark.parametrize("B,C,side,chunk", SHAPES[:3])
def test_same_indices_routed_features_and_gradients(B, C, side, chunk, kind, layout, mode):
    if mode == "global" and layout == "corrected":
        pytest.skip("global mode has no local layout")
    n = C  # the official local values need num_patches == C
    out = {}
    for impl in ("naive", "chunked"):
        feat = features(B, C, side, kind).requires_grad_(True)
        ids, routed = _select_route(impl, mode, feat, n, layout, chunk)
        weight = torch.randn(routed.shape, generator=torch.Generator().manual_seed(1))
        (routed * weight).sum().backward()
        out[impl] = ids, routed.detach(), feat.grad
    assert torch.equal(out["naive"][0], out["chunked"][0])
    scale = out["naive"][1].abs().max()
    torch.testing.assert_close(out["chunked"][1] / scale, out["naive"][1] / scale, rtol=1e-5, atol=1e-6)
    gscale = out["naive"][2].abs().max()
    torch.testing.assert_close(out["chunked"][2] / gscale, out["naive"][2] / gscale, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("qs_mode", ["global", "local", "global+local"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("B", [1, 2])
def test_patch_sampler_chunked_equals_naive(qs_mode, layout, B):
    C, n = 32, 32
    feats_k = [features(B, c, s, "random", seed=i) for i, (c, s) in enumerate([(3, 38), (16, 32), (32, 16), (C, 16), (C, 16)])]
    feats_q = [features(B, f.shape[1], f.shape[2], "random", seed=10 + i) for i, f in enumerate(feats_k)]
    ids_random = [torch.randperm(f.shape[2] * f.shape[3], generator=torch.Generator().manual_seed(i))[:n] for i, f in enumerate(feats_k)]
    results = {}
    for impl in ("naive", "chunked"):
        torch.manual_seed(0)
        F = PatchSampleF(32, n, qs_mode, (3, 4), local_layout=layout, impl=impl, chunk=100)
        k = [f.clone().requires_grad_(True) for f in feats_k]
        q = [f.clone().requires_grad_(True) for f in feats_q]
        pool_k, ids, attns = F(k, patch_ids=ids_random[:3] + [None, None])
        pool_q, _, _ = F(q, patch_ids=ids, attn_mats=attns)
        sum((a * b).sum() for a, b in zip(pool_k, pool_q)).backward()
        results[impl] = pool_k, pool_q, ids, [t.grad for t in k + q], [p.grad for p in F.parameters()]
    ref, got = results["naive"], results["chunked"]
    for a, b in zip(ref[2], got[2]):
        assert torch.equal(a, b)
    for group in (0, 1, 3, 4):
        for a, b in zip(ref[group], got[group]):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


@pytest.mark.float_paths
@pytest.mark.parametrize("case,mode", [("global", "global"), ("local", "local"), ("global_local", "global+local")])
def test_chunked_equals_naive_and_selects_like_the_official_code_on_the_parity_fixtures(case, mode):
    """Official init, nearly one-hot attention (entropies down to ~1e-24, several exactly 0), the
    official code's own encoder features (stored in the fixtures, so no G rounding enters): chunked
    is naive bit for bit, and the selection is one that a float32 evaluation of the official formula
    can make (tie-aware, float_bounds.py); where the bound decides a rank, it is the official one.
    The attention rows are within the derived bound of the exact (float64) rows, as are the
    official rows the fixture machine computed."""
    common = torch.load(FIXTURES / "parity_common.pt", weights_only=True)
    fx = torch.load(FIXTURES / f"parity_{case}.pt", weights_only=True)
    ids_random = [i if i.numel() else None for i in fx["patch_ids"]]
    out = {}
    for impl in ("naive", "chunked"):
        F = PatchSampleF(common["netF_nc"], common["num_patches"], mode, (3, 4), impl=impl, chunk=1)
        F.build([f.shape[1] for f in common["feats_k"]])
        F.load_state_dict(common["F"], strict=True)
        with torch.no_grad():
            out[impl] = F(common["feats_k"], patch_ids=ids_random)
    for group in range(3):  # pools, ids, attention rows
        for a, b in zip(out["naive"][group], out["chunked"][group]):
            assert (a is None and b is None) or torch.equal(a, b), group
    decided = 0
    for layer, (ref_ids, ref_attn) in enumerate(zip(fx["qs_ids"], fx["attn_mats"])):
        feat = common["feats_k"][3 + layer]
        local_a, local_da = softmax_bound(*local_rows(feat))
        global_a, global_da = softmax_bound(*global_rows(feat))
        H, dH = entropy_bound(*((global_a, global_da) if case == "global" else (local_a, local_da)))
        ids, ref_ids = out["naive"][1][3 + layer][0], ref_ids[0]
        ranks = check_selection(ids, H, dH)
        assert check_selection(ref_ids, H, dH) == ranks
        lo, hi = H - dH, H + dH
        alone = ((lo[None, :] <= hi[ids][:, None]) & (hi[None, :] >= lo[ids][:, None])).sum(1) == 1
        assert torch.equal(ids[alone], ref_ids[alone])
        decided += ranks
        a, da = (local_a, local_da) if case == "local" else (global_a, global_da)
        for rows, which in ((out["naive"][2][3 + layer].reshape(-1, a.shape[1]), ids), (ref_attn.reshape(-1, a.shape[1]), ref_ids)):
            assert ((rows.double() - a[which]).abs() <= da[which]).all(), (case, layer)
    assert decided >= (32 if case != "global" else 0)  # layer 12's local selection is fully decided


@pytest.mark.parametrize("method", ["qsattn-global", "qsattn-local", "qsattn-global-local", "qsattn-local-corrected"])
def test_train_step_chunked_equals_naive(method):
    """One full step from the same state: same losses, gradients to float32 rounding, and weights
    within 2·lr (Adam's first step is ≈ lr·sign(g), so a true-zero gradient, e.g. a conv bias before
    InstanceNorm, whose computed value is rounding noise, may step either way). Over several steps
    the rounding differences grow and, with nearly one-hot attention, can flip a near-tied selection,
    so the two paths agree step by step, not over a whole run."""
    def run(impl):
        torch.manual_seed(0)
        cfg = resolve({"method": method, "ngf": 8, "ndf": 8, "netF_nc": 32, "num_patches": 32,
                       "qs_impl": impl, "qs_chunk": 100})
        state = create_state(cfg)
        A, B = torch.rand(1, 3, 32, 32) * 2 - 1, torch.rand(1, 3, 32, 32) * 2 - 1  # QS layers 8×8
        return train_step(state, A, B), state

    (ref_losses, ref), (losses, got) = run("naive"), run("chunked")
    for key in ref_losses:
        torch.testing.assert_close(losses[key], ref_losses[key], rtol=1e-6, atol=1e-7, msg=key)
    # global+local at this init: the first convs' gradients are dominated by float32 rounding in the
    # global rows (naive fp32 is itself 2.4% of the largest gradient away from fp64; chunked 7%), so G's
    # gradients are compared through the weights only (below).
    for name in (("F",) if method == "qsattn-global-local" else ("G", "F")):
        grads = dict(ref.modules()[name].named_parameters())
        scale = max(p.grad.abs().max() for p in grads.values() if p.grad is not None)
        for key, p in got.modules()[name].named_parameters():
            d = (p.grad - grads[key].grad).abs().max() / scale
            assert d < 1e-4, f"{name}.{key}: {d}"
    lr = ref.cfg.lr
    for name, module in ref.modules().items():
        for key, value in module.state_dict().items():
            diff = (got.modules()[name].state_dict()[key] - value).abs().max().item() if value.is_floating_point() else 0
            assert diff <= 2 * lr * 1.01, f"{name}.{key}: {diff}"


def test_chunked_backward_does_not_keep_the_full_matrix():
    """Autograd saves O(N·HW) for the chunked global path, O(HW²) for the naive one."""
    HW, C, n = 1024, 32, 16
    saved = {}
    for impl in ("naive", "chunked"):
        f = torch.randn(1, HW, C, requires_grad=True)
        sizes = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: sizes.append(t.numel()) or t, lambda t: t):
            ids, attn = (naive.global_select(f, n) if impl == "naive" else qc.global_select(f, n, chunk=128))
            torch.bmm(attn, f).sum()
        saved[impl] = max(sizes)
    assert saved["naive"] >= HW * HW
    # the features themselves, or the N selected rows (at least MIN_ROWS: global_rows pads short GEMMs)
    assert saved["chunked"] <= max(n, C, qc.MIN_ROWS) * HW


@pytest.mark.parametrize("layout", LAYOUTS)
def test_chunked_local_backward_keeps_only_the_selected_windows(layout):
    """Autograd's saved tensors (by storage, so an expanded index counts once): the chunked local path
    keeps the selected windows (N·k²·C) and maps of the feature's size, the naive one every window."""
    C, side, n = 16, 32, 16
    saved = {}
    for m in (naive, qc):
        feat = torch.randn(1, C, side, side, requires_grad=True)
        sizes = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: sizes.append(t.untyped_storage().nbytes()) or t,
                                                      lambda t: t):
            ids, attn = m.local_select(feat, n, 7, layout)
            naive.route_local(attn, m.local_values(feat, ids, 7, layout, n)).sum()
        saved[m] = max(sizes)
    assert saved[naive] >= C * 49 * side * side * 4
    assert saved[qc] <= max(n * 49 * C * 4, C * (side + 6) ** 2 * 4)


@pytest.mark.float_paths
@pytest.mark.parametrize("n", [1, 3, 16, 63, 64, 100])
def test_selected_rows_are_bitwise_the_naive_rows(n):
    """The rows recomputed for routing equal the naive matrices' rows bit for bit, also for fewer
    rows than MIN_ROWS (padded: short GEMMs round otherwise) and a single local row (a bmm of one
    product takes the mm path)."""
    for B in (1, 2):
        feat = features(B, 64, 16, "saturated", seed=n)  # C=64: an unpadded 1-row GEMM rounds otherwise
        f = feat.flatten(2).transpose(1, 2)
        ids = torch.stack([torch.randperm(256, generator=torch.Generator().manual_seed(b))[:n] for b in range(B)])
        assert torch.equal(qc.global_rows(f, ids), gather_rows(naive.global_attention(f), ids))
        for layout in LAYOUTS:
            ref = gather_rows(naive.local_attention(feat, 7, layout), ids)
            assert torch.equal(qc.local_rows(feat, ids, 7, layout), ref), (B, layout)
