"""Image folders as the metrics see them: listing, coverage of the test split, file hashes.

Every metric reads folders through `list_images`, so FID, KID and the segmentation score count the
same files, and `check_coverage` can promise that a score covers the whole test split (the official
QS-Attn test script silently stops at 20 images; we refuse instead).
"""
from __future__ import annotations

import os
from pathlib import Path

from qsattn.data.files import list_images as files_under
from qsattn.data.files import sha256_file  # noqa: F401  (eval's metrics name their weights with it)
from qsattn.errors import UserError


class EvalError(UserError, ValueError):
    """A metric cannot be computed as asked; the message says what to do next."""


def list_images(folder: str | os.PathLike) -> list[Path]:
    """All images under `folder` with clean-fid's extensions (recursively, as its folder mode does), sorted."""
    from cleanfid.utils import EXTENSIONS   # (clean-fid imports torch: only when a folder is read)

    root = Path(folder)
    if not root.is_dir():
        raise EvalError(f"{root} is not a folder of images.")
    exts = {e.lower() for e in EXTENSIONS}
    files = [Path(p) for p in files_under(root, tuple(f".{e}" for e in sorted(exts)))]
    if not files:
        raise EvalError(f"{root} contains no images ({', '.join(sorted(exts))}).")
    return files


def check_coverage(gen_dir: str | os.PathLike, test_dir: str | os.PathLike, *, max_named: int = 20) -> int:
    """Raise EvalError unless `gen_dir` holds one translation per image of the source test split.

    Files are matched by stem (`n02381460_120.jpg` -> `n02381460_120.png`), since translate writes the
    input's stem with its own extension. Returns the number of images, which then equals the split size.
    """
    gen = [p.stem for p in list_images(gen_dir)]
    test = [p.stem for p in list_images(test_dir)]
    missing = sorted(set(test) - set(gen))
    extra = sorted(set(gen) - set(test))
    problems = []
    if missing:
        problems.append(f"{len(missing)} test image(s) have no translation: {_named(missing, max_named)}")
    if extra:
        problems.append(f"{len(extra)} generated image(s) match no test image: {_named(extra, max_named)}")
    if not problems and len(gen) != len(test):
        problems.append(f"{len(gen)} generated files for {len(test)} test images (duplicate stems)")
    if problems:
        raise EvalError(f"{gen_dir} does not cover the test split {test_dir}: " + "; ".join(problems)
                        + ". Translate the whole split (no --num-test cap) and evaluate again.")
    return len(gen)


def _named(stems: list[str], limit: int) -> str:
    shown = ", ".join(stems[:limit])
    return shown + (f", ... ({len(stems) - limit} more)" if len(stems) > limit else "")




def image_resolution(files: list[Path]) -> str:
    """'WxH' when every image has that size, else 'mixed'. Reads headers only."""
    from PIL import Image

    sizes = set()
    for p in files:
        with Image.open(p) as im:
            sizes.add(im.size)
        if len(sizes) > 1:
            return "mixed"
    (w, h), = sizes
    return f"{w}x{h}"


def check_known_counts(dataset: str, gen_dir: str | os.PathLike, ref_dir: str | os.PathLike | None) -> None:
    """Without --test-input: for a known dataset (qsattn.data.datasets.REGISTRY), the generated folder must hold
    one image per test input (testA) and the reference folder the whole target split (testB)."""
    from qsattn.data.datasets import REGISTRY

    entry = REGISTRY.get(dataset)
    if entry is None:
        return
    expected = {"generated": (gen_dir, entry.counts.get("testA")), "reference": (ref_dir, entry.counts.get("testB"))}
    wrong = []
    for what, (folder, n) in expected.items():
        if folder is None or n is None:
            continue
        found = len(list_images(folder))
        if found != n:
            wrong.append(f"{what} {folder} holds {found} images, {dataset}'s test split has {n}")
    if wrong:
        raise EvalError("; ".join(wrong) + ". Score the whole split (or pass --test-input to match by file name).")
