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
  options   the CUT (and QS-Attn global) step with each speed option of the config alone, the default
            options together, and every option that keeps the maths together ("all-fast"), against the
            plain step (adam_impl=plain, pin_memory=false): ratio_to_plain, and each option's label
            (identical | rounding | changes numerics, see qsattn/engine/config.py). The batch is copied from
            the host each step, as in training, so pin_memory shows.
  packing   K processes at once, each training its own CUT / QS-Attn global cell (`--cells 1,2,4,8`,
            `--set` options on top of the defaults): aggregate_steps_per_s over one common window.
  loader    the training data pipeline alone (resize, crop, flip, to tensor; UnalignedDataset through a
            DataLoader) with `--workers 0,2,4`: images_per_s, and loader_over_step against the CUT step
            of the same size in this run (> 1: the loader outruns the step).
  official  the official CUT step (`CUTModel.optimize_parameters` from the repository at `--official
            DIR`) beside ours (plain, defaults, all-fast) on the same input: ratio_to_official.
  profile   (`--profile`) torch.profiler over the local and global+local steps: the top ops by self CPU
            (or CUDA) time, printed and saved in the row (`top_ops`).
`--key-reuse never,always` times the step table with each key_reuse value (config key; `always` is the
fastest, `auto` picks it where bit-exact, i.e. for CUT); ratio_to_cut compares with CUT under the same
value; `--flush-denormal off,on` likewise with the flush_denormal option (CPU). `--repeat R` runs the whole list of cases R times, interleaved (case 1, 2, ..., then again), and
reports the median time and peak memory of each case (`sec_samples` keeps every repeat): on a shared
machine a burst of load then hits one repeat of every case, not every repeat of one.
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
PLAIN = {"adam_impl": "plain", "pin_memory": False}   # the step without any speed option
# option name -> (config overrides on top of PLAIN, label); labels as in qsattn/engine/config.py
OPTIONS = {
    "adam_impl=foreach": ({"adam_impl": "foreach"}, "identical"),
    "pin_memory": ({"pin_memory": True}, "identical"),
    "adam_impl=fused": ({"adam_impl": "fused"}, "rounding"),
    "cudnn_benchmark": ({"cudnn_benchmark": True}, "rounding"),
    "compile=default": ({"compile": "default"}, "rounding"),
    "compile=reduce-overhead": ({"compile": "reduce-overhead"}, "rounding"),
    "flush_denormal": ({"flush_denormal": True}, "rounding"),
    "matmul_tf32": ({"matmul_tf32": True}, "changes numerics"),
    "amp=bf16": ({"amp": "bf16"}, "changes numerics"),
}
OPTION_NAMES = (*OPTIONS, "defaults", "all-fast")  # the last two: options together (see _variants)
CUDA_ONLY = {"cudnn_benchmark", "compile=reduce-overhead", "matmul_tf32", "pin_memory"}  # no effect on a CPU
CPU_ONLY = {"flush_denormal"}  # no effect on CUDA
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
    parser.add_argument("--tables", default="step,sampler",
                        help="which tables: step, sampler, options, packing, loader, official (see above)")
    parser.add_argument("--options", default=",".join(OPTION_NAMES),
                        help="options table: which options to time alone (names as in the table); official "
                        "table: which of defaults, all-fast to time beside the official step")
    parser.add_argument("--cells", default="1,2,4,8", help="packing table: numbers of concurrent processes")
    parser.add_argument("--seconds", type=float, default=10.0, help="packing table: length of the common window")
    parser.add_argument("--set", default="", help="packing table: config key=value pairs (comma list) on top of "
                        "the defaults, e.g. compile=reduce-overhead")
    parser.add_argument("--workers", default="0,2,4", help="loader table: DataLoader worker counts")
    parser.add_argument("--data", default="", help="loader table: a dataset folder (trainA, trainB); default: the "
                        "synthetic set, written to a temporary folder at the bench size")
    parser.add_argument("--official", default="", help="official table: a checkout of "
                        "taesungp/contrastive-unpaired-translation (never part of the product)")
    parser.add_argument("--key-reuse", default="never,always", help="step and profile tables: key_reuse values "
                        "(auto | always | never, comma list)")
    parser.add_argument("--flush-denormal", default="off", help="step and profile tables: flush_denormal values "
                        "(off | on, comma list; on: the G/F backward flushes subnormals, CPU only)")
    parser.add_argument("--repeat", type=int, default=1, help="run every case this many times, interleaved; "
                        "report the median")
    parser.add_argument("--profile", action="store_true", help="add the profile table: top ops of the local and "
                        "global+local steps (torch.profiler)")
    parser.add_argument("--top", type=int, default=15, help="profile table: how many ops to list")
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
    if case["table"] == "loader":
        return _loader_case(case)
    if case.get("threads"):
        torch.set_num_threads(case["threads"])
    device = torch.device(case["device"])
    if case["table"] == "packing":
        return _packing_case(case)
    if case["table"] in ("options", "official"):
        fn = _official_step(case, device) if case.get("variant") == "official" else _our_step(case, device)
        compiled = "compile" in case.get("overrides", {})
        sec = _timed(fn, case["steps"], max(case["warmup"], 3) if compiled else case["warmup"], device)
        return _result(case, sec, device, base)
    if case["table"] == "profile":
        return _profile_case(case, device, base)
    torch.manual_seed(0)
    size, impl = case["size"], case["impl"]
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if case["dtype"] == "bf16"
                else contextlib.nullcontext())
    if case["table"] == "step":
        from qsattn.engine.config import resolve
        from baselines.model import train_step
        from qsattn.state import create_state

        # num_patches = the QS layers' channel count (4·ngf, 256 at the default): official local needs it
        cfg = resolve({"method": case["method"], "ngf": case["ngf"], "crop_size": size, "load_size": max(size, 286),
                       "num_patches": 4 * case["ngf"], "qs_impl": impl if impl != "-" else "naive",
                       "key_reuse": case.get("key_reuse", "auto"), "flush_denormal": case.get("flush_denormal", False)})
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
    return _result(case, sec, device, base)


