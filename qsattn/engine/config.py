"""One typed config for a run: every default visible here, and printed with each run.

Resolution order: these defaults <- the method's preset (`method: cut`) <- the YAML file <- `key=value`
overrides on the command line. Unknown keys and bad values are errors that say what is valid.
Defaults are those of the official QS-Attn / CUT code (options/base_options.py, train_options.py,
models/qs_model.py, models/cut_model.py).

Each key carries its metadata (`key(...)`): a one-line meaning, its section, the values it admits
(choices or a numeric range, checked by `validate`) and its role, which decides what a change means:

  experiment  changes what is computed: part of a sweep cell's id; a run resumes only with the same value
  resumable   part of the cell id, but a run may resume under another value (a cap, the same maths)
  runtime     where and how a run is recorded or executed (paths, logging, devices, the speed options
              that keep the maths): not in the cell id, free to change on resume
  evaluation  how a finished run is scored: not in the cell id (re-score without retraining)
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from eval.weights import FID_MODES  # the metric declares its protocols
from qsattn.errors import UserError, did_you_mean
from qsattn.presets import METHODS

ROLES = ("experiment", "resumable", "runtime", "evaluation")


class ConfigError(UserError, ValueError):
    """A config key or value the user must fix; the message says how."""


def key(default: Any, help: str, *, section: str, role: str = "experiment", choices: tuple = (),
        ge: float | None = None, gt: float | None = None, le: float | None = None, lt: float | None = None):
    """A config field with its metadata (see the module docstring)."""
    assert role in ROLES, role
    return field(default=default, metadata={"help": help, "section": section, "role": role, "choices": tuple(choices),
                                            "ge": ge, "gt": gt, "le": le, "lt": lt})


def _section(name: str):
    return functools.partial(key, section=name)


_what, _net, _loss, _sampler = _section("what to run"), _section("networks"), _section("losses"), _section("patch sampler F")
_optim, _data, _engine = _section("optimisation"), _section("data"), _section("engine")
_speed, _eval = _section("speed"), _section("evaluation")


@dataclass
class Config:
    # --- what to run -------------------------------------------------------------------------
    method: str = _what("qsattn-global", "the method preset (`python -m qsattn methods`); it sets the keys below")
    name: str = _what("", "run name; default <method>-<dataset>-s<seed>", role="runtime")
    dataset: str = _what("synthetic", "a folder under data_root with trainA/trainB/testA/testB")
    data_root: str = _what("datasets", "folder that holds the datasets", role="runtime")
    run_root: str = _what("runs", "one folder per run: <run_root>/<name>/", role="runtime")
    seed: int = _what(0, "seed of every random draw (init, data order, patches)", ge=0)

    # --- networks (official defaults) ----------------------------------------------------------
    netG: str = _net("resnet_9blocks", "generator architecture", choices=("resnet_9blocks", "resnet_6blocks", "resnet_4blocks"))
    ngf: int = _net(64, "generator filters in the first conv layer", ge=1)
    ndf: int = _net(64, "discriminator filters in the first conv layer", ge=1)
    n_layers_D: int = _net(3, "PatchGAN discriminator layers (3: the 70x70 PatchGAN)", ge=1)
    normG: str = _net("instance", "generator normalisation", choices=("instance", "batch", "none"))
    normD: str = _net("instance", "discriminator normalisation", choices=("instance", "batch", "none"))
    init_type: str = _net("xavier", "weight initialisation", choices=("normal", "xavier", "kaiming", "orthogonal"))
    init_gain: float = _net(0.02, "scale of the weight initialisation", gt=0)
    no_antialias: bool = _net(False, "plain strided convs instead of anti-aliased downsampling")
    no_antialias_up: bool = _net(False, "plain transposed convs instead of anti-aliased upsampling")
    input_nc: int = _net(3, "input image channels", ge=1)
    output_nc: int = _net(3, "output image channels", ge=1)

    # --- losses ----------------------------------------------------------------------------------
    gan_mode: str = _loss("lsgan", "GAN objective", choices=("lsgan", "vanilla", "nonsaturating"))
    lambda_GAN: float = _loss(1.0, "weight of the GAN loss (0: no discriminator at all)", ge=0)
    lambda_NCE: float = _loss(1.0, "weight of the PatchNCE loss", ge=0)
    nce_idt: bool = _loss(True, "also PatchNCE on (real_B, G(real_B)), the identity term")
    nce_T: float = _loss(0.07, "PatchNCE temperature", gt=0)
    nce_layers: tuple[int, ...] = _loss((0, 4, 8, 12, 16), "generator layers whose features PatchNCE compares")
    flip_equivariance: bool = _loss(False, "FastCUT: flip the input at random and the query features back")

    # --- patch sampler F (QS-Attn lives here) -------------------------------------------------
    netF_nc: int = _sampler(256, "output size of the projection head's MLP", ge=1)
    num_patches: int = _sampler(256, "patches (queries) per image and layer", ge=1)
    qs_mode: str = _sampler("global", "none (CUT's random patches) | global | local | global+local attention",
                            choices=("none", "global", "local", "global+local"))
    qs_layers: tuple[int, ...] = _sampler((3, 4), "positions in nce_layers that use QS (official: index >= 3)")
    qs_selection: str = _sampler("entropy", "entropy (QS-Attn) | random (ablation: random rows, still routed)",
                                 choices=("entropy", "random"))
    local_window: int = _sampler(7, "side of the local attention window (odd)", ge=1)
    local_layout: str = _sampler("official", "official (bit-for-bit the released code, defects kept) | corrected",
                                 choices=("official", "corrected"))
    qs_impl: str = _sampler("naive", "naive (the faithful formula) | chunked (same selection, less memory)",
                            role="resumable", choices=("naive", "chunked"))
    qs_chunk: int = _sampler(1024, "rows per chunk with qs_impl=chunked", role="resumable", ge=1)

    # --- optimisation (official defaults) -------------------------------------------------------
    lr: float = _optim(0.0002, "Adam learning rate", gt=0)
    beta1: float = _optim(0.5, "Adam beta1", ge=0, lt=1)
    beta2: float = _optim(0.999, "Adam beta2", ge=0, lt=1)
    batch_size: int = _optim(1, "images per step", ge=1)
    n_epochs: int = _optim(200, "epochs at the initial learning rate", ge=0)
    n_epochs_decay: int = _optim(200, "epochs of linear decay to zero", ge=0)
    lr_policy: str = _optim("linear", "learning-rate schedule", choices=("linear",))
    max_steps: int = _optim(0, "stop after this many steps (0: the full schedule)", role="resumable", ge=0)
    max_images: int = _optim(0, "stop after this many training images (0: no cap)", role="resumable", ge=0)

    # --- data (official defaults) ----------------------------------------------------------------
    direction: str = _data("AtoB", "AtoB | BtoA (swap the domains)", choices=("AtoB", "BtoA"))
    preprocess: str = _data("resize_and_crop", "training-image preprocessing",
                            choices=("resize_and_crop", "crop", "scale_width", "scale_width_and_crop", "none"))
    load_size: int = _data(286, "resize to this size before cropping", ge=1)
    crop_size: int = _data(256, "training crop (and test size)", ge=1)
    no_flip: bool = _data(False, "no random horizontal flip")
    serial_batches: bool = _data(False, "B in order instead of drawn at random for each A")
    max_dataset_size: int = _data(0, "use only the first N images of each domain (0: all)", ge=0)
    skip_bad_images: bool = _data(False, "unreadable images: error (false) or skip and count (true)", role="resumable")
    num_workers: int = _data(0, "data-loader worker processes", role="runtime", ge=0)
    num_threads: int = _data(0, "torch CPU threads (0: torch's default); cores / cells when runs share a CPU",
                             role="runtime", ge=0)

    # --- engine ------------------------------------------------------------------------------------
    device: str = _engine("auto", "auto | cpu | cuda | cuda:N", role="runtime")
    deterministic: bool = _engine(False, "torch.use_deterministic_algorithms: bit-exact resume on CPU")
    log_every: int = _engine(50, "steps between loss readouts (losses stay on the device in between)",
                             role="runtime", ge=1)
    sample_every: int = _engine(500, "steps between sample grids (0: none)", role="runtime", ge=0)
    checkpoint_every: int = _engine(500, "steps between checkpoints (also at every epoch end; 0: epoch ends only)",
                                    role="runtime", ge=0)
    keep_epoch_checkpoints: int = _engine(0, "also keep every K-th epoch's checkpoint, for best-vs-last (0: off)",
                                          role="runtime", ge=0)
    tracking_uri: str = _engine("", "MLflow store; default $MLFLOW_TRACKING_URI or sqlite:///mlruns.db; off: none",
                                role="runtime")
    experiment: str = _engine("qsattn", "MLflow experiment name", role="runtime")

    # --- speed (docs/performance.md): labelled identical | rounding | changes numerics ---------------------
    # Only "identical" options are on by default: GAN training amplifies rounding (a 1e-7 difference at
    # step 1 is O(1) in the losses by step 20). The maths-keeping ones are runtime keys.
    key_reuse: str = _speed("auto", "key-side NCE features of real_A, real_B from G's forward pass instead of a "
                            "second encoder pass: auto (where identical: CUT, FastCUT) | always (rounding with QS-Attn, "
                            "whose keys carry gradients) | never", role="runtime", choices=("auto", "always", "never"))
    adam_impl: str = _speed("foreach", "Adam kernels: plain | foreach (identical) | fused (rounding)",
                            role="runtime", choices=("plain", "foreach", "fused"))
    compile: str = _speed("off", "torch.compile of the step's pieces: off | default | reduce-overhead (rounding)",
                          role="runtime", choices=("off", "default", "reduce-overhead"))
    cudnn_benchmark: bool = _speed(False, "cuDNN times its conv algorithms (rounding; off when deterministic)",
                                   role="runtime")
    pin_memory: bool = _speed(True, "page-locked host batches, non-blocking copies to the GPU (identical)",
                              role="runtime")
    flush_denormal: bool = _speed(False, "CPU: the G/F backward with subnormal floats flushed to zero (FTZ/DAZ); "
                                  "rounding below 2^-126, much faster for QS-Attn local", role="runtime")
    matmul_tf32: bool = _speed(False, "TF32 matmuls on the GPU (CHANGES NUMERICS)")
    amp: str = _speed("off", "off | bf16 autocast of forwards and losses (CHANGES NUMERICS)", choices=("off", "bf16"))

    # --- evaluation after training (eval/) ----------------------------------------------------------
    eval_metrics: str = _eval("auto", "comma list, or auto: synthetic_gt on the synthetic set, fid,kid elsewhere "
                              "(+ cityscapes_seg on cityscapes)", role="evaluation")
    fid_modes: str = _eval("clean,legacy_pytorch", "FID/KID protocols scored for every checkpoint, comma list: clean "
                           "(clean-fid's) and/or legacy_pytorch (pytorch-fid's, the papers')", role="evaluation")
    eval_checkpoints: str = _eval("all", "checkpoints scored: all (the final one and every kept epoch checkpoint) | "
                                  "last (the final one only)", role="evaluation", choices=("all", "last"))
    inception_weights: str = _eval("", "local Inception files offline, MODE=PATH comma list (a bare PATH with one "
                                   "mode); else clean-fid's cache or download; each checked against its pinned sha256",
                                   role="evaluation")
    drn_weights: str = _eval("", "DRN Cityscapes weights for cityscapes_seg (fyu/drn: drn_d_22_cityscapes.pth, "
                             "drn-d-105_ms_cityscapes.pth)", role="evaluation")
    drn_arch: str = _eval("drn_d_22", "DRN architecture of drn_weights", role="evaluation",
                          choices=("drn_d_22", "drn_d_105"))
    drn_sha256: str = _eval("", "expected sha256 of drn_weights (fyu/drn publishes none; empty: recorded, not "
                            "checked)", role="evaluation")

    def run_name(self) -> str:
        return self.name or f"{self.method}-{self.dataset}-s{self.seed}"

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def dumps(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)


FIELDS = {f.name: f for f in fields(Config)}
FIELD_TYPES = {name: f.type for name, f in FIELDS.items()}
CHOICES: dict[str, tuple[str, ...]] = {name: f.metadata["choices"] for name, f in FIELDS.items() if f.metadata["choices"]}


def keys_with_role(*roles: str) -> frozenset[str]:
    return frozenset(name for name, f in FIELDS.items() if f.metadata["role"] in roles)


# Left out of a sweep cell's id: where and how a run is recorded, and how it is scored.
NOT_IN_CELL_ID = keys_with_role("runtime", "evaluation")
# Keys that another key replaced, read as it: a run folder's config.yaml or a grid written before then still
# loads, and the old key in a checkpoint's saved config never blocks a resume.
RETIRED_KEYS = {"fid_mode": "fid_modes"}   # one FID mode -> the comma list of modes (one is a valid list)
# May differ between a run and its resumed continuation; any other difference is an error.
RESUMABLE_KEYS = keys_with_role("resumable", "runtime", "evaluation") | frozenset(RETIRED_KEYS)


# --- the keys described from their metadata (train --help, methods NAME, docs/config.md) -------------

def show(value: Any) -> str:
    """A value as it is written on the command line (key=value)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, list)):
        return ",".join(map(str, value))
    return str(value)


