"""MLflow tracking that never costs a training step (docs/tracking.md).

Every record (params, metrics, tags, artifacts, images, the run's status) is appended to the run folder's
journal (tracking.jsonl) and sent by a background thread; the training loop never waits on MLflow. What
could not be sent stays in the journal: an outage is one warning, the thread retries with back-off and
sends the backlog into the same MLflow run once the store answers again, or the next process on the
folder does (`python -m qsattn mlflow sync RUN_DIR`). tracking.json says how far the journal was sent
and whether the store answered (`status` shows "tracking offline"). A store that lost the run gets a new
run, tagged with the old id and the run folder, and the whole journal replayed into it.
`tracking_uri: off` disables tracking (the GPU benchmark machine has no MLflow).
"""
from __future__ import annotations

import contextlib
import getpass
import json
import logging
import os
import re
import subprocess
import threading
import time
from pathlib import Path

from eval.registry import PRIMARY, VALUES
from qsattn.engine.run_folder import RunFolder

log = logging.getLogger("qsattn.engine.tracking")

DEFAULT_URI = "sqlite:///mlruns.db"
# MLflow's own HTTP client retries 7 times with back-off (minutes) and waits 120 s per request; the
# sender retries by itself, so each request is one short try. Set only where the user has not.
HTTP_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
RETRY_S = (1, 2, 5, 10, 30)  # the sender's waits between attempts while the store does not answer
SEND_EVERY_S = 1.0  # at most one send per second while it answers: the records in between are batched
FINISH_WAIT_S = 60.0  # how long finish() waits for a slow but answering store; what is left stays in the journal
KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"  # the UI's "ML training"
VIEW_KEY = "qsattn"  # the experiment's shared view: mlflow.sharedViewState.<VIEW_KEY>, ?viewStateShareKey=
VIEW_TAGS = ("method", "dataset", "seed", "variant")
# evaluation results as pipeline.evaluate_run logs them (<metric>_last, <metric>_best); these first: the
# metric registry's primary values, each followed by those read at its best checkpoint (KID after its FID)
PRIMARY_FIRST = tuple(n for p in PRIMARY for n in (p, *(v.name for v in VALUES.values() if v.at == p)))
SWEEP_KIND = "sweep"  # qsattn.kind tag of a sweep-level run (the report's artifacts)


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
def store_lock(uri: str):
    """Serialise opening an SQLite store across processes: creating or migrating its schema from
    several processes at once corrupts it for good ("table _alembic_tmp_metrics already exists")."""
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


def open_client(uri: str):
    """An MlflowClient whose store exists: an SQLite store is created (or migrated) under store_lock."""
    import mlflow

    for name, value in HTTP_ENV.items():
        os.environ.setdefault(name, value)
    with store_lock(uri):
        client = mlflow.MlflowClient(tracking_uri=uri)
        client.search_experiments(max_results=1)  # opens the store now, inside the lock
    return client


# --- the experiment: kind, description, the comparison view ------------------------------------------------

def run_labels(cfg) -> dict[str, str]:
    """Tags that name a run: method, dataset, seed, variant (a sweep cell's ablation label, or 'base')
    and the run folder's name."""
    variant = variant_of(cfg.run_name(), cfg.method, cfg.dataset, cfg.seed) or "base"
    return {"method": cfg.method, "dataset": cfg.dataset, "seed": str(cfg.seed), "variant": variant,
            "run_folder": cfg.run_name()}


def variant_of(run_name: str, method: str, dataset: str, seed) -> str:
    """The ablation label in a sweep's run name '<method>-<dataset>-s<seed>[-<label>]-<id8>' ('' if none)."""
    m = re.fullmatch(rf"{re.escape(str(method))}-{re.escape(str(dataset))}-s{seed}(?:-(.+))?-[0-9a-f]{{8}}",
                     run_name or "")
    return (m.group(1) or "") if m else ""


def short_run_name(labels: dict) -> str:
    """What the runs table shows first: `cut · horse2zebra · s0` (and the variant, if any)."""
    parts = [labels["method"], labels["dataset"], f"s{labels['seed']}"]
    return " · ".join(parts + ([labels["variant"]] if labels.get("variant", "base") != "base" else []))


