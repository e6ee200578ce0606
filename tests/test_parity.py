"""Parity with the official code, through fixtures it produced (tests/fixtures/README.md).

Same weights, inputs and random-layer indices: generator outputs, the QS selection (tie-aware, within
the derived float32 bounds of qsattn/float_bounds.py), per-layer NCE losses, the D and G losses and the
gradients of D and F match the fixture machine's to float32 rounding; the last test runs the official
sampler here and requires bit-for-bit equality (docs/testing.md).
"""
from pathlib import Path

import pytest
import torch

from qsattn.engine.config import resolve
from qsattn.float_bounds import check_selection, entropy_bound, global_rows, local_rows, softmax_bound
from baselines.model import discriminator_loss, generator_loss, nce_loss
from qsattn.state import create_state

FIXTURES = Path(__file__).parent / "fixtures"
CASES = {"cut": "cut", "global": "qsattn-global", "local": "qsattn-local", "global_local": "qsattn-global-local"}


@pytest.fixture(scope="module")
def common():
    return torch.load(FIXTURES / "parity_common.pt", weights_only=True)


def state_from_fixture(common, method):
    cfg = resolve({"method": method, "ngf": common["ngf"], "ndf": common["ndf"], "netF_nc": common["netF_nc"],
                   "num_patches": common["num_patches"]})
    state = create_state(cfg)
    for name in ("G", "D", "F"):
        state.modules()[name].load_state_dict(common[name], strict=True)
    return cfg, state


def ids_or_none(ids):
    return [i if i.numel() else None for i in ids]


