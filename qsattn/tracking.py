"""MLflow tracking that never takes training down.

Every call is retried with back-off; what still fails is kept and sent again with the next call, and
reported once in the log. A resumed run continues the same MLflow run (its id is kept in the run
folder). `tracking_uri: off` disables tracking (the GPU benchmark machine has no MLflow).
"""
from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import time
from pathlib import Path

log = logging.getLogger("qsattn.tracking")

DEFAULT_URI = "sqlite:///mlruns.db"


def resolve_uri(uri: str = "") -> str:
    """Config key, else $MLFLOW_TRACKING_URI, else an SQLite file in the current folder (absolute, so
    jobs started elsewhere by submitit write to the same store)."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI", "") or DEFAULT_URI
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + str(Path(uri[len("sqlite:///"):]).absolute())
    return uri


def artifact_root(uri: str) -> str | None:
    """Artifacts of a file-backed store go to mlartifacts/ beside the database; a server decides its own."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").as_uri()
    return None


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@contextlib.contextmanager
def _store_lock(uri: str):
    """Serialise opening an SQLite store across processes: creating or migrating its schema from
    several processes at once corrupts it ("table _alembic_tmp_... already exists")."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    import fcntl

    db = Path(uri[len("sqlite:///"):])
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class NullTracker:
    run_id = ""

    def log_params(self, params: dict) -> None: ...
    def log_metrics(self, metrics: dict, step: int) -> None: ...
    def log_artifact(self, path, artifact_path: str | None = None) -> None: ...
    def set_tags(self, tags: dict) -> None: ...
    def finish(self, status: str = "FINISHED") -> None: ...


class MlflowTracker:
    """A thin, fault-tolerant layer over `mlflow.MlflowClient` for one run."""

    def __init__(self, uri: str, experiment: str, run_name: str, run_id: str = "", tags: dict | None = None,
                 retries: int = 3, backoff_s: float = 1.0):
        import mlflow

        self.retries, self.backoff_s = retries, backoff_s
        with _store_lock(uri):  # jobs opening a fresh SQLite store at once race on its schema migration
            self.client = self._call(mlflow.MlflowClient, tracking_uri=uri)
        self._pending: list[tuple] = []
        self._reported = False
        if run_id:
            self.run_id = run_id
            self._call(self.client.update_run, run_id, "RUNNING")
        else:
            exp = self._call(self.client.get_experiment_by_name, experiment)
            exp_id = exp.experiment_id if exp else self._create_experiment(experiment, uri)
            tags = {k: str(v) for k, v in (tags or {}).items()}  # a server's REST API takes strings only
            self.run_id = self._call(self.client.create_run, exp_id, run_name=run_name, tags=tags).info.run_id

    def _create_experiment(self, name: str, uri: str) -> str:
        try:
            return self.client.create_experiment(name, artifact_location=artifact_root(uri))
        except Exception:  # another job created it at the same moment
            return self._call(self.client.get_experiment_by_name, name).experiment_id

    def _call(self, fn, *args, **kwargs):
        for attempt in range(self.retries):
            try:
                return fn(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - any tracking failure is retried, never fatal here
                if attempt == self.retries - 1:
                    raise
                log.debug("MLflow call %s failed (%s); retrying", fn.__name__, exc)
                time.sleep(self.backoff_s * 2**attempt)

    def _safe(self, fn, *args, **kwargs) -> bool:
        try:
            self._call(fn, *args, **kwargs)
            return True
        except Exception as exc:  # noqa: BLE001
            if not self._reported:
                log.warning("MLflow is unreachable (%s); training goes on, logs are kept and resent.", exc)
                self._reported = True
            return False

    def _flush(self) -> None:
        while self._pending:
            fn, args, kwargs = self._pending[0]
            if not self._safe(fn, *args, **kwargs):
                return
            self._pending.pop(0)
        if self._reported:
            log.warning("MLflow is reachable again; all pending logs were sent.")
            self._reported = False

    def _send(self, fn, *args, **kwargs) -> None:
        self._pending.append((fn, args, kwargs))
        self._flush()

    def log_params(self, params: dict) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self._send(self.client.log_batch, self.run_id, params=items[i:i + 100])

    def log_metrics(self, metrics: dict, step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        self._send(self.client.log_batch, self.run_id, metrics=items)

    def set_tags(self, tags: dict) -> None:
        from mlflow.entities import RunTag

        self._send(self.client.log_batch, self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifact(self, path, artifact_path: str | None = None) -> None:
        self._send(self.client.log_artifact, self.run_id, str(path), artifact_path)

    def finish(self, status: str = "FINISHED") -> None:
        self._send(self.client.set_terminated, self.run_id, status)


def open_tracker(cfg, run_dir: Path, tags: dict) -> NullTracker | MlflowTracker:
    """The run's tracker; reuses the MLflow run recorded in run_dir, so a resumed run continues it."""
    if cfg.tracking_uri == "off":
        return NullTracker()
    from qsattn.run_folder import RunFolder

    id_file = RunFolder(run_dir).mlflow_run_id
    run_id = id_file.read_text().strip() if id_file.exists() else ""
    tracker = MlflowTracker(resolve_uri(cfg.tracking_uri), cfg.experiment, cfg.run_name(), run_id, tags)
    if not run_id:
        from qsattn.atomic import atomic_write_text

        atomic_write_text(id_file, tracker.run_id)
    return tracker
