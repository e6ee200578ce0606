"""CUT's sampler and state (baselines/) against QS-Attn's (qsattn/): QS-Attn changes only the QS layers."""
import pytest
import torch

from baselines import sampler as cut
from baselines import state as cut_state
from qsattn import sampler as qs
from qsattn import state as qs_state
from qsattn.engine.config import resolve

SMALL = {"ngf": 8, "ndf": 8, "netF_nc": 32, "num_patches": 16}


def _feats(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, c, s, s, generator=g) for c, s in ((3, 16), (16, 8), (32, 8), (32, 4), (32, 4))]


def _sample(F, feats, seed=1):
    torch.manual_seed(seed)  # the MLPs' init and the random layers' randperm draw from it
    return F(feats)


def test_qs_mode_none_is_cuts_sampler_bit_for_bit():
    feats = _feats()
    ours, ids, attns = _sample(qs.PatchSampleF(32, 16, "none"), feats)
    ref, ref_ids, ref_attns = _sample(cut.PatchSampleF(32, 16), feats)
    for a, b in zip(ours + ids, ref + ref_ids):
        assert torch.equal(a, b)
    assert attns == ref_attns == [None] * len(feats)


def test_qs_layers_leave_the_other_layers_cuts():
    """The random layers, before and after a QS layer, are CUT's: the same MLPs and gather, given the same
    positions (a QS layer draws no random numbers where CUT's would, so later draws differ; not their use)."""
    feats = _feats()
    ours, ids, attns = _sample(qs.PatchSampleF(32, 16, "global", qs_layers=(1, 3)), feats)
    torch.manual_seed(1)
    ref, ref_ids, _ = cut.PatchSampleF(32, 16)(feats, patch_ids=[None if i in (1, 3) else ids[i] for i in range(5)])
    for i in (0, 2, 4):
        assert torch.equal(ours[i], ref[i]) and torch.equal(ids[i], ref_ids[i]) and attns[i] is None
    assert torch.equal(ids[0], _sample(cut.PatchSampleF(32, 16), feats)[1][0])  # the first draw is CUT's own
    for i in (1, 3):
        hw = feats[i].shape[2] * feats[i].shape[3]
        assert attns[i].shape == (2, 16, hw) and ids[i].shape == (2, 16)  # per image: selected, not shared


def test_cuts_state_is_the_same_with_cuts_sampler_or_qsattns():
    cfg = resolve({"method": "cut", **SMALL})
    torch.manual_seed(0)
    ours = qs_state.create_state(cfg)
    torch.manual_seed(0)
    ref = cut_state.create_state(cfg)
    assert type(ref.F) is cut.PatchSampleF and type(ours.F) is qs.PatchSampleF
    for name, module in ref.modules().items():
        theirs = ours.modules()[name].state_dict()
        assert list(theirs) == list(module.state_dict())
        assert all(torch.equal(theirs[k], v) for k, v in module.state_dict().items())


def test_cuts_state_refuses_a_qs_config_without_qsattns_sampler():
    with pytest.raises(ValueError, match="qsattn.sampler.build_sampler"):
        cut_state.create_state(resolve({"method": "qsattn-global", **SMALL}))
