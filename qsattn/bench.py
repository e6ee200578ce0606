"""Time and peak memory of full training steps, and of the QS-Attn sampler alone.

Every case runs in a fresh Python process, so one case's memory is never another's: on CUDA the peak
is `torch.cuda.max_memory_allocated` over the timed steps; on CPU it is the process's peak resident
set (VmHWM), which includes torch itself (`base_mem_bytes`, the resident set after the imports, is
reported beside it). Inputs are synthetic tensors; batch 1; each method's defaults (resnet_9blocks,
ngf=64, num_patches=256). Ratios are within this run only (same machine, same settings).

Two tables, one JSON line per case on stdout, and all of it saved to --out:
  step      full `train_step` (D update, G+F update): sec_per_step, images_per_s, peak_mem_bytes,
            ratio_to_cut, mem_ratio_to_cut
  sampler   the patch sampler F on the QS layers' features (2 layers of 256 channels at size/4):
            key-side selection + routing, query-side routing, MLP, forward and backward. `none` is
            CUT's random sampler; overhead_pct_of_cut_step = (QS time − random time) / CUT step time.
`--dtype bf16` runs the step under torch.autocast(bfloat16): it changes the numerics.
Needs torch only (no MLflow, clean-fid or submitit), so it runs on a bare GPU machine.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

QS_METHODS = ("qsattn-global", "qsattn-local", "qsattn-global-local")
SAMPLER_MODES = {"cut": "none", "qsattn-global": "global", "qsattn-local": "local", "qsattn-global-local": "global+local"}


def add_arguments(parser) -> None:
    parser.add_argument("--methods", default="cut,fastcut,qsattn-global,qsattn-local,qsattn-global-local",
                        help="comma-separated methods (see `python -m qsattn methods`)")
    parser.add_argument("--sizes", default="128,256", help="comma-separated square input sizes in pixels")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per case")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before timing")
    parser.add_argument("--device", default="auto", help="cpu | cuda | auto (cuda when available)")
    parser.add_argument("--impl", default="naive,chunked", help="QS implementations to compare (qs_impl)")
    parser.add_argument("--dtype", default="fp32", help="fp32 | bf16 (autocast, changes numerics); comma list")
    parser.add_argument("--tables", default="step,sampler", help="which tables: step, sampler")
    parser.add_argument("--ngf", type=int, default=64, help="generator width (64 = official; smaller only for tests)")
    parser.add_argument("--out", default="", help="JSON file for the results (default: results/bench/<device>-<time>.json)")
    parser.add_argument("--case", default="", help=argparse_hidden())


def argparse_hidden():
    import argparse

    return argparse.SUPPRESS


# --- one case, in its own process ---------------------------------------------------------------

def _rss(field: str) -> int:
    """VmRSS / VmHWM of this process in bytes (Linux); 0 where /proc is missing."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    if field == "VmHWM":
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return 0


def _timed(fn, steps: int, warmup: int, device) -> float:
    import torch

    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(steps):
            fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 1000 / steps
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - t0) / steps


def run_case(case: dict) -> dict:
    import contextlib

    import torch

    base = _rss("VmRSS")
    device = torch.device(case["device"])
    torch.manual_seed(0)
    size, impl = case["size"], case["impl"]
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if case["dtype"] == "bf16"
                else contextlib.nullcontext())
    if case["table"] == "step":
        from qsattn.config import resolve
        from qsattn.model import create_state, train_step

        # num_patches = the QS layers' channel count (4·ngf, 256 at the default): official local needs it
        cfg = resolve({"method": case["method"], "ngf": case["ngf"], "crop_size": size, "num_patches": 4 * case["ngf"],
                       "qs_impl": impl if impl != "-" else "naive"})
        state = create_state(cfg, device)
        A = torch.rand(1, 3, size, size, device=device) * 2 - 1
        B = torch.rand(1, 3, size, size, device=device) * 2 - 1

        def fn():
            with autocast:
                train_step(state, A, B)
    else:
        from qsattn.sampler import PatchSampleF

        side = size // 4
        C = min(256, side * side)  # official local needs num_patches == C (256 at the defaults)
        F = PatchSampleF(256, C, SAMPLER_MODES[case["method"]], qs_layers=(0, 1),
                         impl=impl if impl != "-" else "naive").to(device)
        F.build([C, C], device)
        feats_k = [torch.randn(1, C, side, side, device=device, requires_grad=True) for _ in range(2)]
        feats_q = [torch.randn(1, C, side, side, device=device, requires_grad=True) for _ in range(2)]

        def fn():
            with autocast:
                pool_k, ids, attns = F(feats_k)
                pool_q, _, _ = F(feats_q, patch_ids=ids, attn_mats=attns)
                loss = sum((q * k).sum() for q, k in zip(pool_q, pool_k))
            loss.backward()

    sec = _timed(fn, case["steps"], case["warmup"], device)
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else _rss("VmHWM")
    out = dict(case, sec_per_step=sec, images_per_s=1.0 / sec, peak_mem_bytes=int(peak),
               base_mem_bytes=0 if device.type == "cuda" else base, torch=torch.__version__,
               device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
               threads=torch.get_num_threads())
    del out["case_only"]
    return out


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip() + f" ({os.cpu_count()} cpus)"
    except OSError:
        pass
    return "cpu"


