"""Preflight: what a sweep's cells will need, checked before anything is submitted.

A cluster job that finds its dataset folder missing fails after its queue wait; one that finds no
Inception or DRN weights fails after ten hours of training. So before submitting, the sweep checks for
every cell: its dataset folder and the image count of each split (the published counts of the known
datasets, qsattn/data/datasets.py), the evaluation weights its metrics need (Inception for FID/KID, DRN for
the Cityscapes segmentation scores; read through the config: inception_weights, drn_weights), that the
run, log and store folders can be written, that an MLflow server answers, and that the device exists.
Every problem is collected, then reported in one message, each with how to fix it.

The synthetic dataset needs no download: where a grid uses it and it is absent, it is generated here.
"""
from __future__ import annotations

import os
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from slurm.grid import Cell

TRAIN_SPLITS = ("trainA", "trainB")
TEST_SPLITS = ("testA", "testB")


@dataclass
class Problem:
    what: str
    fix: str
    cells: list[str] = field(default_factory=list)


class Checks:
    """Problems collected once per distinct cause, with the cells each one affects."""

    def __init__(self):
        self.found: dict[tuple[str, str], Problem] = {}

    def add(self, what: str, fix: str, cells) -> None:
        problem = self.found.setdefault((what, fix), Problem(what, fix))
        problem.cells += [c.name for c in cells if c.name not in problem.cells]

    @property
    def problems(self) -> list[Problem]:
        return list(self.found.values())


def _groups(cells: list[Cell], key) -> dict:
    out: dict = {}
    for c in cells:
        out.setdefault(key(c), []).append(c)
    return out


def nearest_existing(path: Path) -> Path:
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def writable(path: str | os.PathLike) -> bool:
    """Whether `path` can be created or written to: it is writable, or its nearest existing ancestor is a
    writable folder (a file in the way makes it impossible)."""
    path = Path(path).absolute()
    existing = nearest_existing(path)
    if existing.is_dir():
        return os.access(existing, os.W_OK | os.X_OK)
    return existing == path and os.access(existing, os.W_OK)


# --- datasets -----------------------------------------------------------------------------------

def _dataset_fix(name: str, root: Path) -> str:
    from qsattn.data.datasets import REGISTRY

    entry = REGISTRY.get(name)
    if entry is None:
        return (f"put your images in {root / name}/{{trainA,trainB,testA,testB}} (docs/recipes.md), or correct "
                "`dataset` / `data_root` in the grid")
    if any(s.manual for s in entry.sources):
        return (f"download its archives by hand (`python -m qsattn data --list` says which and where), then run "
                f"`python -m qsattn data {name} --root {root}`")
    return f"run `python -m qsattn data {name} --root {root}`"


def ensure_synthetic(cells: list[Cell], checks: Checks, generate_now: bool) -> list[str]:
    """Generate the synthetic dataset where a cell uses it and it is absent; returns what was done."""
    done = []
    for folder, group in _groups([c for c in cells if c.config.dataset == "synthetic"],
                                 lambda c: Path(c.config.data_root) / "synthetic").items():
        if folder.exists():
            continue
        cfg = group[0].config
        size = min(256, max(32, cfg.crop_size if cfg.preprocess == "none" else cfg.load_size))
        if not generate_now:
            done.append(f"would generate the synthetic dataset in {folder} ({size} px)")
            continue
        if not writable(folder):
            checks.add(f"the synthetic dataset cannot be generated: {nearest_existing(folder)} is not writable",
                       "choose a writable `data_root` in the grid", group)
            continue
        from qsattn.data.synthetic import generate

        generate(folder, size=size)
        done.append(f"generated the synthetic dataset in {folder} ({size} px)")
    return done


def count_images(folder: Path) -> int:
    """Images in `folder` as training finds them (qsattn.data.unaligned: recursive, its extensions); 0 if absent."""
    from qsattn.data.unaligned import list_images

    return len(list_images(folder)) if folder.is_dir() else 0


