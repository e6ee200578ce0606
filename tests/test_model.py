"""The CUT-family model and the QS-Attn sampler, against independent computations."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from qsattn.engine.config import ConfigError, resolve
from qsattn.errors import UserError
from baselines.losses import patch_nce_loss
from qsattn.engine.methods import METHODS
from baselines.model import nce_loss, train_step
from qsattn.state import create_state
from baselines.networks import build_discriminator, build_generator, generator_from_state_dict
from qsattn.sampler import (PatchSampleF, global_select, local_select, local_values, local_windows,
                            row_entropy)

SMALL = {"ngf": 8, "ndf": 8, "netF_nc": 32, "num_patches": 32}


def small_cfg(method="qsattn-global", **kw):
    return resolve({"method": method, **SMALL, **kw})


# --- entropy selection ---------------------------------------------------------------------------

def test_peaked_rows_have_lowest_entropy_and_are_selected_first():
    torch.manual_seed(0)
    L, C = 40, 16
    f = 0.1 * torch.randn(1, L, C, dtype=torch.float64)
    distinctive = [5, 17, 33]
    for j, i in enumerate(distinctive):  # a large feature along its own axis: its row attends to itself
        f[0, i] = 0
        f[0, i, j] = 6.0
    ids, rows = global_select(f, 3)
    assert sorted(ids[0].tolist()) == distinctive
    attn = torch.softmax(f[0] @ f[0].T, dim=1)
    assert (row_entropy(attn)[distinctive] < 1e-6).all()
    # routing: the selected rows of A, computed independently in NumPy
    a = np.exp(f[0].numpy() @ f[0].numpy().T)
    a /= a.sum(1, keepdims=True)
    expected = a[ids[0].numpy()] @ f[0].numpy()
    np.testing.assert_allclose((rows @ f)[0].numpy(), expected, rtol=1e-10)


def test_entropy_counts_zero_probabilities_as_zero():
    attn = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0]])
    torch.testing.assert_close(row_entropy(attn), torch.tensor([0.0, np.log(2)], dtype=torch.float32))


# --- local windows ----------------------------------------------------------------------------------

def naive_window(feat, b, y, x, k):
    """The k×k neighbourhood of (y, x), zero padded, as a (k², C) array (row-major offsets)."""
    C, H, W = feat.shape[1:]
    r = k // 2
    out = torch.zeros(k * k, C, dtype=feat.dtype)
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            yy, xx = y + dy, x + dx
            if 0 <= yy < H and 0 <= xx < W:
                out[(dy + r) * k + (dx + r)] = feat[b, :, yy, xx]
    return out


def test_corrected_windows_are_true_neighbourhoods_centred_on_the_position():
    torch.manual_seed(1)
    feat = torch.randn(2, 5, 6, 7)
    k = 3
    win = local_windows(feat, k, "corrected")  # (B, HW, k², C)
    for b in range(2):
        for p in range(6 * 7):
            y, x = divmod(p, 7)
            torch.testing.assert_close(win[b, p], naive_window(feat, b, y, x, k))
            torch.testing.assert_close(win[b, p, k * k // 2], feat[b, :, y, x])


def naive_official_key(feat, b, p, k):
    """What the official reshape makes of the unfold output: entry (j, c) is flat index j·C + c of the
    channel-major (C·k²) window vector, i.e. channel (j·C + c) // k², offset (j·C + c) % k²."""
    C = feat.shape[1]
    y, x = divmod(p, feat.shape[3])
    true = naive_window(feat, b, y, x, k).T.reshape(-1)  # channel-major: index c·k² + offset
    return true.reshape(k * k, C)


