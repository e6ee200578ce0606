"""`python -m qsattn parity`: against a stand-in checkout that this test writes (known values: the
project's own code behind the official names and signatures, exact or off by one ulp), against a
missing one, and against the real official checkouts in .cache/ when they are there."""
import re
from pathlib import Path

import pytest
import torch

from qsattn import cli
from qsattn.engine.parity import Table

ROOT = Path(__file__).parents[1]
OFFICIAL_QS, OFFICIAL_CUT = ROOT / ".cache" / "official-qsattn", ROOT / ".cache" / "official-cut"

# The stand-in networks file: the official names and call signatures, this project's code inside.
NETWORKS = '''
import torch
from qsattn.engine.config import resolve
from baselines.losses import patch_nce_loss
from baselines.networks import ResnetGenerator, build_discriminator, build_generator
from qsattn.sampler import PatchSampleF as _Ours

MODE, BROKEN = {mode!r}, {broken!r}


class _G(ResnetGenerator):
    def forward(self, x, layers=[], encode_only=False):
        return self.encode(x, layers) if encode_only else self.model(x)


def define_G(input_nc, output_nc, ngf, netG, norm, use_dropout, init_type, init_gain, no_antialias,
             no_antialias_up, gpu_ids, opt=None):
    net = build_generator(resolve({{"method": "cut", "ngf": ngf, "netG": netG, "normG": norm, "init_type": init_type,
                                   "init_gain": init_gain, "no_antialias": no_antialias,
                                   "no_antialias_up": no_antialias_up}}))
    net.__class__ = _G
    return net


def define_D(input_nc, ndf, netD, n_layers_D, norm, init_type, init_gain, no_antialias, gpu_ids, opt=None):
    return build_discriminator(resolve({{"method": "cut", "ndf": ndf, "n_layers_D": n_layers_D, "normD": norm,
                                        "init_type": init_type, "init_gain": init_gain,
                                        "no_antialias": no_antialias}}))


class PatchSampleF(_Ours):
    def __init__(self, use_mlp=False, init_type="normal", init_gain=0.02, nc=256, gpu_ids=[]):
        super().__init__(nc, 0, MODE, (3, 4), init_type=init_type, init_gain=init_gain, use_mlp=use_mlp)

    def forward(self, feats, num_patches=64, patch_ids=None, attn_mats=None):
        self.num_patches = num_patches
        if patch_ids is not None:
            patch_ids = [None if p is None else torch.as_tensor(p) for p in patch_ids]
        pools, ids, attns = super().forward(feats, patch_ids, attn_mats)
        if BROKEN:  # one ulp off in the last layer's output
            pools[4] = torch.nextafter(pools[4], torch.full_like(pools[4], 2.0))
        return (pools, ids, attns) if MODE != "none" else (pools, ids)
'''
PATCHNCE = '''
import torch.nn as nn
from baselines.losses import patch_nce_loss


class PatchNCELoss(nn.Module):
    def __init__(self, opt):
        super().__init__()
        self.opt = opt

    def forward(self, feat_q, feat_k):
        return patch_nce_loss(feat_q, feat_k, self.opt.nce_T, self.opt.batch_size)
'''


def stand_in(root: Path, kind: str, broken: bool = False) -> Path:
    files = {"qsattn": {"networks_global": "global", "networks_local": "local", "networks_local_global": "global+local"},
             "cut": {"networks": "none"}}[kind]
    (root / "models").mkdir(parents=True)
    (root / "util").mkdir()
    (root / "util" / "util.py").write_text("")
    for stem, mode in files.items():
        (root / "models" / f"{stem}.py").write_text(NETWORKS.format(mode=mode, broken=broken))
    (root / "models" / "patchnce.py").write_text(PATCHNCE)
    for stem in ("qs_model", "cut_model"):
        (root / "models" / f"{stem}.py").write_text("")  # the steps are not run against a stand-in
    return root


