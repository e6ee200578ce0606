"""The demo's settings study (docs/demo.md, "The study"): trains candidate settings of
experiments/demo.yaml for a few seeds and tabulates the ground-truth scores against the demo's targets.

    .venv/bin/python tools/demo_study.py --candidates base,s64 --seeds 0,1 --jobs 2 --out runs/demo-study

Each candidate is the demo grid's cell for a method with some keys changed (CANDIDATES below; the dataset
size is the key `size`). Cells run as separate processes, `--jobs` at once, one torch thread each, with
MLflow off; a finished cell is not trained again (its metrics.json is read), so the study resumes.
The table (Markdown, also written to OUT/study.md, rows to OUT/study.json) has, per candidate and method,
each seed's gt_score, the largest gt_score of the shuffled control (qsattn.data.synthetic.shuffled_score:
near gt_score means the outputs ignore the input), the worst seed's shape IoU and stripe score, and the
training seconds per step
(wall clock: on a shared machine compare the ratios, not the absolute times).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

METHODS = ("cut", "fastcut", "qsattn-global")
# name -> changes to the demo grid's cell: config keys; "size" (load_size = crop_size = the dataset's size),
# "texture", "hint", "stripe_scale" and "shape_scale" (the dataset's options); "fastcut": changes for FastCUT alone.
_DEEP = dict(nce_layers="4,8,12,16", qs_layers="2,3")  # without layer 0 (the image itself)
_PLAIN = dict(no_antialias="true", no_antialias_up="true")  # strided convs, not anti-aliased resampling
_LONG_FASTCUT = dict(fastcut=dict(n_epochs=4, n_epochs_decay=2))  # FastCUT as long as CUT
CANDIDATES: dict[str, dict] = {  # the rows of docs/demo.md's study table
    "grid": {},  # experiments/demo.yaml as it is
    "s64": dict(size=64, **_DEEP),
    "n4lr1": dict(lr=0.001, **_DEEP),
    "h15": dict(hint=0.15, **_DEEP),
    "h15na": dict(hint=0.15, **_DEEP, **_PLAIN),
    "t6na": dict(texture=6, **_DEEP, **_PLAIN),
    "t6na-lr5-long": dict(texture=6, lr=0.0005, **_DEEP, **_PLAIN, **_LONG_FASTCUT),
    "t6-lr5-long": dict(texture=6, lr=0.0005, **_DEEP, **_LONG_FASTCUT),
    "sh": dict(texture=6, nce_layers="0,4,8", qs_layers="1,2", **_PLAIN),
    "s48": dict(size=48, texture=6, **_PLAIN),
    # issue #15, second session: coarser stripes and larger shapes, then one lever at a time on "c2L"
    "c2": dict(texture=6, stripe_scale=2, **_DEEP, **_PLAIN),
    "c2L": dict(texture=6, stripe_scale=2, shape_scale=1.4, **_DEEP, **_PLAIN),
    "c2Ld2": dict(texture=6, stripe_scale=2, shape_scale=1.4, n_layers_D=2, **_DEEP, **_PLAIN),
    "c2Ld1": dict(texture=6, stripe_scale=2, shape_scale=1.4, n_layers_D=1, **_DEEP, **_PLAIN),
    "c2La": dict(texture=6, stripe_scale=2, shape_scale=1.4, **_DEEP),  # official anti-aliased resampling
    "c2Lb4": dict(texture=6, stripe_scale=2, shape_scale=1.4, batch_size=4, n_epochs=12, n_epochs_decay=6,
                  fastcut=dict(n_epochs=12, n_epochs_decay=6), **_DEEP, **_PLAIN),
    "c2L4b": dict(texture=6, stripe_scale=2, shape_scale=1.4, netG="resnet_4blocks", nce_layers="4,8,12",
                  qs_layers="1,2", n_epochs=8, n_epochs_decay=4, fastcut=dict(n_epochs=8, n_epochs_decay=4),
                  **_PLAIN),
    "c2Lh1": dict(texture=6, stripe_scale=2, shape_scale=1.4, hint=0.1, **_DEEP, **_PLAIN),
    "c2Ln4": dict(texture=6, stripe_scale=2, shape_scale=1.4, lambda_NCE=4, **_DEEP, **_PLAIN),
}


def _cell_config(method: str, seed: int, changes: dict, data_root: Path, run_root: Path):
    from qsattn.engine.config import apply
    from slurm.grid import expand

    cell = next(c for c in expand(ROOT / "experiments" / "demo.yaml") if c.method == method)
    changes = dict(changes)
    per_method = changes.pop("fastcut", {}) if method == "fastcut" else {}
    changes.pop("fastcut", None)
    size = changes.pop("size", None)
    options = tuple(float(changes.pop(k, d)) for k, d in _DATA_OPTIONS.items())
    if size:
        changes.update(load_size=size, crop_size=size)
    changes.update(per_method)
    cfg = apply(cell.config, changes)
    data = (cfg.crop_size, *options)
    return dataclasses.replace(cfg, seed=seed, data_root=str(data_root / _data_name(data)), run_root=str(run_root),
                               tracking_uri="off", num_threads=1, name=""), data


_DATA_OPTIONS = {"hint": 0.0, "texture": 0.0, "stripe_scale": 1.0, "shape_scale": 1.0}  # generate()'s, defaults


def _data_name(data: tuple) -> str:
    return f"s{data[0]}" + "".join(f"-{k}{v:g}" for k, v in zip(_DATA_OPTIONS, data[1:]))


def _data_options(data: tuple) -> dict:
    return dict(size=data[0], **dict(zip(_DATA_OPTIONS, data[1:])))


def _train_one(cfg_dict: dict) -> dict:
    from qsattn.engine.config import Config
    from qsattn.engine.pipeline import run_cell

    cfg = Config(**cfg_dict)
    start = time.perf_counter()
    result = run_cell(cfg, progress=False)
    wall = time.perf_counter() - start
    timing = Path(cfg.run_root) / cfg.name / "study_time.json"
    if timing.exists():
        wall = json.loads(timing.read_text())["wall_s"]
    else:
        timing.write_text(json.dumps({"wall_s": wall}))
    from qsattn.data.synthetic import shuffled_score

    run_dir = Path(cfg.run_root) / cfg.name
    shuffled = shuffled_score(run_dir / "translations" / "last", Path(cfg.data_root) / cfg.dataset)["gt_score"]
    return {"metrics": result["metrics"], "wall_s": wall, "shuffled": shuffled}


def _steps(cfg) -> int:
    total = (cfg.n_epochs + cfg.n_epochs_decay) * (200 // cfg.batch_size)  # 200 training images, drop_last
    return min(total, cfg.max_steps) if cfg.max_steps else total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--candidates", default=",".join(CANDIDATES), help="comma list of names in CANDIDATES")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--jobs", type=int, default=2, help="cells at once (one torch thread each)")
    parser.add_argument("--out", default="runs/demo-study")
    parser.add_argument("--set", action="append", default=[], metavar="NAME:key=value,...",
                        help="define a candidate on the command line, e.g. 'lr4:lr=0.0008' (repeatable)")
    args = parser.parse_args(argv)

    from qsattn.data.synthetic import generate, reference_scores

    for spec in args.set:
        name, _, body = spec.partition(":")
        CANDIDATES[name] = dict(kv.split("=", 1) for kv in body.split(";") if kv)
        if "size" in CANDIDATES[name]:
            CANDIDATES[name]["size"] = int(CANDIDATES[name]["size"])
        if "fastcut" in CANDIDATES[name]:  # FastCUT's own changes: fastcut=key:value/key:value
            CANDIDATES[name]["fastcut"] = dict(kv.split(":", 1) for kv in CANDIDATES[name]["fastcut"].split("/"))
    out = Path(args.out).resolve()
    data_root = out / "data"
    jobs = []
    for cand in args.candidates.split(","):
        for method in args.methods.split(","):
            for seed in map(int, args.seeds.split(",")):
                cfg, size = _cell_config(method, seed, CANDIDATES[cand], data_root, out / "runs" / cand)
                cfg = dataclasses.replace(cfg, name=f"{method}-s{seed}")
                jobs.append((cand, method, seed, size, cfg))
    references = {}
    for data in sorted({j[3] for j in jobs}):
        folder = generate(data_root / _data_name(data) / "synthetic", **_data_options(data))
        references[_data_name(data)] = reference_scores(folder)

    rows = []
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=get_context("spawn")) as pool:
        futures = {pool.submit(_train_one, dataclasses.asdict(cfg)): (cand, method, seed, size, cfg)
                   for cand, method, seed, size, cfg in jobs}
        for n, fut in enumerate(as_completed(futures), 1):
            cand, method, seed, size, cfg = futures[fut]
            res = fut.result()
            m = res["metrics"]
            row = dict(candidate=cand, method=method, seed=seed, data=_data_name(size), steps=_steps(cfg),
                       gt_score=m["gt_score_last"], shape_iou=m["shape_iou_last"],
                       stripe_score=m["stripe_score_last"], background_l1=m["background_l1_last"],
                       shuffled_gt_score=res["shuffled"], wall_s=res["wall_s"], s_per_step=res["wall_s"] / _steps(cfg))
            rows.append(row)
            print(f"[{n}/{len(jobs)}] {cand} {method} seed {seed}: gt_score {row['gt_score']:.3f} "
                  f"iou {row['shape_iou']:.2f} stripe {row['stripe_score']:.2f} ({row['wall_s']:.0f} s)", flush=True)
    (out / "study.json").write_text(json.dumps({"rows": rows, "references": references}, indent=2))
    table = render(rows, references)
    (out / "study.md").write_text(table)
    print(table)
    return 0


def render(rows: list[dict], references: dict) -> str:
    lines = ["| candidate | method | steps | gt_score per seed | shuffled, max | min IoU | min stripe | s/step | passes |",
             "|---|---|---|---|---|---|---|---|---|"]
    for key in dict.fromkeys((r["candidate"], r["method"]) for r in rows):
        group = sorted((r for r in rows if (r["candidate"], r["method"]) == key), key=lambda r: r["seed"])
        ref = references[group[0]["data"]]
        bar = max(2 * ref["identity"]["gt_score"], ref["fixed_striped"]["gt_score"])
        ok = all(r["gt_score"] >= bar and r["shape_iou"] >= 0.5 and r["stripe_score"] >= 0.5 for r in group)
        scores = " / ".join(f"{r['gt_score']:.3f}" for r in group)
        lines.append(f"| {key[0]} | {key[1]} | {group[0]['steps']} | {scores} "
                     f"| {max(r['shuffled_gt_score'] for r in group):.3f} | {min(r['shape_iou'] for r in group):.2f} "
                     f"| {min(r['stripe_score'] for r in group):.2f} "
                     f"| {sum(r['s_per_step'] for r in group) / len(group):.3f} | {'yes' if ok else 'no'} |")
    for data, ref in sorted(references.items()):
        lines.append(f"\nData {data}: identity gt_score {ref['identity']['gt_score']:.3f}, fixed striped image "
                     f"{ref['fixed_striped']['gt_score']:.3f}; a setting passes when every seed has gt_score >= "
                     f"max(2 x identity, fixed striped), shape IoU >= 0.5 and stripe score >= 0.5.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
