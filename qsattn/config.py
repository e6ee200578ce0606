"""One typed config for a run: every default visible here, and printed with each run.

Resolution order: these defaults <- the method's preset (`method: cut`) <- the YAML file <- `key=value`
overrides on the command line. Unknown keys and bad values are errors that say what is valid.
Defaults are those of the official QS-Attn / CUT code (options/base_options.py, train_options.py,
models/qs_model.py, models/cut_model.py).
"""
from __future__ import annotations

import dataclasses
import difflib
import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A config key or value the user must fix; the message says how."""


@dataclass
class Config:
    # --- what to run -------------------------------------------------------------------------
    method: str = "qsattn-global"     # see `python -m qsattn methods`; the preset sets the keys below
    name: str = ""                    # run name; default: "<method>-<dataset>-s<seed>"
    dataset: str = "synthetic"        # a folder under data_root with trainA/trainB/testA/testB
    data_root: str = "datasets"
    run_root: str = "runs"            # one folder per run: runs/<name>/
    seed: int = 0

    # --- networks (official defaults) ----------------------------------------------------------
    netG: str = "resnet_9blocks"      # resnet_9blocks | resnet_6blocks | resnet_4blocks
    ngf: int = 64
    ndf: int = 64
    n_layers_D: int = 3
    normG: str = "instance"           # instance | batch | none
    normD: str = "instance"
    init_type: str = "xavier"         # normal | xavier | kaiming | orthogonal
    init_gain: float = 0.02
    no_antialias: bool = False
    no_antialias_up: bool = False
    input_nc: int = 3
    output_nc: int = 3

    # --- losses ----------------------------------------------------------------------------------
    gan_mode: str = "lsgan"           # lsgan | vanilla | nonsaturating
    lambda_GAN: float = 1.0
    lambda_NCE: float = 1.0
    nce_idt: bool = True
    nce_T: float = 0.07
    nce_layers: tuple[int, ...] = (0, 4, 8, 12, 16)
    flip_equivariance: bool = False

    # --- patch sampler F (QS-Attn lives here) -------------------------------------------------
    netF_nc: int = 256
    num_patches: int = 256
    qs_mode: str = "global"           # none (CUT's random sampling) | global | local | global+local
    qs_layers: tuple[int, ...] = (3, 4)  # positions in nce_layers that use QS (official: index >= 3)
    qs_selection: str = "entropy"     # entropy (QS-Attn) | random (ablation: random rows, still routed)
    local_window: int = 7
    local_layout: str = "official"    # official (bit-for-bit the released code) | corrected
    qs_impl: str = "naive"            # naive (the faithful formula) | chunked (same result, less memory)
    qs_chunk: int = 1024              # rows per chunk in qs_impl=chunked

    # --- optimisation (official defaults) -------------------------------------------------------
    lr: float = 0.0002
    beta1: float = 0.5
    beta2: float = 0.999
    batch_size: int = 1
    n_epochs: int = 200               # epochs at the initial learning rate
    n_epochs_decay: int = 200         # epochs of linear decay to zero
    lr_policy: str = "linear"
    max_steps: int = 0                # stop after this many steps (0: the full schedule)
    max_images: int = 0               # stop after this many training images (0: no cap)

    # --- data (official defaults) ----------------------------------------------------------------
    direction: str = "AtoB"           # AtoB | BtoA
    preprocess: str = "resize_and_crop"  # resize_and_crop | crop | scale_width | scale_width_and_crop | none
    load_size: int = 286
    crop_size: int = 256
    no_flip: bool = False
    serial_batches: bool = False      # B in order instead of drawn at random for each A
    max_dataset_size: int = 0         # 0: no cap
    skip_bad_images: bool = False     # unreadable images: error (default) or skip and count
    num_workers: int = 0
    num_threads: int = 0              # torch CPU threads (0: torch's default). Set cores / cells when
                                      # several runs share a CPU: oversubscribed threads run 10x slower

    # --- engine ------------------------------------------------------------------------------------
    device: str = "auto"              # auto | cpu | cuda | cuda:N
    deterministic: bool = False       # torch.use_deterministic_algorithms; bit-exact resume on CPU
    log_every: int = 50               # steps between loss readouts (losses stay on device in between)
    sample_every: int = 500           # steps between sample grids
    checkpoint_every: int = 500       # steps between checkpoints (and at every epoch end)
    keep_epoch_checkpoints: int = 0   # also keep a checkpoint every K epochs, for best-vs-last FID (0: off)
    tracking_uri: str = ""            # MLflow store; default: $MLFLOW_TRACKING_URI or sqlite:///mlruns.db; off: none
    experiment: str = "qsattn"        # MLflow experiment name

    # --- speed (README, "Faster steps") ---------------------------------------------------------------
    # "identical": bit-identical losses and weights to the plain step over 50 steps (tests/test_fast_step.py
    # on CPU, tests/test_gpu.py on CUDA); only those are on by default. "rounding": the same maths with
    # float32 rounding in another order; GAN training amplifies that (a 1e-7 difference at step 1 is O(1)
    # in the losses by step 20), so these are off by default. "changes numerics": lower precision.
    adam_impl: str = "foreach"        # plain (a loop over parameters) | foreach (identical; torch's own CUDA
                                      # default) | fused (one kernel; rounding). Checkpoints resume across them
    compile: str = "off"              # off | default | reduce-overhead (adds CUDA graphs on a GPU): torch.compile
                                      # of the G forward, D loss and G/F loss; rounding. Batches of another shape
                                      # than the first, and pieces that fail to compile, run eager (a warning)
    cudnn_benchmark: bool = False     # cuDNN times its conv algorithms (GPU); rounding. Forced off when deterministic
    pin_memory: bool = True           # page-locked host batches, non-blocking copies to the GPU; identical
    matmul_tf32: bool = False         # CHANGES NUMERICS: TF32 matmuls on the GPU (10-bit mantissa)
    amp: str = "off"                  # off | bf16. CHANGES NUMERICS: bfloat16 autocast of forwards and losses

    # --- evaluation after training (eval/) ----------------------------------------------------------
    eval_metrics: str = "auto"        # comma list, or auto: synthetic_gt on the synthetic set, fid,kid
                                      # elsewhere, plus cityscapes_seg on cityscapes
    fid_mode: str = "clean"           # clean | legacy_pytorch (the papers' pytorch-fid protocol)
    inception_weights: str = ""       # path to the Inception file offline (else clean-fid downloads it)
    drn_weights: str = ""             # drn_d_22_cityscapes.pth (or d_105) for cityscapes_seg
    drn_arch: str = "drn_d_22"        # drn_d_22 | drn_d_105

    def run_name(self) -> str:
        return self.name or f"{self.method}-{self.dataset}-s{self.seed}"

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def dumps(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)


# Speed options that keep the maths (labelled identical or rounding above): a run may resume under other
# values, and a sweep cell is the same experiment whatever they are. amp and matmul_tf32 are not here.
MATHS_KEEPING_SPEED_KEYS = frozenset({"adam_impl", "compile", "cudnn_benchmark", "pin_memory"})

CHOICES: dict[str, tuple[str, ...]] = {
    "netG": ("resnet_9blocks", "resnet_6blocks", "resnet_4blocks"),
    "normG": ("instance", "batch", "none"),
    "normD": ("instance", "batch", "none"),
    "init_type": ("normal", "xavier", "kaiming", "orthogonal"),
    "gan_mode": ("lsgan", "vanilla", "nonsaturating"),
    "qs_mode": ("none", "global", "local", "global+local"),
    "qs_selection": ("entropy", "random"),
    "local_layout": ("official", "corrected"),
    "qs_impl": ("naive", "chunked"),
    "fid_mode": ("clean", "legacy_pytorch"),
    "drn_arch": ("drn_d_22", "drn_d_105"),
    "adam_impl": ("plain", "foreach", "fused"),
    "compile": ("off", "default", "reduce-overhead"),
    "amp": ("off", "bf16"),
    "lr_policy": ("linear",),
    "direction": ("AtoB", "BtoA"),
    "preprocess": ("resize_and_crop", "crop", "scale_width", "scale_width_and_crop", "none"),
}

FIELD_TYPES = {f.name: f.type for f in fields(Config)}


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


def _coerce(key: str, value: Any) -> Any:
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
    except (TypeError, ValueError):
        raise ConfigError(f"{key}: expected {kind}, got {value!r}") from None
    raise AssertionError(f"unhandled type {kind} for {key}")


def unknown_key_error(key: str, valid: list[str], what: str = "config key") -> ConfigError:
    close = difflib.get_close_matches(key, valid, n=3)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return ConfigError(f"unknown {what} '{key}'.{hint} Valid keys are listed by `python -m qsattn methods`.")


def apply(cfg: Config, updates: dict[str, Any]) -> Config:
    """Return a copy of cfg with updates applied, each key validated and coerced."""
    valid = list(FIELD_TYPES)
    clean = {}
    for key, value in updates.items():
        if key not in FIELD_TYPES:
            raise unknown_key_error(key, valid)
        clean[key] = _coerce(key, value)
    return dataclasses.replace(cfg, **clean)


def validate(cfg: Config) -> Config:
    for key, allowed in CHOICES.items():
        if getattr(cfg, key) not in allowed:
            raise ConfigError(f"{key}: {getattr(cfg, key)!r} is not one of {', '.join(allowed)}")
    n_layers = len(cfg.nce_layers)
    bad = [i for i in cfg.qs_layers if not 0 <= i < n_layers]
    if cfg.qs_mode != "none" and bad:
        raise ConfigError(f"qs_layers: {bad} are not positions in nce_layers {list(cfg.nce_layers)} (0..{n_layers - 1})")
    if cfg.local_window % 2 != 1 or cfg.local_window < 1:
        raise ConfigError(f"local_window must be an odd positive size, got {cfg.local_window}")
    for key in ("num_patches", "batch_size", "crop_size", "load_size", "ngf", "ndf", "netF_nc", "qs_chunk", "log_every"):
        if getattr(cfg, key) <= 0:
            raise ConfigError(f"{key} must be positive, got {getattr(cfg, key)}")
    if cfg.n_epochs < 0 or cfg.n_epochs_decay < 0 or cfg.n_epochs + cfg.n_epochs_decay == 0:
        raise ConfigError("n_epochs + n_epochs_decay must be at least 1")
    return cfg


def parse_overrides(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, value = item.split("=", 1)
        out[key.strip()] = value.strip()
    return out


def resolve(file_values: dict[str, Any] | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """defaults <- method preset <- file values <- overrides; validated."""
    from qsattn.methods import preset

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
