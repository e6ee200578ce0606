"""A small version of the demo's check that training learns (README, "The demo").

What a few hundred CPU steps reliably learn is the target domain's texture: stripes appear inside the
shapes, far more than in the input. (The full `gt_score`, which also needs the shape and background
kept, stays below the identity mapping's at this budget; the README says so.)
"""
from qsattn.config import resolve
from qsattn.pipeline import run_cell
from qsattn.synthetic import generate, score_translation


def test_training_learns_the_target_texture(tmp_path):
    data = generate(tmp_path / "data" / "synthetic", size=32, n_train=40, n_test=10, seed=0)
    identity = score_translation(data / "testA", data)
    cfg = resolve({"method": "cut", "data_root": str(tmp_path / "data"), "run_root": str(tmp_path / "runs"),
                   "tracking_uri": "off", "ngf": 16, "ndf": 16, "netF_nc": 64, "num_patches": 64, "crop_size": 32,
                   "load_size": 32, "preprocess": "none", "n_epochs": 4, "n_epochs_decay": 1, "sample_every": 0,
                   "seed": 0})
    trained = run_cell(cfg, progress=False)["metrics"]
    assert trained["stripe_score_last"] > 3 * identity["stripe_score"], (trained, identity)
