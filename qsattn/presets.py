"""Methods by name: each is a preset of `Config` keys over the shared CUT-family model.

CUT and FastCUT come from `baselines/`; the QS-Attn variants differ from CUT only in the patch
sampler (`qs_mode`). Ablations are further presets; any key can still be overridden from config.
Plain data: `qsattn.engine.config` resolves a method through `preset()`.
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
