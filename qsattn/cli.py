"""`python -m qsattn SUBCOMMAND`: one entry point for the whole harness.

Each subcommand lives in its own module, which defines `add_arguments(parser)` and `run(args) -> int`.
Modules are imported only when their subcommand is asked for, so `train` never pays for MLflow's
import time of `report`, and the GPU machine (torch only) can still run `bench`.

Errors the user can fix (`qsattn.errors.UserError`: ConfigError, DataError, DatasetError, EvalError,
GridError, RunBusy, ...) are printed here, in one place, as one line, and the exit status is 2;
`--debug` (anywhere on the command line) shows their traceback instead.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help). Add a subcommand by adding one line here.
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("qsattn.engine.train", "train one run from a YAML config (resumes if the run folder has a checkpoint)"),
    "translate": ("qsattn.engine.translate", "translate a whole folder or test split with a trained generator"),
    "synthetic": ("qsattn.data.synthetic", "write the built-in synthetic dataset to disk"),
    "data": ("qsattn.data.datasets", "download, verify and prepare a benchmark dataset"),
    "eval": ("qsattn.engine.evaluate", "FID/KID, segmentation and ground-truth scores of a run or two folders"),
    "sweep": ("slurm.sweep", "run an experiment grid locally or on SLURM"),
    "status": ("slurm.status", "show the cells of a sweep: pending, running, done, failed"),
    "report": ("results.report", "build Table 1 and the plots from a sweep's MLflow runs"),
    "bench": ("qsattn.engine.bench", "time and measure memory of training steps and of the QS sampler"),
    "methods": ("qsattn.engine.methods", "list the methods and every option with its default"),
    "mlflow": ("qsattn.engine.tracking_cli", "the MLflow UI set up for comparing runs; send records kept in an outage"),
    "parity": ("qsattn.engine.parity", "check this project against your checkout of the official code, run here"),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: python -m qsattn SUBCOMMAND [options]   (or: qsattn SUBCOMMAND ...)", "", "subcommands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "`python -m qsattn SUBCOMMAND --help` explains each one."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    from qsattn.errors import UserError

    try:
        return _main(argv)
    except UserError as exc:
        if debug:
            raise
        print(f"error: {one_line(exc)}  (--debug shows the traceback)", file=sys.stderr)
        return 2


def one_line(exc: BaseException) -> str:
    """The message on one line: a listing inside it (several files, several keys) joined by '; '."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return "; ".join(lines) or type(exc).__name__


def _main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        from qsattn.errors import did_you_mean

        print(f"error: unknown subcommand '{name}'.{did_you_mean(name, COMMANDS)}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name, help_ = COMMANDS[name]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"python -m qsattn {name}", description=(module.__doc__ or help_).strip(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    return int(module.run(args) or 0)
