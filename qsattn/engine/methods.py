"""Methods by name: each is a preset of `Config` keys over the shared CUT-family model.

CUT and FastCUT come from `baselines/`; the QS-Attn variants differ from CUT only in the patch
sampler (`qs_mode`). Ablations are further presets; any key can still be overridden from config.
"""
from __future__ import annotations

# The `methods` subcommand; the presets themselves are plain data in qsattn/presets.py.

from qsattn.engine.config import describe_keys, markdown_reference, preset, resolve
from qsattn.presets import METHODS

__all__ = ["METHODS", "preset", "add_arguments", "run"]


def add_arguments(parser) -> None:
    parser.add_argument("method", nargs="?", help="show every key of this method's resolved config")
    parser.add_argument("--json", action="store_true", help="the resolved config as JSON (with a method)")
    parser.add_argument("--markdown", action="store_true",
                        help="the reference of every key and method as Markdown (docs/config.md)")


def run(args) -> int:
    if args.markdown:
        print(markdown_reference(), end="")
        return 0
    if args.method:
        cfg = resolve({"method": args.method})
        if args.json:
            print(cfg.dumps())
            return 0
        print(f"{args.method}: every key by section (* set by the preset; key=value overrides any of them)\n")
        print(describe_keys(cfg, marked=frozenset(preset(args.method))), end="")
        return 0
    for name, keys in METHODS.items():
        print(f"{name:32s} {', '.join(f'{k}={v}' for k, v in keys.items())}")
    print("\n`python -m qsattn methods NAME` lists every key of NAME's resolved config, with its meaning.")
    return 0
