"""What a sweep says before it runs anything: the bill (GPU-hours per method and in total, checkpoint
disk), the preflight (every problem of every cell in one message, before anything is submitted), the
stop of a GPU grid on a machine without a GPU, and the synthetic dataset generated when absent."""
from __future__ import annotations

import csv
import json
import os
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from qsattn.cli import main as cli
from slurm import bill as bill_mod
from slurm import sweep as sweep_mod
from slurm.grid import expand
from slurm.preflight import preflight
from test_sweep import TINY, make_grid, synthetic_root  # noqa: F401 - the fixture is used by name

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def no_gpu_here(monkeypatch):
    """Price and gate as on a machine without a GPU, whatever this one has."""
    monkeypatch.setattr(sweep_mod, "visible_gpus", lambda: [])
    monkeypatch.setattr(bill_mod, "local_gpu_name", lambda: None)


def table_step_time(method: str, impl: str = "-", size: int = 256) -> float:
    with open(ROOT / "slurm" / "step_times.csv") as f:
        rows = list(csv.DictReader(line for line in f if not line.startswith("#")))
    (row,) = [r for r in rows if r["gpu"] == "NVIDIA H200" and r["method"] == method and r["impl"] == impl
              and int(r["size"]) == size]
    return float(row["sec_per_step"])


def test_the_bill_of_table1_gives_gpu_hours_per_method_and_disk(tmp_path, monkeypatch, capsys, no_gpu_here):
    monkeypatch.chdir(tmp_path)  # no datasets/ here: the published counts are used
    monkeypatch.setattr(bill_mod, "BENCH_DIR", tmp_path / "no-bench")
    bill_mod.measured_rows.cache_clear()
    assert cli(["sweep", str(ROOT / "experiments" / "table1.yaml"), "--estimate", "--allow-cpu"]) == 0
    out = capsys.readouterr().out
    # independently: one step per image of the larger domain, 400 epochs (FastCUT 200), 3 seeds
    from qsattn.data.datasets import REGISTRY

    per_epoch = sum(max(REGISTRY[d].counts["trainA"], REGISTRY[d].counts["trainB"])
                    for d in ("horse2zebra", "cat2dog", "cityscapes"))
    hours = {"cut": 3 * 400 * per_epoch * table_step_time("cut") / 3600,
             "fastcut": 3 * 200 * per_epoch * table_step_time("fastcut") / 3600}
    for m in ("qsattn-global", "qsattn-local", "qsattn-global-local"):
        hours[m] = 3 * 400 * per_epoch * table_step_time(m, "naive") / 3600
    lines = {line.split()[0]: line.split() for line in out.splitlines() if line.startswith("  ")}
    for method, h in hours.items():
        assert float(lines[method][4]) == pytest.approx(h, rel=5e-3), (method, out)  # printed to 3 digits
    assert f"{sum(hours.values()):.0f} GPU-hours" in out and "NVIDIA H200" in out
    assert "checkpoints and weights" in out and "GB of disk" in out and "80 kept epoch checkpoints" in out


def test_a_gpu_grid_on_a_machine_without_gpu_stops_at_once_with_its_bill_and_the_cluster_command(
        tmp_path, synthetic_root, capsys, no_gpu_here):
    grid = make_grid(tmp_path, synthetic_root, device="auto")
    assert cli(["sweep", str(grid), "--stage", "train"]) == 2
    captured = capsys.readouterr()
    assert "estimate for 1 cells" in captured.out
    assert "stopped:" in captured.err and "--cluster slurm --profile" in captured.err and "--allow-cpu" in captured.err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlruns.db").exists()
    assert cli(["sweep", str(grid), "--estimate"]) == 2
    assert cli(["sweep", str(grid), "--estimate", "--allow-cpu"]) == 0
    cpu_grid = make_grid(tmp_path / "cpu", synthetic_root)  # device=cpu: meant for the CPU, not stopped
    assert cli(["sweep", str(cpu_grid), "--estimate"]) == 0


def test_the_checkpoint_estimate_matches_a_real_checkpoint(tmp_path, synthetic_root):
    from qsattn.engine.config import resolve
    from qsattn.engine.train import train

    cfg = resolve(dict(TINY, method="qsattn-global", dataset="synthetic", data_root=str(synthetic_root),
                       run_root=str(tmp_path), tracking_uri="off", max_steps=2))
    run_dir = train(cfg, progress=False)
    real = (run_dir / "checkpoints" / "latest.pt").stat().st_size
    weights = sum((run_dir / f"latest_net_{n}.pth").stat().st_size for n in "GDF")
    _, _, n_saved, n_params, _, n_g = bill_mod._tensor_sizes(tuple(getattr(cfg, k) for k in bill_mod.NETWORK_KEYS))
    # Tolerance: the payload (float32 tensors and both Adam moments, 2.8 MB here) must be exact; what is
    # left is torch.save's zip entries and pickle records, under 1 kB per tensor.
    assert abs(bill_mod.checkpoint_bytes(cfg) - real) <= 1024 * (n_saved + 2 * n_params)
    assert abs(bill_mod.weights_bytes(cfg) - weights) <= 1024 * n_saved
    kept = tmp_path / "epoch.pt"  # a kept epoch checkpoint: the generator only
    from qsattn.engine import checkpoint as ckpt_io

    state = ckpt_io.load(run_dir / "checkpoints" / "latest.pt")
    torch_save = __import__("torch").save
    torch_save({k: state[k] for k in ("format", "config", "step", "epoch", "position", "net_G")}, kept)
    assert abs(bill_mod.epoch_checkpoint_bytes(cfg) - kept.stat().st_size) <= 1024 * n_g


