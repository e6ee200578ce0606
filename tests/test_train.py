"""Training engine: exact resume after SIGKILL, atomic checkpoints, config checks, translation parity, MLflow."""
import errno
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

from qsattn.engine import checkpoint as ckpt_io
from qsattn.engine.config import ConfigError, resolve
from qsattn.data.synthetic import generate

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
    from qsattn.engine.train import train

    base = {"data_root": str(data_root), "run_root": str(tmp_path), "tracking_uri": "off", "max_steps": 2,
            **dict(kv.split("=") for kv in TINY)}
    train(resolve({**base, "method": "cut", "name": "r"}), progress=False)
    (tmp_path / "r" / "DONE").unlink()  # pretend it is unfinished
    with pytest.raises(ConfigError, match=r"lambda_NCE: checkpoint 1.0 vs config 10.0"):
        train(resolve({**base, "method": "cut", "name": "r", "lambda_NCE": 10}), progress=False)
    train(resolve({**base, "method": "cut", "name": "r", "max_steps": 4}), progress=False)  # allowed difference
    assert ckpt_io.load(tmp_path / "r" / "checkpoints" / "latest.pt")["step"] == 4


def test_final_weights_are_exported_under_the_official_names(data_root, tmp_path):
    from baselines.networks import generator_from_state_dict
    from qsattn.engine.train import train

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


@pytest.mark.float_paths
def test_translate_equals_the_official_test_output(tmp_path):
    fx = torch.load(FIXTURES / "parity_translate.pt", weights_only=True)
    common = torch.load(FIXTURES / "parity_common.pt", weights_only=True)
    torch.save(common["G"], tmp_path / "latest_net_G.pth")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "img.png").write_bytes(fx["input_png"].numpy().tobytes())
    subprocess.run([sys.executable, "-m", "qsattn", "translate", "--checkpoint", str(tmp_path / "latest_net_G.pth"),
                    "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--crop-size",
                    str(fx["crop_size"]), "--device", "cpu"], check=True, cwd=ROOT, timeout=120)
    ours = np.array(Image.open(tmp_path / "out" / "img.png")).astype(int)
    official = np.array(Image.open(io.BytesIO(fx["output_png"].numpy().tobytes()))).astype(int)
    # Byte-equal except where another CPU's rounding can cross a level: the 8-bit value is
    # floor((x + 1) / 2 * 255) of G's output x, and test_parity holds x to |dx| <= 1e-6 + 1e-5 |x| <= 1.1e-5
    # of the official fake_B (on the machine the fixture came from, another float path), i.e. 127.5 * 1.1e-5
    # = 1.4e-3 levels. Only a pixel whose official value lies that close to an integer may differ, by one.
    levels = ((fx["fake_B"][0].permute(1, 2, 0).double() + 1) / 2 * 255).numpy()
    near_a_level = np.minimum(levels % 1, 1 - levels % 1) <= 127.5 * 1.1e-5
    assert ours.shape == official.shape
    np.testing.assert_array_equal(ours[~near_a_level], official[~near_a_level])
    assert np.abs(ours - official)[near_a_level].max(initial=0) <= 1


def test_a_resumed_run_continues_the_same_mlflow_run(data_root, tmp_path):
    mlflow = pytest.importorskip("mlflow")
    from qsattn.engine.train import train

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
    assert runs[0].data.tags["method"] == "qsattn-global" and runs[0].data.params["networks/ngf"] == "8"


def test_a_stop_request_saves_at_the_next_step_and_loses_nothing(data_root, tmp_path, monkeypatch):
    """What a preempted sweep job does on USR2 (slurm/job.py): the loop saves, then raises Stopped."""
    from qsattn.engine import train as training

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


# --- files and state: saves leave nothing behind, in the right order -------------------------------------

def tiny(data_root, run_root, **values):
    return resolve({"data_root": str(data_root), "run_root": str(run_root), "tracking_uri": "off",
                    **dict(kv.split("=") for kv in TINY), **values})


def temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(".*.tmp-*"))


def test_a_failed_save_removes_its_temporary_file(tmp_path, monkeypatch):
    from qsattn.engine import atomic

    real_save = torch.save

    def write_half_then_fail(obj, fh, *args, **kwargs):
        real_save(obj, fh)
        raise OSError("the disk went away half-way")

    monkeypatch.setattr(torch, "save", write_half_then_fail)
    with pytest.raises(OSError, match="half-way"):
        ckpt_io.atomic_save({"w": torch.zeros(1000)}, tmp_path / "latest.pt")
    monkeypatch.undo()

    def refuse(*args):
        raise PermissionError("the rename was refused")

    monkeypatch.setattr(atomic.os, "replace", refuse)
    with pytest.raises(PermissionError):
        atomic.atomic_write_text(tmp_path / "config.yaml", "lr: 0.0002\n")
    assert temporaries(tmp_path) == [] and not (tmp_path / "latest.pt").exists()


