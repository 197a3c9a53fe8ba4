"""Preset specs: everything known about a model preset without importing torch (sizes, request
defaults, text length, expert boundary, scheduler settings). `models/presets.py` builds the
pipelines; `models/request.py` takes a preset's request defaults from here.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Official A14B defaults (facts.md section 1).
A14B_DEFAULTS: dict[str, Any] = {
    "width": 832,
    "height": 480,
    "frames": 81,
    "fps": 16,
    "steps": 40,
    "guidance_high": 4.0,
    "guidance_low": 3.0,
    "shift": 12.0,
}

BOUNDARY_RATIO = 0.875  # Wan2.2-T2V-A14B high/low expert switch (facts.md section 1)

# UniPC flow-matching scheduler as shipped with Wan2.2-T2V-A14B-Diffusers; the shift comes from
# the request (official default 12.0).
SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "solver_order": 2,
    "prediction_type": "flow_prediction",
    "use_flow_sigmas": True,
    "flow_shift": A14B_DEFAULTS["shift"],
    "predict_x0": True,
    "solver_type": "bh2",
    "lower_order_final": True,
    "final_sigmas_type": "zero",
    "timestep_spacing": "linspace",
}

_TINY_TRANSFORMER = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=2,
    attention_head_dim=12,
    in_channels=16,
    out_channels=16,
    text_dim=32,
    freq_dim=256,
    ffn_dim=32,
    num_layers=2,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    rope_max_seq_len=32,
)
_TINY_VAE = dict(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True])
_TINY_TEXT = dict(
    vocab_size=384, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
    relative_attention_num_buckets=8, relative_attention_max_distance=32,
    feed_forward_proj="gated-gelu", dropout_rate=0.0, is_encoder_decoder=False, use_cache=False,
)

_SMALL_TRANSFORMER = dict(
    _TINY_TRANSFORMER, num_attention_heads=8, attention_head_dim=64, text_dim=256, ffn_dim=1536,
    num_layers=8, rope_max_seq_len=1024,
)
_SMALL_VAE = dict(base_dim=32, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=1, temperal_downsample=[False, True, True])
_SMALL_TEXT = dict(_TINY_TEXT, d_model=256, d_kv=32, d_ff=512, num_layers=4, num_heads=8,
                   relative_attention_num_buckets=32, relative_attention_max_distance=128)

# Wan2.2-T2V-A14B (facts.md section 1): per expert 14.29 B parameters.
_A14B_TRANSFORMER = dict(
    patch_size=(1, 2, 2), num_attention_heads=40, attention_head_dim=128, in_channels=16, out_channels=16,
    text_dim=4096, freq_dim=256, ffn_dim=13824, num_layers=40, cross_attn_norm=True,
    qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024,
)
# The Wan2.1 VAE (AutoencoderKLWan defaults) used by T2V-A14B.
_A14B_VAE = dict(base_dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, temperal_downsample=[False, True, True])
# UMT5-XXL encoder (google/umt5-xxl): 5.68 B parameters in the encoder.
_A14B_TEXT = dict(
    vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
    relative_attention_num_buckets=32, relative_attention_max_distance=128,
    feed_forward_proj="gated-gelu", dropout_rate=0.0, is_encoder_decoder=False, use_cache=False,
)

_SCALED_DEFAULTS = {
    "tiny": dict(A14B_DEFAULTS, width=64, height=64, frames=9, steps=4),
    "small": dict(A14B_DEFAULTS, width=256, height=256, frames=17, steps=10),
    "shapes": dict(A14B_DEFAULTS, width=32, height=32, frames=9, fps=8, steps=8, shift=3.0),
}
SHAPES_DIR = Path(__file__).parent / "weights" / "shapes"  # trained weights (models/shapes_train.py)


@dataclass(frozen=True)
class PresetSpec:
    """Everything known about a preset without importing torch."""

    name: str
    transformer_config: dict[str, Any]
    vae_config: dict[str, Any]
    text_config: dict[str, Any]
    request_defaults: dict[str, Any]
    text_len: int = 512
    boundary_ratio: float = BOUNDARY_RATIO
    vae_stride: tuple[int, int, int] = (4, 8, 8)
    z_dim: int = 16
    path: str | None = None  # set for path:DIR presets
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def patch_size(self) -> tuple[int, int, int]:
        return tuple(self.transformer_config.get("patch_size", (1, 2, 2)))  # type: ignore[return-value]

    @property
    def num_layers(self) -> int:
        return int(self.transformer_config["num_layers"])

    @property
    def is_random(self) -> bool:
        return self.path is None


def _spec(name, t, v, x, defaults, text_len, description) -> PresetSpec:
    return PresetSpec(name=name, transformer_config=t, vae_config=v, text_config=x,
                      request_defaults=defaults, text_len=text_len, description=description)


PRESETS: dict[str, PresetSpec] = {
    "tiny": _spec("tiny", _TINY_TRANSFORMER, _TINY_VAE, _TINY_TEXT, _SCALED_DEFAULTS["tiny"], 64,
                  "diffusers' Wan2.2 test sizes; CPU, well under a second"),
    "tiny-lite": _spec("tiny-lite", dict(_TINY_TRANSFORMER, num_layers=1), _TINY_VAE, _TINY_TEXT,
                       _SCALED_DEFAULTS["tiny"], 64, "tiny with one transformer layer (a smaller model)"),
    "small": _spec("small", _SMALL_TRANSFORMER, _SMALL_VAE, _SMALL_TEXT, _SCALED_DEFAULTS["small"], 128,
                   "same architecture, ~30 M parameters per expert; GPU experiments"),
    "small-lite": _spec("small-lite", dict(_SMALL_TRANSFORMER, num_layers=4), _SMALL_VAE, _SMALL_TEXT,
                        _SCALED_DEFAULTS["small"], 128, "small with half the layers (a smaller model)"),
    "a14b-random": _spec("a14b-random", _A14B_TRANSFORMER, _A14B_VAE, _A14B_TEXT, dict(A14B_DEFAULTS), 512,
                         "exact Wan2.2-T2V-A14B configuration with random weights; GPU"),
}


def _shipped(name: str, root: Path, defaults: dict[str, Any], text_len: int, description: str) -> PresetSpec:
    """A trained diffusers directory shipped in the repository, loaded offline like `path:DIR`."""
    spec = preset_spec(f"path:{root}")
    return dataclasses.replace(spec, name=name, request_defaults=defaults, text_len=text_len, description=description)


def preset_names() -> list[str]:
    return [*PRESETS, "path:DIR"]


def preset_spec(name: str) -> PresetSpec:
    """The spec of a preset name; `path:DIR` reads DIR/transformer/config.json."""
    if name in PRESETS:
        return PRESETS[name]
    if name.startswith("path:"):
        root = Path(name[5:]).expanduser()
        index = root / "model_index.json"
        if not index.is_file():
            raise ValueError(f"path preset {str(root)!r} is not a diffusers directory (no model_index.json)")
        tcfg = _read_json(root / "transformer" / "config.json")
        vcfg = _read_json(root / "vae" / "config.json")
        xcfg = _read_json(root / "text_encoder" / "config.json")
        boundary = _read_json(index).get("boundary_ratio") or BOUNDARY_RATIO
        # A random preset saved by models.engines.preset_dir keeps its own defaults and text length.
        saved = _read_json(root / "t2vsim_preset.json") if (root / "t2vsim_preset.json").is_file() else {}
        return PresetSpec(name=name, transformer_config=tcfg, vae_config=vcfg, text_config=xcfg,
                          request_defaults=dict(saved.get("request_defaults") or A14B_DEFAULTS),
                          text_len=int(saved.get("text_len", 512)), boundary_ratio=float(boundary),
                          path=str(root), description=f"local diffusers directory {root}")
    raise ValueError(f"unknown preset {name!r}; allowed: {', '.join(preset_names())}")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"path preset: missing {path}") from None


if (SHAPES_DIR / "model_index.json").is_file():
    PRESETS["shapes"] = _shipped("shapes", SHAPES_DIR, _SCALED_DEFAULTS["shapes"], 32,
                                 "trained on procedural shapes (models/weights/shapes/CARD.md); CPU, 32x32")
