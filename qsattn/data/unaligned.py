"""Unpaired two-domain images, preprocessed exactly as the official CUT / QS-Attn code does.

Official behaviour kept (data/base_dataset.py `get_transform`, data/unaligned_dataset.py):
- folders `root/{phase}A`, `root/{phase}B` (searched recursively, files sorted); for phase "test" a
  missing `testA` falls back to `valA`/`valB`;
- each item is one A image (by index) and one B image drawn at random (or `index % len(B)` with
  `serial_batches`); the length is max(len(A), len(B));
- A and B are transformed *independently*: the official transform is built with `params=None`, so
  RandomCrop and RandomHorizontalFlip draw fresh positions and flips for each image;
- order: resize (bicubic) -> random crop -> round both sides to a multiple of 4 (bicubic, applied in
  every mode, not only `none`) -> random horizontal flip -> [-1, 1] tensor;
- CUT's "fine-tuning" rule: during the learning-rate decay (epoch > n_epochs) load_size becomes
  crop_size, so `resize_and_crop` stops cropping; call `set_epoch(epoch, n_epochs)` every epoch;
- test time (options/test_options.py, test.py): load_size = crop_size, no flip, serial B.

Deliberate deviations, each for a reason:
- Randomness comes from a `torch.Generator` the dataset owns (the official code uses the global
  `random` and torch RNGs). Its state is saved with a checkpoint (`get_rng_state`), so a resumed
  run draws the same B images, crops and flips, bit for bit. With DataLoader workers each worker
  reseeds its copy from the worker seed (otherwise all workers would draw the same numbers); that is
  reproducible from torch's global seed, not from `get_rng_state`.
- `direction="BtoA"` swaps the folders here, so "A" is always the source domain (the official code
  swaps in the model, which also swaps which side is drawn at random).
- `max_dataset_size` keeps the first N files *after* sorting (official: the first N in directory
  listing order, which depends on the filesystem).
- Extensions are matched case-insensitively. The official special case that halves the height for a
  dataroot containing "gta2cityscapes" is not kept.
- 16-bit grayscale images (mode I;16) are scaled to 8 bit by their high byte, as Pillow decodes 16-bit
  colour PNGs; the official `.convert("RGB")` clips them at 255, i.e. white. 32-bit integer and float
  images are refused (no fixed range). The benchmarks are 8-bit, where nothing changes.
- Every file is decoded once when the dataset is built, so a bad file fails at start-up with its name
  instead of hours into training. A full decode, not `Image.verify()`: verify is a no-op for JPEG
  (most benchmarks) and misses truncated JPEGs. The result (with the image's size) is cached in
  `root/.scan_cache.json` keyed by (path, size, mtime), so later runs only re-check changed files.
- Sizes are checked at the same time, against the preprocessing: an image smaller than crop_size
  with `preprocess=crop` is a bad file (named; skippable with skip_bad_images), and with `same_size`
  (training with batches or nce_idt) images that would come out at different sizes (`none`,
  `scale_width`) are one error naming the odd ones. The official code (torchvision's RandomCrop,
  torch.cat) raises mid-epoch instead, without a file name.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from qsattn.data.files import IMG_EXTENSIONS, is_image_file, list_images  # noqa: F401  (this module's interface too)
from qsattn.errors import UserError

log = logging.getLogger("qsattn.data.unaligned")

PREPROCESS_MODES = ("resize_and_crop", "crop", "scale_width", "scale_width_and_crop", "none")
SCAN_CACHE_NAME = ".scan_cache.json"
_SCAN_CACHE_VERSION = 2  # 2: with each image's size
_HOW_TO_GET_DATA = ("Get a benchmark with `python -m qsattn data NAME`, or write the built-in synthetic "
                    "set with `python -m qsattn synthetic --out DIR`.")


class DataError(UserError, ValueError):
    """A problem with the data on disk that the user must fix; the message says how."""


# --- preprocessing (official get_transform) -------------------------------------------------------

def _scale_width(img: Image.Image, load_size: int, crop_size: int) -> Image.Image:
    """Width to load_size, height in proportion but never below crop_size (official __scale_width)."""
    ow, oh = img.size
    if ow == load_size and oh >= crop_size:
        return img
    return img.resize((load_size, int(max(load_size * oh / ow, crop_size))), Image.BICUBIC)


def _random_crop(img: Image.Image, size: int, generator: torch.Generator) -> Image.Image:
    """Square crop at a random position; draws like torchvision's RandomCrop (top, then left)."""
    w, h = img.size
    if w < size or h < size:
        raise DataError(f"image of {w}x{h} px is smaller than crop_size={size}; lower crop_size or use "
                        f"preprocess=resize_and_crop / scale_width_and_crop")
    if w == size and h == size:
        return img
    top = int(torch.randint(0, h - size + 1, (1,), generator=generator))
    left = int(torch.randint(0, w - size + 1, (1,), generator=generator))
    return img.crop((left, top, left + size, top + size))


