"""What a requester asks for (`GenerationRequest`) and how a machine runs it (`Runtime`).

Both are frozen pydantic models validated at the boundary: an invalid value is refused with a
message that names the field and what is allowed. Defaults follow the official Wan2.2-T2V-A14B
settings (Wan-Video/Wan2.2 `wan/configs`, see docs/facts.md section 1); the random presets used on
a CPU get scaled-down defaults from their `PresetSpec`.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from models.spec import A14B_DEFAULTS, preset_spec  # noqa: F401  (A14B_DEFAULTS re-exported)

DEFAULT_NEGATIVE_PROMPT = ""

# Upper bounds of a request (project choices: above the official A14B settings, 1280x720, 81 frames,
# 40 steps, with room to spare, and below sizes that only exhaust memory or run for days).
MAX_SIDE = 1920
MAX_FRAMES = 241
MAX_STEPS = 1000
MAX_FPS = 120
MAX_SHIFT = 100.0


def no_bool(v: Any, info) -> Any:
    """A before-validator: JSON/Python booleans are not numbers here (pydantic would read True as 1)."""
    if isinstance(v, bool):
        raise ValueError(f"{info.field_name} must be a number, got the boolean {v}")
    return v

Offload = Literal["none", "text-encoder", "all"]
OFFLOAD_MODES: tuple[str, ...] = ("none", "text-encoder", "all")


class GenerationRequest(BaseModel):
    """A text-to-video request as the chain records it.

    Fields left out take the defaults of the named preset (`model`): the official A14B settings for
    `a14b-random` and `path:DIR`, smaller sizes for `tiny` and `small`.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    model: str = Field("tiny", description="preset name: tiny, small, a14b-random, or path:DIR")
    prompt: str = Field(..., min_length=1, description="text prompt")
    negative_prompt: str = Field(DEFAULT_NEGATIVE_PROMPT, description="negative prompt (unconditional pass)")
    width: int = Field(description="frame width in pixels, a multiple of 16")
    height: int = Field(description="frame height in pixels, a multiple of 16")
    frames: int = Field(description="number of frames, of the form 4k+1")
    fps: int = Field(description="frames per second of the encoded video")
    steps: int = Field(description="denoising steps")
    guidance_high: float = Field(description="CFG scale of the high-noise expert (1.0 = no CFG)")
    guidance_low: float = Field(description="CFG scale of the low-noise expert (1.0 = no CFG)")
    shift: float = Field(description="flow-matching timestep shift of the scheduler")
    seed: int = Field(0, description="seed of the initial noise (CPU generator)")
    truncate_prompt: bool = Field(
        False, description="truncate a prompt longer than the text encoder's limit instead of refusing it"
    )

    @model_validator(mode="before")
    @classmethod
    def _preset_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        model = data.get("model", "tiny")
        try:
            spec = preset_spec(model)
        except ValueError as err:
            raise ValueError(f"model: {err}") from None
        merged = dict(spec.request_defaults)
        merged.update({k: v for k, v in data.items() if v is not None})
        return merged

    _no_bool = field_validator("width", "height", "frames", "fps", "steps", "seed", "guidance_high",
                               "guidance_low", "shift", mode="before")(no_bool)

    @field_validator("prompt")
    @classmethod
    def _prompt_text(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("prompt must contain text, got only whitespace")
        return v

    @field_validator("width", "height")
    @classmethod
    def _multiple_of_16(cls, v: int, info) -> int:
        if v < 16 or v % 16 or v > MAX_SIDE:
            raise ValueError(f"{info.field_name} must be a positive multiple of 16 up to {MAX_SIDE}, got {v}")
        return v

    @field_validator("frames")
    @classmethod
    def _frames_4k_plus_1(cls, v: int) -> int:
        if v < 1 or (v - 1) % 4 or v > MAX_FRAMES:
            raise ValueError(f"frames must be of the form 4k+1 (1, 5, 9, ..., 81) up to {MAX_FRAMES}, got {v}")
        return v

    @field_validator("steps", "fps")
    @classmethod
    def _positive_up_to_max(cls, v: int, info) -> int:
        hi = {"steps": MAX_STEPS, "fps": MAX_FPS}[info.field_name]
        if not 1 <= v <= hi:
            raise ValueError(f"{info.field_name} must be in 1..{hi}, got {v}")
        return v

    @field_validator("seed")
    @classmethod
    def _seed_range(cls, v: int) -> int:
        if v < 0 or v >= 2**63:
            raise ValueError(f"seed must be in 0..2**63-1, got {v}")
        return v

    @field_validator("guidance_high", "guidance_low")
    @classmethod
    def _guidance_range(cls, v: float, info) -> float:
        if not (0.0 <= v <= 50.0):
            raise ValueError(f"{info.field_name} must be in 0..50, got {v}")
        return v

    @field_validator("shift")
    @classmethod
    def _shift_positive(cls, v: float) -> float:
        if not 0 < v <= MAX_SHIFT:
            raise ValueError(f"shift must be in (0, {MAX_SHIFT:g}], got {v}")
        return v

    # ---- derived quantities -------------------------------------------------------------
    @property
    def uses_cfg_high(self) -> bool:
        return self.guidance_high > 1.0

    @property
    def uses_cfg_low(self) -> bool:
        return self.guidance_low > 1.0

    def latent_shape(self, vae_stride: tuple[int, int, int] = (4, 8, 8), z_dim: int = 16) -> tuple[int, ...]:
        """Shape of the initial latent, batch 1: (1, z, (F-1)//4+1, H/8, W/8)."""
        st, sh, sw = vae_stride
        return (1, z_dim, (self.frames - 1) // st + 1, self.height // sh, self.width // sw)

    def latent_tokens(self, vae_stride=(4, 8, 8), patch=(1, 2, 2)) -> int:
        """Transformer tokens (latent patches) per forward pass."""
        _, _, t, h, w = self.latent_shape(vae_stride)
        return (t // patch[0]) * (h // patch[1]) * (w // patch[2])

    def key(self) -> str:
        """A stable content key (SHA-256 of the canonical JSON) used to name stored artifacts."""
        import hashlib

        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:16]


DType = Literal["bfloat16", "float32", "float16"]
VaeDType = Literal["float32", "bfloat16"]


class Runtime(BaseModel):
    """How a machine runs a request. Benign deviations change only this.

    `apply()` pins everything the object names for the duration of a `with` block and restores
    the previous global torch settings afterwards.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    _no_bool = field_validator("batch_size", "threads", mode="before")(no_bool)

    device: str = Field("cpu", description="torch device: cpu, cuda, cuda:N")
    dtype: DType = Field(
        "bfloat16",
        description="transformer and text-encoder dtype; bf16 keeps diffusers' float32 islands "
        "(_keep_in_fp32_modules) as the released model runs; the VAE runs in float32",
    )
    attention_backend: str = Field("native", description="diffusers attention backend name")
    batch_size: int = Field(1, ge=1, le=64, description="requests generated together in one batch")
    threads: int | None = Field(None, ge=1, le=1024, description="CPU intra-op threads (None: leave as is)")
    deterministic: bool = Field(True, description="torch.use_deterministic_algorithms and cuDNN determinism")
    compile: bool | Literal["regional"] = Field(
        False,
        description="torch.compile the transformers: true compiles each expert's whole forward; 'regional' "
        "compiles each repeated transformer block (one graph shared by the blocks, compiled in seconds, "
        "not minutes); false runs eager",
    )
    vae_dtype: VaeDType = Field(
        "float32", description="VAE decode dtype: float32 (as the released model runs) or bfloat16 (faster, "
        "a close but different video)",
    )
    tf32: bool = Field(False, description="allow TF32 matrix products and convolutions on the GPU")
    offload: Offload = Field(
        "none",
        description="which big components live in host memory and visit the device only while they run: "
        "'none'; 'text-encoder' (the experts stay resident: what a PoC node or a 96+ GB card runs); "
        "'all' (text encoder and both experts: A14B's 73 GB of weights do not fit an 80 GB card with "
        "activations). true/false mean 'all'/'none'",
    )

    engine: Literal["diffusers", "vllm-omni"] = Field(
        "diffusers",
        description="inference engine: 'diffusers' (in-process WanPipeline) or 'vllm-omni' (a vLLM-Omni "
        "server in its own environment, models/engines/vllm_omni.py)",
    )
    schedule: Literal["engine", "wan"] = Field(
        "engine",
        description="denoising schedule: 'engine' (each engine's own: diffusers' UniPC config of the directory, "
        "vLLM-Omni's native one) or 'wan' (the native Wan2.2 sigmas vLLM-Omni uses, pinned in diffusers too; "
        "models/schedules.py)",
    )

    @field_validator("offload", mode="before")
    @classmethod
    def _offload(cls, v):
        if isinstance(v, bool):
            return "all" if v else "none"
        if v not in OFFLOAD_MODES:
            raise ValueError(f"offload must be one of {list(OFFLOAD_MODES)} (or true/false), got {v!r}")
        return v

    @field_validator("compile", mode="before")
    @classmethod
    def _compile(cls, v):
        if isinstance(v, bool) or v == "regional":
            return v
        if v in ("true", "false"):  # as pydantic reads a boolean given as text
            return v == "true"
        raise ValueError(f"compile must be true, false or 'regional', got {v!r}")

    @property
    def vae_torch_dtype(self):
        import torch

        return getattr(torch, self.vae_dtype)

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        base = v.split(":", 1)[0]
        if base not in ("cpu", "cuda"):
            raise ValueError(f"device must be cpu, cuda or cuda:N, got {v!r}")
        if ":" in v and not v.split(":", 1)[1].isdigit():
            raise ValueError(f"device must be cpu, cuda or cuda:N, got {v!r}")
        return v

    @field_validator("attention_backend")
    @classmethod
    def _backend(cls, v: str) -> str:
        from diffusers.models.attention_dispatch import AttentionBackendName

        allowed = sorted(b.value for b in AttentionBackendName)
        if v not in allowed:
            raise ValueError(f"attention_backend must be one of {allowed}, got {v!r}")
        return v

    def check_device(self) -> "Runtime":
        """Refuse a CUDA device this machine does not have (before any work starts)."""
        if self.device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                raise ValueError(f"device: {self.device!r} asked for but no CUDA device is available; use cpu")
            index = int(self.device.split(":", 1)[1]) if ":" in self.device else 0
            if index >= torch.cuda.device_count():
                raise ValueError(f"device: {self.device!r} asked for but this machine has "
                                 f"{torch.cuda.device_count()} CUDA device(s)")
        return self

    @property
    def torch_dtype(self):
        import torch

        return getattr(torch, self.dtype)

    @contextlib.contextmanager
    def apply(self) -> Iterator[None]:
        """Pin threads, TF32, determinism for the block; restore the previous settings after."""
        import torch

        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device: {self.device!r} asked for but no CUDA device is available")
        saved = (
            torch.get_num_threads(),
            torch.backends.cuda.matmul.allow_tf32,
            torch.backends.cudnn.allow_tf32,
            torch.are_deterministic_algorithms_enabled(),
            torch.backends.cudnn.deterministic,
            torch.backends.cudnn.benchmark,
            os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
        )
        try:
            if self.threads is not None:
                torch.set_num_threads(self.threads)
            torch.backends.cuda.matmul.allow_tf32 = self.tf32
            torch.backends.cudnn.allow_tf32 = self.tf32
            if self.deterministic:
                os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(self.deterministic, warn_only=True)
            torch.backends.cudnn.deterministic = self.deterministic
            torch.backends.cudnn.benchmark = not self.deterministic
            yield
        finally:
            torch.set_num_threads(saved[0])
            torch.backends.cuda.matmul.allow_tf32 = saved[1]
            torch.backends.cudnn.allow_tf32 = saved[2]
            torch.use_deterministic_algorithms(saved[3])
            torch.backends.cudnn.deterministic = saved[4]
            torch.backends.cudnn.benchmark = saved[5]
            if saved[6] is None:
                os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
            else:
                os.environ["CUBLAS_WORKSPACE_CONFIG"] = saved[6]