def test_temporaries_left_by_a_killed_save_are_swept_at_start(data_root, tmp_path):
    from qsattn.engine.train import train

    cfg = tiny(data_root, tmp_path, max_steps=2, name="r")
    run_dir = tmp_path / "r"
    (run_dir / "checkpoints").mkdir(parents=True)
    stale = [run_dir / "checkpoints" / ".latest.pt.tmp-4242", run_dir / "checkpoints" / ".epoch_0001.pt.tmp-77",
             run_dir / ".latest_net_G.pth.tmp-4242", run_dir / ".config.yaml.tmp-9"]
    for path in stale:
        path.write_bytes(b"\0" * 1000)  # what SIGKILL during torch.save leaves
    (run_dir / ".notes.tmp-1").write_text("not ours: kept")
    train(cfg, progress=False)
    assert temporaries(run_dir) == [".notes.tmp-1"]


def test_an_epoch_checkpoint_is_never_skipped_by_a_kill_at_the_epoch_end(data_root, tmp_path, monkeypatch):
    """Killed right after the first of the two saves at an epoch's end (latest.pt, epoch_0001.pt, in some
    order), the resumed run still has every kept epoch checkpoint, at the step that ended the epoch."""
    from qsattn.engine import train as training

    cfg = tiny(data_root, tmp_path, n_epochs=2, n_epochs_decay=0, checkpoint_every=0, keep_epoch_checkpoints=1,
               max_dataset_size=4)  # epochs of 4 steps
    steps, killed = [0], []
    real_step, real_save = training.train_step, ckpt_io.atomic_save

    def counting_step(state, *args):
        steps[0] += 1
        return real_step(state, *args)

    def save_then_die_once(obj, path):
        real_save(obj, path)
        if steps[0] == 4 and not killed:  # the first save once epoch 1 (4 images, batch 1) is complete
            killed.append(Path(path).name)
            raise KeyboardInterrupt

    monkeypatch.setattr(training, "train_step", counting_step)
    monkeypatch.setattr(ckpt_io, "atomic_save", save_then_die_once)
    with pytest.raises(KeyboardInterrupt):
        training.train(cfg, progress=False)
    assert killed
    training.train(cfg, progress=False)
    checkpoints = tmp_path / cfg.run_name() / "checkpoints"
    assert sorted(p.name for p in checkpoints.glob("epoch_*.pt")) == ["epoch_0001.pt", "epoch_0002.pt"]
    assert ckpt_io.load(checkpoints / "epoch_0001.pt")["step"] == 4


def test_a_refused_resume_leaves_the_runs_config_yaml(data_root, tmp_path):
    import yaml

    from qsattn.engine.train import train

    train(tiny(data_root, tmp_path, method="cut", name="r", max_steps=2), progress=False)
    (tmp_path / "r" / "DONE").unlink()  # unfinished
    with pytest.raises(ConfigError, match="lambda_NCE: checkpoint 1.0 vs config 10.0"):
        train(tiny(data_root, tmp_path, method="cut", name="r", max_steps=2, lambda_NCE=10), progress=False)
    assert yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())["lambda_NCE"] == 1.0


def test_a_finished_run_rerun_with_another_config_is_refused_not_skipped(data_root, tmp_path):
    from qsattn.engine.train import train

    train(tiny(data_root, tmp_path, method="cut", name="r", max_steps=2), progress=False)
    with pytest.raises(ConfigError, match=r"finished \(step 2\) with another config.*lambda_NCE: checkpoint 1.0 vs config 10.0"):
        train(tiny(data_root, tmp_path, method="cut", name="r", max_steps=2, lambda_NCE=10), progress=False)


def test_a_larger_max_steps_extends_a_finished_run_as_if_never_stopped(data_root, tmp_path):
    from qsattn.engine.train import train

    straight = train(tiny(data_root, tmp_path / "a", max_steps=4, deterministic=True), progress=False)
    run_dir = train(tiny(data_root, tmp_path / "b", max_steps=2, deterministic=True), progress=False)
    assert (run_dir / "DONE").read_text() == "step 2\n"
    train(tiny(data_root, tmp_path / "b", max_steps=4, deterministic=True), progress=False)
    assert (run_dir / "DONE").read_text() == "step 4\n"
    a, b = weights(straight), weights(run_dir)
    assert all(torch.equal(a[k], b[k]) for k in a), "the extended run differs from one trained to 4 steps at once"
    exported = torch.load(run_dir / "latest_net_G.pth", weights_only=True)
    assert all(torch.equal(v, b[f"net_G.{k}"]) for k, v in exported.items())  # the export is the extended G
    mtime = (run_dir / "checkpoints" / "latest.pt").stat().st_mtime_ns
    train(tiny(data_root, tmp_path / "b", max_steps=3, deterministic=True), progress=False)  # a smaller cap
    assert (run_dir / "DONE").read_text() == "step 4\n"
    assert (run_dir / "checkpoints" / "latest.pt").stat().st_mtime_ns == mtime  # nothing done