def _round_to_multiple_of_4(img: Image.Image) -> Image.Image:
    """The generator needs sides divisible by 4 (official __make_power_2, base 4, Python's round)."""
    ow, oh = img.size
    w, h = int(round(ow / 4) * 4), int(round(oh / 4) * 4)
    if (w, h) == (ow, oh):
        return img
    if w == 0 or h == 0:
        raise DataError(f"image of {ow}x{oh} px is too small (it would round to {w}x{h})")
    return img.resize((w, h), Image.BICUBIC)


def transform_image(img: Image.Image, *, preprocess: str, load_size: int, crop_size: int, flip: bool,
                    generator: torch.Generator) -> torch.Tensor:
    """RGB PIL image -> float tensor (3, H, W) in [-1, 1]; `flip` allows a random horizontal flip."""
    if preprocess not in PREPROCESS_MODES:
        raise DataError(f"unknown preprocess '{preprocess}'; choose one of {', '.join(PREPROCESS_MODES)}")
    if preprocess == "resize_and_crop":
        img = img.resize((load_size, load_size), Image.BICUBIC)
    elif preprocess.startswith("scale_width"):
        img = _scale_width(img, load_size, crop_size)
    if preprocess.endswith("crop"):
        img = _random_crop(img, crop_size, generator)
    img = _round_to_multiple_of_4(img)
    if flip and float(torch.rand(1, generator=generator)) < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    return TF.normalize(TF.to_tensor(img), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def to_rgb(im: Image.Image) -> Image.Image:
    """Any mode -> 8-bit RGB: `.convert("RGB")` as the official loader (L, P, RGBA, CMYK, ...), except
    16-bit grayscale (I;16*), which Pillow's convert clips at 255 (white): it keeps the high byte, v >> 8,
    the rule by which Pillow itself decodes 16-bit colour PNGs. 32-bit integer and float images have no
    fixed range to scale from: refused."""
    if im.mode.startswith("I;16"):
        return Image.fromarray((np.asarray(im).astype(np.uint16) >> 8).astype(np.uint8)).convert("RGB")
    if im.mode in ("I", "F"):
        kind = "32-bit integer" if im.mode == "I" else "floating-point"
        raise ValueError(f"{kind} pixels (mode {im.mode}) have no fixed range to scale to 8 bit; "
                         f"save the image as 8- or 16-bit")
    return im.convert("RGB")


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """The image as 8-bit RGB (see `to_rgb`)."""
    try:
        with Image.open(path) as im:
            return to_rgb(im)
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(f"cannot read image {path}: {e}. Delete or replace it.") from e


def planned_size(w: int, h: int, *, preprocess: str, load_size: int, crop_size: int) -> tuple[int, int]:
    """(W, H) of what `transform_image` makes of a w x h image: the size is never random, only positions."""
    if preprocess == "resize_and_crop":
        w, h = load_size, load_size
    elif preprocess.startswith("scale_width") and not (w == load_size and h >= crop_size):
        w, h = load_size, int(max(load_size * h / w, crop_size))
    if preprocess.endswith("crop"):
        w, h = crop_size, crop_size
    return int(round(w / 4) * 4), int(round(h / 4) * 4)


def load_image_for_test(path: str | os.PathLike, crop_size: int = 256, preprocess: str = "resize_and_crop",
                        load_size: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """One image as the official test.py feeds it: load_size = crop_size (test_options.py), no flip.

    With the default `resize_and_crop` the image is resized to crop_size x crop_size and nothing is
    cropped. Modes that still crop at test time (`crop` on a larger image, `scale_width_and_crop` on a
    tall one) crop at random in the official code; here the position comes from `generator`
    (default: a fresh one seeded 0, so translation is repeatable).
    """
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    return transform_image(load_rgb(path), preprocess=preprocess, load_size=load_size or crop_size,
                           crop_size=crop_size, flip=False, generator=generator)


# --- output images (official util.tensor2im / save_image) -------------------------------------------

def tensor_to_uint8_image(t: torch.Tensor) -> np.ndarray:
    """Generator output in [-1, 1], shape (3|1, H, W) or (1, 3|1, H, W) -> uint8 array (H, W, 3).

    As official tensor2im: clamp, (x + 1) / 2 * 255 in float32, then astype(uint8), which truncates
    (0.999 -> 0), it does not round. Kept so that saved outputs match official test.py byte for byte.
    """
    if t.dim() == 4:
        if t.shape[0] != 1:
            raise ValueError(f"expected one image, got a batch of {t.shape[0]}; save them one at a time")
        t = t[0]
    if t.dim() != 3 or t.shape[0] not in (1, 3):
        raise ValueError(f"expected an image tensor (3, H, W) or (1, H, W), got shape {tuple(t.shape)}")
    x = t.detach().clamp(-1.0, 1.0).cpu().float().numpy()
    if x.shape[0] == 1:
        x = np.tile(x, (3, 1, 1))
    x = (np.transpose(x, (1, 2, 0)) + 1) / 2.0 * 255.0
    return x.astype(np.uint8)


def save_image(t: torch.Tensor, path: str | os.PathLike) -> None:
    """Save as PNG at the tensor's own size (official test.py calls save_image with aspect_ratio=1.0,
    which never resizes)."""
    Image.fromarray(tensor_to_uint8_image(t)).save(path)


# --- finding and checking files ----------------------------------------------------------------------

def check_image(path: str) -> tuple[str | None, tuple[int, int]]:
    """(None, (w, h)) if the file decodes completely and converts to RGB, else (the reason, (0, 0)).
    A full decode (see module docstring)."""
    try:
        with Image.open(path) as im:
            im.load()
            to_rgb(im)
            return None, im.size
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError, ...
        return (f"{type(e).__name__}: {e}" if str(e) else type(e).__name__), (0, 0)


class _ScanCache:
    """{relative path: [size, mtime_ns, error or None, width, height]} in root/.scan_cache.json; best effort."""

    def __init__(self, root: str):
        self.root, self.path, self.entries, self.dirty = root, os.path.join(root, SCAN_CACHE_NAME), {}, False
        try:
            with open(self.path) as f:
                data = json.load(f)
            if data.get("version") == _SCAN_CACHE_VERSION:
                self.entries = dict(data["files"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            pass  # no cache or an unreadable one: rescan

    def check(self, path: str) -> tuple[str | None, tuple[int, int]]:
        st = os.stat(path)
        key = os.path.relpath(path, self.root).replace(os.sep, "/")
        entry = self.entries.get(key)
        if isinstance(entry, list) and len(entry) == 5 and entry[:2] == [st.st_size, st.st_mtime_ns]:
            return entry[2], (entry[3], entry[4])
        error, (w, h) = check_image(path)
        self.entries[key] = [st.st_size, st.st_mtime_ns, error, w, h]
        self.dirty = True
        return error, (w, h)

    def save(self) -> None:
        """Atomic (temp file + rename); a read-only dataset folder only costs a rescan next time."""
        if not self.dirty:
            return
        tmp = None
        try:
            fd, tmp = tempfile.mkstemp(prefix=SCAN_CACHE_NAME, suffix=".tmp", dir=self.root)
            with os.fdopen(fd, "w") as f:
                json.dump({"version": _SCAN_CACHE_VERSION, "files": self.entries}, f, separators=(",", ":"))
            os.replace(tmp, self.path)
            self.dirty = False
        except OSError as e:
            log.warning("could not write the image scan cache %s (%s); images will be re-checked next time",
                        self.path, e)
            if tmp is not None and os.path.exists(tmp):
                try:
                    os.remove(tmp)
                except OSError:
                    pass


# --- the dataset -------------------------------------------------------------------------------------

class UnalignedDataset(torch.utils.data.Dataset):
    """Items {"A": (3,H,W) in [-1,1], "B": ..., "A_paths": str, "B_paths": str}; see module docstring."""

    def __init__(self, root: str | os.PathLike, phase: str = "train", *, direction: str = "AtoB",
                 preprocess: str = "resize_and_crop", load_size: int = 286, crop_size: int = 256,
                 no_flip: bool = False, serial_batches: bool = False, max_dataset_size: int = 0,
                 skip_bad_images: bool = False, seed: int = 0, same_size: bool = False):
        if direction not in ("AtoB", "BtoA"):
            raise DataError(f"direction must be 'AtoB' or 'BtoA', got '{direction}'")
        if preprocess not in PREPROCESS_MODES:
            raise DataError(f"unknown preprocess '{preprocess}'; choose one of {', '.join(PREPROCESS_MODES)}")
        if load_size < 1 or crop_size < 1 or max_dataset_size < 0:
            raise DataError("load_size and crop_size must be positive and max_dataset_size >= 0 (0: no cap)")
        self.root, self.phase = str(root), phase
        self.preprocess, self.load_size, self.crop_size = preprocess, load_size, crop_size
        self.no_flip, self.serial_batches, self.skip_bad_images = no_flip, serial_batches, skip_bad_images
        self.finetuning = False  # CUT: load_size = crop_size during the lr decay; see set_epoch
        self.skipped: list[str] = []

        if not os.path.isdir(self.root):
            raise DataError(f"dataset folder {self.root} does not exist. {_HOW_TO_GET_DATA}")
        dir_a, dir_b = (os.path.join(self.root, phase + side) for side in "AB")
        if phase == "test" and not os.path.isdir(dir_a) and os.path.isdir(os.path.join(self.root, "valA")):
            dir_a, dir_b = (os.path.join(self.root, "val" + side) for side in "AB")
        if direction == "BtoA":
            dir_a, dir_b = dir_b, dir_a
        self.dir_A, self.dir_B = dir_a, dir_b

        cache = _ScanCache(self.root)
        self._sizes: dict[str, tuple[int, int]] = {}
        try:
            self.A_paths = self._scan(dir_a, cache, max_dataset_size)
            self.B_paths = self._scan(dir_b, cache, max_dataset_size)
        finally:
            cache.save()
        if same_size:
            self._check_one_size()

        self._generator = torch.Generator().manual_seed(seed)
        self._worker_id: int | None = None

    def _scan(self, folder: str, cache: _ScanCache, cap: int) -> list[str]:
        """The first `cap` readable images (all if cap is 0); bad files raise or are skipped."""
        if not os.path.isdir(folder):
            raise DataError(f"domain folder {folder} does not exist (expected {self.phase}A and {self.phase}B "
                            f"under {self.root}). {_HOW_TO_GET_DATA}")
        good, bad = [], []
        for path in list_images(folder):
            if cap and len(good) >= cap:
                break
            error, size = cache.check(path)
            error = error or self._size_problem(*size)
            if error is None:
                good.append(path)
                self._sizes[path] = size
            else:
                bad.append((path, error))
        if bad and not self.skip_bad_images:
            listing = "; ".join(f"{p}: {e}" for p, e in bad[:3])
            listing += f"; and {len(bad) - 3} more" if len(bad) > 3 else ""
            raise DataError(f"{len(bad)} unusable image(s) in {folder}: {listing}. "
                            f"Delete or replace them, or set skip_bad_images=true to skip them.")
        for path, error in bad:
            log.warning("skipping unreadable image %s (%s)", path, error)
        self.skipped += [p for p, _ in bad]
        if not good:
            raise DataError(f"domain folder {folder} contains no readable images (extensions: "
                            f"{' '.join(IMG_EXTENSIONS)}, any case). {_HOW_TO_GET_DATA}")
        return good

    def _size_problem(self, w: int, h: int) -> str | None:
        """Why a readable w x h image cannot go through this preprocessing (None: it can)."""
        if self.preprocess == "crop" and (w < self.crop_size or h < self.crop_size):
            return (f"{w}x{h} px is smaller than crop_size={self.crop_size} (preprocess=crop does not resize); "
                    f"lower crop_size or use preprocess=resize_and_crop")
        if any(0 in self._planned(w, h, s) for s in (self.load_size, self.crop_size)):
            return f"{w}x{h} px is too small (a side rounds to 0 at a multiple of 4)"
        return None

    def _planned(self, w: int, h: int, load_size: int) -> tuple[int, int]:
        return planned_size(w, h, preprocess=self.preprocess, load_size=load_size, crop_size=self.crop_size)

    def _check_one_size(self) -> None:
        """Batches (and nce_idt's G(cat[A, B])) need every image at one size; preprocess=none and
        scale_width keep the image's own proportions, so mixed sizes would stop training mid-epoch.
        Checked at load_size and at crop_size, which the lr-decay epochs load at (set_epoch)."""
        for load_size in dict.fromkeys((self.load_size, self.crop_size)):
            by_size: dict[tuple[int, int], list[str]] = {}
            for path, (w, h) in self._sizes.items():
                by_size.setdefault(self._planned(w, h, load_size), []).append(path)
            if len(by_size) <= 1:
                continue
            ranked = sorted(by_size.items(), key=lambda kv: -len(kv[1]))
            (w0, h0), common = ranked[0]
            odd = "; ".join(f"{w}x{h}: {len(ps)} ({', '.join(os.path.relpath(p, self.root) for p in ps[:3])}"
                            f"{', ...' if len(ps) > 3 else ''})" for (w, h), ps in ranked[1:4])
            when = "" if load_size == self.load_size else f" in the lr-decay epochs (loaded at crop_size={load_size})"
            raise DataError(f"{self.root}: preprocess={self.preprocess} keeps each image's proportions, but training "
                            f"needs one size (batches, and nce_idt's G(A, B) in one call){when}: {len(common)} "
                            f"images come out {w0}x{h0}, others {odd}{'; ...' if len(ranked) > 4 else ''}. Resize "
                            f"the odd ones, or use preprocess=resize_and_crop (or crop, scale_width_and_crop)")

    def __len__(self) -> int:
        return max(len(self.A_paths), len(self.B_paths))

    def set_epoch(self, epoch: int, n_epochs: int) -> None:
        """Official CUT rule: epochs after n_epochs (the lr decay) load at crop_size, i.e. no random crop
        with resize_and_crop. Epochs count from 1 as in the official train.py."""
        self.finetuning = epoch > n_epochs

    def get_rng_state(self) -> torch.Tensor:
        """The data RNG state (a uint8 tensor, loadable with torch.load(weights_only=True))."""
        return self._generator.get_state()

    def set_rng_state(self, state: torch.Tensor) -> None:
        self._generator.set_state(state.clone())

    def _rng(self) -> torch.Generator:
        info = torch.utils.data.get_worker_info()
        if info is not None and self._worker_id != info.id:  # a fresh copy in a worker: own stream
            self._generator.manual_seed(info.seed)
            self._worker_id = info.id
        return self._generator

    def _transform(self, path: str, generator: torch.Generator) -> torch.Tensor:
        load_size = self.crop_size if self.finetuning else self.load_size
        try:
            return transform_image(load_rgb(path), preprocess=self.preprocess, load_size=load_size,
                                   crop_size=self.crop_size, flip=not self.no_flip, generator=generator)
        except DataError as e:
            raise DataError(f"{path}: {e}") from e

    def __getitem__(self, index: int) -> dict:
        g = self._rng()
        a_path = self.A_paths[index % len(self.A_paths)]
        if self.serial_batches:
            b_index = index % len(self.B_paths)
        else:
            b_index = int(torch.randint(0, len(self.B_paths), (1,), generator=g))
        b_path = self.B_paths[b_index]
        return {"A": self._transform(a_path, g), "B": self._transform(b_path, g), "A_paths": a_path, "B_paths": b_path}

    def __getstate__(self) -> dict:
        """Picklable for spawned DataLoader workers; the RNG state as plain bytes, not a shared tensor."""
        state = self.__dict__.copy()
        state["_generator"] = self._generator.get_state().numpy().tobytes()
        return state

    def __setstate__(self, state: dict) -> None:
        g = torch.Generator()
        g.set_state(torch.frombuffer(bytearray(state["_generator"]), dtype=torch.uint8))
        self.__dict__.update(state, _generator=g)


def make_test_dataset(root: str | os.PathLike, *, crop_size: int = 256, preprocess: str = "resize_and_crop",
                      direction: str = "AtoB", phase: str = "test", max_dataset_size: int = 0,
                      skip_bad_images: bool = False) -> UnalignedDataset:
    """The dataset as official test.py builds it: load_size = crop_size, no flip, B in order."""
    return UnalignedDataset(root, phase, direction=direction, preprocess=preprocess, load_size=crop_size,
                            crop_size=crop_size, no_flip=True, serial_batches=True,
                            max_dataset_size=max_dataset_size, skip_bad_images=skip_bad_images)
