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


def translations_dir(name: str) -> Path:
    """Where a released generator's translations of its test split go (generated output, not committed);
    the folder records which file wrote them (qsattn/engine/translate.py), so a replaced file is translated again."""
    return Path("results") / "out" / "translations" / name


# The published reproductions of the released models' FIDs (clean-fid's leaderboard), the self-check's target.
EXPECTED_CSV = Path(__file__).resolve().parents[1] / "results" / "released_model_fids.csv"
TOLERANCE = 0.02   # the leaderboard prints two decimals (±0.005), and GPU/CPU rounding moves FID ~1e-3


def expected_fids(name: str, csv: str | Path = EXPECTED_CSV) -> dict[str, float]:
    """{fid_mode: published FID} of one released generator (matched by method and dataset)."""
    import pandas as pd

    from qsattn.names import dataset_id, method_id

    entry = RELEASED.get(name)
    if entry is None:
        raise EvalError(f"unknown released model '{name}'. Known: {', '.join(RELEASED)}")
    table = pd.read_csv(csv)
    missing = {"method", "dataset", "fid_mode", "value"} - set(table.columns)
    if missing:
        raise EvalError(f"{csv}: missing columns {sorted(missing)}; expected method,dataset,fid_mode,value,...")
    rows = table[(table["method"].map(method_id) == entry.method) & (table["dataset"].map(dataset_id) == entry.dataset)]
    return {str(r.fid_mode): float(r.value) for r in rows.itertuples()}


def check_expected(name: str, result: dict, csv: str | Path = EXPECTED_CSV, tolerance: float = TOLERANCE) -> int:
    """Print each published FID of `name` beside ours (two decimals); 1 where one differs by more than
    `tolerance` or was not scored, 0 when all match. Stand-in scores are never compared."""
    expected = expected_fids(name, csv)
    if not expected:
        raise EvalError(f"{csv} has no published FID for {name} ({RELEASED[name].method} on {RELEASED[name].dataset})")
    metrics = result.get("metrics", {})
    failed = 0
    for mode, published in sorted(expected.items()):
        ours = metrics.get(f"fid_{mode}")
        if ours is None:
            print(f"{name} FID [{mode}]: published {published:.2f}, not scored here (add {mode} to --fid-modes)  FAIL")
            failed += 1
            continue
        diff = ours - published
        ok = abs(diff) <= tolerance
        failed += not ok
        print(f"{name} FID [{mode}]: ours {ours:.2f}, published {published:.2f}, difference {diff:+.2f} "
              f"(tolerance {tolerance:.2f})  {'ok' if ok else 'FAIL'}")
    return 1 if failed else 0
