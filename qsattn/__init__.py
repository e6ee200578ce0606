"""QS-Attn and the CUT family. The public API for use in other code bases:

    PatchSampleF    the patch sampler F (CUT's mlp_sample, with QS-Attn's query selection)
    patch_nce_loss  CUT's PatchNCE loss
"""
from qsattn.losses import patch_nce_loss
from qsattn.sampler import PatchSampleF

__all__ = ["PatchSampleF", "patch_nce_loss"]
