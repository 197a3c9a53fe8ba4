"""Video I/O: committed MP4s are hash-checked before decoding; corrupt files fail clearly."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from models.video import encode_mp4
from sim import video_io
from sim.video_io import CorruptVideo, VideoHashMismatch, decode_mp4, read_committed_video, sha256_file


@pytest.fixture(scope="module")
def clip():
    rng = np.random.default_rng(0)
    # smooth content (x264 keeps it well), 9 frames of 64x64
    yy, xx = np.mgrid[0:64, 0:64]
    frames = np.stack([np.stack([(xx * 4 + 7 * t) % 256, (yy * 4) % 256, ((xx + yy) * 2 + 3 * t) % 256], -1) for t in range(9)])
    frames = np.clip(frames + rng.integers(-2, 3, frames.shape), 0, 255).astype(np.uint8)
    return frames, encode_mp4(frames, fps=8)


def test_decode_roundtrip_close_to_source(clip, tmp_path):
    frames, mp4 = clip
    path = tmp_path / "video.mp4"
    path.write_bytes(mp4)
    out = read_committed_video(path, hashlib.sha256(mp4).hexdigest(), expected_frames=9)
    assert out.dtype == np.uint8 and out.shape == frames.shape
    # lossy (CRF 12, 4:2:0) but close
    assert np.abs(out.astype(int) - frames.astype(int)).mean() < 6
    assert np.array_equal(decode_mp4(mp4), out)  # bytes and path agree


def test_sha256_file_matches_hashlib(clip, tmp_path):
    _, mp4 = clip
    path = tmp_path / "v.mp4"
    path.write_bytes(mp4)
    assert sha256_file(path) == hashlib.sha256(mp4).hexdigest()


def test_hash_mismatch_rejected_before_decoding(clip, tmp_path, monkeypatch):
    _, mp4 = clip
    path = tmp_path / "video.mp4"
    path.write_bytes(mp4)
    wrong = "0" * 64

    def no_decode(*a, **k):
        raise AssertionError("decoded a file whose hash did not match")

    monkeypatch.setattr(video_io, "decode_mp4", no_decode)
    with pytest.raises(VideoHashMismatch) as err:
        read_committed_video(path, wrong)
    msg = str(err.value)
    assert str(path) in msg and wrong in msg and hashlib.sha256(mp4).hexdigest() in msg
    assert isinstance(err.value, ValueError)


@pytest.mark.parametrize("cut", [0.5, 0.9])
def test_truncated_file_is_corrupt(clip, tmp_path, cut):
    _, mp4 = clip
    data = mp4[: int(len(mp4) * cut)]
    path = tmp_path / "trunc.mp4"
    path.write_bytes(data)
    with pytest.raises(CorruptVideo, match="trunc.mp4"):
        read_committed_video(path, hashlib.sha256(data).hexdigest(), expected_frames=9)


def test_garbage_and_empty_inputs(tmp_path):
    with pytest.raises(CorruptVideo):
        decode_mp4(b"")
    with pytest.raises(CorruptVideo):
        decode_mp4(b"not a video at all" * 100)
    with pytest.raises(FileNotFoundError):
        decode_mp4(tmp_path / "missing.mp4")
    with pytest.raises(ValueError, match="64-character"):
        read_committed_video(tmp_path / "x.mp4", "abc")


@pytest.mark.parametrize("size", [(64, 64), (272, 320)])  # small frames decode on the calling thread
def test_decode_equals_pyav_frame_conversion(tmp_path, size):
    import av

    rng = np.random.default_rng(1)
    h, w = size
    frames = rng.integers(0, 256, (5, h, w, 3), dtype=np.uint8)
    path = tmp_path / "v.mp4"
    path.write_bytes(encode_mp4(frames, fps=8))
    with av.open(str(path)) as container:  # PyAV's own per-frame conversion
        expected = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    for _ in range(2):  # the reused converter gives the same frames every time
        assert np.array_equal(decode_mp4(path), expected)
