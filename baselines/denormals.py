"""Flush-to-zero for the G/F backward on the CPU (speed option `flush_denormal`, docs/performance.md).

At the official init QS-Attn's attention rows are nearly one-hot, so the gradient its key side sends
back through the encoder is mostly tiny, and much of it (and of what the convolutions' backward makes
of it) is subnormal (below 2^-126 ≈ 1.2e-38). x86 cores compute with subnormal operands many times
slower than with normal ones, and this, not the sampler's own ops, is what made the local step cost
3-6 CUT steps on the CPU. With the flag, the backward runs with the x86 MXCSR flags FTZ and DAZ
set (subnormal results and inputs count as 0), on every thread torch computes on, and the flags are
cleared again before the optimiser step. Each operation then differs from IEEE arithmetic by less
than 2^-126 in absolute value; no effect on CUDA.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools

import torch

_THREAD_FN = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


@functools.lru_cache(maxsize=1)
def _libgomp():
    """The OpenMP runtime torch computes with (torch's own libgomp, already loaded), or None."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "libgomp" in line and "/" in line}
    except OSError:
        return None
    for path in sorted(paths):
        lib = ctypes.CDLL(path)
        if hasattr(lib, "GOMP_parallel"):
            lib.GOMP_parallel.argtypes = [_THREAD_FN, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
            lib.GOMP_parallel.restype = None
            return lib
    return None


def set_flush_denormal(on: bool) -> None:
    """torch.set_flush_denormal on this thread and on torch's OpenMP worker threads: MXCSR is per
    thread, and torch's setter only changes the calling one. The workers are reached through an OpenMP
    parallel region of torch's thread count (the same thread pool torch's parallel_for uses)."""
    torch.set_flush_denormal(on)
    threads, gomp = torch.get_num_threads(), _libgomp()
    if threads > 1 and gomp is not None:
        fn = _THREAD_FN(lambda _: torch.set_flush_denormal(on))
        gomp.GOMP_parallel(fn, None, threads, 0)


@contextlib.contextmanager
def flushed(enabled: bool, device: torch.device):
    """FTZ/DAZ for the block when `enabled` on a CPU step; then back to IEEE subnormals (torch's default)."""
    if not enabled or device.type != "cpu":
        yield
        return
    set_flush_denormal(True)
    try:
        yield
    finally:
        set_flush_denormal(False)
