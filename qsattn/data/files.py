"""Finding image files and hashing files: torch-free, for the data, the metrics and the sweep's preflight.

`IMG_EXTENSIONS` and the recursive, link-following walk are the official code's (data/image_folder.py,
`IMG_EXTENSIONS` and `make_dataset`; matched here in any case). The metrics pass clean-fid's own
extensions instead (eval/folders.py), so that a score reads the files clean-fid would.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".tif", ".tiff")


def is_image_file(name: str, extensions: tuple[str, ...] = IMG_EXTENSIONS) -> bool:
    return name.lower().endswith(extensions)


def list_images(folder: str | os.PathLike, extensions: tuple[str, ...] = IMG_EXTENSIONS) -> list[str]:
    """Image files under `folder` (recursively, following links, as official make_dataset), sorted."""
    return sorted(os.path.join(d, f) for d, _, files in os.walk(folder, followlinks=True) for f in files
                  if is_image_file(f, extensions))


def count_images(folder: str | os.PathLike) -> int:
    """Images in `folder` as training finds them; 0 if it does not exist."""
    return len(list_images(folder)) if Path(folder).is_dir() else 0


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file (a dataset archive, a checkpoint, the weights that produced a score)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()
