"""The published weight files the metrics use: where each comes from and, where one is published, its
full sha256. Torch-free, so the sweep's preflight and the docs read it without loading a network.

Inception (FID/KID): neither NVIDIA nor pytorch-fid prints a full hash (pytorch-fid's file name carries
the first 8 hex digits, 6726825d); the full strings are those third parties that download the same
URLs pin:
  clean           crowsonkb/k-diffusion, k_diffusion/evaluation.py (commit 0f9902f), InceptionV3FeatureExtractor
  legacy_pytorch  snap-research/discoscene, models/inception_model.py (commit 3b15039), _MODEL_URL_SHA256
DRN (Cityscapes segmentation): fyu/drn's README links the models and publishes no hashes; a result
records the sha256 of the file that scored it, and the config key `drn_sha256` pins one.
"""
from __future__ import annotations

# The FID protocols, as clean-fid names them (eval/fid.py): one FID and one KID per mode and checkpoint.
FID_MODES = ("clean", "legacy_pytorch")

INCEPTION_SHA256 = {
    "clean": "f58cb9b6ec323ed63459aa4fb441fe750cfe39fafad6da5cb504a16f19e958f4",
    "legacy_pytorch": "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2",
}
INCEPTION_SHA256_SOURCE = {
    "clean": "crowsonkb/k-diffusion k_diffusion/evaluation.py",
    "legacy_pytorch": "snap-research/discoscene models/inception_model.py",
}

# fyu/drn README, "Testing": "You can download the pretrained DRN models on Cityscapes here:" this link.
DRN_URL = "http://go.yf.io/drn-cityscapes-models"
DRN_FILES = {"drn_d_22": "drn_d_22_cityscapes.pth", "drn_d_105": "drn-d-105_ms_cityscapes.pth"}


def drn_how(arch: str) -> str:
    """Where a user gets the DRN file of `arch`."""
    return f"download {DRN_FILES.get(arch, arch)} ({arch}) from {DRN_URL} (fyu/drn's README)"