def test_a_sweep_with_missing_data_and_weights_stops_before_submitting_with_one_message(
        tmp_path, synthetic_root, capsys, monkeypatch):
    monkeypatch.delenv("QSATTN_INCEPTION_WEIGHTS", raising=False)
    grid = make_grid(tmp_path, synthetic_root, methods=("cut", "fastcut"), datasets=("synthetic", "missing", "horse2zebra"),
                     inception_weights=str(tmp_path / "nowhere.pt"))
    assert cli(["sweep", str(grid), "--cluster", "debug"]) == 2
    err = capsys.readouterr().err
    assert err.count("preflight:") == 1 and "nothing was submitted" in err
    assert f"dataset folder {synthetic_root / 'missing'} does not exist (2 cells" in err
    assert f"`python -m qsattn data horse2zebra --root {synthetic_root}`" in err
    for mode in ("clean", "legacy_pytorch"):   # both FID modes are scored, each needs its file
        assert f"Inception weights {tmp_path / 'nowhere.pt'} (FID mode {mode}) do not exist (4 cells" in err
    assert err.count("fix: ") == 4
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlruns.db").exists()


def test_preflight_reports_wrong_counts_an_unwritable_run_root_and_devices(tmp_path, synthetic_root):
    h2z = tmp_path / "data" / "horse2zebra"
    for split in ("trainA", "trainB", "testA", "testB"):
        (h2z / split).mkdir(parents=True)
        (h2z / split / "x.jpg").write_bytes(b"")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    grid = make_grid(tmp_path, tmp_path / "data", datasets=("horse2zebra",), run_root="a-file/runs",
                     device="cuda:1")
    problems, _ = preflight(expand(grid), cluster="local", stage="train", profile={}, folder=None, gpus_here=[0, 1])
    text = "\n".join(p.what + " | " + p.fix for p in problems)
    assert "is not the published horse2zebra (trainA: 1 images, expected 1067" in text
    assert "run folder" in text and "cannot be written" in text
    assert "device=cuda:1: a local sweep gives each job one GPU" in text and "CUDA_VISIBLE_DEVICES" in text
    problems, _ = preflight(expand(grid), cluster="slurm", stage="train", profile={"gpus_per_node": 0},
                            folder=None, gpus_here=[])
    assert any("gpus_per_node: 0" in p.what for p in problems)


def test_preflight_asks_the_tracking_server(tmp_path, synthetic_root):
    class Health(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/health" else 404)
            self.end_headers()
            self.wfile.write(b"OK")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        up = make_grid(tmp_path / "up", synthetic_root, tracking_uri=f"http://127.0.0.1:{server.server_address[1]}")
        problems, _ = preflight(expand(up), cluster="local", stage="train", profile={}, folder=None, gpus_here=[])
        assert problems == []
    finally:
        server.shutdown()
        server.server_close()
    problems, _ = preflight(expand(up), cluster="local", stage="train", profile={}, folder=None, gpus_here=[])
    assert len(problems) == 1 and "does not answer" in problems[0].what and "mlflow server" in problems[0].fix


def test_the_synthetic_dataset_is_generated_when_a_grid_needs_it(tmp_path, capsys):
    data = tmp_path / "fresh"
    grid = make_grid(tmp_path, data, preprocess="none")
    assert cli(["sweep", str(grid), "--dry-run"]) == 0
    assert f"would generate the synthetic dataset in {data / 'synthetic'} (32 px)" in capsys.readouterr().out
    assert not data.exists()
    problems, notes = preflight(expand(grid), cluster="local", stage="full", profile={}, folder=None, gpus_here=[])
    assert problems == [] and notes == [f"generated the synthetic dataset in {data / 'synthetic'} (32 px)"]
    meta = json.loads((data / "synthetic" / "meta.json").read_text())
    assert meta["size"] == 32 and len(list((data / "synthetic" / "trainA").iterdir())) == meta["counts"]["trainA"]


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_reproduce_table1_on_a_machine_without_gpu_stops_at_once(tmp_path):
    import subprocess
    import sys

    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")  # no GPU visible, whatever this machine has
    out = subprocess.run(["make", "-o", ".venv/.installed", "reproduce-table1", f"PY={sys.executable}"], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=300)
    text = out.stdout + out.stderr
    assert out.returncode == 2, text
    assert "GPU-hours" in text and "stopped:" in text and "make reproduce-table1 CLUSTER=slurm" in text
    assert "ALLOW_CPU=1" in text and "downloading" not in text and "qsattn data" not in out.stdout
