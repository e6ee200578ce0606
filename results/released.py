"""Score every official released generator that is on disk, for Table 1 from released models.

    python -m results.released --out results/out/released [--fid-modes clean,legacy_pytorch] [-- EVAL OPTIONS]
    python -m qsattn report --released results/out/released

Each generator of eval/released.py whose file lies under checkpoints/released/ and whose dataset is
prepared is scored by `python -m qsattn eval --released NAME` (same protocol as the grid's runs) into
<out>/<NAME>.json; the others are listed with what to fetch. `report --released DIR` reads the files:
each released generator is one run (seed 'released'), its values in the table's 'last' column.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from eval.folders import EvalError
    from eval.released import RELEASED, checkpoint_path

    parser = argparse.ArgumentParser(prog="python -m results.released", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="results/out/released", help="folder of <NAME>.json (default: %(default)s)")
    parser.add_argument("--fid-modes", default="clean,legacy_pytorch",
                        help="FID/KID protocols, comma list (default: both; legacy_pytorch is the papers')")
    parser.add_argument("--data-root", default="datasets", help="where the datasets are prepared (default: datasets)")
    parser.add_argument("eval_options", nargs=argparse.REMAINDER, help="more `qsattn eval` options, after --")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    extra = [a for a in args.eval_options if a != "--"]
    scored, missing, failed = [], [], []
    for name, entry in RELEASED.items():
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
        print("$", " ".join(cmd), flush=True)
        (scored if subprocess.run(cmd).returncode == 0 else failed).append(name)
    print(f"released generators scored: {len(scored)}, failed: {len(failed)}, not on disk: {len(missing)}")
    for line in missing:
        print(f"  missing  {line}")
    for name in failed:
        print(f"  FAILED   {name} (see its output above)")
    return 1 if failed or not scored else 0


if __name__ == "__main__":
    sys.exit(main())
