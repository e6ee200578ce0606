"""The one base class of the errors a user fixes (a config value, a file, a busy run folder).

`python -m qsattn` prints such an error as one line, `error: <what is wrong, the closest valid value,
what to do>`, and exits 2; `--debug` shows the traceback instead. Any other exception is a bug and keeps
its traceback. Torch-free: every module, the launcher included, can import it.
"""
from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """Something the user can fix; the message says what is wrong and what to do."""


def did_you_mean(word: str, choices: Iterable[str], n: int = 1) -> str:
    """The hint of an error message for a misspelt name: " Did you mean 'x'?" (n > 1: " Did you mean: x, y?"),
    or '' when no choice is close (difflib's ratio >= 0.6)."""
    close = difflib.get_close_matches(str(word), list(choices), n=n)
    if not close:
        return ""
    return f" Did you mean '{close[0]}'?" if n == 1 else f" Did you mean: {', '.join(close)}?"