def check_datasets(cells: list[Cell], stage: str, checks: Checks) -> None:
    from qsattn.data.datasets import REGISTRY

    for (root, name), group in _groups(cells, lambda c: (Path(c.config.data_root), c.config.dataset)).items():
        folder = root / name
        fix = _dataset_fix(name, root)
        if not folder.is_dir():
            if name == "synthetic":
                continue  # generated by ensure_synthetic (or reported there)
            checks.add(f"dataset folder {folder} does not exist", fix, group)
            continue
        expected = dict(REGISTRY[name].counts) if name in REGISTRY else {}
        needed = list(TRAIN_SPLITS) + (list(TEST_SPLITS) if stage in ("full", "eval") else [])
        if stage in ("full", "eval"):
            needed += [s for s in expected if s not in needed]  # e.g. Cityscapes' testA_labelIds
        counts = {split: count_images(folder / split) for split in needed}
        empty = [s for s in needed if counts[s] == 0]
        if empty:
            checks.add(f"dataset {folder} has no images in {', '.join(empty)}", fix, group)
        wrong = {s: n for s, n in counts.items() if s in expected and n and n != expected[s]}
        if wrong:
            detail = ", ".join(f"{s}: {n} images, expected {expected[s]}" for s, n in wrong.items())
            checks.add(f"dataset {folder} is not the published {name} ({detail})",
                       f"move it away and run `python -m qsattn data {name} --root {root}`", group)
        if not empty:
            for cell in group:
                cfg = cell.config
                cap = cfg.max_dataset_size or None
                largest = max(min(counts[s], cap or counts[s]) for s in TRAIN_SPLITS)
                if largest < cfg.batch_size:
                    checks.add(f"batch_size={cfg.batch_size} is larger than {folder}'s training split "
                               f"({largest} images)", "lower batch_size in the grid", [cell])


# --- evaluation weights ---------------------------------------------------------------------------

def metrics_of(cfg) -> list[str]:
    """The metrics a full cell computes after training (as the pipeline decides them)."""
    from qsattn.engine.pipeline import default_metrics

    return default_metrics(cfg)


def check_eval_weights(cells: list[Cell], cluster: str, checks: Checks, fetch: bool) -> None:
    fid_cells = [c for c in cells if {"fid", "kid"} & set(metrics_of(c.config))]
    from qsattn.engine.config import fid_modes

    per_mode = [(mode, c) for c in fid_cells for mode in fid_modes(c.config)]
    for (mode, given), pairs in _groups(per_mode, lambda mc: (mc[0], mc[1].config.inception_weights)).items():
        _check_inception(mode, given, cluster, [c for _, c in pairs], checks, fetch)
    seg_cells = [c for c in cells if "cityscapes_seg" in metrics_of(c.config)]
    for (arch, path), group in _groups(seg_cells, lambda c: (c.config.drn_arch, c.config.drn_weights)).items():
        from eval.weights import drn_how

        where = f"{drn_how(arch)} and set `drn_weights: PATH` (and `drn_arch: {arch}`) in the grid's defaults"
        if not path:
            checks.add(f"the Cityscapes segmentation score needs DRN weights ({arch}); drn_weights is not set",
                       where, group)
        elif not Path(path).is_file():
            checks.add(f"DRN weights {path} do not exist", where, group)


def _check_inception(mode: str, given: str, cluster: str, cells: list[Cell], checks: Checks, fetch: bool) -> None:
    try:
        from eval.fid import INCEPTION, WEIGHTS_ENV, resolve_inception_weights, weights_for_mode
        from eval.folders import EvalError
    except ImportError as exc:
        checks.add(f"FID needs clean-fid, which cannot be imported here ({exc})",
                   "install the project (`make install`: pyproject.toml pins it)", cells)
        return
    spec = INCEPTION[mode]
    fix = (f"download {spec.url} and set `inception_weights: {mode}=PATH` in the grid's defaults (or export "
           f"{WEIGHTS_ENV}={mode}=PATH)")
    try:
        given = weights_for_mode(mode, given) or weights_for_mode(mode, os.environ.get(WEIGHTS_ENV, "")) or ""
    except EvalError as exc:
        checks.add(str(exc), fix, cells)
        return
    if given:
        if not Path(given).is_file():
            checks.add(f"Inception weights {given} (FID mode {mode}) do not exist", fix, cells)
        return
    if cluster == "slurm":
        checks.add(f"FID cells on SLURM need the Inception weights ({spec.file_name}, FID mode {mode}) at a path "
                   "every node can read; none is set", fix.replace("download", "download to shared storage"), cells)
        return
    cached = Path(spec.default_dir()) / spec.file_name
    if cached.is_file():
        return
    if not fetch:
        checks.add(f"the Inception weights for FID mode {mode} are not on this machine ({cached}); a real run "
                   "tries to download them first", fix, cells)
        return
    print(f"preflight: fetching the Inception weights for FID mode {mode} ({spec.url})", flush=True)
    try:
        resolve_inception_weights(mode)
    except EvalError as exc:
        cause = exc.__cause__ or exc
        checks.add(f"the Inception weights for FID mode {mode} are not on this machine and could not be "
                   f"downloaded ({type(cause).__name__}: {str(cause)[:200]})", fix, cells)