def assert_grads_close(module, expected: dict):
    """Relative to the module's largest gradient: a conv bias followed by InstanceNorm has a true
    gradient of zero, so its computed value is rounding noise in both implementations."""
    assert set(expected) == {n for n, p in module.named_parameters() if p.grad is not None}
    scale = max(g.abs().max() for g in expected.values())
    for name, p in module.named_parameters():
        torch.testing.assert_close(p.grad / scale, expected[name] / scale, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.float_paths
def test_generator_and_discriminator_match_official(common):
    cfg, state = state_from_fixture(common, "cut")
    fake = state.G(torch.cat([common["real_A"], common["real_B"]]))
    torch.testing.assert_close(fake[:1], common["fake_B"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fake[1:], common["idt_B"], rtol=1e-5, atol=1e-6)
    feats = state.G.encode(common["real_A"], cfg.nce_layers)
    for ours, ref in zip(feats, common["feats_k"]):
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    loss_D, loss_fake, loss_real = discriminator_loss(state, fake[:1], common["real_B"])
    torch.testing.assert_close(loss_D, common["loss_D"])
    torch.testing.assert_close(loss_fake, common["loss_D_fake"])
    torch.testing.assert_close(loss_real, common["loss_D_real"])
    loss_D.backward()
    assert_grads_close(state.D, common["grads_D"])


@pytest.mark.float_paths
@pytest.mark.parametrize("case", list(CASES))
def test_nce_losses_selection_and_gradients_match_official(common, case):
    fx = torch.load(FIXTURES / f"parity_{case}.pt", weights_only=True)
    cfg, state = state_from_fixture(common, CASES[case])
    real_A, real_B = common["real_A"], common["real_B"]
    fake = state.G(torch.cat([real_A, real_B]))
    fake_B, idt_B = fake[:1], fake[1:]

    with torch.no_grad():
        _, per_layer, ids, attns = nce_loss(state.G, state.F, real_A, fake_B, cfg, ids_or_none(fx["patch_ids"]))
    torch.testing.assert_close(torch.stack(per_layer), fx["nce_layer_losses"], rtol=1e-5, atol=1e-5)
    if case != "cut":
        # The selection is made on this machine's G features, which differ from the fixture machine's by
        # rounding: it must be a valid selection of the exact entropies of these features within their
        # float32 bound (tie-aware), with attention rows within the softmax bound (qsattn/float_bounds.py).
        feats = state.G.encode(real_A, cfg.nce_layers)
        for layer in range(2):
            feat = feats[3 + layer].detach()
            a, da = softmax_bound(*(global_rows(feat) if case != "local" else local_rows(feat)))
            H, dH = entropy_bound(*(softmax_bound(*local_rows(feat)) if case != "global" else (a, da)))
            check_selection(ids[3 + layer][0], H, dH)
            rows = attns[3 + layer].reshape(-1, a.shape[1]).double()
            assert ((rows - a[ids[3 + layer][0]]).abs() <= da[ids[3 + layer][0]]).all()
        if not all(torch.equal(ids[3 + i], r) for i, r in enumerate(fx["qs_ids"])):
            pytest.skip("a near-tie among this CPU's G features reorders the selection (valid: checked above); "
                        "the downstream values then differ from the fixture's by design")

    losses = generator_loss(state, real_A, real_B, fake_B, idt_B, patch_ids=ids_or_none(fx["patch_ids"]),
                            patch_ids_idt=ids_or_none(fx["patch_ids_idt"]))
    for ours, ref in (("NCE", "loss_NCE"), ("NCE_Y", "loss_NCE_Y"), ("G_GAN", "loss_G_GAN"), ("G", "loss_G")):
        torch.testing.assert_close(losses[ours], fx[ref], rtol=1e-5, atol=1e-5, msg=ours)
    losses["G"].backward()
    # G's gradients are not compared with the fixture machine's: the first conv's weight gradient sums
    # ~10^4 products at the end of the whole backward, and on this machine ATEN_CPU_CAPABILITY=default
    # alone moves it by 2.5e-5 of the largest gradient (global+local), with no bound below that
    # derivable from the fixture. They are compared bit for bit with the official code run here by
    # `python -m qsattn parity` (tests/test_parity_command.py, the real checkout).
    assert_grads_close(state.F, fx["grads_F"])


def test_official_local_failure_is_reproduced():
    fx = torch.load(FIXTURES / "parity_local.pt", weights_only=True)
    assert fx["official_local_failure"] == "RuntimeError"
    from qsattn.sampler import local_values

    with pytest.raises(RuntimeError) as err:
        local_values(torch.randn(1, 32, 8, 8), torch.arange(16)[None], 7, "official")
    assert str(err.value).split("(")[0] == fx["official_local_failure_message"].split("(")[0]


OFFICIAL_QS = Path(__file__).parents[1] / ".cache" / "official-qsattn"


@pytest.mark.float_paths
@pytest.mark.skipif(not (OFFICIAL_QS / "models").is_dir(), reason=f"no official QS-Attn checkout at {OFFICIAL_QS}")
@pytest.mark.parametrize("B", [1, 2])
def test_sampler_is_bitwise_the_official_code_run_here(B):
    """The official PatchSampleF of each QS mode, imported from the checkout and run on this machine
    on the official G's features at the official init: same indices, attention rows and outputs,
    bit for bit, naive and chunked (the selection and the local view use the official ops)."""
    from argparse import Namespace

    from qsattn import official
    from qsattn.sampler import PatchSampleF

    qs = official.load(OFFICIAL_QS, "qsattn").modules
    n, ngf = 64, 16                                  # num_patches = C of layers 12/16 (batch 1 needs it)
    torch.manual_seed(B)
    G = qs["networks_global"].define_G(3, 3, ngf, "resnet_9blocks", "instance", False, "xavier", 0.02, False,
                                       False, [], Namespace())
    g = torch.Generator().manual_seed(10 + B)
    with torch.no_grad():
        feats = G(torch.rand(B, 3, 64, 64, generator=g) * 2 - 1, [0, 4, 8, 12, 16], encode_only=True)
    ids = [torch.randperm(f.shape[2] * f.shape[3], generator=g)[:n] for f in feats[:3]] + [None, None]
    for mode, file in (("global", "networks_global"), ("local", "networks_local"),
                       ("global+local", "networks_local_global")):
        with official.on_device("cpu"), torch.no_grad():
            ref_F = qs[file].PatchSampleF(use_mlp=True, init_type="xavier", init_gain=0.02, nc=256, gpu_ids=[])
            ref = ref_F(feats, n, ids, None)
        for impl in ("naive", "chunked"):
            F = PatchSampleF(256, n, mode, (3, 4), impl=impl, chunk=1)
            F.build([f.shape[1] for f in feats])
            F.load_state_dict(ref_F.state_dict(), strict=True)
            with torch.no_grad():
                pools, our_ids, attns = F(feats, patch_ids=ids)
            for layer in range(5):
                assert torch.equal(pools[layer], ref[0][layer]), (mode, impl, layer)
            for layer in (3, 4):
                assert torch.equal(attns[layer].reshape(ref[2][layer].shape), ref[2][layer]), (mode, impl, layer)
                if mode == "local":  # the other two files return [] as the QS layers' ids
                    assert torch.equal(our_ids[layer], ref[1][layer]), (mode, impl, layer)
