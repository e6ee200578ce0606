"""Files written so that a reader (or a crash) sees the old or the new content, never a partial one.

A file is written to a temporary file beside it, `.<name>.tmp-<pid>`, flushed to disk and renamed over
the target. The temporary file is removed when the write fails (an error, a full disk, Ctrl-C); one left
by a killed process (SIGKILL cannot be caught) is removed by `remove_temporaries` when its folder's
owner starts again. A full disk is one `DiskFull` error that names the file, the space it needs and the
space left. No torch here: the sweep launcher and `status` use it without loading torch.
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
from pathlib import Path

from qsattn.errors import UserError

_FULL = (errno.ENOSPC, errno.EDQUOT)


class DiskFull(UserError):
    """The file system has no room for a file; the message names the file, the space needed and left."""


def temporary_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def is_temporary(name: str) -> bool:
    return name.startswith(".") and ".tmp-" in name


def remove_temporaries(folder: str | os.PathLike, names: tuple[str, ...] | None = None) -> list[Path]:
    """Remove the temporary files left in `folder` by killed writers (of `names` only, if given).
    Call it only where no other process can be writing (a run folder under its lock); returns them."""
    folder, removed = Path(folder), []
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        target = entry.name[1:].rsplit(".tmp-", 1)[0]
        if is_temporary(entry.name) and entry.is_file() and (names is None or target in names):
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
                removed.append(entry)
    return removed


def _free_bytes(folder: Path) -> int | None:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MB" if n >= 2**20 else f"{n / 2**10:.0f} kB"


def disk_full(path: Path, needed: int, free: int | None) -> DiskFull:
    left = f"{_mb(free)} free" if free is not None else "no space left"
    return DiskFull(f"disk full: writing {path} needs about {_mb(needed)}, {left} on its file system; "
                    f"free some space (or move the folder), then run the same command again")


def _ran_out_of_space(exc: BaseException) -> bool:
    """torch.save reports a full disk as a RuntimeError whose context is the OSError; follow the chain."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in _FULL:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


@contextlib.contextmanager
def replacing(path: str | os.PathLike, needed: int = 0, sync: bool = False):
    """Yield a binary file handle for a temporary file that replaces `path` once the block succeeds.

    `needed`: the bytes about to be written (a lower bound is fine); with less free space than that the
    write is refused before it starts. `sync`: flush to the disk before the rename (checkpoints)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    free = _free_bytes(path.parent)
    if free is not None and needed > free:
        raise disk_full(path, needed, free)
    tmp = temporary_path(path)
    fh = open(tmp, "wb")
    try:
        yield fh
        fh.flush()
        if sync:
            os.fsync(fh.fileno())
        fh.close()
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError, ValueError):
            needed = max(needed, fh.tell())
        with contextlib.suppress(OSError):
            fh.close()
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if isinstance(exc, Exception) and _ran_out_of_space(exc):
            raise disk_full(path, needed, _free_bytes(path.parent)) from exc
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    data = text.encode()
    with replacing(path, needed=len(data)) as fh:
        fh.write(data)
