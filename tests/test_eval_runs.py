"""`eval` on a training run and on a released checkpoint: the whole test split, through the same metrics;
re-scoring a finished run under another protocol without training; translations never reused across
checkpoints; the released-model self-check's comparison."""
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from qsattn.engine.config import resolve
from qsattn.data.synthetic import generate

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"


def qsattn(*args, cwd):
    return subprocess.run([sys.executable, "-m", "qsattn", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})


class PooledProjection:
    """A stand-in feature extractor (never Inception: its values are named fid_standin_<mode>)."""
    name = "pooled_projection"
    fingerprint = "pooled-projection-seed0-v1"

    def __init__(self):
        self.weight = torch.from_numpy(np.random.default_rng(0).normal(size=(48, 8))).float()

    def __call__(self, x):
        return torch.nn.functional.adaptive_avg_pool2d(x / 255, 4).flatten(1) @ self.weight


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny run, two epochs, both kept: (root, config values)."""
    from qsattn.engine.train import train

    root = tmp_path_factory.mktemp("evalrun")
    generate(root / "datasets" / "synthetic", size=32, n_train=6, n_test=3)
    values = {"data_root": str(root / "datasets"), "run_root": str(root / "runs"), "tracking_uri": "off",
              "ngf": 8, "ndf": 8, "netF_nc": 32, "num_patches": 32, "crop_size": 32, "load_size": 32,
              "n_epochs": 1, "n_epochs_decay": 1, "keep_epoch_checkpoints": 1, "sample_every": 0, "num_threads": 1}
    run_dir = train(resolve(values), progress=False)
    return root, values, run_dir


def test_eval_of_a_run_scores_the_final_and_every_kept_checkpoint(trained):
    root, _, run_dir = trained
    out = qsattn("eval", "--run", str(run_dir), "--out", str(root / "m.json"), cwd=root)
    assert out.returncode == 0, out.stderr
    result = json.loads((root / "m.json").read_text())
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert result["metrics"] == saved["metrics"]
    # epoch 2 is the final checkpoint (scored once, as 'last'), epoch 1 a kept one: both are candidates
    assert set(result["history"]) == {"1", "2"} and result["metrics"]["final_epoch"] == 2
    assert result["metrics"]["gt_score_last"] == result["history"]["2"]["gt_score"]
    best = max(result["history"], key=lambda e: result["history"][e]["gt_score"])
    assert result["metrics"]["best_epoch"] == result["metrics"]["best_epoch_gt_score"] == int(best)
    assert result["metrics"]["gt_score_best"] == result["history"][best]["gt_score"]
    assert "test split" in result["protocol"]["checkpoints"]["best"]
    assert sorted(p.name for p in (run_dir / "translations" / "last").glob("*.png")) == \
        sorted(p.stem + ".png" for p in (root / "datasets" / "synthetic" / "testA").iterdir())
    # epoch checkpoints keep only the generator (and where it stands); latest.pt is the resume point
    kept = torch.load(run_dir / "checkpoints" / "epoch_0001.pt", weights_only=True)
    assert set(kept) == {"format", "config", "step", "epoch", "position", "net_G"}


def test_a_finished_run_is_rescored_under_another_protocol_without_training(trained, monkeypatch):
    import qsattn.engine.train
    from qsattn.engine.pipeline import evaluate_run
    from slurm.grid import cell_id

    root, values, run_dir = trained
    files = {p: p.stat().st_mtime_ns for p in (run_dir / "checkpoints").iterdir()}
    monkeypatch.setattr(qsattn.engine.train, "train", lambda *a, **k: pytest.fail("re-scoring must not train"))
    fx = PooledProjection()
    kw = dict(feature_extractor=fx, cache_dir=root / "cache", extra={"num_workers": 0})
    clean_cfg = resolve({**values, "eval_metrics": "fid,kid", "fid_modes": "clean", "eval_checkpoints": "last"})
    first = evaluate_run(clean_cfg, progress=False, **kw)
    assert set(first["metrics"]) == {"fid_standin_clean_last", "kid_standin_clean_last", "final_epoch"}
    both_cfg = resolve({**values, "eval_metrics": "fid,kid", "fid_modes": "clean,legacy_pytorch"})
    assert cell_id(both_cfg) == cell_id(clean_cfg) == cell_id(resolve(values))  # evaluation keys: same cell
    second = evaluate_run(both_cfg, progress=False, **kw)
    m = second["metrics"]
    assert {"fid_standin_clean_last", "fid_standin_legacy_pytorch_last", "fid_standin_clean_best",
            "fid_standin_legacy_pytorch_best", "best_epoch_fid_standin_clean"} <= set(m)
    assert m["fid_standin_clean_last"] == pytest.approx(first["metrics"]["fid_standin_clean_last"])
    assert m["fid_standin_clean_last"] != m["fid_standin_legacy_pytorch_last"]
    # each mode's best is its own minimum over the candidates; KID follows its mode's FID-best epoch
    for mode in ("clean", "legacy_pytorch"):
        h = {int(e): v for e, v in second["history"].items()}
        pick = min(h, key=lambda e: h[e][f"fid_standin_{mode}"])
        assert m[f"best_epoch_fid_standin_{mode}"] == pick
        assert m[f"kid_standin_{mode}_best"] == h[pick][f"kid_standin_{mode}"]
    assert json.loads((run_dir / "metrics.json").read_text())["metrics"] == m
    assert {p: p.stat().st_mtime_ns for p in (run_dir / "checkpoints").iterdir()} == files


def test_rescoring_a_folder_another_process_holds_is_refused(trained):
    from qsattn.engine.pipeline import evaluate_run
    from qsattn.engine.run_folder import RunBusy

    _, values, run_dir = trained
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom qsattn.engine.run_folder import locked\n"
                               f"with locked({str(run_dir)!r}):\n    print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True, env={"PYTHONPATH": str(ROOT)})
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunBusy):
            evaluate_run(resolve(values), progress=False)
    finally:
        holder.kill()
        holder.wait()


def test_translations_of_another_checkpoint_are_rewritten_not_reused(tmp_path):
    from qsattn.engine.translate import RECORD, load_generator, translate_folder, translation_identity

    generate(tmp_path / "data", size=32, n_train=2, n_test=3)
    state = torch.load(FIXTURES / "parity_common.pt", weights_only=True)["G"]
    first, second = tmp_path / "a.pth", tmp_path / "b.pth"
    torch.save(state, first)
    torch.save({k: v + 0.05 if v.is_floating_point() else v for k, v in state.items()}, second)
    out = tmp_path / "out"

    def run(ckpt):
        G, _ = load_generator(ckpt)
        paths = translate_folder(G, tmp_path / "data" / "testA", out, 32, "resize_and_crop", progress=False,
                                 identity=translation_identity(ckpt, 32, "resize_and_crop"))
        return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in paths}

    a = run(first)
    time.sleep(0.01)
    assert run(first) == a                                   # same checkpoint: kept (a restart continues)
    b = run(second)
    assert set(a) == set(b) and all(a[k][0] != b[k][0] for k in a)   # another checkpoint: written again
    assert json.loads((out / RECORD).read_text())["checkpoint"] == str(second)


def test_eval_of_a_released_checkpoint(tmp_path):
    generate(tmp_path / "datasets" / "synthetic", size=32, n_train=2, n_test=3)
    missing = qsattn("eval", "--released", "horse2zebra_qsattn-global", "--dataset", "synthetic", cwd=tmp_path)
    assert missing.returncode == 2 and "latest_net_G.pth is missing" in missing.stderr
    folder = tmp_path / "checkpoints" / "released" / "horse2zebra_qsattn-global"
    folder.mkdir(parents=True)
    torch.save(torch.load(FIXTURES / "parity_common.pt", weights_only=True)["G"], folder / "latest_net_G.pth")
    out = qsattn("eval", "--released", "horse2zebra_qsattn-global", "--dataset", "synthetic", "--device", "cpu",
                 cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert 0 <= result["metrics"]["gt_score"] <= 1 and result["protocol"]["synthetic_gt"]["n_images"] == 3
    translations = tmp_path / "results" / "out" / "translations" / "horse2zebra_qsattn-global"
    assert len(list(translations.glob("*.png"))) == 3


def test_self_check_compares_each_published_fid_in_its_own_mode(tmp_path, capsys):
    from eval.released import check_expected

    csv = tmp_path / "expected.csv"
    csv.write_text("method,dataset,fid_mode,value,generated,reference,source\n"
                   "CUT,horse2zebra,legacy_pytorch,45.51,120,140,test\nCUT,horse2zebra,clean,43.71,120,140,test\n")
    name = "horse2zebra_cut_pretrained"
    ok = {"metrics": {"fid_legacy_pytorch": 45.5249, "fid_clean": 43.6951}}
    assert check_expected(name, ok, csv) == 0
    printed = capsys.readouterr().out
    assert "ours 45.52, published 45.51, difference +0.01" in printed and printed.count(" ok") == 2
    off = {"metrics": {"fid_legacy_pytorch": 45.54, "fid_clean": 43.71}}     # 0.03 off in legacy only
    assert check_expected(name, off, csv) == 1
    lines = capsys.readouterr().out.splitlines()
    assert [line.endswith("FAIL") for line in lines] == [False, True]      # clean first (sorted), then legacy
    # a stand-in score (or a mode not scored) never passes as a published FID
    assert check_expected(name, {"metrics": {"fid_standin_clean": 43.71, "fid_standin_legacy_pytorch": 45.51}},
                          csv) == 1
    assert "not scored" in capsys.readouterr().out


@pytest.fixture
def one_thread():
    """One torch thread for the test (no oversubscription of shared cores), restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _random_legacy_inception(path: Path) -> None:
    """A pytorch-fid-layout Inception file with random weights (stand-in weights: not the published file)."""
    from cleanfid import inception_pytorch

    original = inception_pytorch.load_state_dict_from_url
    inception_pytorch.load_state_dict_from_url = lambda *a, **k: sys._getframe(1).f_locals["inception"].state_dict()
    try:
        torch.manual_seed(0)
        torch.save(inception_pytorch.fid_inception_v3().state_dict(), path)
    finally:
        inception_pytorch.load_state_dict_from_url = original


