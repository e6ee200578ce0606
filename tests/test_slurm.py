"""Sweeps on a real single-node SLURM cluster (slurm/local-cluster.sh): a job array with results
collected and a failed cell reported by `status`; a job preempted mid-training (USR2, submitit's
signal) requeues, resumes from its checkpoint and ends with the weights of an uninterrupted run; a packed
job (cells_per_gpu: 2) preempted likewise resumes each of its cells.
Skipped, with the reason, where the cluster cannot start (no slurm-wlm/munge, not root)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_sweep import make_grid, synthetic_root  # noqa: F401 - the fixture is used by name

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "slurm" / "local-cluster.sh"

pytestmark = pytest.mark.slurm


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    """The local cluster, started for these tests and stopped after (left alone if it was running)."""
    state = os.environ.get("QSATTN_SLURM_DIR", "/tmp/qsattn-slurm")
    env = dict(os.environ, QSATTN_SLURM_DIR=state)
    was_running = subprocess.run([str(SCRIPT), "status"], env=env, capture_output=True).returncode == 0
    started = subprocess.run([str(SCRIPT), "start"], env=env, capture_output=True, text=True)
    if started.returncode != 0:
        pytest.skip(f"local SLURM cluster unavailable: {(started.stderr or started.stdout).strip()[-500:]}")
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = f"{state}/slurm.conf"
    yield os.environ["SLURM_CONF"]
    if old is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = old
    if not was_running:
        subprocess.run([str(SCRIPT), "stop"], env=env, capture_output=True)


def qsattn(*args, timeout=600, cwd=None) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "qsattn", *args], capture_output=True, text=True, timeout=timeout,
                         cwd=cwd)
    return out


def status(grid: Path) -> dict[str, dict]:
    out = qsattn("status", str(grid), "--json", "--no-mlflow")
    assert out.returncode == 0, out.stderr
    return {r["name"]: r for r in map(json.loads, out.stdout.splitlines())}


def release_requeued(job_id: str) -> None:
    """Start a requeued job now instead of after SLURM's ~2-minute requeue delay. Not in the second of the
    requeue: slurmd revoked the job's old credential then, and a launch within that same second is
    refused ("Job credential revoked") and the job ends failed without running."""
    time.sleep(2)
    subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], capture_output=True)


def wait_for(predicate, timeout: float, what: str, poll: float = 0.5):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def squeue_state(job_id: str) -> str:
    out = subprocess.run(["squeue", "-h", "-r", "-j", job_id.split("_")[0], "-o", "%i|%T"],
                         capture_output=True, text=True)
    states = dict(line.split("|", 1) for line in out.stdout.split() if "|" in line)
    return states.get(job_id, "")


def test_a_sweep_runs_as_one_job_array_and_status_reports_the_failed_cell(slurm_cluster, tmp_path, synthetic_root):
    grid = make_grid(tmp_path, synthetic_root, methods=("cut", "fastcut"), datasets=("synthetic", "broken"),
                     max_steps=2)
    out = qsattn("sweep", str(grid), "--only", "dataset=synthetic", "--only", "method=cut",
                 "--only", "method=fastcut", "--cluster", "slurm", "--profile", "local", "--stage", "train", "--wait",
                 cwd=tmp_path, timeout=900)
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    out_fail = qsattn("sweep", str(grid), "--only", "dataset=broken", "--only", "method=cut", "--cluster", "slurm",
                      "--profile", "local", "--stage", "train", "--wait", cwd=tmp_path, timeout=600)
    assert out_fail.returncode == 1 and "FAILED  cut-broken-s0" in out_fail.stdout, out_fail.stdout
    rows = status(grid)
    good = [rows["cut-synthetic-s0"], rows["fastcut-synthetic-s0"]]
    assert [r["state"] for r in good] == ["trained", "trained"]
    array_ids = {r["job_id"].split("_")[0] for r in good}
    assert len(array_ids) == 1 and {r["job_id"].split("_")[1] for r in good} == {"0", "1"}, "one array"
    assert all(r["mlflow_run_id"] for r in good)
    for r in good:  # the id status shows names the job's log, which the sweep printed
        assert Path(r["log"]).is_file() and r["job_id"] in Path(r["log"]).name, r
        assert f"as job {r['job_id']} (log {r['log']})" in out.stdout
    assert not list((tmp_path / "runs" / "_submitit").glob("*%*")), "no folder named after an unformatted tag"
    assert rows["cut-broken-s0"]["state"] == "failed" and rows["cut-broken-s0"]["error"]
    assert rows["fastcut-broken-s0"]["state"] == "pending"
    text = qsattn("status", str(grid), "--no-mlflow").stdout
    assert "failed cut-broken-s0:" in text and "2 trained" in text


def test_a_preempted_job_requeues_resumes_its_checkpoint_and_ends_with_the_uninterrupted_weights(
        slurm_cluster, tmp_path, synthetic_root):
    import torch

    steps = dict(max_steps=24, n_epochs=3, checkpoint_every=2, log_every=2)
    grid = make_grid(tmp_path / "preempted", synthetic_root, **steps)
    out = qsattn("sweep", str(grid), "--cluster", "slurm", "--profile", "local", "--stage", "train",
                 cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    (row,) = status(grid).values()
    job_id, run_dir = row["job_id"], Path(row["run_dir"])

    checkpoint = run_dir / "checkpoints" / "latest.pt"
    wait_for(lambda: checkpoint.exists() or (run_dir / "DONE").exists(), 300, "the first checkpoint", poll=0.1)
    assert not (run_dir / "DONE").exists(), "training ended before it could be preempted; make it longer"
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True)
    wait_for(lambda: (run_dir / "sweep" / "preempted.json").exists(), 120, "checkpoint() to run")
    wait_for(lambda: squeue_state(job_id) in ("PENDING", "REQUEUED", "RUNNING", "CONFIGURING")
             and (squeue_state(job_id) != "RUNNING"
                  or json.loads((run_dir / "sweep" / "started.json").read_text())["restarts"] >= 1),
             120, "the requeue")
    release_requeued(job_id)

    # meanwhile, the same cell uninterrupted, in this process
    from qsattn.cli import main as cli

    reference = make_grid(tmp_path / "reference", synthetic_root, **steps)
    assert cli(["sweep", str(reference), "--cluster", "debug", "--stage", "train"]) == 0
    wait_for(lambda: (run_dir / "sweep" / "finished.json").exists() or (run_dir / "sweep" / "failed.json").exists(),
             600, "the requeued job to finish", poll=1.0)
    records = {p.stem: json.loads(p.read_text()) for p in (run_dir / "sweep").glob("*.json")}
    assert "failed" not in records, records.get("failed", {}).get("traceback")
    assert records["started"]["restarts"] >= 1 and records["started"]["job_id"] == job_id
    assert records["preempted"]["time"] < records["finished"]["time"]
    assert (run_dir / "DONE").read_text().strip() == "step 24"

    (ref,) = status(reference).values()
    got = torch.load(run_dir / "latest_net_G.pth", weights_only=True)
    want = torch.load(Path(ref["run_dir"]) / "latest_net_G.pth", weights_only=True)
    assert all(torch.equal(got[k], want[k]) for k in want), "resumed weights differ from the uninterrupted run"

    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'preempted' / 'mlruns.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1, "one MLflow run across the requeue"
    assert sorted(m.step for m in client.get_metric_history(runs[0].info.run_id, "NCE"))[-1] == 24


def test_a_preempted_packed_job_requeues_and_resumes_each_of_its_cells(slurm_cluster, tmp_path, synthetic_root):
    """`scancel --signal=USR2` reaches every process of the job step, the pack and its cells: each cell
    saves once and stops, the pack requeues, and the requeued pack resumes both (the resumed weights are
    the uninterrupted ones: tests/test_packing.py, the same code on the local executor)."""
    steps = dict(max_steps=60, n_epochs=8, checkpoint_every=2, log_every=2)
    grid = make_grid(tmp_path / "packed", synthetic_root, methods=("cut", "fastcut"), **steps)
    out = qsattn("sweep", str(grid), "--cluster", "slurm", "--profile", "local", "--stage", "train",
                 "--set", "cells_per_gpu=2", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    assert "submitted pack [cut-synthetic-s0, fastcut-synthetic-s0] as job" in out.stdout, out.stdout
    rows = status(grid)
    assert len({(r["job_id"], r["pack"]) for r in rows.values()}) == 1, rows
    job_id = rows["cut-synthetic-s0"]["job_id"]
    run_dirs = [Path(r["run_dir"]) for r in rows.values()]

    wait_for(lambda: all((d / "checkpoints" / "latest.pt").exists() for d in run_dirs)
             or any((d / "DONE").exists() for d in run_dirs), 300, "both cells' first checkpoints", poll=0.1)
    assert not any((d / "DONE").exists() for d in run_dirs), "a cell ended before it could be preempted"
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True)
    wait_for(lambda: all((d / "sweep" / "preempted.json").exists() for d in run_dirs), 120, "both cells to stop")

    def requeued() -> bool:
        state = squeue_state(job_id)
        restarted = any(json.loads((d / "sweep" / "started.json").read_text())["restarts"] >= 1 for d in run_dirs)
        return state in ("PENDING", "REQUEUED", "CONFIGURING") or (state == "RUNNING" and restarted)

    wait_for(requeued, 120, "the requeue")
    release_requeued(job_id)
    wait_for(lambda: all((d / "sweep" / "finished.json").exists() or (d / "sweep" / "failed.json").exists()
                         for d in run_dirs), 600, "the requeued pack to finish", poll=1.0)
    for d in run_dirs:
        records = {p.stem: json.loads(p.read_text()) for p in (d / "sweep").glob("*.json")}
        assert "failed" not in records, records.get("failed", {}).get("error")
        assert records["started"]["restarts"] >= 1 and records["started"]["job_id"] == job_id
        assert records["preempted"]["time"] < records["started"]["time"] < records["finished"]["time"]
        log = (d / "sweep" / "log.txt").read_text()
        assert log.count("stopped on USR2") == 1 and "resumed" in log, log[-2000:]
        assert (d / "DONE").read_text().strip() == "step 60"
    assert {r["state"] for r in status(grid).values()} == {"trained"}
