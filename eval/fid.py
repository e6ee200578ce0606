"""FID and KID of a folder of translations against a reference split, through clean-fid.

Modes, named as clean-fid names them:
  clean           PIL bicubic resize to 299 without quantisation, NVIDIA's torchscript port of the
                  TF Inception (`inception-2015-12-05.pt`). clean-fid's recommended protocol.
  legacy_pytorch  torch bilinear resize, pytorch-fid's Inception (`pt_inception-2015-12-05-6726825d.pth`).
                  What CUT/FastCUT (and, as far as records show, QS-Attn) reported: use it to compare
                  with paper numbers.

Images go through clean-fid's own pipeline (`cleanfid.fid.get_files_features`: its resize dataset,
its batching), so the only thing we choose is the extractor. Reference features are cached once per
split on disk (see `reference_cache_name`). Without Inception weights we stop with an error that
names the file; a stand-in extractor is used only when passed explicitly and is then labelled
`fid_standin` everywhere, never `fid`. Every value carries its mode in its name (`fid_clean`,
`kid_legacy_pytorch`, `fid_standin_clean`): numbers of two protocols are never mixed up.

Both weight files are pinned by their full sha256 (`PINNED_SHA256`); any other file is refused.
"""
from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from eval.folders import EvalError, check_coverage, image_resolution, list_images, sha256_file
from eval.frechet import feature_statistics, frechet_distance, kernel_inception_distance
from eval.weights import FID_MODES as MODES
from eval.weights import INCEPTION_SHA256

WEIGHTS_ENV = "QSATTN_INCEPTION_WEIGHTS"
DEFAULT_CACHE_DIR = Path(os.environ.get("QSATTN_EVAL_CACHE", Path.home() / ".cache" / "qsattn" / "eval"))


# The full sha256 of each mode's weights file, and where it is published: eval/weights.py.
PINNED_SHA256 = INCEPTION_SHA256


def check_pinned(mode: str, path: Path, sha: str) -> None:
    """EvalError unless `path` is the published weights file of `mode` (never a warning: FID from other
    weights is another number under the same name)."""
    spec = INCEPTION[mode]
    if sha != PINNED_SHA256[mode]:
        raise EvalError(f"{path} is not the Inception file of FID mode '{mode}': its sha256 is {sha}, expected "
                        f"{PINNED_SHA256[mode]} ({spec.file_name} from {spec.url}). Download that file again.")


def weights_for_mode(mode: str, given: str | os.PathLike | None) -> str | None:
    """The path for `mode` out of an `inception_weights` value: 'MODE=PATH,MODE=PATH', or a bare PATH
    (accepted for any mode: the pinned hash then says whether it is the right file)."""
    if not given:
        return None
    entries = [e.strip() for e in str(given).split(",") if e.strip()]
    named = dict(e.split("=", 1) for e in entries if "=" in e and e.split("=", 1)[0] in MODES)
    if named:
        unnamed = [e for e in entries if not ("=" in e and e.split("=", 1)[0] in MODES)]
        if unnamed:
            raise EvalError(f"inception weights {given!r}: write every entry as MODE=PATH "
                            f"(modes: {', '.join(MODES)}); {unnamed[0]!r} names no mode.")
        return named.get(mode)
    if len(entries) > 1:
        raise EvalError(f"inception weights {given!r}: several paths need their modes, e.g. "
                        f"clean=PATH,legacy_pytorch=PATH.")
    return entries[0]


@dataclass(frozen=True)
class InceptionWeights:
    """Where clean-fid itself would fetch and keep one mode's Inception weights."""
    url: str
    default_dir: Callable[[], str]   # clean-fid's own cache folder for this file

    @property
    def file_name(self) -> str:
        return self.url.rsplit("/", 1)[-1]


def _inception_specs() -> dict[str, InceptionWeights]:
    # Read from clean-fid's modules so a clean-fid upgrade that moves a URL is followed, not shadowed.
    from cleanfid import downloads_helper, inception_pytorch

    return {
        # clean-fid's features.py loads the torchscript file from /tmp (./ on Windows).
        "clean": InceptionWeights(downloads_helper.inception_url, lambda: "/tmp"),
        # pytorch-fid's weights go through torch.hub's load_state_dict_from_url: <hub dir>/checkpoints.
        "legacy_pytorch": InceptionWeights(inception_pytorch.FID_WEIGHTS_URL,
                                           lambda: os.path.join(torch.hub.get_dir(), "checkpoints")),
    }


