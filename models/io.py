"""Atomic writes and the output-directory policy of every command.

The policy: t2vsim never deletes or overwrites what it did not write. An output directory is built
in a fresh temporary directory beside it and renamed into place only when complete, so a reader
(or a resumed run) sees either the old contents or the whole new set, never half of it. An existing
output directory is replaced only when everything in it is one of the file names the command itself
writes there (`owned`); anything else in it, a file in its place, or a parent that cannot be
written is refused before any work starts, naming the path.

Files are written through a temporary file in the same directory and `os.replace`d, so a kill
leaves the previous version or the new one: bytes or text (`write_atomic`, `write_text_atomic`),
JSON (`write_json_atomic`), Parquet (`write_parquet_atomic`), or anything a writer function puts on
a binary file (`write_with_atomic`, e.g. `torch.save`). This module is the one place that does it;
it imports neither torch nor pandas.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Iterator


class OutputError(ValueError):
    """An output path cannot be used; the message names it and what is allowed."""


def _umask_mode(mode: int = 0o777) -> int:
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask


def write_with_atomic(path: str | os.PathLike, write: Callable[[BinaryIO], Any], *,
                      mode: int | None = 0o666) -> Path:
    """Call `write(file)` on a temporary file beside `path`, then rename it to `path`; on any error
    the temporary file is removed and `path` is untouched. The file gets `mode` less the umask
    (None: the temporary file's own 0o600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        if mode is not None:
            os.chmod(tmp, _umask_mode(mode))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def write_atomic(path: str | os.PathLike, data: str | bytes, *, mode: int | None = 0o666) -> Path:
    """Write `data` (text as UTF-8) to `path` through a temporary file beside it and a rename."""
    blob = data.encode() if isinstance(data, str) else data
    return write_with_atomic(path, lambda f: f.write(blob), mode=mode)


def write_text_atomic(path: str | os.PathLike, text: str, *, encoding: str = "utf-8",
                      mode: int | None = 0o666) -> Path:
    return write_atomic(path, text.encode(encoding), mode=mode)


def write_json_atomic(path: str | os.PathLike, data: Any, *, mode: int | None = 0o666, **dumps: Any) -> Path:
    """JSON written atomically; `dumps` are `json.dumps` options (defaults: indent 1, and strict:
    NaN and infinities are refused, they are not JSON, unless allow_nan=True)."""
    dumps.setdefault("indent", 1)
    dumps.setdefault("allow_nan", False)
    return write_atomic(path, json.dumps(data, **dumps), mode=mode)


def write_parquet_atomic(path: str | os.PathLike, df: Any, *, index: bool = False,
                         mode: int | None = 0o666) -> Path:
    """A pandas DataFrame as Parquet, written atomically (without the index unless asked)."""
    buf = io.BytesIO()
    df.to_parquet(buf, index=index)
    return write_atomic(path, buf.getvalue(), mode=mode)


@contextlib.contextmanager
def rebuilt_dir(target: str | os.PathLike) -> Iterator[Path]:
    """A fresh temporary directory beside `target` that replaces whatever `target` holds when the
    block ends without an error (for a cache entry the caller owns outright; outputs use
    `staged_dir`, which never removes what t2vsim did not write); on an error it is removed."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _nearest_existing(path: Path) -> Path:
    p = path.absolute()
    while not p.exists():
        p = p.parent
    return p


def check_out_dir(path: str | os.PathLike, owned: Iterable[str] = (), *, what: str = "out",
                  resumable: str | None = None) -> Path:
    """Refuse, before any work, an output directory the command may not write.

    Allowed: a new path under a writable directory, an empty directory, a directory holding only
    `owned` names (replaced when the new output is complete), or with `resumable` (a marker file
    name such as "params.json") a directory that holds that marker: a run to continue.
    """
    if path is None or not str(path).strip():
        raise OutputError(f"{what}: must be a directory path, got {str(path or '')!r}")
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise OutputError(f"{what}: {p} exists and is not a directory")
    if p.is_dir():
        names = sorted(e.name for e in p.iterdir())
        if names and not (resumable and resumable in names):
            foreign = [n for n in names if n not in set(owned)]
            if foreign:
                shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
                kind = "a t2vsim run directory" if resumable else "t2vsim's own output"
                raise OutputError(f"{what}: {p} is not empty and not {kind} (holds {shown}); "
                                  "nothing is deleted: choose a new or empty directory")
    base = _nearest_existing(p)
    if not base.is_dir():
        raise OutputError(f"{what}: {base} is not a directory, so {p} cannot be created")
    if not os.access(base, os.W_OK | os.X_OK):
        raise OutputError(f"{what}: {base} is not writable")
    return p


def check_out_file(path: str | os.PathLike, *, what: str = "out") -> Path:
    """Refuse an output file path that is a directory or lies under an unwritable directory."""
    if path is None or not str(path).strip():
        raise OutputError(f"{what}: must be a file path, got {str(path or '')!r}")
    p = Path(path)
    if p.is_dir():
        raise OutputError(f"{what}: {p} is a directory; give a file path")
    base = _nearest_existing(p.parent)
    if not base.is_dir():
        raise OutputError(f"{what}: {base} is not a directory, so {p} cannot be created")
    if not os.access(base, os.W_OK | os.X_OK):
        raise OutputError(f"{what}: {base} is not writable")
    return p


@contextlib.contextmanager
def staged_dir(target: str | os.PathLike, owned: Iterable[str] = (), *, what: str = "out") -> Iterator[Path]:
    """A fresh temporary directory beside `target`; when the block ends without an error it
    replaces `target` (see `publish_dir`), otherwise it is removed and `target` is untouched."""
    target = Path(target)
    owned = tuple(owned)
    check_out_dir(target, owned, what=what)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        os.chmod(tmp, _umask_mode())
        yield tmp
        publish_dir(tmp, target, owned, what=what)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def publish_dir(tmp: Path, target: Path, owned: Iterable[str] = (), *, what: str = "out") -> Path:
    """Rename the complete directory `tmp` to `target`. A `target` that holds only `owned` names is
    moved aside first and those names (nothing else) are then removed."""
    owned = set(owned)
    check_out_dir(target, owned, what=what)
    if not target.exists() or not any(target.iterdir()):
        os.replace(tmp, target)  # a new path, or an empty directory (rename replaces it)
        return target
    aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    os.rename(target, aside / "previous")
    os.replace(tmp, target)
    previous = aside / "previous"
    for entry in previous.iterdir():
        if entry.name in owned:
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    with contextlib.suppress(OSError):  # left in place if something else appeared meanwhile
        previous.rmdir()
        aside.rmdir()
    return target
