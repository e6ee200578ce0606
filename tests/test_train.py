"""Training engine: exact resume after SIGKILL, atomic checkpoints, config checks, translation parity, MLflow."""
import io
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from qsattn import checkpoint as ckpt_io
from qsattn.config import ConfigError, resolve
from qsattn.synthetic import generate

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"
TINY = ["ngf=8", "ndf=8", "netF_nc=32", "num_patches=32", "crop_size=32", "load_size=36", "log_every=2",
        "sample_every=0", "checkpoint_every=2"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    generate(root / "synthetic", size=32, n_train=12, n_test=4, seed=0)
    return root


def train_cmd(data_root, run_root, *extra):
    return [sys.executable, "-m", "qsattn", "train", "--no-progress", f"data_root={data_root}",
            f"run_root={run_root}", "tracking_uri=off", "method=qsattn-global", "deterministic=true",
            "n_epochs=2", "n_epochs_decay=1", *TINY, *extra]


def weights(run_dir: Path) -> dict:
    ckpt = ckpt_io.load(run_dir / "checkpoints" / "latest.pt")
    return {f"{net}.{k}": v for net in ("net_G", "net_D", "net_F") for k, v in ckpt[net].items()}


def test_resume_is_bit_identical_after_sigkill(data_root, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run(train_cmd(data_root, tmp_path / "straight"), check=True, env=env, cwd=tmp_path, timeout=300)

    run_dir = tmp_path / "killed" / "qsattn-global-synthetic-s0"
    latest = run_dir / "checkpoints" / "latest.pt"
    proc = subprocess.Popen(train_cmd(data_root, tmp_path / "killed"), env=env, cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not latest.exists() and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(random.Random(os.getpid()).uniform(0.0, 0.5))  # somewhere after the first checkpoint
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "DONE").exists(), "the run finished before the kill; the test proved nothing"
    killed_at = ckpt_io.load(latest)["step"]
    subprocess.run(train_cmd(data_root, tmp_path / "killed"), check=True, env=env, cwd=tmp_path, timeout=300)

    a, b = weights(tmp_path / "straight" / "qsattn-global-synthetic-s0"), weights(run_dir)
    assert ckpt_io.load(latest)["step"] == 36 and 0 < killed_at < 36
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run"


def test_a_kill_during_save_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "latest.pt"
    ckpt_io.atomic_save({"step": 1}, path)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # as if killed half-way through writing

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        ckpt_io.atomic_save({"step": 2}, path)
    assert ckpt_io.load(path) == {"step": 1}


def test_resuming_with_another_config_names_the_mismatched_keys(data_root, tmp_path):
    from qsattn.train import train

    base = {"data_root": str(data_root), "run_root": str(tmp_path), "tracking_uri": "off", "max_steps": 2,
            **dict(kv.split("=") for kv in TINY)}
    train(resolve({**base, "method": "cut", "name": "r"}), progress=False)
    (tmp_path / "r" / "DONE").unlink()  # pretend it is unfinished
    with pytest.raises(ConfigError, match=r"lambda_NCE: checkpoint 1.0 vs config 10.0"):
        train(resolve({**base, "method": "cut", "name": "r", "lambda_NCE": 10}), progress=False)
    train(resolve({**base, "method": "cut", "name": "r", "max_steps": 4}), progress=False)  # allowed difference
    assert ckpt_io.load(tmp_path / "r" / "checkpoints" / "latest.pt")["step"] == 4


def test_final_weights_are_exported_under_the_official_names(data_root, tmp_path):
    from qsattn.networks import generator_from_state_dict
    from qsattn.train import train

    cfg = resolve({"data_root": str(data_root), "run_root": str(tmp_path), "tracking_uri": "off", "max_steps": 2,
                   **dict(kv.split("=") for kv in TINY)})
    run_dir = train(cfg, progress=False)
    ckpt = ckpt_io.load(run_dir / "checkpoints" / "latest.pt")
    for name in ("G", "D", "F"):
        state = torch.load(run_dir / f"latest_net_{name}.pth", weights_only=True)
        assert state.keys() == ckpt[f"net_{name}"].keys()
        assert all(torch.equal(state[k], ckpt[f"net_{name}"][k]) for k in state)
    G = generator_from_state_dict(torch.load(run_dir / "latest_net_G.pth", weights_only=True))
    assert G.model[1].out_channels == 8


def test_translate_equals_the_official_test_output(tmp_path):
    fx = torch.load(FIXTURES / "parity_translate.pt", weights_only=True)
    common = torch.load(FIXTURES / "parity_common.pt", weights_only=True)
    torch.save(common["G"], tmp_path / "latest_net_G.pth")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "img.png").write_bytes(fx["input_png"].numpy().tobytes())
    subprocess.run([sys.executable, "-m", "qsattn", "translate", "--checkpoint", str(tmp_path / "latest_net_G.pth"),
                    "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--crop-size",
                    str(fx["crop_size"]), "--device", "cpu"], check=True, cwd=ROOT, timeout=120)
    ours = np.array(Image.open(tmp_path / "out" / "img.png"))
    official = np.array(Image.open(io.BytesIO(fx["output_png"].numpy().tobytes())))
    np.testing.assert_array_equal(ours, official)


def test_a_resumed_run_continues_the_same_mlflow_run(data_root, tmp_path):
    mlflow = pytest.importorskip("mlflow")
    from qsattn.train import train

    uri = f"sqlite:///{tmp_path}/mlruns.db"
    base = {"data_root": str(data_root), "run_root": str(tmp_path), "tracking_uri": uri, "name": "r",
            **dict(kv.split("=") for kv in TINY)}
    run_dir = train(resolve({**base, "max_steps": 2}), progress=False)
    (run_dir / "DONE").unlink()
    train(resolve({**base, "max_steps": 4}), progress=False)
    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("qsattn").experiment_id])
    assert len(runs) == 1
    assert [m.step for m in client.get_metric_history(runs[0].info.run_id, "G")] == [2, 4]
    assert runs[0].data.tags["method"] == "qsattn-global" and runs[0].data.params["ngf"] == "8"


def test_a_stop_request_saves_at_the_next_step_and_loses_nothing(data_root, tmp_path, monkeypatch):
    """What a preempted sweep job does on USR2 (slurm/job.py): the loop saves, then raises Stopped."""
    from qsattn import train as training

    real_step = training.train_step

    def step_then_request_stop(state, *args):
        losses = real_step(state, *args)
        if state.step == 5:
            training.STOP.set()
        return losses

    monkeypatch.setattr(training, "train_step", step_then_request_stop)
    cfg = resolve({"data_root": str(data_root), "run_root": str(tmp_path), "tracking_uri": "off",
                   **dict(kv.split("=") for kv in TINY), "checkpoint_every": 100})
    try:
        with pytest.raises(training.Stopped):
            training.train(cfg, progress=False)
    finally:
        training.STOP.clear()
    assert ckpt_io.load(tmp_path / cfg.run_name() / "checkpoints" / "latest.pt")["step"] == 5
    assert not training.RUNNING.is_set()