def describe_experiment(name: str) -> str:
    return (f"QS-Attn / CUT / FastCUT training runs of `{name}`: one run per grid cell, named "
            f"`method · dataset · seed[ · variant]`, tagged {', '.join(VIEW_TAGS)}; evaluation results are "
            f"the metrics ending in `_last` (the last checkpoint) and `_best` (the best kept epoch), the "
            f"qualitative grids are under each run's images. A `sweep · {name}` run holds the report (table, "
            f"figures). `python -m qsattn mlflow ui` prints the link to the view with these as columns.")


def view_state(metrics: list[str]) -> str:
    """The experiment's shared view (MLflow's "share view" state, an experiment tag): the runs table with
    the name tags and the primary metrics as columns, newest first."""
    columns = [f"tags.`{t}`" for t in VIEW_TAGS] + [f"metrics.`{m}`" for m in primary_metrics(metrics)]
    return json.dumps({"selectedColumns": columns, "columnOrder": columns, "orderByKey": "attributes.start_time",
                       "orderByAsc": False})


def primary_metrics(metrics) -> list[str]:
    """Evaluation results (<name>_last / _best) among the logged metric keys: those of PRIMARY_FIRST
    where there are any (the synthetic set's gt_score, not its parts), else all."""
    found = {m for m in metrics if re.search(r"_(last|best)$", m) and not m.startswith("checkpoint_")}
    found = {m for m in found if re.sub(r"_(last|best)$", "", m) in PRIMARY_FIRST} or found

    def rank(m: str):
        base = re.sub(r"_(last|best)$", "", m)
        return (PRIMARY_FIRST.index(base) if base in PRIMARY_FIRST else len(PRIMARY_FIRST), base,
                not m.endswith("_last"))

    return sorted(found, key=rank)


def experiment_tags(name: str) -> dict[str, str]:
    return {KIND_TAG: EXPERIMENT_KIND, "mlflow.note.content": describe_experiment(name),
            f"mlflow.sharedViewState.{VIEW_KEY}": view_state([])}


def ensure_experiment(client, name: str, uri: str) -> str:
    """The experiment's id, created with its kind, description and view if missing (kind and description
    added to an older one)."""
    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            return client.create_experiment(name, artifact_location=artifact_root(uri), tags=experiment_tags(name))
        except Exception:  # noqa: BLE001 - another job created it at the same moment
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
    if exp.tags.get(KIND_TAG) != EXPERIMENT_KIND:
        for key, value in experiment_tags(name).items():
            if key not in exp.tags or key == KIND_TAG:
                client.set_experiment_tag(exp.experiment_id, key, value)
    return exp.experiment_id


def refresh_view(client, experiment_id: str) -> list[str]:
    """Rewrite the experiment's view with every primary metric its runs have logged; returns them."""
    keys: set[str] = set()
    token = None
    while True:
        page = client.search_runs([experiment_id], max_results=1000, page_token=token)
        for run in page:
            keys |= set(run.data.metrics)
        token = page.token
        if not token:
            break
    client.set_experiment_tag(experiment_id, f"mlflow.sharedViewState.{VIEW_KEY}", view_state(sorted(keys)))
    return primary_metrics(keys)


def view_url(ui: str, experiment_id: str) -> str:
    """The experiment's runs in its view, with the UI in its model-training mode (not GenAI)."""
    return (f"{ui.rstrip('/')}/#/experiments/{experiment_id}/runs"
            f"?viewStateShareKey={VIEW_KEY}&workflowType=machine_learning")


# --- the journal and its sender -------------------------------------------------------------------------

class NullTracker:
    run_id = ""

    def log_params(self, params: dict) -> None: ...
    def log_metrics(self, metrics: dict, step: int, skip_logged: bool = False) -> None: ...
    def log_artifact(self, path, artifact_path: str | None = None) -> None: ...
    def log_image(self, path, key: str, step: int) -> None: ...
    def set_tags(self, tags: dict) -> None: ...
    def add_view_metrics(self) -> None: ...
    def flush(self, timeout: float = FINISH_WAIT_S) -> bool: return True
    def finish(self, status: str = "FINISHED") -> None: ...