def admits(name: str) -> str:
    """What the key accepts, from its metadata: its choices or its numeric range ('' if anything of its type)."""
    meta = FIELDS[name].metadata
    if meta["choices"]:
        return " | ".join(meta["choices"])
    bounds = [f"{sign} {meta[b]:g}" for b, sign, _ in _BOUNDS if meta[b] is not None]
    if name == "device":
        return DEVICE_FORMS
    if name == "method":
        return " | ".join(METHODS)
    kind = {"bool": "true | false", "str": "text", "int": "an integer", "float": "a number"}.get(FIELD_TYPES[name],
                                                                                            "integers, comma-separated")
    return ", ".join(bounds) or kind


def sections() -> dict[str, list[str]]:
    """Section -> its keys, in the order they are declared."""
    out: dict[str, list[str]] = {}
    for name, f in FIELDS.items():
        out.setdefault(f.metadata["section"], []).append(name)
    return out


def describe_keys(cfg: Config | None = None, marked: frozenset[str] = frozenset()) -> str:
    """Every key by section, `key=value  meaning  (range)`: the defaults, or a resolved config's values
    with the keys in `marked` flagged `*` (those a method's preset sets)."""
    cfg = cfg or Config()
    rows = {name: (("*" if name in marked else " ") + f"{name}={show(getattr(cfg, name))}") for name in FIELDS}
    width = min(max(map(len, rows.values())), 36)
    lines = []
    for section, names in sections().items():
        lines.append(f"{section}:")
        for name in names:
            meta = FIELDS[name].metadata
            if meta["choices"]:  # named unless the meaning already lists them
                extra = "" if all(c in meta["help"] for c in meta["choices"]) else f"  (one of {admits(name)})"
            else:
                extra = f"  ({admits(name)})" if any(meta[b] is not None for b, _, _ in _BOUNDS) else ""
            lines.append(f" {rows[name]:<{width}}  {meta['help']}{extra}")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def markdown_reference() -> str:
    """docs/config.md: every key with its section, default, meaning, role and range, and each method's preset.
    Generated (`python -m qsattn methods --markdown > docs/config.md`); a test keeps the file in sync."""

    def cell(text: str) -> str:
        return str(text).replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")

    out = ["# Config keys", "",
           "<!-- generated by `python -m qsattn methods --markdown > docs/config.md` from the metadata in",
           "     qsattn/engine/config.py; tests/test_config.py fails when this file is out of date -->", "",
           "A run is one config: these defaults, then the method's preset (`method=...`, below), then the YAML",
           "file (`--config`), then `key=value` on the command line. Unknown keys and values outside a key's",
           "range are one error that names the closest valid value. `python -m qsattn train --help` lists the",
           "same keys; `python -m qsattn methods NAME` shows a method's values.", "",
           "The role decides what a change means:", "",
           "| role | in the sweep cell id | may change on resume | what it is |", "|---|---|---|---|",
           "| experiment | yes | no | changes what is computed |",
           "| resumable | yes | yes | a cap or the same maths computed another way |",
           "| runtime | no | yes | where and how a run is recorded or executed |",
           "| evaluation | no | yes | how a finished run is scored |", ""]
    for section, names in sections().items():
        out += [f"## {section}", "", "| key | default | meaning | role | admits |", "|---|---|---|---|---|"]
        for name in names:
            meta = FIELDS[name].metadata
            default = show(getattr(Config(), name))
            out.append(f"| `{name}` | {f'`{cell(default)}`' if default else '(empty)'} | {cell(meta['help'])} "
                       f"| {meta['role']} | {cell(admits(name))} |")
        out.append("")
    out += ["## Methods", "", "Each method is a preset: the keys it sets over the defaults above.", "",
            "| method | keys it sets |", "|---|---|"]
    for method, preset_keys in METHODS.items():
        changed = [f"`{k}={cell(show(v))}`" for k, v in preset_keys.items() if getattr(Config(), k) != v]
        out.append(f"| `{method}` | {', '.join(changed) or '(the defaults)'} |")
    return "\n".join(out) + "\n"


