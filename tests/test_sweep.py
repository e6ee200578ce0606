"""`python -m qsattn sweep` and `status` on the debug (in-process) and local (processes) executors:
finished cells are skipped, failed ones reported and retried, an interrupted cell resumes from its
checkpoint into the same MLflow run and ends with the weights of an uninterrupted run."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from qsattn.cli import main as cli

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(device="cpu", deterministic=True, num_threads=1, ngf=8, ndf=8, netF_nc=32, num_patches=32, crop_size=32, load_size=32,
            max_steps=4, n_epochs=1, n_epochs_decay=0, log_every=1, checkpoint_every=1, sample_every=0)


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """The synthetic set, and `broken`: the same with an unreadable image, a cell that fails once it runs
    (the preflight checks folders and counts, not every image's bytes)."""
    import shutil

    from qsattn.data.synthetic import generate

    root = tmp_path_factory.mktemp("data")
    generate(root / "synthetic", size=32, n_train=8, n_test=4, seed=0)
    shutil.copytree(root / "synthetic", root / "broken")
    (root / "broken" / "trainA" / "zz_unreadable.png").write_bytes(b"not an image")
    return root


def make_grid(folder: Path, data_root: Path, methods=("cut",), datasets=("synthetic",), run_root="runs",
              **overrides) -> Path:
    """A tiny grid on the synthetic set, all paths absolute so jobs may start anywhere."""
    folder.mkdir(parents=True, exist_ok=True)
    defaults = dict(TINY, run_root=str(folder / run_root), data_root=str(data_root),
                    tracking_uri=f"sqlite:///{folder / 'mlruns.db'}")
    defaults.update(overrides)
    grid = {"name": "t", "defaults": defaults, "methods": list(methods), "datasets": list(datasets), "seeds": [0]}
    path = folder / "grid.yaml"
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    return path


def status_rows(grid: Path, capsys) -> dict[str, dict]:
    capsys.readouterr()
    assert cli(["status", str(grid), "--json", "--no-mlflow"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    return {r["name"]: r for r in rows}


def mlflow_runs(folder: Path) -> list:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlruns.db'}")
    return client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=100)


def test_dry_run_lists_the_cells_and_runs_nothing(tmp_path, synthetic_root, capsys):
    grid = make_grid(tmp_path, synthetic_root, methods=("cut", "fastcut"))
    assert cli(["sweep", str(grid), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "2 cells, 2 to run" in out and "would run cut-synthetic-s0" in out
    assert not (tmp_path / "runs").exists()
    assert {r["state"] for r in status_rows(grid, capsys).values()} == {"pending"}
    assert cli(["sweep", str(grid), "--dry-run", "--only", "method=fastcut"]) == 0
    assert "1 cells, 1 to run" in capsys.readouterr().out


@pytest.mark.skipif(importlib.util.find_spec("qsattn.engine.pipeline") is None, reason="qsattn.engine.pipeline not there yet")
def test_a_finished_cell_is_skipped_and_keeps_its_one_mlflow_run(tmp_path, synthetic_root, capsys):
    grid = make_grid(tmp_path, synthetic_root, methods=("qsattn-global",), max_steps=2)
    assert cli(["sweep", str(grid), "--cluster", "debug"]) == 0
    rows = status_rows(grid, capsys)
    assert {r["state"] for r in rows.values()} == {"done"}
    assert all(r["mlflow_run_id"] and r["metric"] for r in rows.values())
    assert all((Path(r["run_dir"]) / "metrics.json").exists() for r in rows.values())
    assert cli(["sweep", str(grid), "--cluster", "debug"]) == 0
    out = capsys.readouterr().out
    assert "skip    qsattn-global-synthetic-s0: done" in out and "0 to run" in out
    runs = mlflow_runs(tmp_path)
    assert sorted(r.info.run_id for r in runs) == sorted(r["mlflow_run_id"] for r in rows.values())


def test_a_failed_cell_is_reported_then_retried_from_its_checkpoint_into_the_same_mlflow_run(
        tmp_path, synthetic_root, capsys, monkeypatch):
    import torch

    import qsattn.engine.train

    real_step, calls = qsattn.engine.train.train_step, []

    def failing_step(state, *args):
        calls.append(state.step)
        if len(calls) == 3:
            raise RuntimeError("injected failure at step 3")
        return real_step(state, *args)

    grid = make_grid(tmp_path / "sweep", synthetic_root)
    monkeypatch.setattr(qsattn.engine.train, "train_step", failing_step)
    assert cli(["sweep", str(grid), "--cluster", "debug", "--stage", "train"]) == 1
    (row,) = status_rows(grid, capsys).values()
    assert row["state"] == "failed" and "injected failure at step 3" in row["error"]
    run_dir = Path(row["run_dir"])
    run_id = (run_dir / "mlflow_run_id").read_text()

    assert cli(["sweep", str(grid), "--cluster", "debug", "--stage", "train", "--no-retry"]) == 0
    assert "failed (--no-retry)" in capsys.readouterr().out
    assert cli(["sweep", str(grid), "--cluster", "debug", "--stage", "train"]) == 0
    (row,) = status_rows(grid, capsys).values()
    assert row["state"] == "trained" and row["mlflow_run_id"] == run_id
    assert calls[3] == 2, "the retry resumed from the step-2 checkpoint"
    (run,) = mlflow_runs(tmp_path / "sweep")
    assert run.info.run_id == run_id
    import mlflow

    history = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'sweep' / 'mlruns.db'}").get_metric_history(run_id, "NCE")
    assert sorted(m.step for m in history) == [1, 2, 3, 4]

    monkeypatch.setattr(qsattn.engine.train, "train_step", real_step)
    reference = make_grid(tmp_path / "reference", synthetic_root)
    assert cli(["sweep", str(reference), "--cluster", "debug", "--stage", "train"]) == 0
    (ref_row,) = status_rows(reference, capsys).values()
    got = torch.load(run_dir / "latest_net_G.pth", weights_only=True)
    want = torch.load(Path(ref_row["run_dir"]) / "latest_net_G.pth", weights_only=True)
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got)


def test_a_live_job_is_not_submitted_twice(tmp_path, synthetic_root, monkeypatch):
    from slurm import status as status_mod
    from slurm.grid import expand
    from slurm.job import write_record
    from slurm.sweep import plan

    cells = expand(make_grid(tmp_path, synthetic_root, methods=("cut", "fastcut")))
    write_record(cells[0].run_dir, "submitted", job_id="77_0")
    write_record(cells[1].run_dir, "started", job_id="77_1", pid=0)
    monkeypatch.setattr(status_mod, "live_jobs", lambda: {"77_0": "PENDING"})
    todo, skipped = plan(cells, "full")
    assert skipped == {"cut-synthetic-s0": "queued (job 77_0)"}
    assert [c.name for c in todo] == ["fastcut-synthetic-s0"]
    assert status_mod.cell_status(cells[1], {}).state == "interrupted"


def test_the_local_executor_runs_cells_as_processes_whose_job_ids_name_their_logs(tmp_path, synthetic_root):
    import re

    grid = make_grid(tmp_path, synthetic_root, methods=("cut", "fastcut"), max_steps=2)
    cmd = [sys.executable, "-m", "qsattn", "sweep", str(grid), "--cluster", "local", "--stage", "train",
           "--max-parallel", "2", "--progress-every", "0.1"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    assert out.stdout.count("started ") == 2 and out.stdout.count("done    ") == 2
    # while it waited, the sweep showed the cells' progress, read from their progress.json
    assert re.search(r"^\d\d:\d\d:\d\d (cut|fastcut)-synthetic-s0: (step \d/2|trained)", out.stdout, re.M), out.stdout
    status = subprocess.run([sys.executable, "-m", "qsattn", "status", str(grid), "--json", "--no-mlflow"],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    rows = [json.loads(line) for line in status.stdout.splitlines()]
    assert [r["state"] for r in rows] == ["trained", "trained"]
    logs = tmp_path / "runs" / "_submitit"
    for r in rows:
        # the id shown is the one submitit names the job's files with (its controller's pid), and the
        # sweep printed that id and that log
        assert Path(r["log"]) == logs / f"{r['job_id']}_0_log.err" and Path(r["log"]).is_file()
        assert f"(job {r['job_id']}, log {r['log']})" in out.stdout
        started = json.loads((Path(r["run_dir"]) / "sweep" / "started.json").read_text())
        assert started["job_id"] == r["job_id"]
        assert json.loads((Path(r["run_dir"]) / "progress.json").read_text())["step"] == 2
    assert not [p for p in logs.iterdir() if p.is_dir()], "no stray folder (submitit's literal %j)"


def test_progress_json_is_what_status_and_the_waiting_sweep_show(tmp_path, synthetic_root, capsys):
    from qsattn.engine.run_folder import locked
    from qsattn.engine.train import write_progress
    from slurm.grid import expand
    from slurm.sweep import ProgressPrinter

    grid = make_grid(tmp_path, synthetic_root)
    (cell,) = expand(grid)
    write_progress(cell.run_dir, 300, 1200, 0.25)  # as train() writes it at a log step
    with locked(cell.run_dir):  # a live process trains it
        rows = status_rows(grid, capsys)
        assert cli(["status", str(grid), "--no-mlflow"]) == 0
        table = capsys.readouterr().out
        ProgressPrinter(every=1e-9).tick([cell])
        line = capsys.readouterr().out
    (row,) = rows.values()
    assert (row["state"], row["step"], row["total_steps"], row["sec_per_step"]) == ("running", 300, 1200, 0.25)
    assert row["eta_s"] == pytest.approx(900 * 0.25)
    assert "300/1200" in table and "3m45s" in table  # 900 steps x 0.25 s
    assert "estimate for 1 cells" in table and any(x.split()[:1] == ["method"] and x.split()[-1] == "left"
                                                   for x in table.splitlines())
    assert line.endswith("cut-synthetic-s0: step 300/1200 (25%), 0.25 s/step, ETA 3m45s\n")


@pytest.mark.slow  # a sweep, then an eval sweep: about a minute on 2 cores (the in-process proof is in test_eval_runs)
def test_stage_eval_rescores_trained_cells_under_the_grids_new_evaluation_keys_without_training(
        tmp_path, synthetic_root, capsys, monkeypatch):
    """A finished sweep, then its grid's evaluation keys changed and `--stage eval`: the same cells (the cell
    id ignores evaluation keys) are scored again, nothing trains, and a cell never trained is left alone."""
    import qsattn.engine.train

    grid = make_grid(tmp_path, synthetic_root, max_steps=8, keep_epoch_checkpoints=1)
    assert cli(["sweep", str(grid), "--cluster", "debug"]) == 0
    run_dir = Path(next(iter(status_rows(grid, capsys).values()))["run_dir"])
    first = json.loads((run_dir / "metrics.json").read_text())
    assert "gt_score_best" in first["metrics"] and first["protocol"]["checkpoints"]["scored"] == "all"
    stamps = {p.name: p.stat().st_mtime_ns for p in (run_dir / "checkpoints").iterdir()}

    monkeypatch.setattr(qsattn.engine.train, "train", lambda *a, **k: pytest.fail("--stage eval must not train"))
    changed = yaml.safe_load(grid.read_text())
    changed["defaults"]["eval_checkpoints"] = "last"
    changed["methods"] = ["cut", "fastcut"]          # fastcut: never trained
    grid.write_text(yaml.safe_dump(changed, sort_keys=False))
    capsys.readouterr()
    assert cli(["sweep", str(grid), "--cluster", "debug", "--stage", "eval"]) == 0
    out = capsys.readouterr().out
    assert "fastcut-synthetic-s0: not trained" in out and "1 trained cells re-scored" in out and "GPU-hours" not in out
    second = json.loads((run_dir / "metrics.json").read_text())
    assert second["protocol"]["checkpoints"]["scored"] == "last" and "gt_score_best" not in second["metrics"]
    assert second["metrics"]["gt_score_last"] == pytest.approx(first["metrics"]["gt_score_last"])
    assert {p.name: p.stat().st_mtime_ns for p in (run_dir / "checkpoints").iterdir()} == stamps
    assert not any(Path(r["run_dir"]).exists() for n, r in status_rows(grid, capsys).items() if n.startswith("fastcut"))
