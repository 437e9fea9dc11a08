"""Where a command writes: one check of an output path before any work, and one way to report a write
that fails anyway.

Commands take `--out`; a model is loaded, calibrated and quantized (minutes with GPTQ) before it is
written, so a path that cannot be written must be refused first: one that exists (a file, or a
folder that is not empty), or one whose folder cannot take a new file (missing, read-only, or a
pseudo-filesystem such as /proc). The last is tried, not guessed: a probe file is created and
removed in that folder.
"""
import contextlib
import os
import tempfile
from pathlib import Path

from .errors import WorkshopError


def check_new_output(out, option: str = "--out", example: str = "DIR") -> Path:
    """The resolved path, if a new file or folder can be written there; else a WorkshopError naming
    what is wrong and a path that works."""
    target = Path(out).expanduser().absolute()
    if target.exists() and not (target.is_dir() and not any(target.iterdir())):
        raise WorkshopError(f"{option} {target} exists" + (" and is not empty." if target.is_dir() else "."),
                            f"Nothing was overwritten: give a new path (e.g. {option} {example}), or remove it first.")
    folder = target.parent
    if not folder.is_dir():
        raise WorkshopError(f"{option} {target}: the folder {folder} does not exist.",
                            f"Create it first, or give a path in an existing folder (e.g. {option} {example}).")
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".workshop-write-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as error:
        raise WorkshopError(f"{option} {target}: the folder {folder} does not take new files ({error.strerror}).",
                            f"Give a path in a folder you can write to (e.g. {option} {example} in your home folder)."
                            ) from None
    return target


@contextlib.contextmanager
def reported_write_errors(target):
    """Turn a write that fails (a full disk, a folder made read-only meanwhile) into one message; the
    writers write aside and rename, so nothing half-written is left behind."""
    try:
        yield
    except OSError as error:
        raise WorkshopError(f"Could not write {target}: {error.strerror or error}. Nothing was left half-written.",
                            "Free some space or choose another folder, and run the command again.") from None
