"""Tracking never costs a training step and loses nothing (qsattn/engine/tracking.py, docs/tracking.md): an
unreachable server, a store that lost the run, runs that end FAILED / KILLED / FINISHED as they really
ended, resumed runs that log each step once with the first window averaged over all its steps, two
sweeps opening a fresh SQLite store at once, and the experiment set up for comparing runs."""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from qsattn.cli import main as cli
from qsattn.engine.config import resolve
from qsattn.data.synthetic import generate
from test_mlflow_concurrency import free_port, running_server

mlflow = pytest.importorskip("mlflow")

ROOT = Path(__file__).resolve().parents[1]
TINY = {"method": "cut", "ngf": 8, "ndf": 8, "netF_nc": 32, "num_patches": 32, "crop_size": 32, "load_size": 36,
        "log_every": 2, "sample_every": 0, "checkpoint_every": 2, "deterministic": True}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    generate(root / "synthetic", size=32, n_train=8, n_test=4, seed=0)
    return root


def config(data_root, run_root, uri, **values):
    return resolve({"data_root": str(data_root), "run_root": str(run_root), "tracking_uri": uri, **TINY, **values})


def only_run(uri: str, experiment: str = "qsattn"):
    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert len(runs) == 1, [r.info.run_name for r in runs]
    return client, runs[0]


def history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def warnings_of(caplog, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "qsattn.engine.tracking" and r.levelno == logging.WARNING
            and text in r.getMessage()]


# --- an outage ------------------------------------------------------------------------------------------

def test_an_unreachable_server_costs_no_step_and_its_metrics_reach_it_later(data_root, tmp_path, caplog):
    """Training with nothing listening on the tracking port finishes, warns once, and `status` says
    tracking offline; a live tracker reaches a server started later by itself, and `mlflow sync` sends
    the finished run's journal into one FINISHED run with every step once."""
    from qsattn.engine.tracking import Tracker, tracking_note
    from qsattn.engine.train import train
    from slurm.status import folder_status

    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    caplog.set_level(logging.INFO)
    t0 = time.time()
    run_dir = train(config(data_root, tmp_path / "runs", uri, max_steps=4), progress=False)
    assert (run_dir / "DONE").read_text() == "step 4\n"
    # the bound: one connection refused per attempt, FINISH_WAIT_S at most at the end (MLflow's own
    # retries would take minutes: 7 retries with back-off)
    assert time.time() - t0 < 240
    assert len(warnings_of(caplog, "does not answer")) == 1, "an outage is one warning"
    assert folder_status(run_dir, {}).tracking.startswith("tracking offline (")
    assert not (run_dir / "mlflow_run_id").exists()

    live = Tracker(uri, "live", "live", tmp_path / "live")
    live.log_metrics({"x": 1.0}, 1)
    with running_server(tmp_path, port, workers=1):
        assert live.flush(90), "the sender reaches the server once it answers, without a new call"
        client = mlflow.MlflowClient(uri)
        (live_run,) = client.search_runs([client.get_experiment_by_name("live").experiment_id])
        assert history(client, live_run.info.run_id, "x") == [(1, 1.0)]

        assert cli(["mlflow", "sync", str(run_dir)]) == 0
        client, run = only_run(uri)
        assert run.info.run_id == (run_dir / "mlflow_run_id").read_text()
        assert run.info.status == "FINISHED"
        assert [s for s, _ in history(client, run.info.run_id, "NCE")] == [2, 4]
        assert run.data.tags["method"] == "cut" and run.data.params["networks/ngf"] == "8"
        assert tracking_note(run_dir) == ""


def test_a_store_that_cannot_be_written_costs_one_warning_and_keeps_the_records(tmp_path, caplog):
    """A read-only store (here under /proc, where not even root creates its lock file: EROFS/ENOENT as on
    a read-only mount) never raises into training: one warning, the records kept, status offline."""
    from qsattn.engine.tracking import Tracker, tracking_note, unsent

    caplog.set_level(logging.INFO)
    t = Tracker("sqlite:////proc/qsattn-read-only/mlruns.db", "ro", "cut · synthetic · s0", tmp_path / "run")
    for step in range(1, 6):
        t.log_metrics({"NCE": 1.0}, step)
    t.finish("FINISHED")
    assert len(warnings_of(caplog, "does not answer")) == 1
    assert unsent(t.folder) == 8  # open, RUNNING, 5 readouts, FINISHED
    assert tracking_note(tmp_path / "run") == "tracking offline (8 records kept)"


