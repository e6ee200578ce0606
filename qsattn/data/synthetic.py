"""The built-in synthetic dataset: flat shapes (A) to zebra-striped shapes (B), with ground truth.

Needs no download, so the demo and the tests can train and score a model in minutes. Domain A: one
circle, square, triangle or ellipse in a flat colour on a plain background. Domain B: the same kind
of scene with the shape filled by black and white, slightly wavy stripes at a random angle and period.

The background is one colour for the whole dataset, give or take a little (`_BACKGROUND`), because the
CUT-family generator cannot see a global colour: its first layer is a convolution followed by
InstanceNorm, so G(x + c) = G(x) for any per-channel constant c (tests/test_synthetic.py checks this).
With a random background colour per image (version 1) the background, 80 % of the pixels, could not be
kept by any trained generator, and no model beat the identity mapping on the score below. Shapes sit
anywhere in the middle half of the image, so that one fixed striped image is a poor answer for all.
Two options make the task easier to learn in few steps (docs/demo.md says which the demo uses and
why): `texture`, a smooth random luminance field over every image's background (and over A's shape),
so that no two places look alike; `hint`, A's shape carrying its own B stripes faintly.
Test images come in pairs: each `testA` image has its striped version in `testA_gt` and its shape
mask in `testA_mask` (same file stem), so a translation can be scored against ground truth
(`score_translation`); `testB` holds other striped scenes, the real B domain for FID-like scores.

Every image is drawn from its own generator seeded by (seed, split, index), so the same seed gives the
same bytes and changing a count does not change the other images. `meta.json` records what was made;
generating again with the same settings does nothing.

    python -m qsattn synthetic --out datasets/synthetic [--size 64] [--n-train 200] [--n-test 50] [--seed 0]
                               [--texture 0] [--hint 0]
    python -m qsattn synthetic --out datasets/synthetic --demo    # the demo's dataset (DEMO_DATASET)
    python -m qsattn synthetic --out datasets/synthetic --score runs/NAME/translated
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

VERSION = 2
SHAPES = ("circle", "square", "triangle", "ellipse")
FOLDERS = ("trainA", "trainB", "testA", "testB", "testA_gt", "testA_mask")
_SPLIT_IDS = {"trainA": 0, "trainB": 1, "testA": 2, "testB": 3}
_BLACK, _WHITE = 15, 240          # stripe colours, far from the background
_BACKGROUND, _BACKGROUND_JITTER = (110, 130, 100), 12  # background colour of every scene, +- jitter per channel
_MIN_COLOUR_GAP = 0.25            # mean |shape - background| per channel, in [0, 1]
_SHAPE_THRESHOLD = 0.1            # a pixel counts as "not background" beyond this mean channel error
_BACKGROUND_TOLERANCE = 0.25      # background L1 at which the background counts as destroyed
# The dataset of experiments/demo.yaml (`make demo`, `synthetic --demo`; docs/demo.md says why these values).
DEMO_DATASET = {"size": 32, "texture": 0.0, "hint": 0.0}


# --- drawing -------------------------------------------------------------------------------------------

def _shape_mask(rng: np.random.Generator, size: int, scale: float = 1.0) -> np.ndarray:
    """A random shape as a boolean (size, size) mask; pixel centres, hard edges (exact for scoring).
    Its circumradius is 0.18 to 0.28 of the image side, times `scale`."""
    kind = SHAPES[rng.integers(len(SHAPES))]
    cx, cy = rng.uniform(0.25, 0.75, size=2) * size
    r = rng.uniform(0.18, 0.28) * size * scale
    theta = rng.uniform(0, 2 * np.pi)
    y, x = np.mgrid[0:size, 0:size] + 0.5
    dx, dy = x - cx, y - cy
    u, v = dx * np.cos(theta) + dy * np.sin(theta), -dx * np.sin(theta) + dy * np.cos(theta)
    if kind == "circle":
        return u**2 + v**2 <= r**2
    if kind == "ellipse":
        return (u / r) ** 2 + (v / (r * rng.uniform(0.45, 0.75))) ** 2 <= 1
    if kind == "square":
        s = 0.8 * r
        return (np.abs(u) <= s) & (np.abs(v) <= s)
    # equilateral triangle with circumradius r: inside all three edges (inradius r / 2)
    normals = np.pi / 3 + np.arange(3) * 2 * np.pi / 3
    return np.all([u * np.cos(a) + v * np.sin(a) <= r / 2 for a in normals], axis=0)


def _stripes(rng: np.random.Generator, size: int, scale: float = 1.0) -> np.ndarray:
    """Zebra-like stripes as an RGB (size, size, 3) uint8 image: random angle, period and wobble.
    The period is 0.1 to 0.2 of the image side times `scale`, and at least 4 px."""
    angle = rng.uniform(0, np.pi)
    period = max(4.0, rng.uniform(0.1, 0.2) * size * scale)
    phase = rng.uniform(0, period)
    wobble, wavelength = rng.uniform(0, 0.35) * period, rng.uniform(0.5, 1.0) * size
    y, x = np.mgrid[0:size, 0:size] + 0.5
    across = x * np.cos(angle) + y * np.sin(angle)
    along = -x * np.sin(angle) + y * np.cos(angle)
    dark = np.mod(across + phase + wobble * np.sin(2 * np.pi * along / wavelength), period) < period / 2
    return np.repeat(np.where(dark, _BLACK, _WHITE).astype(np.uint8)[..., None], 3, axis=2)


def _texture(rng: np.random.Generator, size: int, cells: int = 6) -> np.ndarray:
    """A smooth random field (size, size), unit-normal values on a (cells+1)^2 grid, bilinear in between."""
    grid = rng.normal(size=(cells + 1, cells + 1))
    t = (np.arange(size) + 0.5) * cells / size
    i = np.minimum(t.astype(int), cells - 1)
    f = t - i
    rows = grid[i] * (1 - f)[:, None] + grid[i + 1] * f[:, None]
    return rows[:, i] * (1 - f) + rows[:, i + 1] * f


def _scene(rng: np.random.Generator, size: int, hint: float = 0.0, texture: float = 0.0, stripe_scale: float = 1.0,
           shape_scale: float = 1.0) -> dict[str, np.ndarray]:
    """One scene and both renderings: flat (domain A) and striped (domain B) share background and mask.
    With hint > 0 the A shape carries its B stripes faintly: its colour +- hint x half the stripe contrast.
    With texture > 0 a smooth random luminance field (standard deviation `texture` grey levels) lies
    over the A image and the B background, so that every place of every image looks different."""
    background = np.array(_BACKGROUND) + rng.integers(-_BACKGROUND_JITTER, _BACKGROUND_JITTER + 1, size=3)
    while True:  # a flat colour clearly different from the background
        colour = rng.integers(0, 256, size=3)
        if np.abs(colour - background).mean() / 255 >= _MIN_COLOUR_GAP:
            break
    mask = _shape_mask(rng, size, shape_scale)
    stripes = _stripes(rng, size, stripe_scale)
    field = texture * _texture(rng, size)[..., None] if texture else np.zeros((size, size, 1))
    flat = np.empty((size, size, 3))
    flat[:] = background
    flat[mask] = colour + hint * (stripes[mask].astype(float) - (_BLACK + _WHITE) / 2)
    striped = np.where(mask[..., None], stripes, background + field)
    flat += field

    def as_image(x):
        return np.clip(np.rint(x), 0, 255).astype(np.uint8)

    return {"flat": as_image(flat), "striped": as_image(striped), "mask": mask}


def _rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, _SPLIT_IDS[split], index])


# --- writing -------------------------------------------------------------------------------------------

def _meta(size: int, n_train: int, n_test: int, seed: int, **options: float) -> dict:
    return {"dataset": "qsattn-synthetic", "version": VERSION, "seed": seed, "size": size, **options,
            "counts": {"trainA": n_train, "trainB": n_train, "testA": n_test, "testB": n_test}}


def generate(out: str | os.PathLike, *, size: int = 64, n_train: int = 200, n_test: int = 50, seed: int = 0,
             hint: float = 0.0, texture: float = 0.0, stripe_scale: float = 1.0, shape_scale: float = 1.0) -> Path:
    """Write the dataset under `out` (idempotent) and return its path.

    Written to a temporary sibling folder and renamed into place, so an interrupted run leaves no
    half dataset. A folder with a different meta.json (ours) is replaced; any other non-empty folder is
    refused rather than overwritten. `stripe_scale` and `shape_scale` multiply the stripe period and the
    shape's size (1: the defaults; the same random draws, so 1 writes the same bytes as without them).
    """
    if not 32 <= size <= 256:
        raise ValueError(f"size must be between 32 and 256 px, got {size}")
    if n_train < 1 or n_test < 1:
        raise ValueError(f"n_train and n_test must be at least 1, got {n_train} and {n_test}")
    out = Path(out)
    if not 0 <= hint <= 1:
        raise ValueError(f"hint must be between 0 and 1, got {hint}")
    if not 0 <= texture <= 64:
        raise ValueError(f"texture must be between 0 and 64 grey levels, got {texture}")
    if not 0.5 <= stripe_scale <= 4:
        raise ValueError(f"stripe_scale must be between 0.5 and 4, got {stripe_scale}")
    if not 0.5 <= shape_scale <= 1.6:
        raise ValueError(f"shape_scale must be between 0.5 and 1.6, got {shape_scale}")
    options = dict(hint=hint, texture=texture, stripe_scale=stripe_scale, shape_scale=shape_scale)
    meta = _meta(size, n_train, n_test, seed, **options)
    meta_path = out / "meta.json"
    if meta_path.exists():
        try:
            if json.loads(meta_path.read_text()) == meta:
                return out
        except ValueError:
            pass
    elif out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} is not empty and has no meta.json of a synthetic dataset; "
                         f"choose an empty or new --out folder")

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the dataset is not
    try:
        for name in FOLDERS:
            (tmp / name).mkdir()
        for split in ("trainA", "trainB"):
            for i in range(n_train):
                scene = _scene(_rng(seed, split, i), size, **options)
                _save(scene["flat" if split == "trainA" else "striped"], tmp / split / f"{i:06d}.png")
        for i in range(n_test):
            scene = _scene(_rng(seed, "testA", i), size, **options)
            _save(scene["flat"], tmp / "testA" / f"{i:06d}.png")
            _save(scene["striped"], tmp / "testA_gt" / f"{i:06d}.png")
            _save(scene["mask"].astype(np.uint8) * 255, tmp / "testA_mask" / f"{i:06d}.png")
            _save(_scene(_rng(seed, "testB", i), size, **options)["striped"], tmp / "testB" / f"{i:06d}.png")
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _save(array: np.ndarray, path: Path) -> None:
    Image.fromarray(array).save(path, optimize=False)


# --- ground-truth score ----------------------------------------------------------------------------------

def _read(path: Path, size: tuple[int, int] | None = None) -> np.ndarray:
    with Image.open(path) as im:
        im = im.convert("RGB")
        if size is not None and im.size != size:
            im = im.resize(size, Image.BICUBIC)
        return np.asarray(im, dtype=np.float64) / 255


def _local_contrast(image: np.ndarray, region: np.ndarray, window: int) -> float:
    """Mean standard deviation of luminance in window x window patches centred inside `region`."""
    lum = image @ np.array([0.299, 0.587, 0.114])
    variance = _box_mean(lum**2, window) - _box_mean(lum, window) ** 2
    std = np.sqrt(np.maximum(variance, 0))
    return float(std[region].mean()) if region.any() else 0.0


def _box_mean(x: np.ndarray, window: int) -> np.ndarray:
    """Mean over window x window neighbourhoods (edge padded), by an integral image: O(pixels)."""
    pad = window // 2
    c = np.pad(np.pad(x, pad, mode="edge").cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    h, w = x.shape
    return (c[window:window + h, window:window + w] - c[:h, window:window + w]
            - c[window:window + h, :w] + c[:h, :w]) / window**2


def _erode(mask: np.ndarray, steps: int) -> np.ndarray:
    """Shrink a mask by `steps` pixels (4-neighbourhood), so edge contrast does not count as stripes."""
    for _ in range(steps):
        m = np.pad(mask, 1, constant_values=False)
        mask = m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
    return mask


def _score_one(pred: np.ndarray, source: np.ndarray, gt: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    size = mask.shape[0]
    window = max(3, (size // 8) | 1)
    inner = _erode(mask, max(1, window // 2))
    if not inner.any():
        inner = mask
    stripe = min(1.0, _local_contrast(pred, inner, window) / max(_local_contrast(gt, inner, window), 1e-6))
    outside = ~mask
    background = np.median(source[outside], axis=0)
    foreground = np.abs(pred - background).mean(axis=2) > _SHAPE_THRESHOLD
    union = max((foreground | mask).sum(), 1)
    iou = float((foreground & mask).sum() / union)
    background_l1 = float(np.abs(pred - source)[outside].mean()) if outside.any() else 0.0
    background_ok = max(0.0, 1.0 - background_l1 / _BACKGROUND_TOLERANCE)
    return {"stripe_score": stripe, "shape_iou": iou, "background_l1": background_l1,
            "shape_false_pos": float((foreground & ~mask).sum() / union),
            "shape_false_neg": float((~foreground & mask).sum() / union),
            "gt_l1": float(np.abs(pred - gt).mean()), "gt_score": stripe * iou * background_ok}


def score_translation(pred_dir: str | os.PathLike, data_dir: str | os.PathLike) -> dict[str, float]:
    """Score translated test images against the synthetic ground truth; means over testA.

    Stripes of any angle or period count (the task is unpaired), so the score looks at structure, not
    at the exact stripes:
    - stripe_score: local luminance contrast inside the (eroded) shape, relative to the ground truth,
      capped at 1. A flat fill scores 0.
    - shape_iou: IoU of the true mask with the pixels that differ from the background colour.
      What it misses splits into shape_false_pos (background pixels that differ from the background
      colour: noise, colour drift, a halo) and shape_false_neg (shape pixels left near the background
      colour, e.g. grey stripe edges), as fractions of the same union: iou + false_pos + false_neg = 1.
    - background_l1: mean |pred - input| outside the shape (in [0, 1]; the background must stay).
    - gt_l1: mean |pred - ground truth| over the whole image (stripe phase differences count here).
    - gt_score = stripe_score * shape_iou * max(0, 1 - background_l1 / 0.25): higher is better, 1 for
      the ground truth itself; each factor must hold, so the identity mapping scores 0.
    Predictions are `pred_dir/<testA stem>.<image extension>`; other sizes are resized (bicubic).
    """
    pred_dir, data_dir = Path(pred_dir), Path(data_dir)
    for name in ("testA", "testA_gt", "testA_mask"):
        if not (data_dir / name).is_dir():
            raise FileNotFoundError(f"{data_dir / name} does not exist; {data_dir} is not a synthetic dataset "
                                    f"(write one with `python -m qsattn synthetic --out DIR`)")
    if not pred_dir.is_dir():
        raise FileNotFoundError(f"prediction folder {pred_dir} does not exist")
    from qsattn.data.files import is_image_file

    preds = {}
    for p in sorted(pred_dir.iterdir()):
        if is_image_file(p.name):
            if p.stem not in preds or p.suffix.lower() == ".png":  # PNG wins if a stem has several
                preds[p.stem] = p
    sources = sorted(p for p in (data_dir / "testA").iterdir() if is_image_file(p.name))
    missing = [p.stem for p in sources if p.stem not in preds]
    if missing:
        shown = ", ".join(missing[:10]) + (f", ... ({len(missing)} in all)" if len(missing) > 10 else "")
        raise FileNotFoundError(f"{pred_dir} has no prediction for {len(missing)} of {len(sources)} test images: "
                                f"{shown}. Translate the whole testA split (one PNG per image, same file stem).")
    return _score_all(data_dir, sources, lambda src, size: _read(preds[src.stem], size))


def shuffled_score(pred_dir: str | os.PathLike, data_dir: str | os.PathLike) -> dict[str, float]:
    """The control for an input-dependent translation: each prediction scored against the next test image
    (cyclically) instead of its own. A generator that ignores its input (the same striped blob for every
    image) scores the same here as in `score_translation`; one that follows the input scores lower."""
    pred_dir, data_dir = Path(pred_dir), Path(data_dir)
    from qsattn.data.files import is_image_file

    sources = sorted(p for p in (data_dir / "testA").iterdir() if is_image_file(p.name))
    score_translation(pred_dir, data_dir)  # the same checks of the folders and the predictions
    preds = {p.stem: p for p in sorted(pred_dir.iterdir(), key=lambda p: p.suffix.lower() != ".png")
             if is_image_file(p.name)}
    following = {src.stem: sources[(i + 1) % len(sources)].stem for i, src in enumerate(sources)}
    return _score_all(data_dir, sources, lambda src, size: _read(preds[following[src.stem]], size))


def _score_all(data_dir: Path, sources: list[Path], predict) -> dict[str, float]:
    """Mean scores over `sources` (testA images); predict(source_path, (w, h)) -> float RGB array."""
    rows = []
    for src in sources:
        source = _read(src)
        size = (source.shape[1], source.shape[0])
        gt = _read(data_dir / "testA_gt" / f"{src.stem}.png")
        mask = _read(data_dir / "testA_mask" / f"{src.stem}.png")[..., 0] > 0.5
        rows.append(_score_one(predict(src, size), source, gt, mask))
    result = {key: float(np.mean([r[key] for r in rows])) for key in rows[0]}
    result["n_images"] = len(rows)
    return result


FIXED_STRIPED = "trainB/000000.png"  # the fixed striped answer of `reference_scores`


def reference_scores(data_dir: str | os.PathLike) -> dict[str, dict[str, float]]:
    """The two scores a trained model must beat to show an input-dependent translation:
    - identity: the output is the input (keeps shape and background, paints nothing);
    - fixed_striped: one striped scene (the first training B image) as the answer to every input
      (stripes and the right background, but the shape in the wrong place), what a generator that
      ignores its input could at best learn from the B domain.
    """
    data_dir = Path(data_dir)
    from qsattn.data.files import is_image_file

    sources = sorted(p for p in (data_dir / "testA").iterdir() if is_image_file(p.name))
    fixed = data_dir / FIXED_STRIPED
    return {"identity": _score_all(data_dir, sources, lambda src, size: _read(src, size)),
            "fixed_striped": _score_all(data_dir, sources, lambda src, size: _read(fixed, size))}


# --- command line ------------------------------------------------------------------------------------------

def add_arguments(parser) -> None:
    parser.add_argument("--out", required=True, help="dataset folder (trainA trainB testA testB testA_gt testA_mask)")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels, 32 to 256 (default 64)")
    parser.add_argument("--n-train", type=int, default=200, help="images in trainA and in trainB (default 200)")
    parser.add_argument("--n-test", type=int, default=50,
                        help="images in testA (with ground truth) and in testB (default 50)")
    parser.add_argument("--seed", type=int, default=0, help="the same seed writes the same bytes (default 0)")
    parser.add_argument("--texture", type=float, default=0.0,
                        help="standard deviation in grey levels of a smooth random field over the background "
                             "(and A's shape), 0 to 64 (default 0: plain)")
    parser.add_argument("--hint", type=float, default=0.0,
                        help="contrast of the faint stripes in domain A's shapes, 0 to 1 (default 0: flat shapes)")
    parser.add_argument("--stripe-scale", type=float, default=1.0,
                        help="times the stripe period (0.1 to 0.2 of the side, at least 4 px), 0.5 to 4 (default 1)")
    parser.add_argument("--shape-scale", type=float, default=1.0,
                        help="times the shape's size (radius 0.18 to 0.28 of the side), 0.5 to 1.6 (default 1)")
    parser.add_argument("--demo", action="store_true",
                        help="the demo's dataset (experiments/demo.yaml): "
                             + " ".join(f"--{k.replace('_', '-')} {v:g}" for k, v in DEMO_DATASET.items()))
    parser.add_argument("--score", metavar="PRED_DIR",
                        help="instead of generating: score translated testA images in PRED_DIR against the "
                             "ground truth in --out and print the scores as JSON")


def run(args) -> int:
    try:
        if args.score:
            print(json.dumps(score_translation(args.score, args.out), indent=2))
            return 0
        if args.demo:
            vars(args).update(DEMO_DATASET)
        out = generate(args.out, size=args.size, n_train=args.n_train, n_test=args.n_test, seed=args.seed,
                       hint=args.hint, texture=args.texture, stripe_scale=args.stripe_scale,
                       shape_scale=args.shape_scale)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"synthetic dataset in {out}: {args.n_train} + {args.n_train} train, {args.n_test} + {args.n_test} test "
          f"images of {args.size} px (seed {args.seed}, texture {args.texture:g}, hint {args.hint:g}, "
          f"stripe scale {args.stripe_scale:g}, shape scale {args.shape_scale:g})")
    return 0
