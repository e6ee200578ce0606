"""The qualitative grid of a scored checkpoint: the same few test images for every run and checkpoint,
one row each, in labelled columns `input (testA)` | `<method> (output)`. It is logged to the run's
MLflow images (docs/tracking.md), so runs are compared side by side on fixed inputs."""
from __future__ import annotations

from pathlib import Path

N_IMAGES = 4
HEADER = 28  # px: the column labels, two lines
MIN_TILE = 128  # px: smaller images are enlarged (nearest neighbour) so the labels fit above them


def grid(src_dir: str | Path, out_dir: str | Path, path: str | Path, method: str, n: int = N_IMAGES) -> Path:
    """Write the grid of the first n images of src_dir (sorted names: fixed) and their translations in
    out_dir (<stem>.png, as translate_folder writes them); returns path."""
    from PIL import Image, ImageDraw

    from qsattn.data.files import list_images

    inputs = list_images(src_dir)[:n]
    pairs = [(p, Path(out_dir) / f"{Path(p).stem}.png") for p in inputs]
    pairs = [(a, b) for a, b in pairs if b.exists()]
    if not pairs:
        raise FileNotFoundError(f"no translations of {src_dir} in {out_dir}")
    with Image.open(pairs[0][1]) as first:
        w, h = first.size
    scale = max(1, -(-MIN_TILE // w))
    w, h = w * scale, h * scale
    labels = [f"input\n({Path(src_dir).name})", f"{method}\n(output)"]
    canvas = Image.new("RGB", (2 * w, HEADER + len(pairs) * h), "white")
    draw = ImageDraw.Draw(canvas)
    for col, label in enumerate(labels):
        draw.multiline_text((col * w + 3, 2), label, fill="black", spacing=2)
    for row, (src, out) in enumerate(pairs):
        for col, file in enumerate((src, out)):
            with Image.open(file) as im:
                canvas.paste(im.convert("RGB").resize((w, h), Image.NEAREST), (col * w, HEADER + row * h))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path
