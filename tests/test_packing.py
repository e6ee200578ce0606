"""Several cells per job (profile key `cells_per_gpu: K`, slurm/pack.py), on the CPU with the local executor:
a packed sweep gives the unpacked sweep's weights and metrics; a cell that fails leaves its neighbours
finished and is reported; a pack sent USR2 (submitit's preemption signal) saves every cell, requeues, resumes
each unfinished cell from its own checkpoint and starts none that finished or failed; `status` shows the packs."""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from qsattn.cli import main as cli
from test_sweep import TINY, mlflow_runs, status_rows, synthetic_root  # noqa: F401 - the fixture is used by name


def grid_file(folder: Path, data_root: Path, methods, datasets=("synthetic",), seeds=(0,), **overrides) -> Path:
    """A tiny grid; `methods` may map a method to its own overrides (e.g. a shorter run)."""
    folder.mkdir(parents=True, exist_ok=True)
    defaults = dict(TINY, run_root=str(folder / "runs"), data_root=str(data_root),
                    tracking_uri=f"sqlite:///{folder / 'mlruns.db'}", **overrides)
    grid = {"name": "t", "defaults": defaults, "methods": methods, "datasets": list(datasets), "seeds": list(seeds)}
    path = folder / "grid.yaml"
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    return path


def sweep(grid: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """`python -m qsattn sweep` in a fresh process, as a user runs it (the local executor starts jobs)."""
    return subprocess.run([sys.executable, "-m", "qsattn", "sweep", str(grid), *args], capture_output=True,
                          text=True, timeout=timeout, cwd=grid.parent)


def weights(run_dir: Path) -> dict:
    import torch

    return torch.load(Path(run_dir) / "latest_net_G.pth", weights_only=True)


def same_weights(a: dict, b: dict) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def wait_for(predicate, timeout: float, what: str, poll: float = 0.2):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def test_cells_per_gpu_is_validated_and_the_dry_run_shows_the_packing(tmp_path, synthetic_root, capsys,
                                                                          monkeypatch):
    from slurm import sweep as sweep_mod
    from slurm.grid import expand

    grid = grid_file(tmp_path, synthetic_root, ["cut", "fastcut"], seeds=(0, 1, 2))
    for bad in ("0", "-1", "1.5", "two", "true"):
        assert cli(["sweep", str(grid), "--dry-run", "--set", f"cells_per_gpu={bad}"]) == 2
        assert "cells_per_gpu must be an integer >= 1" in capsys.readouterr().err
    assert cli(["sweep", str(grid), "--dry-run", "--set", "cells_per_gpu=4"]) == 0
    out = capsys.readouterr().out
    assert "2 jobs, 1 at once (CPU)" in out and "4 cells per job side by side (cells_per_gpu: 4)" in out
    assert "job 1: cut-synthetic-s0, cut-synthetic-s1, cut-synthetic-s2, fastcut-synthetic-s0" in out
    assert "job 2: fastcut-synthetic-s1, fastcut-synthetic-s2" in out
    assert cli(["sweep", str(grid), "--dry-run", "--cluster", "slurm", "--profile", "example-cluster",
                "--set", "cells_per_gpu=3"]) == 0
    assert "2 jobs in one array (1 GPU(s), 8 CPUs each; at most 16 jobs at once), 2 torch threads per cell" \
        in capsys.readouterr().out
    assert not (tmp_path / "runs").exists()

    # locally: K cells at once on each visible GPU, each job pinned to its GPU; threads = cores / cells
    cells = expand(grid)
    gpu_cells = [dataclasses.replace(c, config=dataclasses.replace(c.config, device="auto")) for c in cells]
    monkeypatch.setattr(sweep_mod, "visible_gpus", lambda: [0, 1])
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    lay = sweep_mod.layout("local", {"cells_per_gpu": 4}, gpu_cells, None)
    assert (lay.slots, lay.threads, [len(j) for j in lay.jobs(gpu_cells)]) == ([0, 1], 2, [4, 2])
    assert sweep_mod.layout("local", {"cells_per_gpu": 4}, cells, None).slots == [None], "device: cpu cells"
    assert sweep_mod.layout("local", {"cells_per_gpu": 2}, gpu_cells, 2).slots == [0]
    assert sweep_mod.layout("slurm", {"cells_per_gpu": 4, "cpus_per_task": 8}, cells, None).threads == 2


def test_a_packed_sweep_gives_the_unpacked_results_and_a_failing_cell_leaves_its_neighbours_finished(
        tmp_path, synthetic_root, capsys):
    cells = ["--only", "name=cut-synthetic-s0|cut-broken-s0|fastcut-synthetic-s0"]
    packed = grid_file(tmp_path / "packed", synthetic_root, ["cut", "fastcut"], datasets=("synthetic", "broken"),
                       max_steps=2, eval_metrics="synthetic_gt")  # (the broken copy keeps its ground truth)
    out = sweep(packed, *cells, "--set", "cells_per_gpu=3")
    assert out.returncode == 1, out.stdout + out.stderr[-3000:]
    assert out.stdout.count("started pack [") == 1, out.stdout
    assert "done    cut-synthetic-s0" in out.stdout and "done    fastcut-synthetic-s0" in out.stdout
    assert "FAILED  cut-broken-s0: DataError" in out.stdout

    rows = status_rows(packed, capsys)
    good = [rows["cut-synthetic-s0"], rows["fastcut-synthetic-s0"]]
    bad = rows["cut-broken-s0"]
    assert [r["state"] for r in good] == ["done", "done"] and bad["state"] == "failed" and "DataError" in bad["error"]
    assert rows["fastcut-broken-s0"]["state"] == "pending"
    assert len({(r["job_id"], r["pack"]) for r in [*good, bad]}) == 1 and good[0]["pack"], "one job, one pack"
    for r in [*good, bad]:  # each cell its own log, records and (when it ran) MLflow run
        assert (Path(r["run_dir"]) / "sweep" / "log.txt").exists()
    log = (Path(bad["run_dir"]) / "sweep" / "log.txt").read_text()
    assert "DataError: 1 unusable image(s)" in log and "zz_unreadable.png" in log
    assert sorted(r.info.run_id for r in mlflow_runs(tmp_path / "packed")) == sorted(r["mlflow_run_id"] for r in good)
    capsys.readouterr()
    assert cli(["status", str(packed), "--no-mlflow"]) == 0
    table = capsys.readouterr().out
    assert "pack" in table.splitlines()[0] and good[0]["pack"] in table and "2 done, 1 failed, 1 pending" in table

    # the same cells unpacked, in this process
    unpacked = grid_file(tmp_path / "unpacked", synthetic_root, ["cut", "fastcut"], datasets=("synthetic",),
                         max_steps=2)
    assert cli(["sweep", str(unpacked), "--cluster", "debug"]) == 0
    for ref in status_rows(unpacked, capsys).values():
        got = rows[ref["name"]]
        assert got["id"] == ref["id"]
        assert same_weights(weights(got["run_dir"]), weights(ref["run_dir"])), ref["name"]
        metrics = [json.loads((Path(r["run_dir"]) / "metrics.json").read_text())["metrics"] for r in (got, ref)]
        assert metrics[0] == metrics[1] and metrics[0], ref["name"]


def test_a_packed_job_sent_usr2_resumes_each_unfinished_cell_from_its_checkpoint_and_restarts_none_that_ended(
        tmp_path, synthetic_root, capsys):
    # the long cells log only at steps 20 and 40, so that no tracking write is in flight when they are paused
    methods = {"cut": {"max_steps": 2}, "fastcut": {"max_steps": 40, "log_every": 20}}
    steps = dict(n_epochs=5, checkpoint_every=2, log_every=2)
    grid = grid_file(tmp_path / "packed", synthetic_root, methods, datasets=("synthetic", "broken"), seeds=(0, 1),
                     **steps)
    only = ["--only", "name=cut-synthetic-s0|cut-broken-s0|fastcut-synthetic-s0|fastcut-synthetic-s1"]
    launcher = subprocess.Popen([sys.executable, "-m", "qsattn", "sweep", str(grid), *only, "--stage", "train",
                                 "--set", "cells_per_gpu=4"], cwd=tmp_path, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
    paused: list[int] = []  # cell processes stopped with SIGSTOP, continued in any case
    try:
        def started_runs() -> dict[str, Path]:  # cell name -> run folder
            return {p.parent.parent.name.rsplit("-", 1)[0]: p.parent.parent
                    for p in (tmp_path / "packed" / "runs").glob("*/sweep/started.json")}

        wait_for(lambda: len(started_runs()) == 4, 180, "the four cells to start")
        runs = started_runs()
        short, failing = runs["cut-synthetic-s0"], runs["cut-broken-s0"]
        long_ = [runs["fastcut-synthetic-s0"], runs["fastcut-synthetic-s1"]]
        # Each long cell is paused (SIGSTOP) as soon as its first checkpoint exists, so that it is mid-training
        # when the signal comes however slowly its neighbours start or fail on this machine; the USR2 the pack
        # passes on stays pending in a stopped process and is handled first when it continues.
        for run in long_:
            wait_for(lambda: (run / "checkpoints" / "latest.pt").exists() or (run / "DONE").exists(), 180,
                     f"{run.name}'s first checkpoint", poll=0.02)
            assert not (run / "DONE").exists(), "a long cell ended before its first checkpoint was seen"
            pid = json.loads((run / "sweep" / "started.json").read_text())["pid"]
            os.kill(pid, signal.SIGSTOP)
            paused.append(pid)
        wait_for(lambda: (short / "DONE").exists() and (failing / "sweep" / "failed.json").exists(), 180,
                 "the short cell to finish and the broken one to fail")
        assert not any((r / "DONE").exists() for r in long_)
        started = {r: json.loads((r / "sweep" / "started.json").read_text()) for r in runs.values()}
        pack_pid = started[short]["pack_pid"]
        assert {s["pack_pid"] for s in started.values()} == {pack_pid}
        os.kill(pack_pid, signal.SIGUSR2)
        time.sleep(1)  # the pack's handler passes USR2 on at once; it is pending in the paused cells
        for pid in paused:
            os.kill(pid, signal.SIGCONT)
        paused.clear()

        # meanwhile, the same long cells uninterrupted, in this process
        reference = grid_file(tmp_path / "reference", synthetic_root, methods, seeds=(0, 1), **steps)  # same ids
        assert cli(["sweep", str(reference), "--only", "method=fastcut", "--cluster", "debug", "--stage", "train"]) == 0
        out, _ = launcher.communicate(timeout=300)
    finally:
        for pid in paused:
            os.kill(pid, signal.SIGCONT)
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode == 1, out
    assert out.count("done    ") == 3 and out.count("FAILED  cut-broken-s0: DataError") == 1, out

    for run in long_:
        records = {p.stem: json.loads(p.read_text()) for p in (run / "sweep").glob("*.json")}
        assert records["preempted"]["time"] < records["started"]["time"] < records["finished"]["time"]
        assert records["started"]["pid"] != started[run]["pid"], "restarted by the requeued pack"
        assert (run / "DONE").read_text().strip() == "step 40"
        log = (run / "sweep" / "log.txt").read_text()
        assert "stopped on USR2" in log and "resumed" in log and log.count("=== ") == 2
    for run in (short, failing):  # neither started again by the requeued pack
        assert json.loads((run / "sweep" / "started.json").read_text()) == started[run], run.name
        assert (run / "sweep" / "log.txt").read_text().count("=== ") == 1
    assert "failed" in {p.stem for p in (failing / "sweep").glob("*.json")}

    for ref in status_rows(reference, capsys).values():
        if ref["state"] == "trained":
            got = runs[ref["name"]]
            assert same_weights(weights(got), weights(ref["run_dir"])), f"{ref['name']}: resumed weights differ"
    packed_runs = mlflow_runs(tmp_path / "packed")
    assert len(packed_runs) == 3, "one MLflow run per cell across the requeue"
