"""Translate a whole folder: `python -m qsattn translate --checkpoint PATH --input DIR --output DIR`.

One PNG per input image, with the same file stem, for every image (no `num_test` cap as in the
official test.py). The checkpoint is one of ours (runs/NAME/checkpoints/*.pt) or an official
`latest_net_G.pth`, whose architecture is read from its keys. Preprocessing and 8-bit conversion are
the official test-time ones (resize to crop_size, no flip; tensor2im), so outputs equal the official
test.py outputs for the same weights.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from baselines.networks import generator_from_state_dict


def load_generator(path: str | Path, device="cpu") -> tuple[torch.nn.Module, dict]:
    """-> (G in eval mode, info). Our checkpoints carry their config; official files only weights.
    A file that holds no generator (a D or F file, a text file) is one CheckpointError saying what it is."""
    from qsattn.engine.checkpoint import CheckpointError, load

    state = load(path)
    info = {"source": str(path)}
    if "net_G" in state:  # one of ours
        info["config"] = state.get("config", {})
        state = state["net_G"]
    keys = [k.removeprefix("module.") for k in state]
    if "model.1.weight" not in keys or not any(".conv_block." in k for k in keys):
        raise CheckpointError(f"{path} holds no generator weights ({_looks_like(keys)}); pass a latest_net_G.pth "
                              f"or a checkpoint from runs/NAME/checkpoints/")
    try:
        G = generator_from_state_dict(state).to(device)
    except (RuntimeError, KeyError, ValueError) as exc:
        first = str(exc).splitlines()[0]
        raise CheckpointError(f"{path}: its weights do not fit a ResNet generator ({first})") from exc
    return G.eval(), info


def _looks_like(keys: list[str]) -> str:
    if any(k.startswith("mlp_") for k in keys):
        return "it looks like the patch sampler F, a latest_net_F.pth"
    if any(k.startswith("net_") for k in keys):
        return f"a checkpoint with {', '.join(k for k in keys if k.startswith('net_'))} but no net_G"
    if keys and all(k.startswith("model.") for k in keys):
        return "it looks like the discriminator D, a latest_net_D.pth"
    return f"keys: {', '.join(keys[:4])}{', ...' if len(keys) > 4 else ''}" if keys else "it is empty"


RECORD = ".translated_by.json"  # beside the translations: which checkpoint and settings wrote them


def translation_identity(checkpoint: str | Path, crop_size: int, preprocess: str) -> dict:
    """What decides the translations: the checkpoint's bytes (sha256) and the test-time preprocessing."""
    from qsattn.data.files import sha256_file

    return {"checkpoint": str(checkpoint), "checkpoint_sha256": sha256_file(Path(checkpoint)),
            "crop_size": crop_size, "preprocess": preprocess}


def _same_source(record: dict, identity: dict) -> bool:
    return all(record.get(k) == identity[k] for k in ("checkpoint_sha256", "crop_size", "preprocess"))


@torch.no_grad()
def translate_folder(G: torch.nn.Module, input_dir: str | Path, output_dir: str | Path, crop_size: int = 256,
                     preprocess: str = "resize_and_crop", device="cpu", progress: bool = True,
                     identity: dict | None = None) -> list[Path]:
    """Translate every image under input_dir into output_dir/<stem>.png; returns the written paths.

    Writes each file atomically, so an interrupted run leaves only complete images, and skips images
    already translated (a restart continues where it stopped) only when they were written by the same
    checkpoint: with `identity` (translation_identity) the folder records its source in RECORD, and
    translations of another checkpoint (or without a record) are deleted and written again."""
    from tqdm import tqdm

    from qsattn.data.unaligned import DataError, list_images, load_image_for_test, save_image

    inputs = list_images(input_dir)
    if not inputs:
        raise DataError(f"no images in {input_dir}")
    stems = [Path(p).stem for p in inputs]
    dup = {s for s in stems if stems.count(s) > 1}
    if dup:
        raise DataError(f"{input_dir}: several images share the stems {sorted(dup)[:5]}; outputs would collide")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for stale in out.glob(".*.tmp.png"):  # left by a killed translation: hidden, but image readers see them
        stale.unlink(missing_ok=True)
    if identity is not None:
        try:
            record = json.loads((out / RECORD).read_text())
        except (OSError, ValueError):
            record = {}
        if not _same_source(record, identity):
            for old in out.glob("*.png"):  # another checkpoint's (or unknown) translations: never reused
                old.unlink()
            from qsattn.engine.atomic import atomic_write_text

            atomic_write_text(out / RECORD, json.dumps(identity, indent=2))
    for path in tqdm(inputs, desc=f"translate {Path(input_dir).name}", unit="img", disable=not progress):
        target = out / f"{Path(path).stem}.png"
        if not target.exists():
            x = load_image_for_test(path, crop_size, preprocess).unsqueeze(0).to(device)
            tmp = target.with_name(f".{target.name}.tmp.png")
            try:
                save_image(G(x)[0].cpu(), tmp)
                os.replace(tmp, target)
            finally:
                tmp.unlink(missing_ok=True)
        written.append(target)
    return written


def add_arguments(parser) -> None:
    parser.add_argument("--checkpoint", required=True, help="our checkpoint (.pt) or an official latest_net_G.pth")
    parser.add_argument("--input", required=True, help="folder of input images (e.g. datasets/horse2zebra/testA)")
    parser.add_argument("--output", required=True, help="folder for the translated PNGs")
    parser.add_argument("--crop-size", type=int, default=None,
                        help="test-time size (default: the checkpoint's crop_size, else 256 as official)")
    parser.add_argument("--preprocess", default=None, help="default: the checkpoint's, else resize_and_crop")
    parser.add_argument("--device", default="auto")


def run(args) -> int:
    from qsattn.engine.train import pick_device

    device = pick_device(args.device)
    G, info = load_generator(args.checkpoint, device)
    cfg = info.get("config", {})
    crop = args.crop_size or cfg.get("crop_size", 256)
    preprocess = args.preprocess or cfg.get("preprocess", "resize_and_crop")
    paths = translate_folder(G, args.input, args.output, crop, preprocess, device,
                             identity=translation_identity(args.checkpoint, crop, preprocess))
    print(f"wrote {len(paths)} images to {args.output}")
    return 0
