"""Where a run directory lives: a local path (the default) or any fsspec URL (`s3://bucket/run`,
`gs://...`, `memory://...`), so that several machines write one run.

The experiment reads and writes its files through a `RunStore`. On a local path the store is the
directory itself and nothing is copied. On an object store each worker works in a local cache
(`T2VSIM_CACHE`, default the system's temporary directory) and the store holds the truth:

- a generation directory is published file by file with its `record.json` last (and the old record
  removed first), so a generation whose record is on the store is complete; one that is not is
  redone, exactly as a half-written local directory is;
- every other file (parameters, score tables, analysis) is one object, written in one request
  (an object store replaces an object atomically), or locally through a temporary file and a rename.

Connection settings (an endpoint, credentials) come from fsspec's own configuration, e.g.
`FSSPEC_S3_ENDPOINT_URL=http://127.0.0.1:9000` and the usual AWS variables for `s3://`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from models.io import write_atomic

MARKER = "record.json"  # the file of a generation directory that is published last


class StorageError(OSError):
    pass


def is_url(location: str | os.PathLike) -> bool:
    """True for `proto://...` locations other than `file://`."""
    text = str(location)
    return "://" in text and not text.startswith("file://")


class RunStore:
    """One run directory, local or remote; paths are relative to the run root ('a/b.json')."""

    def __init__(self, location: str | os.PathLike, cache: str | os.PathLike | None = None):
        from fsspec.core import url_to_fs
        from fsspec.implementations.local import LocalFileSystem

        self.location = str(location)
        try:
            self.fs, root = url_to_fs(self.location)
        except (ImportError, ValueError) as err:
            raise StorageError(f"out: cannot open {self.location!r}: {err}") from None
        self.root = root.rstrip("/")
        self.is_local = isinstance(self.fs, LocalFileSystem)
        if self.is_local:
            self.local_root = Path(self.root)
        else:
            base = Path(cache or os.environ.get("T2VSIM_CACHE") or Path(tempfile.gettempdir()) / "t2vsim-cache")
            digest = hashlib.sha256(self.location.encode()).hexdigest()[:16]
            self.local_root = base / f"{Path(self.root).name}-{digest}"
        self.local_root.mkdir(parents=True, exist_ok=True)

    @property
    def name(self) -> str:
        return Path(self.root).name

    def __repr__(self) -> str:
        return f"RunStore({self.location!r})"

    def path(self, rel: str) -> str:
        return f"{self.root}/{rel}" if rel else self.root

    def url(self, rel: str = "") -> str:
        """`rel` as a location a user can pass on (the path itself, or `s3://bucket/...`)."""
        return str(self.local(rel)) if self.is_local else self.fs.unstrip_protocol(self.path(rel))

    def local(self, rel: str = "") -> Path:
        """Where this process reads and writes `rel` (the file itself for a local run)."""
        return self.local_root / rel if rel else self.local_root

    # -- single objects --------------------------------------------------------------------------

    def _fresh(self, rel: str) -> str:
        path = self.path(rel)
        if not self.is_local:  # other machines write the same run: never trust a cached listing
            self.fs.invalidate_cache(path)
        return path

    def exists(self, rel: str) -> bool:
        return self.fs.exists(self._fresh(rel))

    def read_bytes(self, rel: str) -> bytes:
        try:
            return self.fs.cat_file(self.path(rel))
        except FileNotFoundError:
            raise
        except OSError as err:
            raise StorageError(f"{self.path(rel)}: cannot read ({err})") from err

    def read_text(self, rel: str) -> str:
        return self.read_bytes(rel).decode("utf-8")

    def write_bytes(self, rel: str, data: str | bytes) -> None:
        """Write one file all at once: temporary file + rename locally, one object remotely."""
        data = data.encode() if isinstance(data, str) else data
        if self.is_local:
            write_atomic(self.local(rel), data)
        else:
            self.fs.pipe_file(self.path(rel), data)

    def remove(self, rel: str) -> None:
        try:
            self.fs.rm(self.path(rel), recursive=True)
        except FileNotFoundError:
            pass

    def list(self, rel: str) -> list[str]:
        """Names directly under `rel` (empty if it does not exist)."""
        try:
            return sorted(Path(p.rstrip("/")).name for p in self.fs.ls(self._fresh(rel), detail=False))
        except FileNotFoundError:
            return []

    # -- generation directories -------------------------------------------------------------------

    def fetch_dir(self, rel: str) -> Path:
        """The local directory of `rel`, holding the store's copy if the store has a complete one.
        On a local run this is the directory itself."""
        local = self.local(rel)
        if self.is_local:
            return local
        if local.exists():
            shutil.rmtree(local)
        if self.exists(f"{rel}/{MARKER}"):
            local.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{local.name}.", dir=local.parent))
            try:
                for name in self.list(rel):
                    self.fs.get_file(self.path(f"{rel}/{name}"), str(tmp / name))
                os.replace(tmp, local)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        return local

    def publish_dir(self, rel: str, local: Path) -> None:
        """Copy a complete local directory to the store, its marker last (no-op on a local run)."""
        if self.is_local:
            return
        self.remove(f"{rel}/{MARKER}")  # an old record must not vouch for the new files meanwhile
        names = sorted(p.name for p in Path(local).iterdir() if p.is_file())
        for name in [n for n in names if n != MARKER] + [n for n in names if n == MARKER]:
            self.fs.put_file(str(Path(local) / name), self.path(f"{rel}/{name}"))

    def publish_tree(self, rel: str) -> None:
        """Upload a local subtree (analysis outputs such as report_files/) to the store."""
        if self.is_local:
            return
        src = self.local(rel)
        if src.is_dir():
            for p in sorted(src.rglob("*")):
                if p.is_file() and not p.name.startswith("."):
                    self.fs.put_file(str(p), self.path(str(Path(rel) / p.relative_to(src))))
        elif src.is_file():
            self.fs.put_file(str(src), self.path(rel))