INCEPTION = _inception_specs()


def resolve_inception_weights(mode: str, inception_path: str | os.PathLike | None = None) -> Path:
    """The Inception weights file for `mode`: the given path, else $QSATTN_INCEPTION_WEIGHTS, else the
    file in clean-fid's own cache, else downloaded there by clean-fid's URL. Anything else is an error:
    FID from other weights is not FID, so there is no fallback.
    """
    spec = INCEPTION[mode]
    how = (f"Download {spec.url} on a machine with internet and pass it with --inception-weights {mode}=PATH "
           f"(or set {WEIGHTS_ENV}={mode}=PATH), or put it at {Path(spec.default_dir()) / spec.file_name}.")
    given = weights_for_mode(mode, inception_path) or weights_for_mode(mode, os.environ.get(WEIGHTS_ENV))
    if given:
        if not Path(given).is_file():
            raise EvalError(f"Inception weights {given} do not exist. FID mode '{mode}' needs "
                            f"{spec.file_name}. {how}")
        return Path(given)
    cached = Path(spec.default_dir()) / spec.file_name
    if cached.is_file():
        return cached
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        # Writes to a temporary file and renames it, so a cut download never leaves a truncated file.
        torch.hub.download_url_to_file(spec.url, str(cached), progress=False)
    except Exception as exc:  # no internet, proxy, HTTP error: all mean the same to the user
        raise EvalError(f"FID mode '{mode}' needs the Inception weights {spec.file_name}, which are not "
                        f"on this machine and could not be downloaded ({type(exc).__name__}: {exc}). "
                        f"{how}") from exc
    return cached


@dataclass
class Extractor:
    """A feature extractor plus what identifies it in results and cache keys."""
    name: str                     # 'inception_v3:torchscript' | 'inception_v3:pytorch_fid' | 'custom:<name>'
    fn: Callable[[torch.Tensor], torch.Tensor]   # (N,3,299,299) float in [0,255] -> (N,D)
    weights_path: str | None
    weights_sha256: str | None    # None: nothing identifies the weights, so nothing is cached

    @property
    def standin(self) -> bool:
        return self.name.startswith("custom:")


def load_inception(mode: str, weights_path: Path, device: torch.device,
                   cache_dir: str | os.PathLike = DEFAULT_CACHE_DIR) -> Extractor:
    """Build clean-fid's extractor for `mode` from a local file.

    We load the file directly instead of copying it into /tmp or the torch hub folder: a file given by
    the user is then exactly the file scored (its sha256 goes into the result), and nothing outside
    our cache is written. The networks and their input scaling are clean-fid's classes.
    """
    from cleanfid.inception_pytorch import InceptionV3
    from cleanfid.inception_torchscript import InceptionV3W

    if mode not in MODES:
        raise EvalError(f"unknown FID mode '{mode}'; choose one of {', '.join(MODES)}.")
    sha = sha256_file(weights_path)
    check_pinned(mode, weights_path, sha)
    spec = INCEPTION[mode]
    if mode == "clean":
        # InceptionV3W takes a folder holding the canonical file name; link a differently named file.
        folder = weights_path.parent
        if weights_path.name != spec.file_name:
            folder = Path(cache_dir) / "inception" / sha[:16]
            folder.mkdir(parents=True, exist_ok=True)
            link = folder / spec.file_name
            if not link.exists():
                link.symlink_to(weights_path.resolve())
        net = InceptionV3W(str(folder), download=False, resize_inside=False).to(device).eval()
        fn = net
        name = "inception_v3:torchscript"
    else:
        with _state_dict_from_file(weights_path):
            net = InceptionV3(output_blocks=[3], resize_input=False).to(device).eval()

        def fn(x):   # clean-fid's legacy_pytorch extractor: inputs in [0,1], pooled 2048-d features
            return net(x / 255)[0].squeeze(-1).squeeze(-1)
        name = "inception_v3:pytorch_fid"
    return Extractor(name, fn, str(weights_path), sha)


@contextlib.contextmanager
def _state_dict_from_file(path: Path):
    """Make clean-fid's pytorch-fid Inception read its state dict from `path` instead of a URL."""
    from cleanfid import inception_pytorch

    original = inception_pytorch.load_state_dict_from_url
    inception_pytorch.load_state_dict_from_url = lambda *a, **k: torch.load(path, map_location="cpu",
                                                                                     weights_only=True)
    try:
        yield
    finally:
        inception_pytorch.load_state_dict_from_url = original


