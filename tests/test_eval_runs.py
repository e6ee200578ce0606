"""`eval` on a training run and on a released checkpoint: the whole test split, through the same metrics."""
import json
import subprocess
import sys
from pathlib import Path

import torch

from qsattn.config import resolve
from qsattn.synthetic import generate
from qsattn.train import train

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"


def qsattn(*args, cwd):
    return subprocess.run([sys.executable, "-m", "qsattn", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})


def test_eval_of_a_run_scores_last_and_best_checkpoints(tmp_path):
    generate(tmp_path / "datasets" / "synthetic", size=32, n_train=6, n_test=3)
    cfg = resolve({"data_root": str(tmp_path / "datasets"), "run_root": str(tmp_path / "runs"), "tracking_uri": "off",
                   "ngf": 8, "ndf": 8, "netF_nc": 32, "num_patches": 32, "crop_size": 32, "load_size": 32,
                   "n_epochs": 1, "n_epochs_decay": 1, "keep_epoch_checkpoints": 1, "sample_every": 0})
    run_dir = train(cfg, progress=False)
    out = qsattn("eval", "--run", str(run_dir), "--out", str(tmp_path / "m.json"), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    result = json.loads((tmp_path / "m.json").read_text())
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert result["metrics"] == saved["metrics"]
    assert set(result["history"]) == {"1", "2"} and result["metrics"]["best_epoch"] in (1, 2)
    best = result["history"][str(result["metrics"]["best_epoch"])]["gt_score"]
    assert result["metrics"]["gt_score_best"] == best == max(h["gt_score"] for h in result["history"].values())
    assert sorted(p.name for p in (run_dir / "translations" / "last").iterdir()) == \
        sorted(p.stem + ".png" for p in (tmp_path / "datasets" / "synthetic" / "testA").iterdir())


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
    assert len(list((tmp_path / "results" / "released" / "horse2zebra_qsattn-global" / "clean").glob("*.png"))) == 3
