"""Check this project against the official QS-Attn and CUT code, run here, on the same inputs and weights.

    python -m qsattn parity --official PATH/query-selected-attention --cut PATH/contrastive-unpaired-translation

The official code is imported from your own checkouts (qsattn/official.py; nothing is copied) and run on
this machine (CPU, or a GPU with --device cuda). Both sides get the same inputs, the same weights (the
official networks are built first, at the official init, and their state dicts loaded into ours) and
the same random draws (patch indices, FastCUT's flip). Compared:

- sampler  the patch sampler F and PatchNCE in every mode (none: CUT's; global, local, global+local:
           QS-Attn's), on the official G's encoder features of 8 inputs (64 and 128 px, seeds 0-3,
           batch 1 and 2, num_patches 64 and 256): selected indices, attention rows, F's outputs,
           per-patch NCE losses and their layer means, and the gradients of the NCE loss with
           respect to F's weights and the features; with --impl chunked also the chunked sampler.
- networks G's output and encoder features, D's output.
- step     one full training step (the official optimize_parameters against our train_step) of
           each method: the losses, every gradient of G, D and F, and the weights after Adam.

The table has one row per quantity and mode: the largest absolute and relative difference over all
inputs, and PASS/FAIL. Indices must be exact. Steps that call the same ops on the same shapes as the
official code (docs/faithfulness.md) must be bitwise equal; on CUDA this holds with deterministic
kernels (switched on here). Steps that are equal only to rounding (the chunked path on CUDA) are
checked against the float32 bound of qsattn/float_bounds.py, printed beside them. Exit status: 0 when
every row passes, 1 otherwise, 2 for a missing or invalid checkout.
"""
from __future__ import annotations

import contextlib
import math
import time
from argparse import Namespace
from dataclasses import dataclass, field

from qsattn.errors import UserError

SAMPLER_MODES = {"none": ("cut", "networks"), "global": ("qsattn", "networks_global"),
                 "local": ("qsattn", "networks_local"), "global+local": ("qsattn", "networks_local_global")}
STEP_METHODS = {"cut": ("cut", "CUT"), "fastcut": ("cut", "FastCUT"), "qsattn-global": ("qsattn", "global"),
                "qsattn-local": ("qsattn", "local"), "qsattn-global-local": ("qsattn", "local_global")}
