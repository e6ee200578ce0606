"""Step time of training with an unreachable tracking server against training without tracking (#19).

    .venv/bin/python tools/tracking_overhead.py [--repeats 5] [--steps 30] [--log-every 1]

Runs alternate (off, unreachable, off, unreachable, ...) in this process on the synthetic set; each
run's step time is the median interval between the starts of successive training steps after the
first 3 (so it includes everything the loop does between steps: the loss readout, the tracker's
journal append). Prints every run's value and the ratio of the two medians (docs/tracking.md).
"""
from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def step_time(cfg) -> float:
    from qsattn import train as training

    starts: list[float] = []
    real = training.train_step

    def timed(state, *args):
        starts.append(time.perf_counter())
        return real(state, *args)

    training.train_step = timed
    try:
        training.train(cfg, progress=False)
    finally:
        training.train_step = real
    gaps = [b - a for a, b in zip(starts[3:], starts[4:])]
    return statistics.median(gaps)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--log-every", type=int, default=1, help="1: a tracking record every step (the worst case)")
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from qsattn.config import resolve
    from qsattn.synthetic import generate

    work = Path(tempfile.mkdtemp(prefix="tracking-overhead-"))
    generate(work / "data" / "synthetic", size=args.size, n_train=16, n_test=2, seed=0)
    times: dict[str, list[float]] = {"off": [], "unreachable": []}
    for i in range(args.repeats):
        for kind, uri in (("off", "off"), ("unreachable", "http://127.0.0.1:1")):
            cfg = resolve({"method": "cut", "data_root": str(work / "data"), "run_root": str(work / f"{kind}-{i}"),
                           "tracking_uri": uri, "crop_size": args.size, "load_size": args.size, "ngf": 16, "ndf": 16,
                           "netF_nc": 64, "num_patches": 64, "max_steps": args.steps, "log_every": args.log_every,
                           "checkpoint_every": 0, "sample_every": 0, "keep_epoch_checkpoints": 0, "device": "cpu"})
            times[kind].append(step_time(cfg))
            print(f"repeat {i} {kind:<11} {times[kind][-1] * 1000:8.1f} ms/step", flush=True)
    off, down = statistics.median(times["off"]), statistics.median(times["unreachable"])
    print(f"median ms/step: off {off * 1000:.1f}, unreachable {down * 1000:.1f}; ratio unreachable/off {down / off:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
