"""MP4 encoding with PyAV (FFmpeg's libx264) under fixed, recorded settings.

The MP4's SHA-256 is the on-chain commitment, so encoding must be a pure function of the frames:
one encoder thread (x264 output depends on its thread count), bit-exact container flags (no
library version strings), a fixed CRF and preset. Encoding the same frames twice gives the same
bytes on one machine; across FFmpeg builds the settings are recorded with every video.
"""

from __future__ import annotations

import io
from fractions import Fraction
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


def decode_mp4(data: bytes) -> np.ndarray:
    """Decode MP4 bytes to uint8 frames (F, H, W, 3)."""
    import io

    import av

    with av.open(io.BytesIO(data)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    if not frames:
        raise ValueError("video holds no frames")
    return np.stack(frames)
