"""Where the course keeps its files, and the one way it writes them: aside, then renamed into place.

A leaf module (it imports nothing of the project), so any module can use it without an import circle.
A file or folder written through `written_aside` is either whole or absent: a crash, an interrupt or
a second process writing the same path never leaves a half-written one behind.
"""
import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def cache_root() -> Path:
    """Converted checkpoints, tokenized texts and model samples (WORKSHOP_CACHE overrides it)."""
    return Path(os.environ.get("WORKSHOP_CACHE", Path.home() / ".cache" / "compress-llm-workshop"))


def reports_dir() -> Path:
    """results.json, SUMMARY.md and the figures (WORKSHOP_REPORTS overrides it)."""
    return Path(os.environ.get("WORKSHOP_REPORTS", REPO_ROOT / "reports"))


def _readable_by_everyone(path: Path) -> None:
    # mkstemp, mkdtemp and safetensors make private files; the course's outputs are shared
    os.chmod(path, 0o755 if path.is_dir() else 0o644)
    if path.is_dir():
        for inner in path.rglob("*"):
            os.chmod(inner, 0o755 if inner.is_dir() else 0o644)


@contextlib.contextmanager
def written_aside(target: Path, folder: bool = False, replace: bool = False):
    """Yield a new path beside `target` to write into (an empty folder when `folder`, else a file
    path); when the block ends, what was written is made readable by everyone and renamed to `target`.
    On an error it is removed and `target` is left as it was.

    A file replaces an existing `target`. A folder replaces an empty one; with `replace`, a non-empty
    one too (moved aside first, removed after); otherwise os.replace raises OSError for it."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if folder:
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.partial-"))
    else:
        fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        os.close(fd)
        tmp = Path(name)
    old = target.with_name(f".{target.name}.old")
    try:
        yield tmp
        _readable_by_everyone(tmp)
        if folder and target.is_dir():
            if replace:
                os.replace(target, old)
            elif not any(target.iterdir()):
                target.rmdir()
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
        raise
    shutil.rmtree(old, ignore_errors=True)


def write_text_atomic(path: Path, text: str) -> None:
    with written_aside(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: Path, data) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, default=str))