def test_official_layout_reproduces_the_released_reshape():
    torch.manual_seed(2)
    feat = torch.randn(1, 4, 5, 5)
    k = 3
    win = local_windows(feat, k, "official")
    for p in range(25):
        torch.testing.assert_close(win[0, p], naive_official_key(feat, 0, p, k))
    # the centre of an official window is not the position's own feature
    assert not torch.allclose(win[0, 12, k * k // 2], feat[0, :, 2, 2])


def test_official_local_values_transpose_patches_and_channels():
    torch.manual_seed(3)
    C, k = 4, 3
    feat = torch.randn(1, C, 5, 5)
    ids = torch.tensor([[3, 11, 7, 20]])  # N == C, the only case the official view accepts
    values = local_values(feat, ids, k, "official")[0]  # (N, k², C)
    for i in range(4):
        for c in range(4):
            y, x = divmod(ids[0, c].item(), 5)
            window = naive_window(feat, 0, y, x, k)  # (k², C)
            torch.testing.assert_close(values[i, :, c], window[:, i])  # channel i of patch c
    corrected = local_values(feat, ids, k, "corrected")[0]
    for n in range(4):
        y, x = divmod(ids[0, n].item(), 5)
        torch.testing.assert_close(corrected[n], naive_window(feat, 0, y, x, k))


def test_official_local_fails_like_the_released_code_when_patches_differ_from_channels():
    feat = torch.randn(1, 8, 6, 6)
    with pytest.raises(RuntimeError, match="view"):
        local_values(feat, torch.arange(5)[None], 3, "official")
    local_values(feat, torch.arange(5)[None], 3, "corrected")  # the corrected layout has no such limit


@pytest.mark.parametrize("impl", ["naive", "chunked"])
def test_official_local_with_fewer_positions_than_patches_is_one_clear_error(impl):
    """A 4x4 QS layer has 16 positions; the official local view needs num_patches = 32 rows of them."""
    feats = [torch.randn(1, 32, 4, 4)]
    sampler = PatchSampleF(16, 32, "local", (0,), window=3, impl=impl)
    with pytest.raises(UserError, match=r"num_patches=32: QS layer 0 has only 4x4 = 16 positions"):
        sampler(feats)
    corrected = PatchSampleF(16, 32, "local", (0,), window=3, local_layout="corrected", impl=impl)
    assert corrected(feats)[0][0].shape == (16, 16)  # all 16 positions, as CUT's sampler takes min(L, n)


def test_local_selection_prefers_peaked_windows():
    feat = 0.01 * torch.randn(1, 3, 6, 6)
    feat[0, 0, 2, 3] = 8.0  # one strong position: its window's softmax is peaked on itself
    ids, rows = local_select(feat, 1, 3, "corrected")
    assert ids[0, 0].item() == 2 * 6 + 3
    assert rows[0, 0, 4] > 0.99  # the centre of its window


# --- PatchNCE ---------------------------------------------------------------------------------------

def test_patch_nce_matches_a_naive_loop():
    torch.manual_seed(4)
    B, N, D, tau = 2, 6, 8, 0.07
    q = F.normalize(torch.randn(B * N, D, dtype=torch.float64), dim=1)
    k = F.normalize(torch.randn(B * N, D, dtype=torch.float64), dim=1)
    got = patch_nce_loss(q, k, tau, B)
    expected = []
    for b in range(B):
        for i in range(N):
            qi = q[b * N + i]
            logits = [qi @ k[b * N + i]] + [torch.tensor(-10.0, dtype=q.dtype) if j == i else qi @ k[b * N + j]
                                             for j in range(N)]
            logits = torch.stack(logits) / tau
            expected.append(-torch.log_softmax(logits, 0)[0])
    torch.testing.assert_close(got, torch.stack(expected))


@pytest.mark.parametrize("method", ["qsattn-global", "qsattn-local", "qsattn-global-local"])
def test_gradients_reach_source_features_through_the_reused_attention(method):
    """Keys are detached, so with random sampling nothing flows into the source features; with QS-Attn
    the query side reuses the key side's attention, which depends on the source features."""
    cfg = small_cfg(method)
    sampler = PatchSampleF(32, 32, cfg.qs_mode, cfg.qs_layers, window=3, local_layout=cfg.local_layout)
    feats_k = [torch.randn(1, 32, 8, 8, requires_grad=True) for _ in range(5)]
    feats_q = [torch.randn(1, 32, 8, 8, requires_grad=True) for _ in range(5)]
    pool_k, ids, attn = sampler(feats_k)
    pool_q, _, _ = sampler(feats_q, patch_ids=ids, attn_mats=attn)
    sum(patch_nce_loss(q, k).mean() for q, k in zip(pool_q, pool_k)).backward()
    for i, f in enumerate(feats_k):
        flows = f.grad is not None and f.grad.abs().sum() > 0
        assert flows == (i in cfg.qs_layers), f"layer {i}"
    assert all(f.grad.abs().sum() > 0 for f in feats_q)


def test_query_side_reuses_key_indices_and_attention():
    cfg = small_cfg("qsattn-global")
    state = create_state(cfg)
    src, tgt = torch.randn(1, 3, 32, 32), torch.randn(1, 3, 32, 32)
    ids = [torch.arange(32)] * 3 + [None, None]
    _, per_layer_1, ids_1, attn_1 = nce_loss(state.G, state.F, src, tgt, cfg, patch_ids=ids)
    _, per_layer_2, ids_2, attn_2 = nce_loss(state.G, state.F, src, tgt, cfg, patch_ids=ids)
    for a, b in zip(per_layer_1, per_layer_2):
        torch.testing.assert_close(a, b)
    assert all(torch.equal(ids_1[i], torch.arange(32)) for i in range(3))
    assert attn_1[3].shape == (1, 32, 64)  # 32 selected rows over the 8×8 positions of layer 12


# --- one training step of each method -----------------------------------------------------------------

@pytest.mark.parametrize("method", list(METHODS))
def test_one_step_changes_every_network_and_is_deterministic(method):
    def run():
        torch.manual_seed(0)
        cfg = small_cfg(method, num_patches=64, local_window=3)
        if cfg.qs_mode in ("local", "global+local") and cfg.local_layout == "official":
            cfg = small_cfg(method, num_patches=32, local_window=3)  # official local needs N == C
        state = create_state(cfg)
        before = {n: {k: v.clone() for k, v in m.state_dict().items()} for n, m in state.modules().items()}
        A, B = torch.rand(1, 3, 64, 64) * 2 - 1, torch.rand(1, 3, 64, 64) * 2 - 1
        losses = train_step(state, A, B)
        return state, before, losses

    state, before, losses = run()
    assert all(torch.isfinite(v) for v in losses.values())
    for name, module in state.modules().items():
        changed = [k for k, v in module.state_dict().items() if v.is_floating_point() and not torch.equal(v, before[name][k])]
        assert changed, f"{name} did not change"
        assert all(torch.isfinite(v).all() for v in module.state_dict().values())
    state2, _, losses2 = run()
    for k in losses:
        assert torch.equal(losses[k], losses2[k]), k
    for name, module in state.modules().items():
        for k, v in module.state_dict().items():
            assert torch.equal(v, state2.modules()[name].state_dict()[k]), f"{name}.{k}"


# --- state dicts ----------------------------------------------------------------------------------------

def test_official_key_names_and_strict_round_trip():
    cfg = small_cfg("cut")
    state = create_state(cfg)
    g_keys = set(state.G.state_dict())
    # resnet_9blocks: ReflectionPad, conv(1), norm, relu, conv(4)…Downsample(7)…blocks 12-20, Upsample(21)
    assert {"model.1.weight", "model.1.bias", "model.4.weight", "model.7.filt", "model.11.filt",
            "model.12.conv_block.1.weight", "model.20.conv_block.5.weight", "model.21.filt",
            "model.22.weight", "model.25.filt", "model.30.weight", "model.30.bias"} <= g_keys
    assert {"model.0.weight", "model.2.filt", "model.3.weight", "model.11.weight"} <= set(state.D.state_dict())
    assert {f"mlp_{i}.{j}.{p}" for i in range(5) for j in (0, 2) for p in ("weight", "bias")} == set(state.F.state_dict())
    # strict loading into fresh modules, F after its lazy creation from a batch
    G2, D2 = build_generator(cfg), build_discriminator(cfg)
    G2.load_state_dict(state.G.state_dict(), strict=True)
    D2.load_state_dict(state.D.state_dict(), strict=True)
    F2 = PatchSampleF(32, 32, "global")
    F2(G2.encode(torch.zeros(1, 3, 32, 32), cfg.nce_layers))
    F2.load_state_dict(state.F.state_dict(), strict=True)
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(G2(x), state.G(x))


@pytest.mark.parametrize("netG,ngf", [("resnet_9blocks", 8), ("resnet_6blocks", 16)])
def test_generator_architecture_is_inferred_from_a_state_dict(netG, ngf):
    cfg = small_cfg("cut", netG=netG, ngf=ngf)
    G = build_generator(cfg)
    G2 = generator_from_state_dict(G.state_dict())
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(G2(x), G(x))
    # official weights trained with --gpu_ids -1 keep DataParallel's prefix (CUT's parallelize() wraps on CPU)
    G3 = generator_from_state_dict(torch.nn.DataParallel(G).state_dict())
    torch.testing.assert_close(G3(x), G(x))


def test_unknown_method_and_option_list_the_valid_ones():
    with pytest.raises(ConfigError, match="Valid methods: cut, fastcut"):
        resolve({"method": "qsatn-global"})
    with pytest.raises(ConfigError, match="Did you mean: num_patches"):
        resolve({"num_patch": 3})
    with pytest.raises(ConfigError, match="local_layout"):
        resolve({"local_layout": "fixed"})
    with pytest.raises(ConfigError, match="boolean"):
        resolve({"nce_idt": "maybe"})
    assert resolve({"method": "fastcut", "nce_idt": "true"}).nce_idt is True
