"""The demo's check that training learns (README, "The demo"): a better ground-truth score than the
identity mapping, at two sizes.

Default suite: the demo's FastCUT cell stopped after its first epoch (200 steps, about 20 s). The `slow`
test runs the demo's whole CUT cell (1200 steps, about 2 minutes). Both train in deterministic mode, so
they give the demo's own numbers (`make demo`).
"""
import dataclasses
from pathlib import Path

import pytest

from qsattn.pipeline import run_cell
from qsattn.synthetic import generate, score_translation
from slurm.grid import expand

ROOT = Path(__file__).resolve().parents[1]


def _demo_cell_scores(method: str, tmp_path, **changes) -> tuple[dict, dict]:
    """(trained metrics, identity scores) of the demo grid's cell for `method`, on the demo's dataset."""
    (cell,) = [c for c in expand(ROOT / "experiments" / "demo.yaml") if c.method == method]
    data = generate(tmp_path / "data" / "synthetic", size=32, seed=0)  # as `make demo` writes it
    cfg = dataclasses.replace(cell.config, data_root=str(tmp_path / "data"), run_root=str(tmp_path / "runs"),
                              tracking_uri="off", keep_epoch_checkpoints=0, **changes)
    return run_cell(cfg, progress=False)["metrics"], score_translation(data / "testA", data)


def test_one_epoch_of_fastcut_beats_the_identity_mapping(tmp_path):
    trained, identity = _demo_cell_scores("fastcut", tmp_path, max_steps=200)
    assert trained["gt_score_last"] > identity["gt_score"], (trained, identity)
    assert trained["stripe_score_last"] > 3 * identity["stripe_score"], (trained, identity)  # stripes learned


@pytest.mark.slow
def test_the_demos_cut_cell_beats_the_identity_mapping(tmp_path):
    trained, identity = _demo_cell_scores("cut", tmp_path)
    assert trained["gt_score_last"] > identity["gt_score"], (trained, identity)
