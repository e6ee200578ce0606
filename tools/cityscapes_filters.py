"""How much the 256x256 resize filter changes Cityscapes' training and reference images.

    python tools/cityscapes_filters.py --zips datasets/cityscapes_zips [--n 5] [--filters nearest,bicubic]

Reads the first N val photos and colour label maps straight from Cityscapes' two zips (as
`python -m qsattn data cityscapes` does), resizes each with every filter, and prints, against the first
filter (nearest: what the published numbers' preparation used, docs/datasets.md):
  photo  mean |difference| in 8-bit levels and the share of pixels that differ;
  labels the same, and the share of pixels whose colour is in no class of the source map (a blended
         colour, which the generator is then trained to reproduce).
JPEG encoding is left out: it adds the same loss to every filter.
"""
from __future__ import annotations

import argparse
import sys
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def resized(image, filt: str) -> np.ndarray:
    from qsattn.data.datasets import CITYSCAPES_SIZE, RESAMPLE_FILTERS

    return np.asarray(image.convert("RGB").resize(CITYSCAPES_SIZE, RESAMPLE_FILTERS[filt]()), dtype=np.int16)


def compare(image, filters: list[str], label: bool) -> dict[str, dict[str, float]]:
    """{filter: {mean_abs, share_changed[, share_off_palette]}} against filters[0]."""
    base = resized(image, filters[0])
    palette = None
    if label:
        src = np.asarray(image.convert("RGB")).reshape(-1, 3)
        palette = {tuple(c) for c in np.unique(src, axis=0)}
    out = {}
    for filt in filters[1:]:
        other = resized(image, filt)
        row = {"mean_abs": float(np.abs(other - base).mean()),
               "share_changed": float((other != base).any(-1).mean())}
        if palette is not None:
            colours = [tuple(c) for c in other.reshape(-1, 3)]
            row["share_off_palette"] = float(np.mean([c not in palette for c in colours]))
        out[filt] = row
    return out


def main(argv: list[str] | None = None) -> int:
    from PIL import Image

    from qsattn.data.datasets import RESAMPLE_FILTERS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--zips", required=True, help="folder with gtFine_trainvaltest.zip, leftImg8bit_trainvaltest.zip")
    parser.add_argument("--n", type=int, default=5, help="val images to compare (default: 5)")
    parser.add_argument("--filters", default="nearest,bicubic",
                        help=f"comma list, the first is the reference (known: {', '.join(RESAMPLE_FILTERS)})")
    args = parser.parse_args(argv)
    filters = [f.strip() for f in args.filters.split(",") if f.strip()]
    if len(filters) < 2 or set(filters) - set(RESAMPLE_FILTERS):
        parser.error(f"--filters: two or more of {', '.join(RESAMPLE_FILTERS)}")
    zips = Path(args.zips)
    rows: dict[str, list[dict]] = {}
    with zipfile.ZipFile(zips / "gtFine_trainvaltest.zip") as gt, \
            zipfile.ZipFile(zips / "leftImg8bit_trainvaltest.zip") as photos:
        labels = sorted(n for n in gt.namelist() if n.startswith("gtFine/val/") and n.endswith("_gtFine_color.png"))
        for member in labels[:args.n]:
            key = member.rsplit("/", 1)[-1].removesuffix("_gtFine_color.png")
            photo = f"leftImg8bit/val/{key.split('_')[0]}/{key}_leftImg8bit.png"
            for kind, zf, name in (("labels", gt, member), ("photo", photos, photo)):
                with zf.open(name) as f, Image.open(f) as im:
                    for filt, row in compare(im, filters, kind == "labels").items():
                        rows.setdefault(f"{kind} {filt} vs {filters[0]}", []).append(row)
    if not rows:
        print(f"no val images in {zips}", file=sys.stderr)
        return 2
    n = len(next(iter(rows.values())))
    print(f"{n} Cityscapes val images, resized to 256x256; differences against {filters[0]}:")
    for what, values in rows.items():
        means = {k: float(np.mean([v[k] for v in values])) for k in values[0]}
        extra = f", off-palette pixels {100 * means['share_off_palette']:.1f}%" if "share_off_palette" in means else ""
        print(f"  {what}: mean |diff| {means['mean_abs']:.2f} levels, pixels changed "
              f"{100 * means['share_changed']:.1f}%{extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
