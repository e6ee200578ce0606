"""Sweeps run at the same time never train a cell twice: each job holds its cell's run-folder lock, a job
that meets a held lock skips the cell ("running elsewhere": not failed, no record, no MLflow run), plan()
skips cells whose folder a live process holds, and status and report call a cell running only when a
live process holds it, never because of records or an MLflow run a killed job left behind."""
from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from qsattn.cli import main as cli
from slurm.grid import expand
from test_sweep import make_grid, mlflow_runs, status_rows, synthetic_root  # noqa: F401 - fixture used by name

HOLD = "import sys, time; from qsattn.engine.run_folder import locked\nwith locked(sys.argv[1]):\n    print('held', flush=True); time.sleep(120)"


@pytest.fixture
def held(request):
    """Hold a run folder's lock from another live process, as a second sweep's training would."""
    procs = []

    def hold(run_dir: Path) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "held"
        procs.append(proc)
        return proc

    yield hold
    for proc in procs:
        proc.kill()
        proc.wait()


def test_a_job_whose_cell_is_held_elsewhere_is_skipped_not_failed(tmp_path, synthetic_root, held, capsys):
    from slurm.job import BUSY, CellJob, read_records
    from slurm.sweep import plan

    grid = make_grid(tmp_path, synthetic_root)
    (cell,) = expand(grid)
    holder = held(cell.run_dir)
    result = CellJob(cell.config, "train")()  # the job side: a second sweep's job reaching the cell
    assert result["state"] == BUSY and f"pid {holder.pid} on " in result["detail"]
    assert read_records(cell.run_dir) == {} and not (cell.run_dir / "mlflow_run_id").exists()
    assert not (tmp_path / "mlruns.db").exists(), "no MLflow run was opened"
    todo, skipped = plan([cell], "train")  # the launcher side
    assert todo == [] and skipped[cell.name].startswith(f"running elsewhere (pid {holder.pid} on ")
    (row,) = status_rows(grid, capsys).values()
    assert row["state"] == "running" and f"pid {holder.pid}" in row["holder"]
    assert cli(["sweep", str(grid), "--cluster", "debug", "--stage", "train"]) == 0
    assert f"skip    {cell.name}: running elsewhere" in capsys.readouterr().out
    holder.kill()
    holder.wait()
    assert plan([cell], "train")[0] == [cell]


def test_a_packed_cell_held_elsewhere_exits_as_skipped(tmp_path, synthetic_root, held):
    from slurm.pack import BUSY_EXIT

    (cell,) = expand(make_grid(tmp_path, synthetic_root))
    held(cell.run_dir)
    cfg_file = tmp_path / "cfg.pkl"
    cfg_file.write_bytes(pickle.dumps(cell.config))
    code = ("import pickle, sys; from slurm.pack import run_packed_cell\n"
            "run_packed_cell(pickle.load(open(sys.argv[1], 'rb')), 'train', {'job_id': 'j', 'pack': 'p'})")
    out = subprocess.run([sys.executable, "-c", code, str(cfg_file)], capture_output=True, text=True, timeout=300)
    assert out.returncode == BUSY_EXIT, out.stderr[-2000:]
    assert "running elsewhere" in (cell.run_dir / "sweep" / "log.txt").read_text()


def test_records_left_by_a_dead_or_unrelated_process_never_say_running(tmp_path, synthetic_root, held, capsys):
    from qsattn.engine.tracking import open_tracker
    from results.runs import load_runs
    from slurm.job import write_record

    grid = make_grid(tmp_path, synthetic_root)
    (cell,) = expand(grid)
    # a job that was killed: its MLflow run is left RUNNING and its record names a live pid that is not
    # training (here, this test's own process)
    tracker = open_tracker(cell.config, cell.run_dir, {"method": "cut", "dataset": "synthetic", "seed": 0,
                                                       "run_dir": str(cell.run_dir)})
    assert tracker.flush(), "the run is in MLflow (the tracker sends in the background)"
    write_record(cell.run_dir, "started", job_id=str(os.getpid()), pid=os.getpid())
    (row,) = status_rows(grid, capsys).values()
    assert row["state"] == "interrupted"
    runs = load_runs(f"sqlite:///{tmp_path / 'mlruns.db'}", "t").drop_duplicates("run_id")
    assert list(runs["status"]) == ["interrupted"]
    held(cell.run_dir)
    assert status_rows(grid, capsys)[cell.name]["state"] == "running"
    assert list(load_runs(f"sqlite:///{tmp_path / 'mlruns.db'}", "t").drop_duplicates("run_id")["status"]) == ["running"]


def test_two_sweeps_at_once_train_each_cell_once(tmp_path, synthetic_root):
    """Two real sweeps started together on an initialised store: each cell one training, one MLflow run,
    each step logged once."""
    import mlflow

    from slurm.sweep import prepare_tracking

    grid = make_grid(tmp_path, synthetic_root, methods=("cut", "fastcut"), max_steps=3)
    prepare_tracking(expand(grid))  # the store and the experiment exist, as after a first sweep
    cmd = [sys.executable, "-m", "qsattn", "sweep", str(grid), "--cluster", "debug", "--stage", "train"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
             for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    text = outs[0][0] + outs[1][0]
    for name in ("cut-synthetic-s0", "fastcut-synthetic-s0"):
        assert f"done    {name}" in text, text
    runs = mlflow_runs(tmp_path)
    assert len(runs) == 2, "one MLflow run per cell"
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlruns.db'}")
    for run in runs:
        assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "NCE")) == [1, 2, 3]
    for cell in expand(grid):
        assert (cell.run_dir / "mlflow_run_id").read_text() in {r.info.run_id for r in runs}
        assert json.loads((cell.run_dir / "progress.json").read_text())["step"] == 3
