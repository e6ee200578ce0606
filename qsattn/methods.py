"""Methods by name: each is a preset of `Config` keys over the shared CUT-family model.

CUT and FastCUT come from `baselines/`; the QS-Attn variants differ from CUT only in the patch
sampler (`qs_mode`). Ablations are further presets; any key can still be overridden from config.
"""
from __future__ import annotations

from baselines.cut import PRESET as CUT
from baselines.fastcut import PRESET as FASTCUT

# QS-Attn (Hu et al., CVPR 2022): CUT's objective and schedule, query-selected sampling on the last
# two NCE layers (official models/qs_model.py, --QS_mode global | local | local_global).
_QS = dict(CUT, qs_selection="entropy", qs_layers=(3, 4))

METHODS: dict[str, dict] = {
    "cut": dict(CUT),
    "fastcut": dict(FASTCUT),
    "qsattn-global": dict(_QS, qs_mode="global"),
    "qsattn-local": dict(_QS, qs_mode="local"),
    "qsattn-global-local": dict(_QS, qs_mode="global+local"),
    # Ablations (paper Sec. 4.3): random instead of entropy-based query selection, routing kept.
    "qsattn-global-random": dict(_QS, qs_mode="global", qs_selection="random"),
    "qsattn-local-random": dict(_QS, qs_mode="local", qs_selection="random"),
    # The official local mode scrambles its window (see README, "Deviations"); this is the fix.
    "qsattn-local-corrected": dict(_QS, qs_mode="local", local_layout="corrected"),
    "qsattn-global-local-corrected": dict(_QS, qs_mode="global+local", local_layout="corrected"),
}


def preset(method: str) -> dict:
    if method not in METHODS:
        from qsattn.config import ConfigError
        import difflib

        close = difflib.get_close_matches(method, METHODS, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"unknown method '{method}'.{hint} Valid methods: {', '.join(METHODS)}")
    return dict(METHODS[method])


def add_arguments(parser) -> None:
    parser.add_argument("method", nargs="?", help="show every key of this method's resolved config")
    parser.add_argument("--json", action="store_true", help="the resolved config as JSON (with a method)")
    parser.add_argument("--markdown", action="store_true",
                        help="the reference of every key and method as Markdown (docs/config.md)")


def run(args) -> int:
    from qsattn.config import describe_keys, markdown_reference, resolve

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