def test_a_faithful_stand_in_passes_every_row(tmp_path, capsys):
    qs, cut = stand_in(tmp_path / "qs", "qsattn"), stand_in(tmp_path / "cut", "cut")
    rc = cli.main(["parity", "--official", str(qs), "--cut", str(cut), "--quick", "--parts", "sampler,networks",
                   "--impl", "both"])
    out = capsys.readouterr().out
    assert rc == 0, out
    rows = [line for line in out.splitlines() if line.endswith(("PASS", "FAIL"))]
    for quantity in ("indices", "attention rows", "F output, key side", "PatchNCE per patch", "grad F weights (NCE)",
                     "G output", "D output"):
        assert any(r.startswith(quantity) for r in rows), quantity
    modes = {re.split(r"\s{2,}", r)[1] for r in rows if r.startswith("indices")}
    assert modes == {"none", "global", "local", "global+local", "global (chunked)", "local (chunked)",
                     "global+local (chunked)"}
    assert all(r.endswith("PASS") for r in rows) and "0 failures" in out


def test_one_ulp_off_fails_the_rows_it_reaches_and_exits_1(tmp_path, capsys):
    qs = stand_in(tmp_path / "qs", "qsattn", broken=True)
    rc = cli.main(["parity", "--official", str(qs), "--quick", "--parts", "sampler"])
    out = capsys.readouterr().out
    assert rc == 1
    status = {(re.split(r"\s{2,}", line)[0], line.split()[-1]) for line in out.splitlines()
              if line.endswith(("PASS", "FAIL"))}
    assert ("F output, key side", "FAIL") in status and ("PatchNCE per patch", "FAIL") in status
    assert ("indices", "PASS") in status and ("attention rows", "PASS") in status  # upstream of the ulp
    assert "FAIL F output, key side [global]: 64px seed 0 batch 1 64 patches" in out
    assert "(no --cut: mode none and the CUT and FastCUT steps are not checked)" in out


def test_a_missing_or_foreign_checkout_is_one_line_that_says_how_to_get_one(tmp_path, capsys):
    assert cli.main(["parity", "--official", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "does not exist" in err
    assert "git clone https://github.com/sapphire497/query-selected-attention" in err
    (tmp_path / "other" / "models").mkdir(parents=True)
    assert cli.main(["parity", "--official", str(tmp_path / "qs"), "--cut", str(tmp_path / "other")]) == 2
    stand_in(tmp_path / "qs", "qsattn")
    assert cli.main(["parity", "--official", str(tmp_path / "qs"), "--cut", str(tmp_path / "other")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "is not a CUT checkout (no models/networks.py" in err
    assert "git clone https://github.com/taesungp/contrastive-unpaired-translation" in err


def test_table_rows_exact_bitwise_and_rounding():
    t = Table()
    t.compare("ids", "m", torch.tensor([1, 2]), torch.tensor([2, 1]), "a", "exact")
    t.compare("x", "m", torch.tensor([1.0]), torch.tensor([1.0]), "a")
    t.compare("y", "m", torch.tensor([1.0]), torch.nextafter(torch.tensor([1.0]), torch.tensor([2.0])), "a")
    t.compare("z", "m", torch.tensor([1.0]), torch.tensor([1.5]), "a", bound=torch.tensor([0.5]))
    t.compare("w", "m", torch.tensor([1.0]), torch.tensor([1.0, 1.0]), "a")
    assert [r.passed for r in t.rows.values()] == [False, True, False, True, False]
    assert t.rows[("y", "m")].max_rel == pytest.approx(2.0 ** -23)
    assert t.failures() == 3


@pytest.mark.slow
@pytest.mark.skipif(not (OFFICIAL_QS / "models").is_dir() or not (OFFICIAL_CUT / "models").is_dir(),
                    reason=f"needs the official checkouts at {OFFICIAL_QS} and {OFFICIAL_CUT}")
def test_the_real_official_code_matches_in_every_row(capsys):
    """The whole check against the official code, run here: every row PASS (minutes on 2 cores)."""
    rc = cli.main(["parity", "--official", str(OFFICIAL_QS), "--cut", str(OFFICIAL_CUT)])
    out = capsys.readouterr().out
    assert rc == 0 and "0 failures" in out, out
