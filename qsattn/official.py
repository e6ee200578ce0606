"""Import the official QS-Attn and CUT code from the user's own checkouts (for `python -m qsattn parity`).

Nothing of the official code is copied into this project: its `models/` folder is imported from the
checkout the user names, as a throw-away package (`_official_qsattn.models`, `_official_cut.models`),
with the checkout's `util/util.py` visible as `util.util` only while it is imported (the model files
import it by that name). The CPU needs one shim: the QS-Attn `PatchSampleF.create_mlp` calls `.cuda()`
unconditionally, so `on_device` makes `nn.Module.cuda` move to the requested device instead.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import subprocess
import sys
import types
from dataclasses import dataclass
from pathlib import Path

from qsattn.errors import UserError

REPOS = {
    "qsattn": ("QS-Attn", "https://github.com/sapphire497/query-selected-attention", "c2c5e40",
               ("networks_global", "networks_local", "networks_local_global", "patchnce", "qs_model")),
    "cut": ("CUT", "https://github.com/taesungp/contrastive-unpaired-translation", "b3ac297",
            ("networks", "patchnce", "cut_model")),
}


class CheckoutError(UserError):
    """A missing or invalid official checkout."""


@dataclass
class Checkout:
    kind: str            # "qsattn" | "cut"
    path: Path
    commit: str          # `git rev-parse --short HEAD`, or "unknown" (not a git work tree)
    modules: dict        # file stem -> imported module


def _how_to_get(kind: str) -> str:
    name, url, commit, _ = REPOS[kind]
    return f"get the official {name} code with: git clone {url} && git -C {url.rsplit('/', 1)[1]} checkout {commit}"


def _commit(path: Path) -> str:
    try:
        out = subprocess.run(["git", "-C", str(path), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def load(path, kind: str) -> Checkout:
    """Import the official model files of a checkout; a CheckoutError (one line) if it is not one."""
    name, _, _, stems = REPOS[kind]
    path = Path(path).expanduser()
    missing = [f"models/{s}.py" for s in stems if not (path / "models" / f"{s}.py").is_file()]
    missing += [] if (path / "util" / "util.py").is_file() else ["util/util.py"]
    if not path.is_dir() or missing:
        what = "does not exist" if not path.exists() else f"is not a {name} checkout (no {', '.join(missing)})"
        raise CheckoutError(f"{path} {what}; {_how_to_get(kind)}")
    alias = f"_official_{kind}"
    for key in [k for k in sys.modules if k == alias or k.startswith(alias + ".")]:
        del sys.modules[key]  # another checkout of the same kind may have been loaded before
    package = types.ModuleType(alias)
    package.__path__ = [str(path)]
    models = types.ModuleType(f"{alias}.models")
    models.__path__ = [str(path / "models")]  # the package's __init__ (a model registry) is not run
    sys.modules[alias], sys.modules[f"{alias}.models"] = package, models
    spec = importlib.util.spec_from_file_location(f"{alias}.util", path / "util" / "util.py")
    util = importlib.util.module_from_spec(spec)
    saved = {k: sys.modules.get(k) for k in ("util", "util.util")}
    try:
        spec.loader.exec_module(util)
        util_package = types.ModuleType("util")
        util_package.util = util
        sys.modules["util"], sys.modules["util.util"] = util_package, util
        modules = {s: importlib.import_module(f"{alias}.models.{s}") for s in stems}
    except Exception as exc:  # a checkout of another project, or one that needs other packages
        raise CheckoutError(f"{path}: importing the official {name} code failed ({type(exc).__name__}: {exc}); "
                            f"{_how_to_get(kind)}") from exc
    finally:
        for key, value in saved.items():
            if value is None:
                sys.modules.pop(key, None)
            else:
                sys.modules[key] = value
    return Checkout(kind, path, _commit(path), modules)


@contextlib.contextmanager
def on_device(device):
    """While official code runs: `nn.Module.cuda()` (called unconditionally by QS-Attn's create_mlp)
    moves to `device` instead, so the official networks also build on a CPU."""
    import torch.nn as nn

    original = nn.Module.cuda
    nn.Module.cuda = lambda self, *args, **kwargs: self.to(device)
    try:
        yield
    finally:
        nn.Module.cuda = original