def _permanent(exc: Exception) -> bool:
    """A record the store refuses for what it is (a changed param, a removed file): sending it again
    cannot help, so it is skipped with a warning instead of blocking the journal."""
    if isinstance(exc, FileNotFoundError):
        return True
    return getattr(exc, "error_code", "") in ("INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS")


def _lost(exc: Exception) -> bool:
    return getattr(exc, "error_code", "") == "RESOURCE_DOES_NOT_EXIST"


def read_records(journal: Path, offset: int) -> list[tuple[dict, int]]:
    """The complete records from byte `offset` on, each with the offset just after it."""
    if not journal.exists():
        return []
    with open(journal, "rb") as fh:
        fh.seek(offset)
        data = fh.read()
    out, pos = [], offset
    for line in data.splitlines(keepends=True):
        if not line.endswith(b"\n"):
            break  # a record being written
        pos += len(line)
        with contextlib.suppress(ValueError):
            out.append((json.loads(line), pos))
    return out


def read_state(folder: RunFolder) -> dict:
    try:
        return json.loads(folder.tracking_state.read_text())
    except (OSError, ValueError):
        return {}


def unsent(folder: RunFolder) -> int:
    """Records of the run folder's journal not yet in the store."""
    return len(read_records(folder.tracking_journal, int(read_state(folder).get("sent", 0))))


