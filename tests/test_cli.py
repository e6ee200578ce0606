"""The command line: errors a user can fix are one line and exit status 2 (--debug: the traceback);
help lists every config key with its default and meaning, from the config's own metadata."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from qsattn import cli
from qsattn.engine.config import FIELDS, Config, show
from qsattn.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


def test_a_config_typo_is_one_line_with_the_suggestion_and_status_2(tmp_path):
    cmd = [sys.executable, "-m", "qsattn", "train", "methd=cut"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "error: unknown config key 'methd'. Did you mean: method? Valid keys are listed by `python -m qsattn methods`."
        "  (--debug shows the traceback)"]
    debug = subprocess.run(cmd + ["--debug"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "ConfigError: unknown config key" in debug.stderr


@pytest.mark.parametrize("argv, message", [
    (["methods", "qsattn-globl"], "error: unknown method 'qsattn-globl'. Did you mean 'qsattn-global'?"),
    (["train", "device=gpu"], "error: device: 'gpu' is not auto, cpu, cuda or cuda:N (N = 0, 1, ...). Did you mean 'cuda:0'?"),
    (["train", "lr=inf"], "error: lr: must be a finite number, got inf"),
    (["train", "qs_mode=globl"], "error: qs_mode: 'globl' is not one of none, global, local, global+local. "
                                 "Did you mean 'global'?"),
])
def test_user_errors_print_one_line_without_a_traceback(argv, message, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith(message) and "Traceback" not in err


def test_translate_with_a_discriminator_or_a_text_file_is_one_clear_error(tmp_path, capsys):
    import torch

    from baselines.networks import NLayerDiscriminator

    torch.save(NLayerDiscriminator(ndf=8).state_dict(), tmp_path / "latest_net_D.pth")
    (tmp_path / "notes.txt").write_text("lr: 0.0002\n")
    (tmp_path / "in").mkdir()
    for checkpoint, message in [("latest_net_D.pth", "holds no generator weights (it looks like the discriminator D"),
                                ("notes.txt", "is not a readable PyTorch checkpoint (it is a text file)")]:
        argv = ["translate", "--checkpoint", str(tmp_path / checkpoint), "--input", str(tmp_path / "in"),
                "--output", str(tmp_path / "out"), "--device", "cpu"]
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1 and message in err, err


def test_every_error_a_user_fixes_shares_the_one_base_class():
    from eval.folders import EvalError
    from qsattn.engine.atomic import DiskFull
    from qsattn.engine.checkpoint import CheckpointError
    from qsattn.engine.config import ConfigError
    from qsattn.data.unaligned import DataError
    from qsattn.data.datasets import DatasetError
    from qsattn.engine.run_folder import RunBusy
    from qsattn.engine.train import NonFinite
    from results.runs import ReportError
    from slurm.grid import GridError

    for error in (ConfigError, DataError, DatasetError, EvalError, GridError, RunBusy, ReportError, CheckpointError,
                  DiskFull, NonFinite):
        assert issubclass(error, UserError), error
    assert issubclass(ConfigError, ValueError) and issubclass(RunBusy, RuntimeError)  # callers may catch those


def test_train_help_lists_every_key_with_its_default_and_meaning(capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["train", "--help"])
    assert stop.value.code == 0
    text = capsys.readouterr().out
    for name, f in FIELDS.items():
        line = next((l for l in text.splitlines() if l.split() and l.split()[0] == f"{name}={show(getattr(Config(), name))}"),
                    None)
        assert line is not None and f.metadata["help"] in line, name
    for section in ("what to run:", "patch sampler F:", "speed:", "evaluation:"):
        assert section in text.splitlines()


def test_methods_name_lists_every_key_with_the_methods_value(capsys):
    assert cli.main(["methods", "fastcut"]) == 0
    lines = capsys.readouterr().out.splitlines()
    keys = {l.split()[0].lstrip("*").split("=")[0] for l in lines if l.startswith(" ") and "=" in l.split()[0]}
    assert keys == set(FIELDS)
    rows = [l.split() for l in lines if l.split()]
    assert any(r[0] == "*lambda_NCE=10.0" and "weight of the PatchNCE loss" in " ".join(r) for r in rows)
    assert ["*nce_idt=false"] in [r[:1] for r in rows]
    assert ["lr=0.0002"] in [r[:1] for r in rows]  # not set by the preset: no star