# --- paths, tracking, devices ------------------------------------------------------------------------

def check_paths(cells: list[Cell], folder: Path | None, checks: Checks) -> None:
    for root, group in _groups(cells, lambda c: Path(c.config.run_root)).items():
        if not writable(root):
            checks.add(f"run folder {root} cannot be written ({nearest_existing(root)} is not writable)",
                       "set a writable `run_root` in the grid's defaults", group)
    if folder is not None and not writable(folder):
        checks.add(f"the job log folder {folder} cannot be written", "pass a writable --folder", cells)


def server_answers(uri: str, timeout: float = 5.0) -> str:
    """'' if the MLflow server at `uri` answers its health check, else what went wrong."""
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as response:
            return "" if response.status == 200 else f"HTTP {response.status}"
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code} {exc.reason}"
    except (OSError, ValueError) as exc:
        return str(getattr(exc, "reason", exc))


def check_tracking(cells: list[Cell], checks: Checks) -> None:
    from qsattn.engine.tracking import resolve_uri

    for uri, group in _groups(cells, lambda c: c.config.tracking_uri).items():
        if uri == "off":
            continue
        uri = resolve_uri(uri)
        if uri.startswith(("http://", "https://")):
            error = server_answers(uri)
            if error:
                checks.add(f"the MLflow server {uri} does not answer ({error})",
                           "start it (`mlflow server --host 0.0.0.0 --port 5000 ...`), or point `tracking_uri` / "
                           "$MLFLOW_TRACKING_URI at a running one, or set `tracking_uri: off`", group)
        elif uri.startswith("sqlite:///"):
            db = Path(uri[len("sqlite:///"):])
            if not (os.access(db, os.W_OK) if db.exists() else writable(db.parent)):
                checks.add(f"the MLflow store {db} cannot be written",
                           "set a writable `tracking_uri: sqlite:///PATH` (or a server) in the grid", group)


def check_devices(cells: list[Cell], cluster: str, profile: dict, gpus_here: list[int], checks: Checks) -> None:
    for device, group in _groups([c for c in cells if c.config.device.startswith("cuda")],
                                 lambda c: c.config.device).items():
        index = int(device.split(":")[1]) if ":" in device and device.split(":")[1].isdigit() else 0
        if cluster == "slurm":
            gpus = int(profile.get("gpus_per_node") or 0)
            if gpus == 0:
                checks.add(f"device={device}, but the cluster profile asks for no GPU (gpus_per_node: 0)",
                           "set gpus_per_node in the profile (or --set gpus_per_node=1)", group)
            elif index >= gpus:
                checks.add(f"device={device}, but each job gets {gpus} GPU(s), seen as cuda:0..{gpus - 1}",
                           "use device=cuda (SLURM picks the GPU)", group)
        elif cluster == "local":
            if not gpus_here:
                checks.add(f"device={device}, but this machine has no visible GPU",
                           "run on a GPU machine or cluster, or set device=cpu (or auto)", group)
            elif index > 0:
                checks.add(f"device={device}: a local sweep gives each job one GPU, which it sees as cuda:0",
                           "use device=cuda, and choose the GPUs with CUDA_VISIBLE_DEVICES=... (docs/recipes.md)",
                           group)


def preflight(cells: list[Cell], *, cluster: str, stage: str, profile: dict, folder: Path | None,
              gpus_here: list[int], dry_run: bool = False) -> tuple[list[Problem], list[str]]:
    """(every problem found, notes on what was prepared). dry_run: generates and downloads nothing."""
    checks = Checks()
    notes = ensure_synthetic(cells, checks, generate_now=not dry_run)
    check_datasets(cells, stage, checks)
    if stage in ("full", "eval"):
        check_eval_weights(cells, cluster, checks, fetch=not dry_run)
    check_paths(cells, folder, checks)
    check_tracking(cells, checks)
    check_devices(cells, cluster, profile, gpus_here, checks)
    return checks.problems, notes


def format_problems(problems: list[Problem], dry_run: bool = False) -> str:
    head = (f"preflight: {len(problems)} problem{'s' if len(problems) > 1 else ''} to fix; "
            + ("a real run would stop here" if dry_run else "nothing was submitted") + ":")
    lines = [head]
    for i, p in enumerate(problems, 1):
        shown = ", ".join(p.cells[:3]) + (f" and {len(p.cells) - 3} more" if len(p.cells) > 3 else "")
        lines += [f"  {i}. {p.what} ({len(p.cells)} cell{'s' if len(p.cells) > 1 else ''}: {shown})",
                  f"     fix: {p.fix}"]
    return "\n".join(lines)