def _result(case: dict, sec: float, device, base: int, **extra) -> dict:
    import torch

    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else _rss("VmHWM")
    out = dict(case, sec_per_step=sec, images_per_s=1.0 / sec, peak_mem_bytes=int(peak),
               base_mem_bytes=0 if device.type == "cuda" else base, torch=torch.__version__,
               device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
               threads=torch.get_num_threads(), **extra)
    del out["case_only"]
    return out


def _our_step(case: dict, device):
    """A CUT-family step with the case's config overrides, fed as training feeds it: a host batch
    copied to the device each step (pinned with pin_memory). Returns the step function."""
    import torch

    from qsattn.engine.config import resolve
    from baselines.model import configure_backends, train_step
    from qsattn.state import create_state
    from qsattn.engine.train import to_device

    size = case["size"]
    cfg = resolve({"method": case["method"], "ngf": case["ngf"], "crop_size": size, "load_size": max(size, 286),
                   "num_patches": 4 * case["ngf"], "device": str(device), **case.get("overrides", {})})
    configure_backends(cfg, device)
    torch.manual_seed(0)
    state = create_state(cfg, device)
    batches = [(torch.rand(1, 3, size, size) * 2 - 1, torch.rand(1, 3, size, size) * 2 - 1) for _ in range(2)]
    count = [0]

    def fn():
        count[0] += 1
        real_A, real_B = to_device(batches[count[0] % 2], device, cfg.pin_memory)
        train_step(state, real_A, real_B)
    return fn


