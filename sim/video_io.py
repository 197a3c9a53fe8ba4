"""Reading committed videos back: the validator compares what the chain committed to.

An executor commits to an MP4 by its SHA-256. The validator hashes the stored file first and
refuses to look inside it when the hash differs from the record (`VideoHashMismatch`), so no
metric ever runs on bytes nobody committed to. Decoding uses PyAV (FFmpeg), the same library
that encoded the file (`models/video.py`); a truncated or corrupt file raises `CorruptVideo`.
"""

from __future__ import annotations

import hashlib
import io
import threading
from pathlib import Path

import numpy as np

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


class CorruptVideo(ValueError):
    """The file is not a decodable video (truncated, corrupt, or empty)."""


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


# Frames up to this many pixels are decoded on the calling thread (same frames, less overhead).
_SMALL_FRAME_PIXELS = 256 * 256
_LOCAL = threading.local()


def _reformatter():
    """One swscale context per thread, reused across frames and files: `VideoFrame.to_ndarray(format=
    "rgb24")` builds a new one for every frame, which cost more than decoding a 64x64 frame. The
    conversion is the same (same formats, size, interpolation and colour space), so are the bytes."""
    from av.video.reformatter import VideoReformatter

    if getattr(_LOCAL, "reformatter", None) is None:
        _LOCAL.reformatter = VideoReformatter()
    return _LOCAL.reformatter


def decode_mp4(path_or_bytes: str | Path | bytes, *, name: str | None = None) -> np.ndarray:
    """Decode every frame of a video to uint8 RGB, shape (F, H, W, 3).

    Accepts a path or the file's bytes. Raises `CorruptVideo` (naming the file) when the container
    or a packet cannot be decoded, or when no frame comes out; `FileNotFoundError` when a path does
    not exist.
    """
    import av

    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        source: object = io.BytesIO(bytes(path_or_bytes))
        label = name or f"<{len(path_or_bytes)} bytes>"
        if len(path_or_bytes) == 0:
            raise CorruptVideo(f"video {label}: empty input")
    else:
        path = Path(path_or_bytes)
        if not path.is_file():
            raise FileNotFoundError(f"video {path}: no such file")
        source, label = str(path), name or str(path)
    reformatter = _reformatter()
    try:
        with av.open(source, mode="r") as container:
            if not container.streams.video:
                raise CorruptVideo(f"video {label}: the container holds no video stream")
            stream = container.streams.video[0]
            codec = stream.codec_context  # None when the header is cut off
            if codec is not None and codec.width * codec.height <= _SMALL_FRAME_PIXELS:
                stream.thread_type = "NONE"  # FFmpeg's slice threads cost more than they save here
            frames = [reformatter.reformat(f, format="rgb24").to_ndarray() for f in container.decode(stream)]
    except CorruptVideo:
        raise
    except (av.FFmpegError, EOFError, ValueError, IndexError) as err:
        raise CorruptVideo(f"video {label}: cannot be decoded ({type(err).__name__}: {err})") from err
    if not frames:
        raise CorruptVideo(f"video {label}: decoded no frames (truncated or corrupt)")
    return np.stack(frames)


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