def test_a_nan_stops_the_run_before_it_replaces_a_good_checkpoint_or_exports(data_root, tmp_path, monkeypatch):
    """Between readouts (log_every=100) nothing looks at the losses; a NaN weight at step 3 must still never
    reach the checkpoint of step 4, the exported weights or DONE."""
    from qsattn.engine import train as training

    real_step = training.train_step

    def step_then_poison(state, *args):
        losses = real_step(state, *args)
        if state.step == 3:
            with torch.no_grad():
                next(state.G.parameters()).view(-1)[0] = float("nan")
        return losses

    monkeypatch.setattr(training, "train_step", step_then_poison)
    cfg = tiny(data_root, tmp_path, max_steps=6, log_every=100, checkpoint_every=2)
    with pytest.raises(FloatingPointError, match=r"non-finite .*weights \(G.* at step 4: .*latest.pt is the last good"):
        training.train(cfg, progress=False)
    run_dir = tmp_path / cfg.run_name()
    ckpt = ckpt_io.load(run_dir / "checkpoints" / "latest.pt")
    assert ckpt["step"] == 2 and all(torch.isfinite(v).all() for v in ckpt["net_G"].values())
    assert not list(run_dir.glob("latest_net_*.pth")) and not (run_dir / "DONE").exists()


def test_nce_layers_and_the_official_local_rule_are_checked_against_the_network(data_root, tmp_path, monkeypatch):
    from qsattn.engine import train as training

    monkeypatch.setattr(training, "train_step", lambda *a: pytest.fail("a step ran before the check"))
    with pytest.raises(ConfigError, match=r"nce_layers: 99 is not a layer of this generator \(netG=resnet_9blocks: layers 0\.\.31\)"):
        training.train(tiny(data_root, tmp_path, method="cut", nce_layers="0,4,99"), progress=False)
    # TINY: ngf=8, so the QS layers 12 and 16 have 4 * 8 = 32 channels
    with pytest.raises(ConfigError, match=r"num_patches=16: the official local layout .* needs num_patches equal to the "
                                          r"channel count of the QS layers \(32 here.*set num_patches=32, or "
                                          r"local_layout=corrected"):
        training.train(tiny(data_root, tmp_path, method="qsattn-local", num_patches=16), progress=False)


def test_a_second_train_on_the_same_folder_stops_at_once_naming_the_holder(data_root, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = train_cmd(data_root, tmp_path, "n_epochs=100000", "checkpoint_every=0")
    first = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        lock = tmp_path / "qsattn-global-synthetic-s0" / ".lock"
        deadline = time.time() + 120
        while not (lock.exists() and f"pid {first.pid} " in lock.read_text()) and time.time() < deadline:
            assert first.poll() is None, "the first training process ended early"
            time.sleep(0.1)
        second = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and f"in use by pid {first.pid} on " in lines[0], second.stderr
        assert first.poll() is None  # the holder is untouched
    finally:
        first.kill()
        first.wait()


def test_a_full_disk_is_one_error_naming_the_file_and_the_space(tmp_path, monkeypatch):
    """Simulated ENOSPC (fsync is where network file systems report it); a real full disk: the tmpfs test."""
    from qsattn.engine import atomic
    from qsattn.engine.atomic import DiskFull

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "fsync", no_space)
    with pytest.raises(DiskFull, match=r"disk full: writing .*latest\.pt needs about 3\.8 MB, .* free"):
        ckpt_io.atomic_save({"w": torch.zeros(1_000_000)}, tmp_path / "latest.pt")
    assert temporaries(tmp_path) == []


@pytest.fixture
def small_tmpfs(tmp_path):
    """A real 4 MB file system (needs root and mount permission, else skipped): room for one checkpoint of
    the tiny model (2.9 MB), not for the next one beside it."""
    mount = tmp_path / "full"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({made.stderr.decode().strip() or made.returncode})")
    try:
        yield mount
    finally:
        if subprocess.run(["umount", str(mount)]).returncode != 0:
            subprocess.run(["umount", "-l", str(mount)], check=True)  # detach it even if something still holds it


def test_a_run_on_a_full_disk_stops_with_one_error_and_leaves_nothing_behind(data_root, small_tmpfs):
    from qsattn.engine.atomic import DiskFull
    from qsattn.engine.train import train

    cfg = tiny(data_root, small_tmpfs, max_steps=8, checkpoint_every=2)
    latest = small_tmpfs / cfg.run_name() / "checkpoints" / "latest.pt"
    for attempt in range(2):  # the first run, then a resume on the still full disk: the same clean error
        with pytest.raises(DiskFull, match=rf"writing {latest} needs about 2\.\d MB, [\d.]+ [kM]B free"):
            train(cfg, progress=False)
        assert temporaries(small_tmpfs) == []
        assert ckpt_io.load(latest)["step"] == 2
    with pytest.raises(DiskFull, match="blob.pt needs about"):  # not tensors: refused after the write failed
        ckpt_io.atomic_save({"blob": b"x" * 3_000_000}, small_tmpfs / "blob.pt")
    assert temporaries(small_tmpfs) == []
