"""The demo's wiring: `make demo` writes the dataset that experiments/demo.yaml trains on.

No check of what the demo's models learn is here, on purpose. A GAN's trajectory depends on the CPU's
float rounding (another CPU, ATEN_CPU_CAPABILITY or ONEDNN_MAX_CPU_ISA drifts from ours within tens of
steps, much as another seed does), so such a check belongs in the suite only if it holds for every seed
measured, by a margin wider than the seeds' spread. None of the demo's results does yet (docs/demo.md):
FastCUT after one epoch scored gt_score 0.061 on one machine and 0.012 on another against the identity's
0.047, and the whole CUT cell, which beat the identity with seed 0 (0.153 there, 0.114 here), scored
0.036 and 0.010 with seeds 1 and 2. The targets of issue #15 and the study towards settings that meet them are in
docs/demo.md; tools/demo_study.py checks candidates against them for several seeds.
"""
from __future__ import annotations

from pathlib import Path

from qsattn.data.synthetic import DEMO_DATASET
from slurm.grid import expand

ROOT = Path(__file__).resolve().parents[1]


def test_the_demo_grid_trains_on_the_dataset_make_demo_writes():
    cells = expand(ROOT / "experiments" / "demo.yaml")
    assert sorted(c.method for c in cells) == ["cut", "fastcut", "qsattn-global"]
    for cell in cells:
        assert (cell.config.dataset, cell.config.crop_size, cell.config.load_size) == (
            "synthetic", DEMO_DATASET["size"], DEMO_DATASET["size"])
    assert "synthetic --out datasets/synthetic --demo" in (ROOT / "Makefile").read_text()