NCE_LAYERS = (0, 4, 8, 12, 16)
# (image side, seed, batch, num_patches): every side with each batch and num_patches
INPUTS = [(px, seed, 1 + seed % 2, (64, 256)[seed // 2]) for px in (64, 128) for seed in range(4)]


@dataclass
class Row:
    quantity: str
    mode: str
    expect: str                 # exact | bitwise | rounding
    max_abs: float = 0.0
    max_rel: float = 0.0
    bound: float = 0.0          # rounding rows: the largest bound over the compared entries
    failed: list = field(default_factory=list)  # the inputs where it failed
    count: int = 0

    @property
    def passed(self) -> bool:
        return self.count > 0 and not self.failed


class Table:
    def __init__(self):
        self.rows: dict[tuple[str, str], Row] = {}

    def row(self, quantity, mode, expect) -> Row:
        return self.rows.setdefault((quantity, mode), Row(quantity, mode, expect))

    def compare(self, quantity, mode, ours, ref, where, expect="bitwise", bound=None):
        """Accumulate one comparison. `bound` (a tensor like ref) makes it a rounding row."""
        import torch

        row = self.row(quantity, mode, "rounding" if bound is not None else expect)
        row.count += 1
        if ours is None and ref is None:  # e.g. no gradient on either side (PatchNCE detaches the keys)
            return
        if ours is None or ref is None or tuple(ours.shape) != tuple(ref.shape):
            row.failed.append(f"{where} (shape {None if ours is None else tuple(ours.shape)} vs "
                              f"{None if ref is None else tuple(ref.shape)})")
            row.max_abs = math.inf
            return
        ours, ref = ours.detach(), ref.detach()
        if not ours.is_floating_point():
            if not torch.equal(ours, ref):
                row.failed.append(where)
                row.max_abs = max(row.max_abs, float((ours != ref).sum()))
            return
        diff = (ours.double() - ref.double()).abs()
        if diff.numel():
            row.max_abs = max(row.max_abs, float(diff.max()))
            scale = ref.double().abs()
            rel = torch.where(scale > 0, diff / scale.clamp_min(1e-300), torch.where(diff > 0, math.inf, 0.0))
            row.max_rel = max(row.max_rel, float(rel.max()))
        ok = torch.equal(ours, ref) if bound is None else bool((diff <= bound.double()).all())
        if bound is not None and bound.numel():
            row.bound = max(row.bound, float(bound.max()))
        if not ok:
            row.failed.append(where)

    def fail(self, quantity, mode, where, why):
        row = self.row(quantity, mode, "bitwise")
        row.count += 1
        row.failed.append(f"{where}: {why}")

    def failures(self) -> int:
        return sum(not r.passed for r in self.rows.values())

    def render(self) -> str:
        head = ("quantity", "mode", "expect", "max abs diff", "max rel diff", "bound", "result")
        lines = [head]
        for r in self.rows.values():
            bound = f"{r.bound:.1e}" if r.expect == "rounding" else ("exact" if r.expect == "exact" else "0 (bitwise)")
            lines.append((r.quantity, r.mode, r.expect, f"{r.max_abs:.2e}", f"{r.max_rel:.2e}", bound,
                          "PASS" if r.passed else "FAIL"))
        widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
        out = ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines]
        out.insert(1, "  ".join("-" * w for w in widths))
        for r in self.rows.values():
            if r.failed:
                out.append(f"FAIL {r.quantity} [{r.mode}]: {'; '.join(r.failed[:3])}"
                           f"{' …' if len(r.failed) > 3 else ''}")
        return "\n".join(out)


# --- official objects --------------------------------------------------------------------------------

def official_opt(cfg, device, **extra) -> Namespace:
    """The official option namespace for our resolved config (the keys the official models read)."""
    keys = ("input_nc", "output_nc", "ngf", "ndf", "netG", "netD", "n_layers_D", "normG", "normD", "init_type",
            "init_gain", "no_antialias", "no_antialias_up", "gan_mode", "lr", "beta1", "beta2", "direction",
            "batch_size", "lambda_GAN", "lambda_NCE", "nce_idt", "netF", "netF_nc", "nce_T", "num_patches",
            "flip_equivariance")
    opt = {k: getattr(cfg, k) for k in keys if hasattr(cfg, k)}
    opt.update(netD=cfg.netD if hasattr(cfg, "netD") else "basic", netF="mlp_sample", no_dropout=True,
               nce_layers=",".join(map(str, cfg.nce_layers)), nce_includes_all_negatives_from_minibatch=False,
               isTrain=True, gpu_ids=[0] if str(device).startswith("cuda") else [], checkpoints_dir="/tmp/_qsattn_parity",
               name="parity", preprocess="resize_and_crop", pool_size=0, lr_policy="linear", continue_train=False,
               pretrained_name=None, phase="train", stylegan2_G_num_downsampling=1)
    opt.update(extra)
    return Namespace(**opt)


def _strip(state: dict) -> dict:
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


@contextlib.contextmanager
def _sorts_recorded(into: list):
    """Record the indices of every torch.sort while official code runs (the QS-Attn global files
    return no indices for the QS layers, only the attention rows)."""
    import torch

    original = torch.sort

    def sort(*args, **kwargs):
        out = original(*args, **kwargs)
        into.append(out[1])
        return out

    torch.sort = sort
    try:
        yield
    finally:
        torch.sort = original


def _images(g, batch, px, device):
    import torch

    return (torch.rand(batch, 3, px, px, generator=g) * 2 - 1).to(device)


# --- sampler and PatchNCE ------------------------------------------------------------------------------

def check_sampler(table: Table, repos: dict, device, impls=("naive",), inputs=INPUTS) -> None:
    import torch

    from qsattn import official
    from qsattn.float_bounds import global_rows, local_rows, softmax_bound
    from baselines.losses import patch_nce_loss
    from qsattn.sampler import PatchSampleF

    for px, seed, batch, n in inputs:
        where = f"{px}px seed {seed} batch {batch} {n} patches"
        ngf = n // 4  # C of layers 12 and 16 = num_patches: the official local view needs it at batch 1
        G = _official_G(repos, ngf, seed, device)
        g = torch.Generator().manual_seed(1000 + seed)
        x, y = _images(g, batch, px, device), _images(g, batch, px, device)
        with torch.no_grad():
            feats_k = [f.detach() for f in G(x, list(NCE_LAYERS), encode_only=True)]
            feats_q = [f.detach() for f in G(y, list(NCE_LAYERS), encode_only=True)]
        ids_random = [torch.randperm(f.shape[2] * f.shape[3], generator=g)[:n].to(device) for f in feats_k]
        opt = Namespace(batch_size=batch, nce_T=0.07, nce_includes_all_negatives_from_minibatch=False)
        for mode, (kind, file) in SAMPLER_MODES.items():
            if kind not in repos:
                continue
            qs = mode != "none"
            torch.manual_seed(seed)
            with official.on_device(device):
                ref_F = repos[kind].modules[file].PatchSampleF(use_mlp=True, init_type="xavier", init_gain=0.02,
                                                                nc=256, gpu_ids=[0] if device.type == "cuda" else [])
            nce_cls = repos[kind].modules["patchnce"].PatchNCELoss
            ref = _run_official_F(ref_F, feats_k, feats_q, ids_random, n, qs, nce_cls(opt), device)
            for impl in impls:
                label = mode if impl == "naive" else f"{mode} ({impl})"
                if impl != "naive" and not qs:
                    continue
                F = PatchSampleF(256, n, mode, (3, 4), impl=impl, chunk=64).to(device)
                F.build([f.shape[1] for f in feats_k], device)
                F.load_state_dict(_strip(ref_F.state_dict()), strict=True)
                k = [f.clone().requires_grad_(True) for f in feats_k]
                q = [f.clone().requires_grad_(True) for f in feats_q]
                pool_k, ids, attns = F(k, patch_ids=ids_random[:3] + ([None, None] if qs else ids_random[3:]))
                pool_q, _, _ = F(q, patch_ids=ids, attn_mats=attns)
                per_patch = [patch_nce_loss(a, b, 0.07, batch) for a, b in zip(pool_q, pool_k)]
                total = sum((p.mean() for p in per_patch), 0.0) / len(per_patch)
                total.backward()
                # the chunked path is bitwise naive on a CPU, equal to rounding on CUDA (docs/faithfulness.md)
                rounding = impl != "naive" and device.type == "cuda"
                if qs:
                    for j, layer in enumerate((3, 4)):
                        _compare_selection(table, label, feats_k[layer], mode, ids[layer], attns[layer],
                                           ref["sorted"][j][:, :n], ref["attn"][layer], where, rounding)
                else:
                    for layer in range(5):
                        table.compare("indices", label, ids[layer], ref["ids"][layer], where, "exact")
                if rounding:
                    continue  # downstream of rows equal only to rounding: no bitwise claim
                for layer in range(5):
                    table.compare("F output, key side", label, pool_k[layer], ref["pool_k"][layer], where)
                    table.compare("F output, query side", label, pool_q[layer], ref["pool_q"][layer], where)
                    table.compare("PatchNCE per patch", label, per_patch[layer], ref["per_patch"][layer], where)
                table.compare("PatchNCE layer means", label, torch.stack([p.mean() for p in per_patch]),
                              torch.stack(ref["means"]), where)
                if impl != "naive":
                    continue  # chunked gradients sum in another order: tests/test_qs_chunked.py, to rounding
                for name, p in F.named_parameters():
                    table.compare("grad F weights (NCE)", label, p.grad, ref["grad_F"][name], where)
                for ours_f, ref_g in zip(k + q, ref["grad_feats"]):
                    table.compare("grad features (NCE)", label, ours_f.grad, ref_g, where)


def _compare_selection(table, label, feat, mode, ids, attn, ref_ids, ref_attn, where, rounding):
    """Indices exact and attention rows bitwise; where only rounding is claimed, the indices must be a
    valid selection within the entropies' float32 bound, and the rows within the softmax bound of the
    exact (float64) rows (qsattn/float_bounds.py)."""
    import torch

    from qsattn.float_bounds import check_selection, entropy_bound, global_rows, local_rows, softmax_bound

    ours_attn = attn.reshape(ref_attn.shape)
    if not rounding:
        table.compare("indices", label, ids, ref_ids, where, "exact")
        table.compare("attention rows", label, ours_attn, ref_attn, where)
        return
    B = feat.shape[0]
    rows = [t.cpu() for t in (local_rows(feat) if mode == "local" else global_rows(feat))]
    a, da = softmax_bound(*rows)
    H, dH = entropy_bound(*(softmax_bound(*[t.cpu() for t in local_rows(feat)]) if mode != "global" else (a, da)))
    row = table.row("indices (tie-aware)", label, "rounding")
    row.count += 1
    for b in range(B):
        try:
            check_selection(ids[b].cpu(), H.view(B, -1)[b], dH.view(B, -1)[b])
        except AssertionError as exc:
            row.failed.append(f"{where} image {b}: {exc}")
    pick = (torch.arange(B)[:, None], ids.cpu())
    exact = a.view(B, -1, a.shape[-1])[pick].reshape(ref_attn.shape)
    bound = da.view(B, -1, da.shape[-1])[pick].reshape(ref_attn.shape)
    table.compare("attention rows (vs exact)", label, ours_attn.cpu().double(), exact, where, bound=bound)


def _official_G(repos, ngf, seed, device):
    import torch

    from qsattn import official

    net = repos.get("qsattn", repos.get("cut")).modules
    net = net.get("networks_global") or net["networks"]
    torch.manual_seed(seed)
    with official.on_device(device):
        G = net.define_G(3, 3, ngf, "resnet_9blocks", "instance", False, "xavier", 0.02, False, False,
                         [0] if device.type == "cuda" else [], Namespace())
    return G.to(device)


def _run_official_F(ref_F, feats_k, feats_q, ids_random, n, qs, crit, device):
    """The official key-side and query-side calls (as the official calculate_NCE_loss makes them, with
    our random-layer indices), PatchNCE per layer, and the backward of the mean over layers."""
    import torch

    from qsattn import official

    k = [f.clone().requires_grad_(True) for f in feats_k]
    q = [f.clone().requires_grad_(True) for f in feats_q]
    sorted_ids: list = []
    with official.on_device(device), _sorts_recorded(sorted_ids):
        if qs:
            pool_k, ids, attn = ref_F(k, n, ids_random[:3] + [None, None], None)
        else:
            pool_k, ids = ref_F(k, n, [i.cpu().numpy() for i in ids_random])
            attn = None
    with official.on_device(device):
        pool_q = ref_F(q, n, ids, attn)[0] if qs else ref_F(q, n, ids)[0]
    per_patch = [crit(a, b) for a, b in zip(pool_q, pool_k)]
    means = [p.mean() for p in per_patch]
    (sum(means, 0.0) / len(means)).backward()
    return dict(pool_k=pool_k, pool_q=pool_q, ids=ids, attn=attn, sorted=sorted_ids, per_patch=per_patch,
                means=means, grad_F={name: p.grad for name, p in ref_F.named_parameters()},
                grad_feats=[t.grad for t in k + q])


# --- G and D -------------------------------------------------------------------------------------------

def check_networks(table: Table, repos: dict, device, inputs=None) -> None:
    import torch

    from qsattn.engine.config import resolve
    from baselines.networks import build_discriminator, build_generator

    net = repos.get("qsattn", repos.get("cut")).modules
    net = net.get("networks_global") or net["networks"]
    gpu = [0] if device.type == "cuda" else []
    for px, seed, batch, _ in inputs or (INPUTS[0], INPUTS[1], INPUTS[6], INPUTS[7]):
        where = f"{px}px seed {seed} batch {batch}"
        cfg = resolve({"method": "cut", "crop_size": px, "load_size": px})
        torch.manual_seed(seed)
        opt = official_opt(cfg, device)
        ref_G = net.define_G(3, 3, cfg.ngf, cfg.netG, cfg.normG, False, cfg.init_type, cfg.init_gain,
                             cfg.no_antialias, cfg.no_antialias_up, gpu, opt).to(device)
        ref_D = net.define_D(3, cfg.ndf, "basic", cfg.n_layers_D, cfg.normD, cfg.init_type, cfg.init_gain,
                             cfg.no_antialias, gpu, opt).to(device)
        G, D = build_generator(cfg).to(device), build_discriminator(cfg).to(device)
        G.load_state_dict(_strip(ref_G.state_dict()), strict=True)
        D.load_state_dict(_strip(ref_D.state_dict()), strict=True)
        x = _images(torch.Generator().manual_seed(2000 + seed), batch, px, device)
        with torch.no_grad():
            table.compare("G output", "-", G(x), ref_G(x), where)
            for ours, ref in zip(G.encode(x, cfg.nce_layers), ref_G(x, list(cfg.nce_layers), encode_only=True)):
                table.compare("G encoder features", "-", ours, ref, where)
            table.compare("D output", "-", D(x), ref_D(x), where)


# --- one training step ---------------------------------------------------------------------------------

class _DrawnLikeOurs:
    """Wraps the official netF so that its key-side calls get the random-layer indices our sampler
    draws (torch.randperm, in our order) instead of CUT's np.random.permutation."""

    def __init__(self, net, n_random: int, num_patches: int):
        self.net, self.n_random, self.num_patches = net, n_random, num_patches

    def __getattr__(self, name):
        return getattr(self.net, name)

    def __call__(self, feats, num_patches, patch_ids=None, *rest):
        import torch

        if patch_ids is None:
            patch_ids = [torch.randperm(f.shape[2] * f.shape[3], device=f.device)[: min(num_patches, f.shape[2] * f.shape[3])]
                         for f in feats[: self.n_random]] + [None] * (len(feats) - self.n_random)
            if self.n_random == len(feats):
                patch_ids = [p.cpu().numpy() for p in patch_ids]
        return self.net(feats, num_patches, patch_ids, *rest)


def check_steps(table: Table, repos: dict, device, px: int = 64, small: bool = False) -> None:
    import numpy as np
    import torch

    from qsattn import official
    from qsattn.engine.config import resolve
    from baselines.model import train_step
    from qsattn.state import create_state

    for method, (kind, mode) in STEP_METHODS.items():
        if kind not in repos:
            continue
        where = f"{method} {px}px"
        # torch's default Adam (the official one): a for-loop on a CPU, foreach on CUDA
        size = {"ngf": 16, "ndf": 16, "netF_nc": 64, "num_patches": 64} if small else {}  # C = num_patches
        cfg = resolve({"method": method, "crop_size": px, "load_size": px, **size,
                       "adam_impl": "foreach" if device.type == "cuda" else "plain"})
        extra = {"CUT_mode": mode} if kind == "cut" else {"QS_mode": mode}
        opt = official_opt(cfg, device, **extra)
        model_cls = repos[kind].modules["cut_model"].CUTModel if kind == "cut" else repos[kind].modules["qs_model"].QSModel
        g = torch.Generator().manual_seed(3000)
        data = {"A": _images(g, 1, px, device), "B": _images(g, 1, px, device), "A_paths": ["a"], "B_paths": ["b"]}
        torch.manual_seed(0)
        np.random.seed(0)
        with official.on_device(device):
            model = model_cls(opt)
            torch.backends.cudnn.benchmark = False  # BaseModel.__init__ switches it on (non-deterministic)
            model.netF = _DrawnLikeOurs(model.netF, 5 if kind == "cut" else 3, cfg.num_patches)
            if kind == "cut":
                model.data_dependent_initialize(data)
            else:  # QS-Attn's divides the batch by len(gpu_ids), zero on a CPU: one "device" for that call
                model.set_input(data)
                model.opt.gpu_ids = opt.gpu_ids or [-1]
                model.data_dependent_initialize()
                model.opt.gpu_ids = opt.gpu_ids
        state = create_state(cfg, device)
        for name, net in (("G", model.netG), ("D", model.netD), ("F", model.netF.net)):
            state.modules()[name].load_state_dict(_strip(net.state_dict()), strict=True)
        # the same draws: our step draws the flip (FastCUT) with torch.rand, then the patch indices
        torch.manual_seed(1)
        ours = train_step(state, data["A"], data["B"])
        torch.manual_seed(1)
        flip = bool(cfg.flip_equivariance and torch.rand(()).item() < 0.5)
        with official.on_device(device), _np_random_fixed(0.0 if flip else 1.0):
            model.set_input(data)
            model.optimize_parameters()
        for key, name in (("G_GAN", "loss_G_GAN"), ("NCE", "loss_NCE"), ("NCE_Y", "loss_NCE_Y"), ("G", "loss_G"),
                          ("D", "loss_D"), ("D_fake", "loss_D_fake"), ("D_real", "loss_D_real")):
            if key in ours and hasattr(model, name):
                ref = getattr(model, name)
                table.compare(f"step loss {key}", method, ours[key], torch.as_tensor(ref).detach(), where)
        for name, net in (("G", model.netG), ("D", model.netD), ("F", model.netF.net)):
            ref_params = dict(net.named_parameters())
            for key, p in state.modules()[name].named_parameters():
                ref_p = ref_params[key] if key in ref_params else ref_params["module." + key]
                table.compare(f"step grad {name}", method, p.grad, ref_p.grad, f"{where} {key}")
                table.compare(f"step weights {name} after Adam", method, p, ref_p, f"{where} {key}")


@contextlib.contextmanager
def _np_random_fixed(value: float):
    """FastCUT's official flip coin is np.random.random() < 0.5: return the value that gives our coin."""
    import numpy as np

    original = np.random.random
    np.random.random = lambda *a, **k: value
    try:
        yield
    finally:
        np.random.random = original


# --- the command ---------------------------------------------------------------------------------------

def add_arguments(parser) -> None:
    parser.add_argument("--official", required=True, metavar="DIR",
                        help="checkout of sapphire497/query-selected-attention (git clone "
                             "https://github.com/sapphire497/query-selected-attention)")
    parser.add_argument("--cut", metavar="DIR", help="checkout of taesungp/contrastive-unpaired-translation "
                        "(git clone https://github.com/taesungp/contrastive-unpaired-translation): mode none, "
                        "the CUT and FastCUT steps")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where both sides run")
    parser.add_argument("--impl", default="naive", choices=("naive", "chunked", "both"),
                        help="which sampler implementation(s) to check (default: naive, the faithful one)")
    parser.add_argument("--parts", default="sampler,networks,step", help="comma list of sampler, networks, step")
    parser.add_argument("--quick", action="store_true", help="two inputs (64 px) instead of eight for the sampler "
                        "and four for the networks; the steps with ngf=ndf=16, netF_nc=num_patches=64")


def run(args) -> int:
    import torch

    from qsattn import official

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is visible to torch here; use --device cpu")
    repos = {"qsattn": official.load(args.official, "qsattn")}
    if args.cut:
        repos["cut"] = official.load(args.cut, "cut")
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    unknown = parts - {"sampler", "networks", "step"}
    if unknown:
        raise UserError(f"--parts: unknown {', '.join(sorted(unknown))} (sampler, networks, step)")
    impls = ("naive", "chunked") if args.impl == "both" else (args.impl,)
    table = Table()
    started = time.perf_counter()
    with _deterministic(device):
        if "sampler" in parts:
            check_sampler(table, repos, device, impls, INPUTS[:2] if args.quick else INPUTS)
        if "networks" in parts:
            check_networks(table, repos, device, INPUTS[:2] if args.quick else None)
        if "step" in parts:
            check_steps(table, repos, device, small=args.quick)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()
    print(f"parity: this project against the official code, run here ({where}, torch {torch.__version__})")
    print("official: " + ", ".join(f"{official.REPOS[k][0]} {c.path} @ {c.commit}" for k, c in repos.items()))
    if "cut" not in repos:
        print("(no --cut: mode none and the CUT and FastCUT steps are not checked)")
    print(table.render())
    failures = table.failures()
    print(f"{failures} failure{'s' if failures != 1 else ''} in {len(table.rows)} rows "
          f"({time.perf_counter() - started:.0f} s)")
    return 1 if failures else 0


@contextlib.contextmanager
def _deterministic(device):
    """Deterministic kernels on CUDA (cuDNN's algorithm choice, no atomics), restored afterwards."""
    import os

    import torch

    if device.type != "cuda":
        yield
        return
    saved = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
             torch.are_deterministic_algorithms_enabled(), os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[0], saved[1]
        torch.use_deterministic_algorithms(saved[2])
        if saved[3] is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)


def _cpu_name() -> str:
    import platform

    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
