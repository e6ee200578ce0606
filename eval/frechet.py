"""Fréchet distance and kernel (KID) distance between feature sets, as clean-fid computes them.

We call clean-fid's own `frechet_distance` and `kernel_distance` rather than re-deriving them, so our
numbers are clean-fid's by construction; this file only fixes the two things clean-fid leaves open:
the statistics estimator (mean and unbiased covariance, as clean-fid's folder mode) and the random
subsets of KID (seeded here, so a score can be reproduced exactly).
"""
from __future__ import annotations

import numpy as np
from cleanfid import fid as _cleanfid


def feature_statistics(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (rows are samples), exactly the estimator clean-fid uses."""
    feats = np.asarray(feats, dtype=np.float64)
    return feats.mean(axis=0), np.cov(feats, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Squared Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) (clean-fid's code)."""
    return float(_cleanfid.frechet_distance(mu1, sigma1, mu2, sigma2))


def fid_from_features(feats1: np.ndarray, feats2: np.ndarray) -> float:
    return frechet_distance(*feature_statistics(feats1), *feature_statistics(feats2))


def kernel_inception_distance(feats1: np.ndarray, feats2: np.ndarray, *, num_subsets: int = 100,
                              max_subset_size: int = 1000, seed: int = 0) -> float:
    """Unbiased MMD² with the cubic polynomial kernel, averaged over random subsets (clean-fid's code).

    clean-fid draws the subsets from NumPy's global generator; we seed it for the call and restore the
    caller's state afterwards, so KID is reproducible without side effects. Reported unscaled (papers
    often print KID×1000).
    """
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        return float(_cleanfid.kernel_distance(np.asarray(feats1, np.float64), np.asarray(feats2, np.float64),
                                               num_subsets=num_subsets, max_subset_size=max_subset_size))
    finally:
        np.random.set_state(state)
