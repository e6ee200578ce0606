"""Step time of training with an unreachable tracking server against training without tracking (#19).

    .venv/bin/python tools/tracking_overhead.py [--repeats 5] [--steps 30] [--log-every 1]

Runs alternate (off, unreachable, off, unreachable, ...) in this process on the synthetic set, one
torch thread; each run's step time is the median interval between the starts of successive training
steps after the first 3 (so it includes everything the loop does between steps: the loss readout, the
tracker's journal append). Prints every run's value, the ratio of the two medians, and the time the
training thread itself spent in tracker calls per step (the direct cost, immune to the machine's load).
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


def step_time(cfg) -> tuple[float, float]:
    """(median s/step, s per step the training thread spent inside tracker calls)."""
    from qsattn.engine import tracking
    from qsattn.engine import train as training

    starts: list[float] = []
    in_tracker = [0.0]
    real = training.train_step

    def timed(state, *args):
        starts.append(time.perf_counter())
        return real(state, *args)

    originals = {name: getattr(tracking.Tracker, name) for name in ("log_metrics", "log_image", "log_artifact",
                                                                     "set_tags", "log_params")}

    def clocked(fn):
        def call(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                in_tracker[0] += time.perf_counter() - t
        return call

    training.train_step = timed
    for name, fn in originals.items():
        setattr(tracking.Tracker, name, clocked(fn))
    try:
        training.train(cfg, progress=False)
    finally:
        training.train_step = real
        for name, fn in originals.items():
            setattr(tracking.Tracker, name, fn)
    gaps = [b - a for a, b in zip(starts[3:], starts[4:])]
    return statistics.median(gaps), in_tracker[0] / len(starts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--log-every", type=int, default=1, help="1: a tracking record every step (the worst case)")
    parser.add_argument("--size", type=int, default=32)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from qsattn.engine.config import resolve
    from qsattn.data.synthetic import generate

    work = Path(tempfile.mkdtemp(prefix="tracking-overhead-"))
    generate(work / "data" / "synthetic", size=args.size, n_train=64, n_test=2, seed=0)
    times: dict[str, list[float]] = {"off": [], "unreachable": []}
    tracker_s: list[float] = []
    for i in range(args.repeats):
        for kind, uri in (("off", "off"), ("unreachable", "http://127.0.0.1:1")):
            cfg = resolve({"method": "cut", "data_root": str(work / "data"), "run_root": str(work / f"{kind}-{i}"),
                           "tracking_uri": uri, "crop_size": args.size, "load_size": args.size, "ngf": 8, "ndf": 8,
                           "netF_nc": 32, "num_patches": 32, "max_steps": args.steps, "log_every": args.log_every,
                           "checkpoint_every": 0, "sample_every": 0, "keep_epoch_checkpoints": 0, "device": "cpu",
                           "num_threads": 1})
            median, in_tracker = step_time(cfg)
            times[kind].append(median)
            if kind == "unreachable":
                tracker_s.append(in_tracker)
            extra = f"  ({in_tracker * 1e6:.0f} us/step in tracker calls)" if kind == "unreachable" else ""
            print(f"repeat {i} {kind:<11} {median * 1000:8.1f} ms/step{extra}", flush=True)
    off, down = statistics.median(times["off"]), statistics.median(times["unreachable"])
    print(f"median ms/step: off {off * 1000:.1f}, unreachable {down * 1000:.1f}; "
          f"ratio unreachable/off {down / off:.3f}; "
          f"tracker calls {statistics.median(tracker_s) * 1e6:.0f} us/step ({statistics.median(tracker_s) / off:.2%} "
          f"of a step)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