def _profile_case(case: dict, device, base: int) -> dict:
    """torch.profiler over `steps` training steps after the warm-up: the top ops by self time."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    fn = _our_step(dict(case, overrides={"key_reuse": case["key_reuse"], "qs_impl": case["impl"],
                                         "flush_denormal": case.get("flush_denormal", False)}), device)
    for _ in range(case["warmup"]):
        fn()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    t0 = time.perf_counter()
    with profile(activities=activities) as prof:
        for _ in range(case["steps"]):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
    sec = (time.perf_counter() - t0) / case["steps"]  # with the profiler's overhead
    attr = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, attr), reverse=True)
    total = sum(getattr(e, attr) for e in events) or 1.0
    top = [{"op": e.key, "calls": e.count, "ms_per_step": getattr(e, attr) / 1000 / case["steps"],
            "pct": 100 * getattr(e, attr) / total} for e in events[:case["top"]]]
    return _result(case, sec, device, base, top_ops=top)


def _official_step(case: dict, device):
    """The official CUT step (`CUTModel.optimize_parameters`) from the checkout at case["official"], with
    the official CUT options (as tests/fixtures/make_parity_fixtures.py loads it, without modification)."""
    import importlib
    import types
    from argparse import Namespace

    import torch

    repo = case["official"]
    if not (Path(repo) / "models" / "cut_model.py").exists():
        raise FileNotFoundError(f"--official {repo}: no models/cut_model.py there; pass a checkout of "
                                "taesungp/contrastive-unpaired-translation")
    for name in ("torchvision", "packaging"):  # util/util.py, patchnce.py import them; a bare GPU box may lack them
        try:
            importlib.import_module(name)
        except ImportError:
            stub = types.ModuleType(name)
            if name == "packaging":
                version = types.ModuleType("packaging.version")
                version.parse = lambda v: tuple(int(x) for x in v.split("+")[0].split(".")[:2] if x.isdigit())
                stub.version = version
                sys.modules["packaging.version"] = version
            sys.modules[name] = stub
    sys.path.insert(0, str(Path(repo).resolve()))
    from models.cut_model import CUTModel  # noqa: E402 (the official code, from --official)

    size, gpu = case["size"], [device.index or 0] if device.type == "cuda" else []
    opt = Namespace(
        isTrain=True, gpu_ids=gpu, checkpoints_dir=str(Path(os.environ.get("TMPDIR", "/tmp")) / "_bench_official"),
        name="bench", preprocess="resize_and_crop", input_nc=3, output_nc=3, ngf=case["ngf"], ndf=64,
        netG="resnet_9blocks", netD="basic", n_layers_D=3, normG="instance", normD="instance", init_type="xavier",
        init_gain=0.02, no_dropout=True, no_antialias=False, no_antialias_up=False, gan_mode="lsgan", lr=0.0002,
        beta1=0.5, beta2=0.999, direction="AtoB", batch_size=1, lambda_GAN=1.0, lambda_NCE=1.0, nce_idt=True,
        nce_layers="0,4,8,12,16", netF="mlp_sample", netF_nc=256, nce_T=0.07, num_patches=4 * case["ngf"],
        flip_equivariance=False, nce_includes_all_negatives_from_minibatch=False, pool_size=0, CUT_mode="CUT",
        crop_size=size, load_size=size, lr_policy="linear", epoch_count=1, n_epochs=200, n_epochs_decay=200,
        continue_train=False, verbose=False, pretrained_name=None, stylegan2_G_num_downsampling=1, weight_norm="none")
    torch.manual_seed(0)
    model = CUTModel(opt)
    batches = [{"A": torch.rand(1, 3, size, size) * 2 - 1, "B": torch.rand(1, 3, size, size) * 2 - 1,
                "A_paths": ["a"], "B_paths": ["b"]} for _ in range(2)]
    model.data_dependent_initialize(batches[0])  # creates F and its optimizer, as the official train.py
    count = [0]

    def fn():  # the official train.py loop body: set_input (host-to-device copy) + optimize_parameters
        count[0] += 1
        model.set_input(batches[count[0] % 2])
        model.optimize_parameters()
    return fn


def _loader_case(case: dict) -> dict:
    import tempfile

    import torch

    from qsattn.data.unaligned import UnalignedDataset
    from qsattn.engine.train import collate

    size = case["size"]
    root = case.get("data") or ""
    tmp = None
    if not root:
        from qsattn.data.synthetic import generate

        tmp = tempfile.TemporaryDirectory()
        root = str(generate(Path(tmp.name) / "synthetic", size=size, n_train=32, n_test=1))
    ds = UnalignedDataset(root, "train", load_size=size * 286 // 256, crop_size=size)
    loader = torch.utils.data.DataLoader(ds, batch_size=1, shuffle=True, num_workers=case["workers"],
                                         collate_fn=collate, persistent_workers=case["workers"] > 0)
    n, total = 0, case["steps"] + case["warmup"]
    while n < total:
        for batch in loader:
            n += 1
            if n == case["warmup"]:
                t0 = time.perf_counter()
            if n >= total:
                break
    sec = (time.perf_counter() - t0) / case["steps"]
    out = dict(case, sec_per_step=sec, images_per_s=1.0 / sec, peak_mem_bytes=_rss("VmHWM"), base_mem_bytes=0,
               torch=torch.__version__, device_name=_cpu_name(), threads=torch.get_num_threads(),
               dataset=case.get("data") or f"synthetic {size} px (PNG)")
    del out["case_only"]
    if tmp is not None:
        tmp.cleanup()
    return out


def _packing_case(case: dict) -> dict:
    """One of K concurrent cells: warm up, wait for the others, step for case["seconds"]."""
    import torch

    device = torch.device(case["device"])
    fn = _our_step(case, device)
    for _ in range(case["warmup"]):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    barrier = Path(case["barrier"])
    (barrier / f"ready-{case['cell']}").touch()
    deadline = time.time() + 900
    while len(list(barrier.glob("ready-*"))) < case["cells"]:
        if time.time() > deadline:
            raise TimeoutError("the other cells never became ready")
        time.sleep(0.01)
    steps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < case["seconds"]:
        fn()
        steps += 1
    if device.type == "cuda":
        torch.cuda.synchronize()
    sec = (time.perf_counter() - t0) / steps
    return _result(case, sec, device, 0, steps_done=steps)


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
    sizes = [int(s) for s in args.sizes.split(",")]
    common = dict(device=device, steps=args.steps, warmup=args.warmup, ngf=args.ngf, case_only=True)
    fast_methods = [m for m in ("cut", "qsattn-global") if m in methods] or ["cut"]
    reuses = [r.strip() for r in args.key_reuse.split(",") if r.strip()]
    unknown = set(reuses) - {"auto", "always", "never"}
    if unknown:
        raise SystemExit(f"--key-reuse: unknown {sorted(unknown)}; known: auto, always, never")
    flushes = [f.strip() for f in args.flush_denormal.split(",") if f.strip()]
    if set(flushes) - {"off", "on"}:
        raise SystemExit(f"--flush-denormal: unknown {sorted(set(flushes) - {'off', 'on'})}; known: off, on")
    flushes = [f == "on" for f in flushes] or [False]
    tables = [t.strip() for t in args.tables.split(",") if t.strip()]
    if args.profile and "profile" not in tables:
        tables.append("profile")
    out = []
    for table in tables:
        if table in ("step", "sampler"):
            for dtype in [d.strip() for d in args.dtype.split(",")]:
                for size in sizes:
                    names = methods if table == "step" else [m for m in ["cut", *QS_METHODS] if m == "cut" or m in methods]
                    for method in names:
                        for impl in (impls if method in QS_METHODS else ["-"]):
                            for reuse, flush in ([(r, f) for f in flushes for r in reuses] if table == "step"
                                                 else [("-", False)]):
                                extra = {"key_reuse": reuse, "flush_denormal": flush} if table == "step" else {}
                                out.append(dict(common, table=table, method=method, size=size, dtype=dtype, impl=impl,
                                                **extra))
        elif table == "profile":
            for size in sizes:
                for method in [m for m in ("qsattn-local", "qsattn-global-local") if m in methods]:
                    for impl in impls:
                        for flush in flushes:
                            for reuse in reuses:
                                out.append(dict(common, table=table, method=method, size=size, dtype="fp32", impl=impl,
                                                key_reuse=reuse, flush_denormal=flush, top=args.top))
        elif table == "options":
            wanted = [o.strip() for o in args.options.split(",") if o.strip()]
            unknown = set(wanted) - set(OPTION_NAMES)
            if unknown:
                raise SystemExit(f"--options: unknown {sorted(unknown)}; known: {', '.join(OPTION_NAMES)}")
            wanted = [o for o in wanted if o not in (CUDA_ONLY if device == "cpu" else CPU_ONLY)]
            for size in sizes:
                for method in fast_methods:
                    for variant, overrides, label in _variants(wanted, device):
                        out.append(dict(common, table=table, method=method, size=size, dtype="fp32", impl="-",
                                        variant=variant, label=label, overrides=overrides))
        elif table == "official":
            if not args.official:
                raise SystemExit("--tables official needs --official DIR (a checkout of the official CUT code)")
            for size in sizes:
                out.append(dict(common, table=table, method="cut", size=size, dtype="fp32", impl="-",
                                variant="official", label="official code", official=str(Path(args.official).resolve())))
                ours = [v for v in ("defaults", "all-fast") if v in args.options.split(",")] or ["defaults"]
                for variant, overrides, label in _variants(ours, device):
                    out.append(dict(common, table=table, method="cut", size=size, dtype="fp32", impl="-",
                                    variant=variant, label=label, overrides=overrides))
        elif table == "packing":
            from qsattn.engine.config import split_key_value

            overrides = dict(split_key_value(item, "--set item") for item in args.set.split(",") if item.strip())
            for size in sizes:
                for method in fast_methods:
                    for k in [int(c) for c in args.cells.split(",")]:
                        out.append(dict(common, table=table, method=method, size=size, dtype="fp32", impl="-",
                                        cells=k, seconds=args.seconds, overrides=overrides,
                                        variant=",".join(f"{a}={b}" for a, b in overrides.items()) or "defaults"))
        elif table == "loader":
            for size in sizes:
                for w in [int(x) for x in args.workers.split(",")]:
                    out.append(dict(common, table=table, method="-", size=size, dtype="-", impl="-", workers=w,
                                    device="cpu", data=args.data, steps=max(args.steps, 20)))
        else:
            raise SystemExit(f"--tables: unknown table '{table}' (step, sampler, options, packing, loader, official, "
                             "profile)")
    return out


def _variants(wanted: list[str], device: str) -> list[tuple[str, dict, str]]:
    """(name, overrides, label): the plain step, each wanted option alone, the defaults, all-fast."""
    from qsattn.engine.config import Config

    defaults = {k: getattr(Config, k) for k in PLAIN}
    all_fast = dict(defaults, adam_impl="fused", compile="reduce-overhead" if device != "cpu" else "default")
    if device != "cpu":
        all_fast["cudnn_benchmark"] = True
    else:
        all_fast["flush_denormal"] = True
    together = {"defaults": (defaults, "identical"), "all-fast": (all_fast, "rounding")}
    rows = [("plain", dict(PLAIN), "identical")]
    rows += [(name, dict(PLAIN, **OPTIONS[name][0]), OPTIONS[name][1]) for name in wanted if name in OPTIONS]
    rows += [(name, *together[name]) for name in ("defaults", "all-fast") if name in wanted]
    return rows


def _run_cases(batch: list[dict]) -> list[dict]:
    """Run cases concurrently (one process each; a list of one runs alone) and return their rows."""
    procs = [subprocess.Popen([sys.executable, "-m", "qsattn", "bench", "--case", json.dumps(case)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for case in batch]
    rows = []
    for case, proc in zip(batch, procs):
        stdout, stderr = proc.communicate()
        if proc.returncode != 0:
            lines = stderr.strip().splitlines() or ["no output"]
            error = "out of memory" if "out of memory" in stderr.lower() else lines[-1]
            rows.append({k: v for k, v in case.items() if k not in ("case_only", "barrier")} | {"error": error[:300]})
        else:
            rows.append(json.loads(stdout.strip().splitlines()[-1]))
    return rows


def _add_ratios(rows: list[dict]) -> None:
    """ratio_to_cut (time) and mem_ratio_to_cut against CUT in the same table, size and dtype; for the
    speed tables ratio_to_plain, ratio_to_official, speedup_vs_one_cell and loader_over_step."""
    def same(r):  # CUT under the same key_reuse and flush_denormal
        return r["table"], r["size"], r["dtype"], r.get("key_reuse"), r.get("flush_denormal")

    ref = {same(r): r for r in rows if r["method"] == "cut" and "sec_per_step" in r and r["table"] in ("step", "sampler")}
    for r in rows:
        cut = ref.get(same(r))
        if cut is None or "sec_per_step" not in r:
            continue
        r["ratio_to_cut"] = r["sec_per_step"] / cut["sec_per_step"]
        r["mem_ratio_to_cut"] = r["peak_mem_bytes"] / cut["peak_mem_bytes"]
        if r["table"] == "sampler":
            step = next((s for s in rows if s["table"] == "step" and s["method"] == "cut" and s["size"] == r["size"]
                         and s["dtype"] == r["dtype"] and "sec_per_step" in s
                         and s.get("key_reuse") in ("never", "auto", None) and not s.get("flush_denormal")), None)
            if step is not None:
                r["overhead_pct_of_cut_step"] = 100 * (r["sec_per_step"] - cut["sec_per_step"]) / step["sec_per_step"]
    ok = [r for r in rows if "sec_per_step" in r]
    for r in ok:
        if r["table"] == "options":
            plain = next((p for p in ok if p["table"] == "options" and p["variant"] == "plain"
                          and p["method"] == r["method"] and p["size"] == r["size"]), None)
            if plain:
                r["ratio_to_plain"] = r["sec_per_step"] / plain["sec_per_step"]
            if r["method"] == "qsattn-global":
                cut = next((p for p in ok if p["table"] == "options" and p["variant"] == r["variant"]
                            and p["method"] == "cut" and p["size"] == r["size"]), None)
                if cut:
                    r["ratio_to_cut"] = r["sec_per_step"] / cut["sec_per_step"]
        elif r["table"] == "official":
            off = next((p for p in ok if p["table"] == "official" and p["variant"] == "official" and p["size"] == r["size"]), None)
            if off:
                r["ratio_to_official"] = r["sec_per_step"] / off["sec_per_step"]
        elif r["table"] == "packing":
            r["aggregate_steps_per_s"] = r.get("aggregate_steps_per_s", 0.0)
            one = next((p for p in ok if p["table"] == "packing" and p["cells"] == 1 and p["method"] == r["method"]
                        and p["size"] == r["size"]), None)
            if one:
                r["speedup_vs_one_cell"] = r["aggregate_steps_per_s"] / one["aggregate_steps_per_s"]
        elif r["table"] == "loader":
            steps = [p for p in ok if p["method"] == "cut" and p["size"] == r["size"] and p["dtype"] == "fp32"
                     and (p["table"] == "step" or (p["table"] in ("options", "official") and p["variant"] == "defaults"))]
            if steps:
                r["loader_over_step"] = r["images_per_s"] / max(p["images_per_s"] for p in steps)


def run(args) -> int:
    if args.case:
        print(json.dumps(run_case(json.loads(args.case))), flush=True)
        return 0
    device = args.device
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    todo = cases(args, device)
    samples: list[list[dict]] = [[] for _ in todo]
    for rep in range(max(1, args.repeat)):
        for i, case in enumerate(todo):
            row = _run_one(case, device)
            samples[i].append(row)
            print(json.dumps(dict(row, repeat=rep)), flush=True)
    rows = [_median_row(s) for s in samples]
    _add_ratios(rows)
    out = Path(args.out or f"results/bench/{device}-{time.strftime('%Y%m%d-%H%M%S')}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=1))
    print(format_table(rows), file=sys.stderr)
    print(f"saved {len(rows)} cases to {out}", file=sys.stderr)
    return 1 if any("error" in r for r in rows) else 0


def _median_row(repeats: list[dict]) -> dict:
    """One case's repeats as one row: the median time and peak memory; every repeat's time in sec_samples."""
    import statistics

    ok = [r for r in repeats if "sec_per_step" in r]
    if not ok:
        return repeats[-1]
    sec = statistics.median(r["sec_per_step"] for r in ok)
    row = dict(ok[0], sec_per_step=sec, images_per_s=1.0 / sec, sec_samples=[r["sec_per_step"] for r in ok],
               peak_mem_bytes=int(statistics.median(r["peak_mem_bytes"] for r in ok)), repeats=len(repeats))
    if len(ok) < len(repeats):
        row["failed_repeats"] = len(repeats) - len(ok)
    return row


def _run_one(case: dict, device: str) -> dict:
    """One case as one row; a packing case runs its K processes together."""
    import tempfile

    if case["table"] != "packing":
        return _run_cases([case])[0]
    with tempfile.TemporaryDirectory() as barrier:
        k = case["cells"]
        threads = max(1, (os.cpu_count() or 1) // k) if device == "cpu" else 0
        cells = _run_cases([dict(case, cell=i, barrier=barrier, threads=threads) for i in range(k)])
    bad = [c for c in cells if "error" in c]
    row = {k2: v for k2, v in case.items() if k2 != "case_only"}
    if bad:
        row["error"] = bad[0]["error"]
    else:
        row.update({k2: cells[0][k2] for k2 in ("torch", "device_name", "threads")},
                   aggregate_steps_per_s=sum(1 / c["sec_per_step"] for c in cells),
                   sec_per_step=max(c["sec_per_step"] for c in cells),
                   peak_mem_bytes=max(c["peak_mem_bytes"] for c in cells), base_mem_bytes=0)
        row["images_per_s"] = row["aggregate_steps_per_s"]
    return row


def format_table(rows: list[dict]) -> str:
    """Markdown tables of the results, for the README."""
    base = [r for r in rows if r["table"] in ("step", "sampler")]
    parts = [_format_base(base)] if base else []
    speed = [r for r in rows if r["table"] in ("options", "official")]
    if speed:
        lines = ["| table | method | px | variant | label | s/step | × plain | × official | QS × CUT |", "|---|---|---|---|---|---|---|---|---|"]
        for r in speed:
            cells = [f"{r[k]:.2f}" if k in r else "" for k in ("ratio_to_plain", "ratio_to_official", "ratio_to_cut")]
            t = r["error"] if "error" in r else f"{r['sec_per_step']:.4f}"
            lines.append(f"| {r['table']} | {r['method']} | {r['size']} | {r['variant']} | {r['label']} | {t} | " + " | ".join(cells) + " |")
        parts.append("\n".join(lines))
    pack = [r for r in rows if r["table"] == "packing"]
    if pack:
        lines = ["| packing | px | options | cells | steps/s together | × one cell |", "|---|---|---|---|---|---|"]
        for r in pack:
            agg = r["error"] if "error" in r else f"{r['aggregate_steps_per_s']:.2f}"
            lines.append(f"| {r['method']} | {r['size']} | {r['variant']} | {r['cells']} | {agg} | "
                         f"{r.get('speedup_vs_one_cell', float('nan')):.2f} |")
        parts.append("\n".join(lines))
    prof = [r for r in rows if r["table"] == "profile"]
    if prof:
        parts.append(_format_profile(prof))
    load = [r for r in rows if r["table"] == "loader"]
    if load:
        lines = ["| loader | px | workers | images/s | × CUT step images/s |", "|---|---|---|---|---|"]
        for r in load:
            ips = r["error"] if "error" in r else f"{r['images_per_s']:.1f}"
            ratio = f"{r['loader_over_step']:.2f}" if "loader_over_step" in r else ""
            lines.append(f"| {r.get('dataset', r.get('data') or 'synthetic')} | {r['size']} | {r['workers']} | {ips} | {ratio} |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def _format_profile(rows: list[dict]) -> str:
    parts = []
    for r in rows:
        head = f"profile: {r['method']} {r['size']} px, impl {r['impl']}, key_reuse {r['key_reuse']}"
        head += ", flush_denormal" if r.get("flush_denormal") else ""
        if "error" in r:
            parts.append(f"{head}: {r['error']}")
            continue
        lines = [f"{head}, {r['sec_per_step']:.3f} s/step under the profiler", "",
                 "| op | calls | ms/step | % of op time |", "|---|---|---|---|"]
        lines += [f"| `{o['op']}` | {o['calls']} | {o['ms_per_step']:.1f} | {o['pct']:.1f} |" for o in r["top_ops"]]
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def _format_base(rows: list[dict]) -> str:
    lines = ["| table | method | impl | key_reuse | px | dtype | s/step | × CUT | peak MiB | mem × CUT | QS overhead % of CUT step |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        reuse = r.get("key_reuse", "-") + (" +flush" if r.get("flush_denormal") else "")
        if "error" in r:
            lines.append(f"| {r['table']} | {r['method']} | {r['impl']} | {reuse} | {r['size']} | {r['dtype']} | {r['error']} | | | | |")
            continue
        pct = f"{r['overhead_pct_of_cut_step']:.1f}" if "overhead_pct_of_cut_step" in r else ""
        lines.append(f"| {r['table']} | {r['method']} | {r['impl']} | {reuse} | {r['size']} | {r['dtype']} | {r['sec_per_step']:.3f} | "
                     f"{r.get('ratio_to_cut', float('nan')):.2f} | {r['peak_mem_bytes'] / 2**20:.0f} | "
                     f"{r.get('mem_ratio_to_cut', float('nan')):.2f} | {pct} |")
    return "\n".join(lines)
