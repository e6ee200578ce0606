"""Score every official released generator that is on disk, for Table 1 from released models, and the
self-check against the published FIDs of the released CUT/FastCUT models.

    python -m results.released --out results/out/released [--fid-modes clean,legacy_pytorch] [-- EVAL OPTIONS]
    python -m results.released --expect results/released_model_fids.csv [-- EVAL OPTIONS]   # make check-released
    python -m qsattn report --released results/out/released

Each generator of eval/released.py whose file lies under checkpoints/released/ and whose dataset is
prepared is scored by `python -m qsattn eval --released NAME` (same protocol as the grid's runs, both
FID modes) into <out>/<NAME>.json; the others are listed with what to fetch. Cityscapes: the released
CUT models' test set (cityscapes_val_for_cut) has no label maps, so they get FID/KID only (the result
says why); where the prepared `cityscapes` set has them and DRN weights are given (-- --drn-weights
PATH), the real photos (testB) are scored against the labels too: the segmentation scores' upper bound,
a "real photos" row of the report.

With --expect, only the generators that the CSV has published FIDs for are scored, each compared with
them (two decimals, tolerance 0.02); the exit status is 1 if any differs, is missing, or failed.
`report --released DIR` reads the files: each released generator is one run (seed 'released'), its
values in the table's 'last' column.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

REAL_PHOTOS = "cityscapes_real_photos"   # <out>/<this>.json: testB scored against the labels


def main(argv: list[str] | None = None) -> int:
    from eval.folders import EvalError
    from eval.released import RELEASED, checkpoint_path, expected_fids

    parser = argparse.ArgumentParser(prog="python -m results.released", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="results/out/released", help="folder of <NAME>.json (default: %(default)s)")
    parser.add_argument("--fid-modes", default="clean,legacy_pytorch",
                        help="FID/KID protocols, comma list (default: both; legacy_pytorch is the papers')")
    parser.add_argument("--data-root", default="datasets", help="where the datasets are prepared (default: datasets)")
    parser.add_argument("--expect", metavar="CSV", help="self-check: score the generators with published FIDs in "
                        "CSV (results/released_model_fids.csv) and fail where one differs by more than 0.02")
    parser.add_argument("eval_options", nargs=argparse.REMAINDER, help="more `qsattn eval` options, after --")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    extra = [a for a in args.eval_options if a != "--"]
    names = [n for n in RELEASED if not args.expect or expected_fids(n, args.expect)]
    scored, missing, failed = [], [], []
    for name in names:
        entry = RELEASED[name]
        try:
            checkpoint_path(name)
        except EvalError as exc:
            missing.append(f"{name}: {exc}")
            continue
        if not (Path(args.data_root) / entry.dataset / "testA").is_dir():
            missing.append(f"{name}: dataset {entry.dataset} is not prepared (python -m qsattn data {entry.dataset})")
            continue
        target = out / f"{name}.json"
        cmd = [sys.executable, "-m", "qsattn", "eval", "--released", name, "--fid-modes", args.fid_modes,
               "--data-root", args.data_root, "--out", str(target), *extra]
        if args.expect:
            cmd += ["--expect", args.expect]
        print("$", " ".join(cmd), flush=True)
        (scored if subprocess.run(cmd).returncode == 0 else failed).append(name)
    if not args.expect:
        real = real_photos(Path(args.data_root), out, extra)
        if isinstance(real, str):
            missing.append(real)
        else:
            (scored if real else failed).append(REAL_PHOTOS)
    what = "checked" if args.expect else "scored"
    print(f"released generators {what}: {len(scored)}, failed: {len(failed)}, not on disk: {len(missing)}")
    for line in missing:
        print(f"  missing  {line}")
    for name in failed:
        print(f"  FAILED   {name} (see its output above)")
    if args.expect and missing:
        return 1  # a self-check that could not score a generator has not passed
    return 1 if failed or not scored else 0


def real_photos(data_root: Path, out: Path, extra: list[str]) -> bool | str:
    """Score the prepared Cityscapes testB photos against their labels (the upper bound of the segmentation
    scores): True when scored, False when it failed, a line saying what is missing otherwise."""
    folder = data_root / "cityscapes"
    if not (folder / "testA_labelIds").is_dir() or not (folder / "testB").is_dir():
        return f"{REAL_PHOTOS}: the prepared cityscapes set with labels (python -m qsattn data cityscapes)"
    if "--drn-weights" not in extra:
        return f"{REAL_PHOTOS}: DRN weights (-- --drn-weights PATH [--drn-arch ...])"
    keep = [a for i, a in enumerate(extra) if a.startswith("--drn") or (i and extra[i - 1].startswith("--drn"))
            or a == "--device" or (i and extra[i - 1] == "--device")]
    cmd = [sys.executable, "-m", "qsattn", "eval", "--gen", str(folder / "testB"), "--metrics", "cityscapes_seg",
           "--labels", str(folder / "testA_labelIds"), "--out", str(out / f"{REAL_PHOTOS}.json"), *keep]
    print("$", " ".join(cmd), flush=True)
    return subprocess.run(cmd).returncode == 0


if __name__ == "__main__":
    sys.exit(main())