class Tracker:
    """One run folder's MLflow run, written through its journal; every method returns at once."""

    def __init__(self, uri: str, experiment: str, run_name: str, run_dir, tags: dict | None = None,
                 start_thread: bool = True):
        self.folder = RunFolder(run_dir)
        self.folder.dir.mkdir(parents=True, exist_ok=True)
        self.uri = uri
        self._append_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()  # finish(): send what is left now, then end
        self._client = None
        self._run_id = ""
        self._offline_since = 0.0
        self._journal_broken = False
        self._logged: dict[str, int] = {}
        first = None
        for record, _ in read_records(self.folder.tracking_journal, 0):
            first = first or record
            if record.get("op") == "metrics":
                for k in record["values"]:
                    self._logged[k] = max(self._logged.get(k, -1), record["step"])
        tags = {k: str(v) for k, v in (tags or {}).items()}
        # what a new MLflow run is created with: this process's experiment and name, the first tags too
        opened = first.get("tags", {}) if first and first.get("op") == "open" else {}
        self.identity = {"op": "open", "uri": uri, "experiment": experiment, "run_name": run_name,
                         "tags": {**opened, **tags}}
        if first is None:
            self._append(self.identity)
        elif tags:
            self._append({"op": "tags", "values": tags})
        self._append({"op": "status", "status": "RUNNING", "ts": _now_ms(), "uri": uri})
        self._thread = None
        if start_thread:
            self._thread = threading.Thread(target=self._loop, name="qsattn-tracking", daemon=True)
            self._thread.start()

    # the training side: append and wake the sender
    @property
    def run_id(self) -> str:
        if not self._run_id and self.folder.mlflow_run_id.exists():
            return self.folder.mlflow_run_id.read_text().strip()
        return self._run_id

    def _append(self, record: dict) -> None:
        line = (json.dumps(record, default=str) + "\n").encode()
        with self._append_lock:
            try:
                fd = os.open(self.folder.tracking_journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o664)
                try:
                    os.write(fd, line)  # one write of a whole line: readers never see half a record
                finally:
                    os.close(fd)
            except OSError as exc:
                if not self._journal_broken:
                    log.warning("cannot write the tracking journal %s (%s); training goes on, these records are "
                                "not tracked", self.folder.tracking_journal, exc)
                    self._journal_broken = True
                return
        self._wake.set()

    def log_params(self, params: dict) -> None:
        self._append({"op": "params", "values": {k: str(v)[:6000] for k, v in params.items()}})

    def log_metrics(self, metrics: dict, step: int, skip_logged: bool = False) -> None:
        """skip_logged: keys already logged at this step or later are left out (a resumed run retraces
        the steps between its checkpoint and the kill: they are logged once)."""
        values = {k: float(v) for k, v in metrics.items() if not (skip_logged and self._logged.get(k, -1) >= step)}
        if values:
            for k in values:
                self._logged[k] = max(self._logged.get(k, -1), step)
            self._append({"op": "metrics", "step": int(step), "ts": _now_ms(), "values": values})

    def set_tags(self, tags: dict) -> None:
        self._append({"op": "tags", "values": {k: str(v) for k, v in tags.items()}})

    def log_artifact(self, path, artifact_path: str | None = None) -> None:
        self._append({"op": "artifact", "path": str(Path(path).absolute()), "dir": artifact_path})

    def log_image(self, path, key: str, step: int) -> None:
        """An image under the run's Images (with a step slider), from a file in the run folder."""
        self._append({"op": "image", "path": str(Path(path).absolute()), "key": key, "step": int(step)})

    def add_view_metrics(self) -> None:
        """Refresh the experiment's view with the metrics now logged (after an evaluation)."""
        self._append({"op": "view"})

    def flush(self, timeout: float = FINISH_WAIT_S) -> bool:
        """Wait (at most timeout s) until the journal is sent; True if it was."""
        deadline = time.time() + timeout
        self._wake.set()
        while unsent(self.folder) and time.time() < deadline:
            if self._thread is None or not self._thread.is_alive():
                self._send_once()
                if unsent(self.folder):
                    time.sleep(0.2)
                continue
            time.sleep(0.05)
        return not unsent(self.folder)

    def finish(self, status: str = "FINISHED") -> None:
        """The run's end, as it really ended (FINISHED, FAILED, KILLED). Waits a bounded time for the
        backlog; what is left stays in the journal for the next process or `qsattn mlflow sync`."""
        self._append({"op": "status", "status": status, "ts": _now_ms()})
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(FINISH_WAIT_S)
        left = unsent(self.folder)
        if left:
            log.warning("%d tracking records of %s are not in MLflow yet (%s did not answer); they are kept in %s "
                        "and sent by the next run on this folder or `python -m qsattn mlflow sync %s`", left,
                        self.folder.dir, self.uri, self.folder.tracking_journal, self.folder.dir)

    # the sender
    def _loop(self) -> None:
        """Send when woken by a record, at most every SEND_EVERY_S (records in between go in one batch);
        while the store does not answer, only every RETRY_S (new records do not wake it): an outage
        costs the training thread nothing, not even the GIL for a failing request per step."""
        failures = 0
        while True:
            if failures:
                self._stop.wait(timeout=RETRY_S[min(failures, len(RETRY_S)) - 1])
            else:
                self._wake.wait()
                self._stop.wait(timeout=SEND_EVERY_S)
            self._wake.clear()
            ok = self._send_once()
            failures = 0 if ok else failures + 1
            if self._stop.is_set() and (failures > 1 or (ok and not unsent(self.folder))):
                return
            if ok and unsent(self.folder):
                self._wake.set()  # appended during the send (or another process held the lock)

    def _send_once(self) -> bool:
        """Send what the journal holds beyond tracking.json's offset; False if the store did not answer."""
        try:
            with self._send_lock() as state:
                if state is None:
                    return True  # another process is sending this journal (it sends our records too)
                self._send(state)
            if self._offline_since:
                log.warning("MLflow at %s answers again; the records kept meanwhile are sent", self.uri)
                self._offline_since = 0.0
                self._write_state(online=True)
            return True
        except Exception as exc:  # noqa: BLE001 - any tracking failure is retried, never fatal
            if not self._offline_since:
                self._offline_since = time.time()
                log.warning("MLflow at %s does not answer (%s: %s); training goes on, records are kept in %s and "
                            "sent when it answers", self.uri, type(exc).__name__, str(exc).splitlines()[0][:200]
                            if str(exc) else "", self.folder.tracking_journal)
            else:
                log.debug("MLflow still unreachable: %s", exc)
            with contextlib.suppress(Exception):
                self._write_state(online=False, error=f"{type(exc).__name__}: {str(exc)[:300]}")
            return False

    @contextlib.contextmanager
    def _send_lock(self):
        """The journal's send lock (one sender per run folder across processes); yields its state, or
        None where another process holds it."""
        import fcntl

        with open(self.folder.tracking_journal.with_name(".tracking.lock"), "a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield None
                return
            try:
                yield read_state(self.folder)
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _write_state(self, **changes) -> None:
        from qsattn.engine.atomic import atomic_write_text

        state = read_state(self.folder)
        state.update(changes)
        if changes.get("online") is False:
            state.setdefault("offline_since", self._offline_since)
        elif changes.get("online"):
            state.pop("offline_since", None)
            state.pop("error", None)
        atomic_write_text(self.folder.tracking_state, json.dumps(state))

    def _send(self, state: dict) -> None:
        offset = int(state.get("sent", 0))
        records = read_records(self.folder.tracking_journal, offset)
        if not records:
            return
        if self._client is None:
            self._client = open_client(self.uri)
        if not self._run_id:
            replay = self._ensure_run()
            if replay:
                records = read_records(self.folder.tracking_journal, 0)
        i = 0
        while i < len(records):
            group, end = self._group(records, i)
            try:
                self._deliver(group)
            except Exception as exc:  # noqa: BLE001
                if not _permanent(exc):
                    raise
                log.warning("MLflow refused a tracking record of %s (%s); skipped", self.folder.dir,
                            str(exc).splitlines()[0][:200])
            i += len(group)
            self._write_state(sent=records[i - 1][1], online=True, run_id=self._run_id)

    @staticmethod
    def _group(records: list, i: int) -> tuple[list[dict], int]:
        """Consecutive records of one kind that fit one log_batch (1000 metrics, 100 params, 100 tags)."""
        op = records[i][0].get("op")
        if op not in ("metrics", "params", "tags"):
            return [records[i][0]], records[i][1]
        limit = {"metrics": 1000, "params": 100, "tags": 100}[op]
        group, size = [], 0
        while i < len(records) and records[i][0].get("op") == op:
            n = len(records[i][0]["values"])
            if group and size + n > limit:
                break
            group.append(records[i][0])
            size += n
            i += 1
        return group, records[i - 1][1]

    def _deliver(self, group: list[dict]) -> None:
        from mlflow.entities import Metric, Param, RunTag

        c, run_id, op = self._client, self._run_id, group[0]["op"]
        if op == "metrics":
            items = [Metric(k, v, r["ts"], r["step"]) for r in group for k, v in r["values"].items()]
            for j in range(0, len(items), 1000):
                c.log_batch(run_id, metrics=items[j:j + 1000])
        elif op in ("params", "tags"):
            merged = {k: v for r in group for k, v in r["values"].items()}
            cls = Param if op == "params" else RunTag
            items = [cls(k, v) for k, v in merged.items()]
            for j in range(0, len(items), 100):
                c.log_batch(run_id, **{op: items[j:j + 100]})
        elif op == "artifact":
            c.log_artifact(run_id, group[0]["path"], group[0]["dir"])
        elif op == "image":
            from PIL import Image

            with Image.open(group[0]["path"]) as im:
                c.log_image(run_id, im.convert("RGB"), key=group[0]["key"], step=group[0]["step"])
        elif op == "status":
            status = group[0]["status"]
            if status == "RUNNING":
                c.update_run(run_id, "RUNNING")
            else:
                c.set_terminated(run_id, status, end_time=group[0]["ts"])
        elif op == "view":
            refresh_view(c, c.get_run(run_id).info.experiment_id)

    def _ensure_run(self) -> bool:
        """Bind the MLflow run: the recorded one, or a new one (the folder's first, or because the store
        lost the recorded run). True if the whole journal must be replayed into a new run."""
        from qsattn.engine.atomic import atomic_write_text

        c, ident = self._client, self.identity
        old = self.folder.mlflow_run_id.read_text().strip() if self.folder.mlflow_run_id.exists() else ""
        if old:
            try:
                c.get_run(old)
                self._run_id = old
                return False
            except Exception as exc:  # noqa: BLE001
                if not _lost(exc):
                    raise
        tags = {**default_tags(), **ident.get("tags", {}), "run_dir": str(self.folder.dir.absolute())}
        if old:
            tags["qsattn.previous_run_id"] = old
        exp_id = ensure_experiment(c, ident["experiment"], self.uri)
        run = c.create_run(exp_id, run_name=ident["run_name"], tags=tags)
        self._run_id = run.info.run_id
        atomic_write_text(self.folder.mlflow_run_id, self._run_id)
        if old:
            log.warning("MLflow at %s has no run %s (the store was deleted, or this folder logged to another "
                        "store): %s logs to a new run %s, tagged qsattn.previous_run_id=%s, and its journal is "
                        "replayed into it", self.uri, old, self.folder.dir, self._run_id, old)
        return bool(old)


def default_tags() -> dict[str, str]:
    """What the UI's "Created by" and "Source" columns show."""
    with contextlib.suppress(Exception):
        user = getpass.getuser()
        return {"mlflow.user": user, "mlflow.source.name": "qsattn", "mlflow.source.type": "LOCAL",
                "mlflow.source.git.commit": git_commit()}
    return {"mlflow.source.name": "qsattn", "mlflow.source.type": "LOCAL"}


def _now_ms() -> int:
    return int(time.time() * 1000)


def open_tracker(cfg, run_dir: Path, tags: dict) -> NullTracker | Tracker:
    """The run folder's tracker: it continues the MLflow run recorded there (a resumed run, the
    evaluation after training) and first sends what an earlier process left unsent."""
    if cfg.tracking_uri == "off":
        return NullTracker()
    labels = run_labels(cfg)
    return Tracker(resolve_uri(cfg.tracking_uri), cfg.experiment, short_run_name(labels), run_dir, {**labels, **tags})


def sync(run_dir, timeout: float = 60.0) -> tuple[int, int]:
    """Send a run folder's unsent journal records (to the store its journal names): (sent, left). A run
    whose last record says RUNNING while no process holds its folder was killed (SIGKILL, a lost node):
    it is recorded KILLED first."""
    from qsattn.engine.run_folder import holder

    folder = RunFolder(run_dir)
    records = [r for r, _ in read_records(folder.tracking_journal, 0)]
    if not records:
        return 0, 0
    tracker = Tracker.__new__(Tracker)  # a sender only: no RUNNING record, no thread
    tracker.folder, tracker.identity = folder, records[0]
    tracker.uri = [r["uri"] for r in records if r.get("uri")][-1]  # the store its latest process used
    tracker._client, tracker._run_id, tracker._offline_since, tracker._thread = None, "", 0.0, None
    tracker._wake, tracker._append_lock, tracker._journal_broken = threading.Event(), threading.Lock(), False
    statuses = [r["status"] for r in records if r.get("op") == "status"]
    if statuses and statuses[-1] == "RUNNING" and not holder(folder.dir):
        tracker._append({"op": "status", "status": "KILLED", "ts": _now_ms()})
    before = unsent(folder)
    tracker.flush(timeout)
    left = unsent(folder)
    return before - left, left


def grouped_params(cfg) -> dict:
    """The resolved config as params named <section>/<key> (`networks/netG`): the run page lists them grouped."""
    from qsattn.engine.config import FIELDS

    return {f"{FIELDS[k].metadata['section']}/{k}": v for k, v in cfg.to_dict().items()}


def log_report(uri: str, experiment: str, paths: list) -> str:
    """Put a sweep's report (tables, figures) in its experiment's sweep-level run `sweep · <experiment>`
    (created once, tagged qsattn.kind=sweep) and refresh the experiment's view; returns the run id."""
    client = open_client(uri)
    exp_id = ensure_experiment(client, experiment, uri)
    found = client.search_runs([exp_id], filter_string=f"tags.`qsattn.kind` = '{SWEEP_KIND}'", max_results=1)
    if found:
        run_id = found[0].info.run_id
    else:
        run_id = client.create_run(exp_id, run_name=f"sweep · {experiment}",
                                   tags={**default_tags(), "qsattn.kind": SWEEP_KIND}).info.run_id
    for path in paths:
        path = Path(path)
        if path.is_file():
            client.log_artifact(run_id, str(path), "report" + ("/figures" if path.suffix in (".png", ".pdf") else ""))
    client.set_terminated(run_id, "FINISHED")
    refresh_view(client, exp_id)
    return run_id


def tracking_note(run_dir) -> str:
    """What `status` shows while a run folder's store does not answer ('' otherwise)."""
    folder = RunFolder(run_dir)
    if read_state(folder).get("online") is False:
        return f"tracking offline ({unsent(folder)} records kept)"
    return ""
