"""The engine: config, training loop, run folder, checkpoints, tracking, translate, the one-cell pipeline,
the eval command, bench and parity. It runs any method of baselines/ and qsattn/ alike."""
