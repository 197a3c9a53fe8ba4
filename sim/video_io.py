"""Reading committed videos back: the validator compares what the chain committed to.

An executor commits to an MP4 by its SHA-256. The validator hashes the stored file first and
refuses to look inside it when the hash differs from the record (`VideoHashMismatch`), so no
metric ever runs on bytes nobody committed to. Decoding uses PyAV (FFmpeg), the same library
that encoded the file (`models/video.py`); a truncated or corrupt file raises `CorruptVideo`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from models.video import CorruptVideo, decode_mp4  # noqa: F401  (defined once, in models/)

_CHUNK = 1 << 20


class VideoHashMismatch(ValueError):
    """The stored file's SHA-256 differs from the committed one."""

    def __init__(self, path: str | Path, expected_sha256: str, actual_sha256: str):
        self.path = str(path)
        self.expected_sha256 = expected_sha256
        self.actual_sha256 = actual_sha256
        super().__init__(
            f"video {self.path}: SHA-256 {actual_sha256} does not match the committed "
            f"{expected_sha256}; the file is rejected before decoding"
        )


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def read_committed_video(path: str | Path, expected_sha256: str, *, expected_frames: int | None = None) -> np.ndarray:
    """Frames of the MP4 at `path`, only if its SHA-256 equals the committed `expected_sha256`.

    The hash is checked before any decoding (`VideoHashMismatch`). With `expected_frames`, a file
    that decodes to fewer frames is reported as `CorruptVideo` (a truncated stream can still decode
    its first frames).
    """
    if not isinstance(expected_sha256, str) or len(expected_sha256) != 64:
        raise ValueError(f"expected_sha256 must be a 64-character hex SHA-256, got {expected_sha256!r}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video {path}: no such file")
    actual = sha256_file(path)
    if actual != expected_sha256.lower():
        raise VideoHashMismatch(path, expected_sha256.lower(), actual)
    frames = decode_mp4(path)
    if expected_frames is not None and frames.shape[0] != expected_frames:
        raise CorruptVideo(f"video {path}: decoded {frames.shape[0]} frames, the record says {expected_frames}")
    return frames