def parse_bool(value: Any, key: str = "value") -> bool:
    """Strict booleans: the official `type=bool` turned any string, even 'False', into True."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{key}: expected a boolean (true/false), got {value!r}")


def coerce(key: str, value: Any) -> Any:
    """A value (from YAML or the command line) as the key's type; ConfigError if it is not one."""
    kind = FIELD_TYPES[key]
    try:
        if kind == "bool":
            return parse_bool(value, key)
        if kind == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if kind == "float":
            return float(value)
        if kind == "str":
            return str(value)
        if kind.startswith("tuple"):
            items = value.split(",") if isinstance(value, str) else list(value)
            return tuple(int(v) for v in items)
    except ConfigError:
        raise
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"{key}: expected {kind}, got {value!r}") from None
    raise AssertionError(f"unhandled type {kind} for {key}")


def unknown_key_error(key: str, valid: list[str], what: str = "config key") -> ConfigError:
    return ConfigError(f"unknown {what} '{key}'.{did_you_mean(key, valid, n=3)} Valid keys are listed by "
                       "`python -m qsattn methods`.")


def apply(cfg: Config, updates: dict[str, Any]) -> Config:
    """Return a copy of cfg with updates applied, each key validated and coerced."""
    valid = list(FIELD_TYPES)
    clean = {}
    for key, value in updates.items():
        key = RETIRED_KEYS.get(key, key)
        if key not in FIELD_TYPES:
            raise unknown_key_error(key, valid)
        clean[key] = coerce(key, value)
    return dataclasses.replace(cfg, **clean)