def standin_extractor(feature_extractor: Callable) -> Extractor:
    """Wrap a user-supplied extractor (tests, debugging without Inception weights).

    Its scores are labelled `custom:<name>` / `fid_standin`. It is cached only if it carries a
    `fingerprint` attribute (e.g. a hash of its weights): without one, a changed stand-in would be
    served stale reference features.
    """
    name = getattr(feature_extractor, "name", None) or getattr(feature_extractor, "__name__", None) \
        or type(feature_extractor).__name__
    return Extractor(f"custom:{name}", feature_extractor, None, getattr(feature_extractor, "fingerprint", None))


# What clean-fid's build_resizer(mode) does before the network (cleanfid/resize.py), for the protocol record.
RESIZERS = {"clean": "PIL bicubic to 299x299, float (no quantisation)",
            "legacy_pytorch": "torch bilinear to 299x299 (F.interpolate, align_corners=False)"}


def compute_features(files: list[Path], extractor: Extractor, mode: str, device: torch.device,
                     batch_size: int = 32, num_workers: int | None = None) -> np.ndarray:
    """Features of `files` through clean-fid's resize pipeline for `mode`."""
    from cleanfid.fid import get_files_features

    if num_workers is None:
        num_workers = min(8, os.cpu_count() or 1)
    with torch.no_grad():
        return get_files_features([str(f) for f in files], model=extractor.fn, num_workers=num_workers,
                                  batch_size=batch_size, device=device, mode=mode, verbose=False)


def reference_cache_name(dataset: str, split: str, mode: str, n: int, resolution: str,
                         extractor: Extractor, listing_digest: str) -> str:
    """File name of a reference split's cached features. Each part changes the features:

    dataset, split   which images (horse2zebra testB is not trainB);
    mode             the resize filter and, for legacy_pytorch, another network;
    n                a partial copy of the split has other statistics;
    resolution       the same split prepared at 256 px or at full size resizes differently to 299;
    extractor+sha256 other weights give other features (also keeps stand-ins apart from Inception);
    listing digest   names and sizes of the files: a re-prepared split with the same count.
    """
    safe = lambda s: "".join(c if c.isalnum() or c in "-_." else "-" for c in str(s))
    return (f"{safe(dataset)}_{safe(split)}_{mode}_n{n}_{resolution}_{safe(extractor.name)}-"
            f"{extractor.weights_sha256[:16]}_{listing_digest[:12]}.npz")


def _listing_digest(files: list[Path], root: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.relative_to(root)}\0{f.stat().st_size}\n".encode())
    return h.hexdigest()


def reference_features(ref_dir: str | os.PathLike, extractor: Extractor, mode: str, device: torch.device, *,
                       dataset: str | None = None, split: str | None = None,
                       cache_dir: str | os.PathLike = DEFAULT_CACHE_DIR, batch_size: int = 32,
                       num_workers: int | None = None) -> tuple[np.ndarray, dict]:
    """Features of a reference split, computed once and then read from `cache_dir`.

    `dataset`/`split` default to the folder's parent and own name (datasets/horse2zebra/testB ->
    horse2zebra, testB). Returns the features and a dict describing the reference.
    """
    ref = Path(ref_dir)
    files = list_images(ref)
    info = {"reference_dir": str(ref), "reference_dataset": dataset or ref.resolve().parent.name,
            "reference_split": split or ref.name, "n_real": len(files), "reference_resolution": image_resolution(files)}
    path = None
    if extractor.weights_sha256:
        name = reference_cache_name(info["reference_dataset"], info["reference_split"], mode, len(files),
                                    info["reference_resolution"], extractor, _listing_digest(files, ref))
        path = Path(cache_dir) / name
        if path.is_file():
            with np.load(path) as z:
                return z["feats"], {**info, "reference_stats_file": str(path), "reference_cache_hit": True}
    feats = compute_features(files, extractor, mode, device, batch_size, num_workers)
    if path is not None:
        mu, sigma = feature_statistics(feats)
        meta = {**info, "mode": mode, "extractor": extractor.name, "extractor_sha256": extractor.weights_sha256}
        save_npz_atomic(path, feats=feats, mu=mu, sigma=sigma, meta=np.array(json.dumps(meta)))
    return feats, {**info, "reference_stats_file": str(path) if path else None, "reference_cache_hit": False}


