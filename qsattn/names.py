"""Our ids for the method and dataset names that papers and published tables print (paper_numbers.csv,
released_model_fids.csv): read by results/ (the table) and eval/released.py (the released models' FIDs).
"""
from __future__ import annotations

import re
import warnings

from qsattn.presets import METHODS

# Method names as papers print them -> our method ids (qsattn/presets.py). Matched ignoring case,
# spaces and punctuation; our own ids are accepted as they are.
PAPER_METHODS = {
    "CUT": "cut",
    "FastCUT": "fastcut",
    "QS-Attn (global)": "qsattn-global",
    "QS-Attn (local)": "qsattn-local",
    "QS-Attn (global+local)": "qsattn-global-local",
}
DATASET_ALIASES = {"horse2zebra": "horse2zebra", "horsezebra": "horse2zebra", "cat2dog": "cat2dog",
                   "catdog": "cat2dog", "afhqcat2dog": "cat2dog", "cityscapes": "cityscapes",
                   "labelsphotos": "cityscapes", "cityscapeslabelsphotos": "cityscapes"}


def key(text) -> str:
    return re.sub(r"[^a-z0-9+]", "", str(text).lower())


def method_id(name: str) -> str:
    """A paper's method name (or one of our ids) -> our method id."""
    if name in METHODS:
        return name
    table = {key(k): v for k, v in PAPER_METHODS.items()} | {key(m): m for m in METHODS}
    if key(name) in table:
        return table[key(name)]
    warnings.warn(f"paper_numbers.csv: method {name!r} is neither one of ours nor in qsattn.names.PAPER_METHODS; "
                  "add it there to compare it with our runs", stacklevel=2)
    return name


def dataset_id(name: str) -> str:
    return DATASET_ALIASES.get(key(name), str(name))
