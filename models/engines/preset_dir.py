"""A random preset saved once as a local diffusers directory, which every engine can load.

`preset_dir("tiny", weights_seed)` builds the preset in float32 (the seeded draws themselves; a
lower dtype is a cast at load time), writes it with diffusers' `save_pretrained` (model_index.json,
tokenizer/, text_encoder/, vae/, transformer/, transformer_2/, scheduler/) and returns the
directory; later calls return the same directory. Directories are cached under
`$T2VSIM_CACHE_DIR/presets` (default `~/.cache/t2vsim/presets`), named by preset, weights seed and a
digest of the preset's configuration, written to a temporary directory and renamed, under a file
lock, so two processes never see half a directory. `t2vsim_preset.json` beside the model files
names what was saved, so `path:DIR` on it keeps the preset's request defaults and text length.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
from pathlib import Path

from models.io import rebuilt_dir
from models.presets import SCHEDULER_CONFIG, preset_spec

MARKER = "t2vsim_preset.json"


def cache_root() -> Path:
    """Where saved presets live: $T2VSIM_CACHE_DIR, else $XDG_CACHE_HOME/t2vsim, else ~/.cache/t2vsim."""
    env = os.environ.get("T2VSIM_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "t2vsim"


def preset_digest(preset: str, weights_seed: int) -> str:
    spec = preset_spec(preset)
    blob = json.dumps({"spec": dataclasses.asdict(spec), "scheduler": SCHEDULER_CONFIG, "weights_seed": weights_seed,
                       "format": 1}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


@contextlib.contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def preset_dir(preset: str, weights_seed: int = 0) -> Path:
    """The diffusers directory of `preset` (saved on first use for a random preset; `path:DIR` as is)."""
    spec = preset_spec(preset)
    if not spec.is_random:
        return Path(spec.path)
    if weights_seed < 0:
        raise ValueError(f"weights_seed must be >= 0, got {weights_seed}")
    root = cache_root() / "presets"
    target = root / f"{preset}-w{weights_seed}-{preset_digest(preset, weights_seed)}"
    if (target / MARKER).is_file():
        return target
    with _locked(root / f".{target.name}.lock"):
        if (target / MARKER).is_file():  # another process saved it while this one waited
            return target
        _save(preset, weights_seed, target)
    return target


def _save(preset: str, weights_seed: int, target: Path) -> None:
    from models.presets import build_random
    from models.request import Runtime

    spec = preset_spec(preset)
    pipe = build_random(spec, Runtime(dtype="float32"), weights_seed)  # not the shared cached pipeline
    with rebuilt_dir(target) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
        (tmp / MARKER).write_text(json.dumps({
            "preset": preset, "weights_seed": weights_seed, "digest": preset_digest(preset, weights_seed),
            "text_len": spec.text_len, "request_defaults": spec.request_defaults, "dtype": "float32",
        }, indent=1))