def load_reference_stats(path: str | os.PathLike, extractor: Extractor, mode: str) -> tuple[np.ndarray, dict]:
    """Features from a stats file written by `reference_features`, checked against mode and extractor
    (stats from other weights or another resize would give a wrong FID without any sign)."""
    with np.load(path) as z:
        feats, meta = z["feats"], json.loads(str(z["meta"]))
    if (meta["mode"], meta["extractor"], meta["extractor_sha256"]) != (mode, extractor.name, extractor.weights_sha256):
        raise EvalError(f"{path} holds {meta['mode']} / {meta['extractor']} ({str(meta['extractor_sha256'])[:12]}) "
                        f"statistics, but this evaluation uses {mode} / {extractor.name} "
                        f"({str(extractor.weights_sha256)[:12]}). Pass the reference folder with --ref instead.")
    keep = ("reference_dir", "reference_dataset", "reference_split", "n_real", "reference_resolution")
    return feats, {**{k: meta[k] for k in keep}, "reference_stats_file": str(path), "reference_cache_hit": True}


def save_npz_atomic(path: Path, **arrays) -> None:
    """np.savez to a temporary name, then rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def compute_fid_kid(gen_dir: str | os.PathLike, ref_dir: str | os.PathLike | None = None, *,
                    ref_stats: str | os.PathLike | None = None, test_input_dir: str | os.PathLike | None = None,
                    mode: str = "clean", dataset: str | None = None, split: str | None = None,
                    device: str | torch.device | None = None, inception_path: str | os.PathLike | None = None,
                    feature_extractor: Callable | None = None, cache_dir: str | os.PathLike = DEFAULT_CACHE_DIR,
                    batch_size: int = 32, num_workers: int | None = None, kid_subsets: int = 100,
                    kid_subset_size: int = 1000, seed: int = 0) -> dict:
    """FID and KID of `gen_dir` against the reference split `ref_dir` (or its cached `ref_stats` file).

    `test_input_dir`: the source test split; when given, `gen_dir` must hold one translation per
    image (see `check_coverage`). Returns {'metric_name', 'fid_<mode>', 'kid_<mode>', 'protocol'}; with a
    `feature_extractor` the keys are 'fid_standin_<mode>' / 'kid_standin_<mode>' instead.
    """
    if mode not in MODES:
        raise EvalError(f"unknown FID mode '{mode}'; choose one of {', '.join(MODES)}.")
    if (ref_dir is None) == (ref_stats is None):
        raise EvalError("give exactly one reference: a folder (--ref DIR) or a cached stats file (--ref-stats NPZ).")
    device = torch.device(device) if device is not None else default_device()
    if test_input_dir is not None:
        check_coverage(gen_dir, test_input_dir)
    if feature_extractor is not None:
        extractor = standin_extractor(feature_extractor)
    else:
        extractor = load_inception(mode, resolve_inception_weights(mode, inception_path), device, cache_dir)

    if ref_stats is not None:
        ref_feats, ref_info = load_reference_stats(ref_stats, extractor, mode)
    else:
        ref_feats, ref_info = reference_features(ref_dir, extractor, mode, device, dataset=dataset, split=split,
                                                 cache_dir=cache_dir, batch_size=batch_size, num_workers=num_workers)
    gen_files = list_images(gen_dir)
    gen_feats = compute_features(gen_files, extractor, mode, device, batch_size, num_workers)

    fid = frechet_distance(*feature_statistics(gen_feats), *feature_statistics(ref_feats))
    kid = kernel_inception_distance(gen_feats, ref_feats, num_subsets=kid_subsets,
                                    max_subset_size=kid_subset_size, seed=seed)
    suffix = ("_standin" if extractor.standin else "") + f"_{mode}"
    protocol = {
        "metric_name": "fid" + suffix, "mode": mode, "resizer": RESIZERS[mode], "pinned_sha256": (
            None if extractor.standin else PINNED_SHA256[mode]), "n_generated": len(gen_files),
        "generated_dir": str(gen_dir), "generated_resolution": image_resolution(gen_files),
        "coverage_checked_against": str(test_input_dir) if test_input_dir is not None else None,
        **ref_info,
        "extractor": extractor.name, "extractor_weights": extractor.weights_path,
        "extractor_sha256": extractor.weights_sha256,
        "cleanfid_version": importlib.metadata.version("clean-fid"),
        "kid_subsets": kid_subsets, "kid_subset_size": min(kid_subset_size, len(gen_files), len(ref_feats)),
        "kid_seed": seed,
    }
    return {"metric_name": "fid" + suffix, "fid" + suffix: fid, "kid" + suffix: kid, "protocol": protocol}