@pytest.mark.slow  # a random-weight Inception is built and run on the CPU: minutes on 2 shared cores
def test_the_released_model_self_check_end_to_end_with_stand_in_weights(tmp_path, monkeypatch, capsys, one_thread):
    """`eval --released NAME --expect CSV` on a tiny released-style checkpoint and a 3-image Horse->Zebra
    stand-in, through the real legacy_pytorch pipeline with random Inception weights pinned for the test:
    exit 1 when the published value is off by more than 0.02 (the result is still written), and the same
    comparison passes within 0.02."""
    import eval.fid as fidmod
    from eval.released import check_expected
    from qsattn.cli import main

    monkeypatch.chdir(tmp_path)
    generate(tmp_path / "datasets" / "horse2zebra", size=32, n_train=2, n_test=3)
    folder = tmp_path / "checkpoints" / "released" / "horse2zebra_cut_pretrained"
    folder.mkdir(parents=True)
    torch.save(torch.load(FIXTURES / "parity_common.pt", weights_only=True)["G"], folder / "latest_net_G.pth")
    weights = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    _random_legacy_inception(weights)
    csv = tmp_path / "expected.csv"
    csv.write_text("method,dataset,fid_mode,value,source\nCUT,horse2zebra,legacy_pytorch,9999,test\n")
    args = ["eval", "--released", "horse2zebra_cut_pretrained", "--fid-modes", "legacy_pytorch", "--device", "cpu",
            "--inception-weights", f"legacy_pytorch={weights}", "--cache-dir", str(tmp_path / "cache"),
            "--out", "r.json", "--expect", str(csv)]
    assert main(args) == 2 and "is not the Inception file" in capsys.readouterr().err   # not the pinned file
    monkeypatch.setitem(fidmod.PINNED_SHA256, "legacy_pytorch", fidmod.sha256_file(weights))
    assert main(args) == 1
    assert capsys.readouterr().out.strip().splitlines()[-1].endswith("FAIL")
    result = json.loads(Path("r.json").read_text())
    assert result["protocol"]["fid_kid_legacy_pytorch"]["n_generated"] == 3
    ours = result["metrics"]["fid_legacy_pytorch"]
    csv.write_text(f"method,dataset,fid_mode,value,source\nCUT,horse2zebra,legacy_pytorch,{ours + 0.015:.4f},test\n")
    assert check_expected("horse2zebra_cut_pretrained", result, csv) == 0


def test_a_cityscapes_set_without_labels_is_scored_by_fid_with_the_reason_segmentation_was_skipped(tmp_path):
    """CUT's cityscapes_val_for_CUT has no label maps: FID/KID, and the protocol says why no mAP."""
    from qsattn.engine.pipeline import evaluate_checkpoint

    generate(tmp_path / "cityscapes_val_for_cut", size=32, n_train=1, n_test=3)
    ckpt = tmp_path / "latest_net_G.pth"
    torch.save(torch.load(FIXTURES / "parity_common.pt", weights_only=True)["G"], ckpt)
    cfg = resolve({"method": "cut", "dataset": "cityscapes_val_for_cut", "data_root": str(tmp_path),
                   "crop_size": 32, "load_size": 32})
    out = evaluate_checkpoint(cfg, ckpt, tmp_path / "out", progress=False, feature_extractor=PooledProjection(),
                              cache_dir=tmp_path / "cache", extra={"num_workers": 0})
    assert {"fid_standin_clean", "fid_standin_legacy_pytorch"} <= set(out["metrics"]) and "mAP" not in out["metrics"]
    assert "no label maps" in out["protocol"]["cityscapes_seg"]["skipped"]