def test_a_store_that_lost_the_run_gets_a_new_run_with_the_whole_journal(data_root, tmp_path, caplog):
    """The folder resumed against a store without its run: another working directory's default
    relative store, or the store deleted (in another process: this one keeps a deleted SQLite file open)."""
    from qsattn.engine.train import train

    first = f"sqlite:///{tmp_path / 'first.db'}"
    run_dir = train(config(data_root, tmp_path / "runs", first, max_steps=2), progress=False)
    old = (run_dir / "mlflow_run_id").read_text()
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    caplog.set_level(logging.INFO)
    train(config(data_root, tmp_path / "runs", uri, max_steps=4), progress=False)  # extends the finished run
    assert len(warnings_of(caplog, f"has no run {old}")) == 1, "said once"
    client, run = only_run(uri)
    assert run.info.run_id == (run_dir / "mlflow_run_id").read_text() != old
    assert run.data.tags["qsattn.previous_run_id"] == old
    assert run.data.tags["run_dir"] == str(run_dir.absolute())
    assert [s for s, _ in history(client, run.info.run_id, "NCE")] == [2, 4], "the journal replayed: nothing lost"
    assert run.info.status == "FINISHED"


# --- how a run ends ---------------------------------------------------------------------------------------

def interrupt_at(monkeypatch, step: int, exc: BaseException):
    """Raise exc in place of the step that would make state.step == step (once)."""
    from qsattn.engine import train as training

    real = training.train_step
    fired = []

    def step_or_raise(state, *args):
        if state.step == step - 1 and not fired:
            fired.append(step)
            raise exc
        return real(state, *args)

    monkeypatch.setattr(training, "train_step", step_or_raise)


def test_a_non_finite_loss_ends_the_mlflow_run_failed(data_root, tmp_path, monkeypatch):
    import torch

    from qsattn.engine import train as training

    real = training.train_step

    def nan_at_step_2(state, *args):
        losses = real(state, *args)
        return {**losses, "G": torch.tensor(float("nan"))} if state.step == 2 else losses

    monkeypatch.setattr(training, "train_step", nan_at_step_2)
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    with pytest.raises(training.NonFinite):
        training.train(config(data_root, tmp_path / "runs", uri, max_steps=4), progress=False)
    _, run = only_run(uri)
    assert run.info.status == "FAILED" and "last_status" not in run.data.tags


RESUMED = dict(max_steps=6, checkpoint_every=3)  # log_every=2: readouts at 2, 4, 6; the checkpoint at 3


@pytest.fixture(scope="module")
def straight(data_root, tmp_path_factory):
    """The loss history of an uninterrupted run: {key: [(step, value)]}."""
    from qsattn.engine.train import train

    folder = tmp_path_factory.mktemp("straight")
    uri = f"sqlite:///{folder / 'mlruns.db'}"
    train(config(data_root, folder / "runs", uri, **RESUMED), progress=False)
    client, run = only_run(uri)
    return {key: history(client, run.info.run_id, key) for key in ("G", "NCE", "D")}