_BOUNDS = (("ge", ">=", lambda v, b: v >= b), ("gt", ">", lambda v, b: v > b),
           ("le", "<=", lambda v, b: v <= b), ("lt", "<", lambda v, b: v < b))


def _check_field(name: str, value: Any) -> None:
    """The choices and numeric range that the key's metadata declares."""
    meta = FIELDS[name].metadata
    if meta["choices"] and value not in meta["choices"]:
        raise ConfigError(f"{name}: {value!r} is not one of {', '.join(meta['choices'])}."
                          f"{did_you_mean(value, meta['choices'])}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{name}: must be a finite number, got {value}")
    for bound, sign, holds in _BOUNDS:
        if meta[bound] is not None and not holds(value, meta[bound]):
            raise ConfigError(f"{name}: must be {sign} {meta[bound]:g}, got {value}")


def fid_modes(cfg: Config) -> tuple[str, ...]:
    return tuple(m.strip() for m in cfg.fid_modes.split(",") if m.strip())


DEVICE_FORMS = "auto, cpu, cuda or cuda:N (N = 0, 1, ...)"
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


def validate(cfg: Config) -> Config:
    """Every key against its metadata, then the rules between keys. What only the built network or the
    images can tell (layer counts, channel counts, image sizes) is checked when those exist, still before
    the first step (qsattn/engine/train.py, qsattn/data/unaligned.py)."""
    for name in FIELDS:
        _check_field(name, getattr(cfg, name))
    if not _DEVICE.fullmatch(cfg.device):
        gpu = "gpu" in cfg.device.lower() or "cuda" in cfg.device.lower()
        hint = " Did you mean 'cuda:0'?" if gpu else did_you_mean(cfg.device, ["auto", "cpu", "cuda"])
        raise ConfigError(f"device: {cfg.device!r} is not {DEVICE_FORMS}.{hint}")
    n_layers = len(cfg.nce_layers)
    if not n_layers or any(i < 0 for i in cfg.nce_layers):
        raise ConfigError(f"nce_layers: expected non-negative layer indices, got {list(cfg.nce_layers)}")
    if list(cfg.nce_layers) != sorted(set(cfg.nce_layers)):
        # the encoder returns features in network order, once each; qs_layers are positions in this list
        raise ConfigError(f"nce_layers: expected increasing layer indices without repeats, got "
                          f"{list(cfg.nce_layers)}; use {','.join(map(str, sorted(set(cfg.nce_layers))))}")
    bad = [i for i in cfg.qs_layers if not 0 <= i < n_layers]
    if cfg.qs_mode != "none" and bad:
        raise ConfigError(f"qs_layers: {bad} are not positions in nce_layers {list(cfg.nce_layers)} (0..{n_layers - 1})")
    if cfg.local_window % 2 != 1:
        raise ConfigError(f"local_window must be an odd positive size, got {cfg.local_window}")
    if cfg.key_reuse == "always" and cfg.normG == "batch":
        raise ConfigError("key_reuse=always needs per-image normalisation in G (normG=instance or none): with "
                          "normG=batch the forward's batch statistics differ from a key pass's; use key_reuse=auto")
    if cfg.n_epochs + cfg.n_epochs_decay == 0:
        raise ConfigError("n_epochs + n_epochs_decay must be at least 1")
    modes = fid_modes(cfg)
    bad_modes = [m for m in modes if m not in FID_MODES]
    if not modes or bad_modes or len(set(modes)) != len(modes):
        raise ConfigError(f"fid_modes: expected a comma list of {', '.join(FID_MODES)} without repeats, got "
                          f"{cfg.fid_modes!r}")
    if cfg.drn_sha256 and not re.fullmatch(r"[0-9a-f]{64}", cfg.drn_sha256):
        raise ConfigError(f"drn_sha256: expected 64 lowercase hex digits (sha256sum FILE), got {cfg.drn_sha256!r}")
    if cfg.preprocess in ("resize_and_crop", "scale_width_and_crop") and cfg.load_size < cfg.crop_size:
        raise ConfigError(f"load_size={cfg.load_size} is smaller than crop_size={cfg.crop_size}: preprocess="
                          f"{cfg.preprocess} resizes to load_size, then crops crop_size; set load_size >= "
                          f"crop_size (official: load_size=286 for crop_size=256)")
    return cfg


