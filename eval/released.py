"""The official released generators, so Table 1 can be rebuilt from them without training.

CUT and FastCUT: one archive, `pretrained_models.tar` (CUT README), unpacked into checkpoints/released/
(it holds `<name>/latest_net_G.pth`). QS-Attn: one Google Drive file per mode and dataset (QS-Attn
README); Drive needs a browser, so the user downloads each and puts its `latest_net_G.pth` at
`checkpoints/released/<name>/latest_net_G.pth`. The protocol of each entry is the one the published
(or clean-fid leaderboard) figures used: Horse→Zebra 120 translations vs the 140 testB images; Cat→Dog
500 vs 500; Cityscapes the JPEG val set CUT was scored on.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from eval.folders import EvalError

RELEASED_ROOT = Path("checkpoints/released")
CUT_ARCHIVE = "http://efrosgans.eecs.berkeley.edu/CUT/pretrained_models.tar"
QS_README = "https://github.com/sapphire497/query-selected-attention#pre-trained-models"


@dataclass(frozen=True)
class Released:
    name: str      # folder under checkpoints/released/
    method: str    # our method id
    dataset: str   # our dataset name (its testA is translated, testB is the FID reference)
    source: str    # where the file is published


def _cut(dataset: str, folder: str, method: str) -> Released:
    return Released(f"{folder}_{method}_pretrained", method, dataset, CUT_ARCHIVE)


def _qs(dataset: str, folder: str, mode: str) -> Released:
    method = {"Global": "qsattn-global", "Local": "qsattn-local", "Global+Local": "qsattn-global-local"}[mode]
    return Released(f"{folder}_{method}", method, dataset, f"{QS_README} ({folder} {mode})")


RELEASED: dict[str, Released] = {r.name: r for r in [
    _cut("horse2zebra", "horse2zebra", "cut"), _cut("horse2zebra", "horse2zebra", "fastcut"),
    _cut("cat2dog", "cat2dog", "cut"), _cut("cat2dog", "cat2dog", "fastcut"),
    _cut("cityscapes_val_for_cut", "cityscapes", "cut"), _cut("cityscapes_val_for_cut", "cityscapes", "fastcut"),
    *[_qs(ds, folder, mode) for ds, folder in (("horse2zebra", "horse2zebra"), ("cat2dog", "afhq"),
                                                ("cityscapes", "cityscapes"))
      for mode in ("Global", "Local", "Global+Local")],
]}


def checkpoint_path(name: str, root: str | Path = RELEASED_ROOT) -> Path:
    if name not in RELEASED:
        raise EvalError(f"unknown released model '{name}'. Known: {', '.join(RELEASED)}")
    path = Path(root) / name / "latest_net_G.pth"
    if not path.exists():
        entry = RELEASED[name]
        how = (f"download {CUT_ARCHIVE} and run `tar -xf pretrained_models.tar -C {root}`"
               if entry.source == CUT_ARCHIVE else f"download it from {entry.source}")
        raise EvalError(f"{path} is missing: {how}, so that the file lies at {path}.")
    return path