@pytest.mark.parametrize("kill_at", [4, 5], ids=["before-a-log-step", "after-a-log-step"])
def test_a_resumed_run_logs_each_step_once_with_the_first_window_complete(data_root, tmp_path, monkeypatch, kill_at,
                                                                         straight):
    """SIGINT (KeyboardInterrupt) at step kill_at, the last checkpoint at 3: the run ends KILLED without a
    stale tag, the resume ends FINISHED, and its loss history equals an uninterrupted run's exactly: resume
    is bit-exact (tests/test_train.py), the window's sums are in the checkpoint, so the same floats are
    summed in the same order. Killed at 5, the readout at 4 is already logged and is not logged again; killed
    at 4, the readout at 4 averages steps 3 and 4 although this process trained only step 4."""
    from qsattn.engine.train import train

    values = RESUMED
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    interrupt_at(monkeypatch, kill_at, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        train(config(data_root, tmp_path / "runs", uri, **values), progress=False)
    _, run = only_run(uri)
    assert run.info.status == "KILLED" and "last_status" not in run.data.tags
    train(config(data_root, tmp_path / "runs", uri, **values), progress=False)
    client, run = only_run(uri)
    assert run.info.status == "FINISHED"
    for key in ("G", "NCE", "D"):
        assert history(client, run.info.run_id, key) == straight[key], key
    assert [s for s, _ in straight["NCE"]] == [2, 4, 6]


def test_sigterm_ends_a_train_command_killed_and_resumable(data_root, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    overrides = [f"{k}={v}" for k, v in {**TINY, "checkpoint_every": 1, "max_steps": 500}.items()]
    cmd = [sys.executable, "-m", "qsattn", "train", "--no-progress", f"data_root={data_root}",
           f"run_root={tmp_path / 'runs'}", f"tracking_uri={uri}", *overrides]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    latest = tmp_path / "runs" / "cut-synthetic-s0" / "checkpoints" / "latest.pt"
    deadline = time.time() + 240
    while not latest.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "run the same command again to resume" in err
    _, run = only_run(uri)
    assert run.info.status == "KILLED"
    assert not (latest.parent.parent / "DONE").exists()


def test_sync_sends_what_a_killed_process_left_and_records_it_killed(tmp_path, capsys):
    """A process killed before its sender ran (SIGKILL, a lost node): the journal holds its records;
    `mlflow sync` sends them, and, as nobody holds the folder, ends the run KILLED, not RUNNING."""
    from qsattn.engine.tracking import Tracker

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    t = Tracker(uri, "killed", "cut · synthetic · s0", tmp_path / "run", tags={"method": "cut"}, start_thread=False)
    for step in (2, 4):
        t.log_metrics({"NCE": 1.0 / step}, step)
    assert cli(["mlflow", "sync", str(tmp_path / "run")]) == 0
    assert "records sent, 0 left" in capsys.readouterr().out
    client, run = only_run(uri, "killed")
    assert run.info.status == "KILLED" and run.data.tags["method"] == "cut"
    assert history(client, run.info.run_id, "NCE") == [(2, 0.5), (4, 0.25)]


# --- the store's set-up -------------------------------------------------------------------------------------

PREPARE = """
import pathlib, sys, time
from slurm.grid import expand
from slurm.sweep import prepare_tracking
import mlflow.store.tracking.sqlalchemy_store  # imported before the barrier: all four start together
cells = expand(pathlib.Path(sys.argv[1]))
go = pathlib.Path(sys.argv[2])
(go.parent / f"ready-{sys.argv[3]}").touch()
while not go.exists():
    time.sleep(0.01)
prepare_tracking(cells)
"""


def test_two_sweeps_opening_a_fresh_sqlite_store_at_once_leave_it_sound(tmp_path):
    """Without the store lock, two processes creating the schema at once leave `_alembic_tmp_*` tables
    behind and every later open fails."""
    import yaml

    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({"name": "two", "methods": ["cut"], "datasets": ["synthetic"],
                                    "seeds": [0], "defaults": {"run_root": str(tmp_path / "runs"),
                                                               "tracking_uri": f"sqlite:///{tmp_path / 'mlruns.db'}"}}))
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", PREPARE, str(grid), str(go), str(i)], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(4)]
    deadline = time.time() + 180
    while len(list(tmp_path.glob("ready-*"))) < 4 and time.time() < deadline and all(p.poll() is None for p in procs):
        time.sleep(0.05)
    go.touch()  # all four open the fresh store at the same moment
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, [o[1][-1500:] for o in outs]
    assert not any("warning" in o[1] for o in outs), [o[1][-1500:] for o in outs]
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlruns.db'}")
    (exp,) = [e for e in client.search_experiments() if e.name == "two"]
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"


def test_the_experiment_is_set_up_for_comparing_runs(tmp_path):
    """Kind (the UI's machine-learning runs page), description, and a shared view whose columns are the
    name tags and the primary metrics; the sweep-level run holds the report and is no cell of it."""
    from qsattn.engine.tracking import Tracker, ensure_experiment, log_report, open_client, view_url

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    t = Tracker(uri, "cmp", "cut · synthetic · s0", tmp_path / "r", tags={"method": "cut", "dataset": "synthetic",
                                                                          "seed": "0", "variant": "base"})
    t.log_metrics({"gt_score_last": 0.5, "fid_clean_last": 30.0, "NCE": 1.0, "checkpoint_fid": 3.0,
                   "fid_clean_best": 29.0}, 0)
    t.add_view_metrics()
    t.finish("FINISHED")
    client = open_client(uri)
    exp = client.get_experiment_by_name("cmp")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    assert "method · dataset · seed" in exp.tags["mlflow.note.content"]
    view = json.loads(exp.tags["mlflow.sharedViewState.qsattn"])
    assert view["selectedColumns"] == ["tags.`method`", "tags.`dataset`", "tags.`seed`", "tags.`variant`",
                                       "metrics.`fid_clean_last`", "metrics.`fid_clean_best`",
                                       "metrics.`gt_score_last`"]
    assert view["columnOrder"] == view["selectedColumns"]  # tags before metrics
    assert view_url("http://h:5", exp.experiment_id) == (f"http://h:5/#/experiments/{exp.experiment_id}/runs"
                                                         "?viewStateShareKey=qsattn&workflowType=machine_learning")
    report = tmp_path / "out"
    report.mkdir()
    (report / "table1.md").write_text("| a |\n")
    first = log_report(uri, "cmp", [report / "table1.md"])
    assert log_report(uri, "cmp", [report / "table1.md"]) == first, "one sweep-level run per experiment"
    assert [a.path for a in client.list_artifacts(first, "report")] == ["report/table1.md"]
    assert ensure_experiment(client, "cmp", uri) == exp.experiment_id
    from results.runs import load_runs

    df = load_runs(uri, "cmp")
    assert set(df.run_id) == {t.run_id}, "the sweep-level run is not a cell"
