"""QS-Attn (Hu et al., CVPR 2022): what it adds to the CUT family of baselines/ (docs/architecture.md).
The public API for use in other code bases:

    PatchSampleF    the patch sampler F (CUT's mlp_sample, with QS-Attn's query selection)
    patch_nce_loss  CUT's PatchNCE loss (baselines/losses.py)

Imported lazily, so that `python -m qsattn status` and other light commands do not load torch.
"""
__all__ = ["PatchSampleF", "patch_nce_loss"]


def __getattr__(name):
    if name == "PatchSampleF":
        from qsattn.sampler import PatchSampleF

        return PatchSampleF
    if name == "patch_nce_loss":
        from baselines.losses import patch_nce_loss

        return patch_nce_loss
    raise AttributeError(f"module 'qsattn' has no attribute {name!r}")