# --- the driver ------------------------------------------------------------------------------------

def cases(args, device: str) -> list[dict]:
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    impls = [i.strip() for i in args.impl.split(",") if i.strip()]
    common = dict(device=device, steps=args.steps, warmup=args.warmup, ngf=args.ngf, case_only=True)
    out = []
    for table in [t.strip() for t in args.tables.split(",") if t.strip()]:
        for dtype in [d.strip() for d in args.dtype.split(",")]:
            for size in [int(s) for s in args.sizes.split(",")]:
                names = methods if table == "step" else [m for m in ["cut", *QS_METHODS] if m == "cut" or m in methods]
                for method in names:
                    for impl in (impls if method in QS_METHODS else ["-"]):
                        out.append(dict(common, table=table, method=method, size=size, dtype=dtype, impl=impl))
    return out


def _add_ratios(rows: list[dict]) -> None:
    """ratio_to_cut (time) and mem_ratio_to_cut against CUT in the same table, size and dtype."""
    ref = {(r["table"], r["size"], r["dtype"]): r for r in rows if r["method"] == "cut" and "sec_per_step" in r}
    for r in rows:
        cut = ref.get((r["table"], r["size"], r["dtype"]))
        if cut is None or "sec_per_step" not in r:
            continue
        r["ratio_to_cut"] = r["sec_per_step"] / cut["sec_per_step"]
        r["mem_ratio_to_cut"] = r["peak_mem_bytes"] / cut["peak_mem_bytes"]
        if r["table"] == "sampler":
            step = next((s for s in rows if s["table"] == "step" and s["method"] == "cut" and s["size"] == r["size"]
                         and s["dtype"] == r["dtype"] and "sec_per_step" in s), None)
            if step is not None:
                r["overhead_pct_of_cut_step"] = 100 * (r["sec_per_step"] - cut["sec_per_step"]) / step["sec_per_step"]


def run(args) -> int:
    if args.case:
        print(json.dumps(run_case(json.loads(args.case))), flush=True)
        return 0
    device = args.device
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = []
    for case in cases(args, device):
        proc = subprocess.run([sys.executable, "-m", "qsattn", "bench", "--case", json.dumps(case)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            lines = proc.stderr.strip().splitlines() or ["no output"]
            error = "out of memory" if "out of memory" in proc.stderr.lower() else lines[-1]
            row = {k: v for k, v in case.items() if k != "case_only"} | {"error": error[:300]}
        else:
            row = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(json.dumps(row), flush=True)
    _add_ratios(rows)
    out = Path(args.out or f"results/bench/{device}-{time.strftime('%Y%m%d-%H%M%S')}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=1))
    print(format_table(rows), file=sys.stderr)
    print(f"saved {len(rows)} cases to {out}", file=sys.stderr)
    return 1 if any("error" in r for r in rows) else 0


def format_table(rows: list[dict]) -> str:
    """A Markdown table of the results (both tables), for the README."""
    lines = ["| table | method | impl | px | dtype | s/step | × CUT | peak MiB | mem × CUT | QS overhead % of CUT step |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['table']} | {r['method']} | {r['impl']} | {r['size']} | {r['dtype']} | {r['error']} | | | | |")
            continue
        pct = f"{r['overhead_pct_of_cut_step']:.1f}" if "overhead_pct_of_cut_step" in r else ""
        lines.append(f"| {r['table']} | {r['method']} | {r['impl']} | {r['size']} | {r['dtype']} | {r['sec_per_step']:.3f} | "
                     f"{r.get('ratio_to_cut', float('nan')):.2f} | {r['peak_mem_bytes'] / 2**20:.0f} | "
                     f"{r.get('mem_ratio_to_cut', float('nan')):.2f} | {pct} |")
    return "\n".join(lines)
