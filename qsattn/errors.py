"""The one base class of the errors a user fixes (a config value, a file, a busy run folder).

`python -m qsattn` prints such an error as one line, `error: <what is wrong, the closest valid value,
what to do>`, and exits 2; `--debug` shows the traceback instead. Any other exception is a bug and keeps
its traceback. Torch-free: every module, the launcher included, can import it.
"""
from __future__ import annotations


class UserError(Exception):
    """Something the user can fix; the message says what is wrong and what to do."""
