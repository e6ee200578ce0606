"""Many jobs logging to one MLflow store at once lose nothing: 8 processes, each a run with params, tags
and 100 metric values (50 steps x 2 keys) through `qsattn.engine.tracking.Tracker`, against a fresh SQLite file (all
creating its schema at the same moment) and against a local `mlflow server`."""
from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest

N_WRITERS = 8
N_STEPS = 50  # x 2 keys: 100 metric values per writer

WRITER = textwrap.dedent("""
    import pathlib, sys, time
    uri, experiment, index, barrier = sys.argv[1], sys.argv[2], int(sys.argv[3]), pathlib.Path(sys.argv[4])
    from qsattn.engine import tracking
    import mlflow, mlflow.store.tracking.sqlalchemy_store  # imported first: all writers then start together
    tracking.FINISH_WAIT_S = 240  # the store is slow when 8 writers start at once; nothing may be left unsent
    (barrier / f"ready-{index}").touch()
    while not (barrier / "go").exists():
        time.sleep(0.05)
    t = tracking.Tracker(uri, experiment, f"writer-{index}", barrier.parent / f"run-{index}", tags={"writer": index})
    t.log_params({f"p{k}": f"{index}-{k}" for k in range(20)})
    for step in range(1, %d + 1):
        t.log_metrics({"loss": index + step / 1000, "acc": step}, step)
    t.set_tags({"phase": "done", "index": index})
    t.finish("FINISHED")
    left = tracking.unsent(t.folder)
    assert not left, f"writer {index}: {left} records still unsent"
    print(t.run_id)
""" % N_STEPS)


def _run_writers(uri: str, experiment: str, tmp_path: Path) -> list[str]:
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    procs = [subprocess.Popen([sys.executable, str(script), uri, experiment, str(i), str(barrier)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(N_WRITERS)]
    deadline = time.time() + 180
    while len(list(barrier.glob("ready-*"))) < N_WRITERS and time.time() < deadline:
        if any(p.poll() not in (None, 0) for p in procs):
            break
        time.sleep(0.1)
    (barrier / "go").touch()  # every writer hits the store at the same moment
    run_ids = []
    for i, p in enumerate(procs):
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, f"writer {i} failed:\n{err[-3000:]}"
        assert "does not answer" not in err, f"writer {i} lost contact with the store:\n{err[-2000:]}"
        run_ids.append(out.strip().splitlines()[-1])
    return run_ids


def _check_nothing_lost(uri: str, experiment: str, run_ids: list[str]) -> None:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=100)
    assert sorted(r.info.run_id for r in runs) == sorted(run_ids), "one run per writer, no more, no fewer"
    for run in runs:
        index = int(run.data.tags["writer"])
        assert run.info.status == "FINISHED"
        assert run.data.tags["phase"] == "done" and run.data.tags["index"] == str(index)
        assert run.data.params == {f"p{k}": f"{index}-{k}" for k in range(20)}
        for key in ("loss", "acc"):
            history = client.get_metric_history(run.info.run_id, key)
            assert sorted(m.step for m in history) == list(range(1, N_STEPS + 1)), (index, key)
        assert run.data.metrics["acc"] == N_STEPS


def test_eight_writers_to_a_fresh_sqlite_store_lose_nothing(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    run_ids = _run_writers(uri, "concurrency", tmp_path)
    _check_nothing_lost(uri, "concurrency", run_ids)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(folder: Path, port: int | None = None, workers: int = 2):
    """A real `mlflow server` on 127.0.0.1:port (a free one by default) with its own SQLite store; yields
    its URL once /health answers (a few seconds idle; minutes on a loaded 2-core machine)."""
    port = port or free_port()
    log = open(folder / f"server-{port}.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{folder / f'server-{port}.db'}",
         "--default-artifact-root", (folder / f"artifacts-{port}").as_uri(), "--workers", str(workers)],
        stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 300
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                pytest.fail("mlflow server did not start:\n" + (folder / f"server-{port}.log").read_text()[-3000:])
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture
def mlflow_server(tmp_path):
    with running_server(tmp_path) as url:
        yield url


def test_eight_writers_to_a_local_mlflow_server_lose_nothing(tmp_path, mlflow_server):
    run_ids = _run_writers(mlflow_server, "concurrency", tmp_path)
    _check_nothing_lost(mlflow_server, "concurrency", run_ids)