def split_key_value(item: str, what: str = "override", error: type[Exception] = ConfigError) -> tuple[str, str]:
    """'key=value' (a command-line override, --only, --set) -> (key, value), both stripped; else `error`."""
    if "=" not in item:
        raise error(f"{what} {item!r} is not of the form key=value")
    key, value = item.split("=", 1)
    return key.strip(), value.strip()


def parse_overrides(items: list[str]) -> dict[str, str]:
    return dict(split_key_value(item) for item in items)


def preset(method: str) -> dict:
    """The keys the method sets (a copy), or ConfigError naming the closest method."""
    if method not in METHODS:
        raise ConfigError(f"unknown method '{method}'.{did_you_mean(method, METHODS)} "
                          f"Valid methods: {', '.join(METHODS)}")
    return dict(METHODS[method])


def resolve(file_values: dict[str, Any] | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """defaults <- method preset <- file values <- overrides; validated."""
    merged = dict(file_values or {})
    merged.update(overrides or {})
    method = str(merged.get("method", Config.method))
    cfg = apply(Config(), preset(method))
    cfg = apply(cfg, merged)
    return validate(cfg)


def load(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config file (or none) and apply `key=value` overrides."""
    import yaml

    values: dict[str, Any] = {}
    if path is not None:
        text = Path(path).read_text()
        values = yaml.safe_load(text) or {}
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: expected a mapping of config keys, got {type(values).__name__}")
    return resolve(values, parse_overrides(overrides or []))
