"""MP4 encoding with PyAV (FFmpeg's libx264) under fixed, recorded settings.

The MP4's SHA-256 is the on-chain commitment, so encoding must be a pure function of the frames:
one encoder thread (x264 output depends on its thread count), bit-exact container flags (no
library version strings), a fixed CRF and preset. Encoding the same frames twice gives the same
bytes on one machine; across FFmpeg builds the settings are recorded with every video.
"""

from __future__ import annotations

import io
import threading
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

CODEC_SETTINGS: dict[str, Any] = {
    "codec": "libx264",
    "pix_fmt": "yuv420p",
    # Constant QP, one x264 thread (pinned through x264-params: the codec-level thread option alone
    # left the output varying), no psychovisual RD and no macroblock tree: with CRF rate control and
    # psy-rd, x264 produced one of two byte streams for the same frames depending on what had run
    # earlier in the process (measured: 1-4 of 12 encodes inside a generation loop under load);
    # constant QP without psy-rd/mbtree gave a single stream in every trial.
    "options": {"qp": "12", "preset": "medium", "flags": "+bitexact",
                "x264-params": "threads=1:lookahead-threads=1:sliced-threads=0:psy=0:mbtree=0"},
    "container": "mp4",
    "container_options": {"fflags": "+bitexact"},
}


def encode_mp4(frames: np.ndarray, fps: int) -> bytes:
    """Encode uint8 frames (F, H, W, 3) to MP4 bytes with `CODEC_SETTINGS`."""
    import av

    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 of shape (F, H, W, 3), got {frames.dtype} {frames.shape}")
    _, height, width, _ = frames.shape
    if height % 2 or width % 2:
        raise ValueError(f"frame size must be even for yuv420p, got {width}x{height}")
    buf = io.BytesIO()
    with av.open(buf, mode="w", format=CODEC_SETTINGS["container"],
                 options=dict(CODEC_SETTINGS["container_options"])) as container:
        stream = container.add_stream(CODEC_SETTINGS["codec"], rate=int(fps), options=dict(CODEC_SETTINGS["options"]))
        stream.width, stream.height = width, height
        stream.pix_fmt = CODEC_SETTINGS["pix_fmt"]
        stream.codec_context.thread_count = 1
        stream.codec_context.thread_type = "NONE"
        stream.codec_context.time_base = Fraction(1, int(fps))
        for i, frame in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(rgb_to_yuv420p(frame), format="yuv420p")
            vf.pts = i
            for packet in stream.encode(vf):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def rgb_to_yuv420p(rgb: np.ndarray) -> np.ndarray:
    """BT.601 limited-range RGB -> planar YUV 4:2:0 in integer arithmetic, (H*3/2, W) uint8.

    Done here rather than by FFmpeg's swscale, whose threaded conversion made the encoded bytes
    vary from run to run.
    """
    x = rgb.astype(np.int32)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    y = ((66 * r + 129 * g + 25 * b + 128) >> 8) + 16
    u = ((-38 * r - 74 * g + 112 * b + 128) >> 8) + 128
    v = ((112 * r - 94 * g - 18 * b + 128) >> 8) + 128
    h, w = y.shape

    def sub(c):
        return (c.reshape(h // 2, 2, w // 2, 2).sum(axis=(1, 3)) + 2) >> 2

    planes = [y.reshape(-1), sub(u).reshape(-1), sub(v).reshape(-1)]
    return np.clip(np.concatenate(planes), 0, 255).astype(np.uint8).reshape(h * 3 // 2, w)


def frames_to_uint8(video: np.ndarray) -> np.ndarray:
    """diffusers' float frames in [0, 1] (F, H, W, C) to uint8, rounding to nearest."""
    return np.clip(np.rint(np.asarray(video, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)


class CorruptVideo(ValueError):
    """The file is not a decodable video (truncated, corrupt, or empty)."""


# Frames up to this many pixels are decoded on the calling thread (same frames, less overhead).
_SMALL_FRAME_PIXELS = 256 * 256
_LOCAL = threading.local()


def _reformatter():
    """One swscale context per thread, reused across frames and files: `VideoFrame.to_ndarray(format=
    "rgb24")` builds a new one for every frame, which cost more than decoding a 64x64 frame."""
    from av.video.reformatter import VideoReformatter

    if getattr(_LOCAL, "reformatter", None) is None:
        _LOCAL.reformatter = VideoReformatter()
    return _LOCAL.reformatter


def _source(path_or_bytes: str | Path | bytes, name: str | None) -> tuple[object, str]:
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        label = name or f"<{len(path_or_bytes)} bytes>"
        if len(path_or_bytes) == 0:
            raise CorruptVideo(f"video {label}: empty input")
        return io.BytesIO(bytes(path_or_bytes)), label
    path = Path(path_or_bytes)
    if not path.is_file():
        raise FileNotFoundError(f"video {path}: no such file")
    return str(path), name or str(path)


def decode_mp4(path_or_bytes: str | Path | bytes, *, name: str | None = None) -> np.ndarray:
    """Decode every frame of a video to uint8 RGB, shape (F, H, W, 3).

    Accepts a path or the file's bytes. Raises `CorruptVideo` (naming the file) when the container
    or a packet cannot be decoded, or when no frame comes out; `FileNotFoundError` when a path does
    not exist.
    """
    import av

    source, label = _source(path_or_bytes, name)
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
