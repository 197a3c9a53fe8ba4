"""Pricing text-to-video inference on the chain: compute units, the utilisation price rule, and
the calibration and fairness of the unit.

The model (the proposal, `seed/000_*.txt`, "Separate pricing model for DiTs"):

    units(request) = forward_passes x (alpha x P^2 + beta x P) / unit_seconds

- P = latent patches (transformer tokens) per forward pass, from width, height, frames, the VAE
  stride and the patch size (`GenerationRequest.latent_tokens`).
- forward_passes = per denoising step 1, or 2 where that step's expert runs classifier-free
  guidance. Wan2.2-T2V-A14B switches from the high-noise to the low-noise expert at
  t >= boundary_ratio x 1000 (0.875), and each expert has its own guidance scale, so a request with
  guidance_high > 1 and guidance_low <= 1 pays two passes only for the high-noise steps. The
  timesteps are those of the pipeline's UniPC flow scheduler (`models.engine.schedule`);
  `scheduler_timesteps` reproduces them without importing diffusers (a test checks they agree).
- unit_seconds = alpha x P0^2 + beta x P0, one forward pass at the smallest supported setting (P0).
- alpha, beta (seconds per pass per patch^2 and per patch) come from a calibration per model and GPU
  type: `calibrate()` times forward passes over a grid of sizes and fits them by least squares.
  The default (A14B on one H100, bf16) is docs/facts.md section 1:
  seconds = 1.454e-9 N^2 + 5.557e-5 N + 0.020. The proposal's formula has no constant; the
  fit's constant (`gamma_seconds`, fixed per-pass overhead) is kept for the true GPU time in the
  fairness report and can be charged with `charge_constant=True`.

Stage-complete pricing (optional; off by default, so the above is exactly the default). A request
also spends the text encoder, the VAE decode and non-model time (latents to frames, the MP4; wall
minus the model stages), which the proposal's formula leaves unpriced. `PricingParams` holds them
like the constant, always in `gpu_seconds` and priced only when named in `charge_stages`:

    units = [forward_passes x pass_seconds(P) + text_encoder_seconds          ("text_encoder")
             + vae_seconds_per_pixel x W x H x frames                          ("vae")
             + overhead_seconds + overhead_seconds_per_pixel x W x H x frames  ("overhead")] / unit_seconds

pass_seconds includes gamma_seconds with `charge_constant`; the unit stays one pass at the smallest
setting, so the smallest request costs more than one unit once stages are charged. All terms are
0 and `charge_stages` empty by default. `fit_stages` fits them to a `benchmarks/gpu_pricing.py`
result (passes, VAE decodes, generations with wall seconds); `PricingParams.from_stage_fit` /
`StageFit.pricing` build the params with each fit's quality (pass R^2, VAE R^2, the overhead's R^2
and how many generations it rests on); `stage_calibration` writes them into a calibration JSON that
`PricingParams.from_calibration` reads back. `measured_fairness` compares the price models
(MEASURED_VARIANTS) over the grid and runs `held_out_checks` (leave-one-out of the pass and VAE fits,
each real generation predicted by a fit that did not see it).

The unit price (an integer number of ngonka per unit) follows Gonka's per-model utilisation rule
each block (`next_unit_price`, decimal arithmetic as in Gonka's keeper). Escrow is exact: the
units are known when the request is made.
"""

from __future__ import annotations

import functools
import math
import os
import time
from pathlib import Path
from decimal import ROUND_CEILING, ROUND_DOWN, Decimal
from typing import TYPE_CHECKING, Any, Iterable, Literal, Optional, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

if TYPE_CHECKING:  # pragma: no cover
    from models.request import GenerationRequest, Runtime

# docs/facts.md section 1: one A14B expert forward pass on one H100 80GB, bf16, batch 1, text length 512.
A14B_H100_ALPHA_SECONDS = 1.454e-9
A14B_H100_BETA_SECONDS = 5.557e-5
A14B_H100_GAMMA_SECONDS = 0.020
A14B_H100_R2 = 0.99999

# Wan2.2-T2V-A14B supported sizes (docs/facts.md section 1: 1280x720, 720x1280, 832x480, 480x832).
A14B_SIZES: tuple[tuple[int, int], ...] = ((832, 480), (480, 832), (1280, 720), (720, 1280))

# UniPC flow scheduler constants as shipped with Wan2.2 (models.presets.SCHEDULER_CONFIG).
NUM_TRAIN_TIMESTEPS = 1000
BOUNDARY_RATIO = 0.875


# The stages a stage-complete price can charge on top of the passes, and the fields that hold each.
STAGES: tuple[str, ...] = ("text_encoder", "vae", "overhead")
# The stage-complete fields PricingParams, Calibration and StageFit share (seconds and fit quality).
STAGE_TERMS: tuple[str, ...] = ("text_encoder_seconds", "vae_seconds_per_pixel", "vae_r2", "overhead_seconds",
                                "overhead_seconds_per_pixel", "overhead_r2", "overhead_points")
STAGE_FIELDS: dict[str, tuple[str, ...]] = {"text_encoder": ("text_encoder_seconds",),
                                            "vae": ("vae_seconds_per_pixel",),
                                            "overhead": ("overhead_seconds", "overhead_seconds_per_pixel")}


class PricingError(ValueError):
    """A pricing input is out of range or a calibration cannot be fitted."""


@functools.lru_cache(maxsize=4096)
def scheduler_timesteps(steps: int, shift: float) -> tuple[float, ...]:
    """Timesteps of diffusers' UniPC scheduler with `use_flow_sigmas=True`, `timestep_spacing=
    "linspace"`, for `steps` steps and flow shift `shift` (without importing diffusers)."""
    if steps < 1:
        raise PricingError(f"steps must be >= 1, got {steps}")
    n = NUM_TRAIN_TIMESTEPS
    sigmas = np.linspace(1, 1 / n, steps + 1)[:-1]
    sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
    if abs(sigmas[0] - 1) < 1e-6:  # diffusers nudges a first sigma of 1 down (log of zero otherwise)
        sigmas[0] -= 1e-6
    return tuple(float(t) for t in (sigmas * n).astype(np.int64))


@functools.lru_cache(maxsize=4096)
def forward_passes_for(steps: int, shift: float, cfg_high: bool, cfg_low: bool,
                       boundary_ratio: float = BOUNDARY_RATIO) -> int:
    """Transformer passes: per step 2 where that step's expert uses CFG, else 1."""
    boundary = boundary_ratio * NUM_TRAIN_TIMESTEPS
    return sum((2 if cfg_high else 1) if t >= boundary else (2 if cfg_low else 1)
               for t in scheduler_timesteps(steps, shift))


def latent_patches(width: int, height: int, frames: int, vae_stride=(4, 8, 8), patch=(1, 2, 2)) -> int:
    """Transformer tokens per forward pass (same arithmetic as GenerationRequest.latent_tokens)."""
    t = (frames - 1) // vae_stride[0] + 1
    h, w = height // vae_stride[1], width // vae_stride[2]
    return (t // patch[0]) * (h // patch[1]) * (w // patch[2])


class PricingParams(BaseModel):
    """The DiT pricing model of one model on one GPU type (defaults: A14B on an H100, docs/facts.md)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    alpha_seconds: float = Field(A14B_H100_ALPHA_SECONDS, ge=0,
                                 description="seconds per forward pass per patch^2 (docs/facts.md H100 fit)")
    beta_seconds: float = Field(A14B_H100_BETA_SECONDS, ge=0,
                                description="seconds per forward pass per patch (docs/facts.md H100 fit)")
    gamma_seconds: float = Field(A14B_H100_GAMMA_SECONDS, ge=0,
                                 description="fixed seconds per forward pass (docs/facts.md H100 fit); "
                                 "charged only with charge_constant")
    charge_constant: bool = Field(False, description="add gamma_seconds to the priced pass cost "
                                  "(the proposal's formula has no constant: False)")
    fit_r2: float | None = Field(A14B_H100_R2, description="R^2 of the calibration these come from")
    source: str = Field("docs/facts.md section 1: A14B expert, one H100, bf16", description="where alpha/beta come from")
    vae_stride: tuple[int, int, int] = Field((4, 8, 8), description="Wan2.2 VAE stride (docs/facts.md)")
    patch_size: tuple[int, int, int] = Field((1, 2, 2), description="Wan2.2 transformer patch size (docs/facts.md)")
    boundary_ratio: float = Field(BOUNDARY_RATIO, gt=0, lt=1, description="A14B expert switch (docs/facts.md)")
    min_width: int = Field(480, ge=16, description="smallest supported width (A14B sizes, docs/facts.md)")
    min_height: int = Field(480, ge=16, description="smallest supported height (A14B sizes, docs/facts.md)")
    min_frames: int = Field(5, ge=1, description="smallest supported frame count (4k+1); project choice")
    # Stage-complete terms (0 by default: the proposal's formula prices transformer passes only). Like
    # gamma_seconds they always count in gpu_seconds and are priced only when named in charge_stages.
    text_encoder_seconds: float = Field(0.0, ge=0, allow_inf_nan=False, description="text encoder seconds per "
                                        "request (stage fit); priced with 'text_encoder' in charge_stages")
    vae_seconds_per_pixel: float = Field(0.0, ge=0, allow_inf_nan=False, description="VAE decode seconds per "
                                         "decoded pixel, width x height x frames (stage fit); priced with 'vae'")
    overhead_seconds: float = Field(0.0, ge=0, allow_inf_nan=False, description="non-model seconds per request "
                                    "(wall minus the model stages; stage fit); priced with 'overhead'")
    overhead_seconds_per_pixel: float = Field(0.0, ge=0, allow_inf_nan=False, description="non-model seconds per "
                                              "decoded pixel (frames, MP4; stage fit); priced with 'overhead'")
    charge_stages: tuple[Literal["text_encoder", "vae", "overhead"], ...] = Field(
        (), description="stages priced on top of the passes (empty: the proposal's formula)")
    vae_r2: float | None = Field(None, description="R^2 of the VAE fit these come from")
    overhead_r2: float | None = Field(None, description="R^2 of the overhead fit (None with fewer than 2 points)")
    overhead_points: int = Field(0, ge=0, description="generations (wall seconds) the overhead fit rests on")

    @model_validator(mode="after")
    def _positive(self) -> "PricingParams":
        if self.pass_seconds(self.unit_patches) <= 0:
            raise PricingError("alpha_seconds, beta_seconds (and gamma_seconds if charged) give a zero unit; "
                               "at least one must be > 0")
        if len(set(self.charge_stages)) != len(self.charge_stages):
            raise PricingError(f"charge_stages names a stage twice: {self.charge_stages}")
        for stage in self.charge_stages:
            if not any(getattr(self, f) for f in STAGE_FIELDS[stage]):
                fields = STAGE_FIELDS[stage]
                raise PricingError(f"charge_stages: {stage!r} is charged but {' and '.join(fields)} "
                                   f"{'is' if len(fields) == 1 else 'are'} 0: it would price nothing")
        return self

    def stage_seconds(self, width: int, height: int, frames: int, charged_only: bool = False) -> float:
        """Seconds of the non-pass stages of a request: all of them (true time), or only those charged."""
        px = width * height * frames
        terms = {"text_encoder": self.text_encoder_seconds, "vae": self.vae_seconds_per_pixel * px,
                 "overhead": self.overhead_seconds + self.overhead_seconds_per_pixel * px}
        return float(sum(v for k, v in terms.items() if not charged_only or k in self.charge_stages))

    @property
    def unit_patches(self) -> int:
        """P0: latent patches of the smallest supported setting."""
        return latent_patches(self.min_width, self.min_height, self.min_frames, self.vae_stride, self.patch_size)

    def pass_seconds(self, patches: float | np.ndarray) -> float | np.ndarray:
        """Priced seconds of one forward pass over `patches` tokens."""
        s = self.alpha_seconds * np.square(patches) + self.beta_seconds * np.asarray(patches)
        if self.charge_constant:
            s = s + self.gamma_seconds
        return s if isinstance(patches, np.ndarray) else float(s)

    def true_pass_seconds(self, patches: float | np.ndarray) -> float | np.ndarray:
        """The fitted GPU time of one pass, constant included (what a GPU actually spends)."""
        s = self.alpha_seconds * np.square(patches) + self.beta_seconds * np.asarray(patches) + self.gamma_seconds
        return s if isinstance(patches, np.ndarray) else float(s)

    @property
    def unit_seconds(self) -> float:
        """Priced seconds of one unit: one forward pass at the smallest supported setting."""
        return float(self.pass_seconds(self.unit_patches))

    def units(self, *, width: int, height: int, frames: int, steps: int, guidance_high: float,
              guidance_low: float, shift: float) -> float:
        """Compute units of a request (float; the chain prices them as ceil(units x price))."""
        for name, v in (("width", width), ("height", height), ("frames", frames), ("steps", steps)):
            if v < 1:
                raise PricingError(f"{name} must be >= 1, got {v}")
        if shift <= 0:
            raise PricingError(f"shift must be > 0, got {shift}")
        p = latent_patches(width, height, frames, self.vae_stride, self.patch_size)
        passes = forward_passes_for(steps, float(shift), guidance_high > 1.0, guidance_low > 1.0, self.boundary_ratio)
        seconds = passes * self.pass_seconds(p)
        if self.charge_stages:
            seconds += self.stage_seconds(width, height, frames, charged_only=True)
        return seconds / self.unit_seconds

    def units_of(self, request: "GenerationRequest") -> float:
        return self.units(width=request.width, height=request.height, frames=request.frames, steps=request.steps,
                          guidance_high=request.guidance_high, guidance_low=request.guidance_low, shift=request.shift)

    def gpu_seconds(self, *, width: int, height: int, frames: int, steps: int, guidance_high: float,
                    guidance_low: float, shift: float) -> float:
        """True seconds of the request on the calibrated GPU: every pass, constant included, plus the
        stage terms held (text encoder, VAE, overhead; all 0 by default), charged or not."""
        p = latent_patches(width, height, frames, self.vae_stride, self.patch_size)
        passes = forward_passes_for(steps, float(shift), guidance_high > 1.0, guidance_low > 1.0, self.boundary_ratio)
        seconds = passes * self.true_pass_seconds(p)
        extra = self.stage_seconds(width, height, frames)
        return seconds + extra if extra else seconds

    @classmethod
    def from_calibration(cls, path: str | os.PathLike, **overrides: Any) -> "PricingParams":
        """Pricing from a calibration JSON written by `Calibration.save`. The stage terms it carries are
        held (true time) and priced only as `charge_stages` / `charge_constant` in `overrides` say."""
        cal = Calibration.load(path)
        return cal.pricing(**{"source": f"calibration {cal.preset} on {cal.device} ({path})", **overrides})

    @classmethod
    def from_stage_fit(cls, fit: "StageFit", charge_stages: Sequence[str] | None = None, charge_constant: bool = True,
                       **overrides: Any) -> "PricingParams":
        """Stage-complete pricing from a `StageFit`, its fit quality stored (pass R^2, VAE R^2, overhead
        R^2 and point count). `charge_stages` None: every stage the fit holds (non-zero terms) and,
        by default, the per-pass constant; () with charge_constant=False is the proposal's formula."""
        terms = fit.terms()
        if charge_stages is None:
            charge_stages = [s for s in STAGES if any(terms[f] for f in STAGE_FIELDS[s])]
        return cls(**{**terms, "charge_stages": tuple(charge_stages), "charge_constant": charge_constant,
                      "source": f"stage fit on {fit.device}", **overrides})


# ---------------------------------------------------------------------------------------------
# Gonka's utilisation price rule


class PriceRule(BaseModel):
    """Gonka's dynamic per-model price (keeper/dynamic_pricing.go, DefaultDynamicPricingParams), applied
    once per block: an integer price in ngonka per unit."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    base_unit_price_ngonka: int = Field(100, ge=0, description="price per unit at the start and after the grace "
                                        "period (Gonka BasePerTokenPrice 100 ngonka per token)")
    min_unit_price_ngonka: int = Field(1, ge=0, description="price floor (Gonka MinPerTokenPrice 1)")
    target_low: float = Field(0.4, ge=0, le=1, description="lower edge of the stability zone (Gonka "
                              "StabilityZoneLowerBound 0.40)")
    target_high: float = Field(0.6, ge=0, le=1, description="upper edge of the stability zone (Gonka "
                               "StabilityZoneUpperBound 0.60)")
    sensitivity: float = Field(0.05, ge=0, description="price change per unit of utilisation gap (Gonka "
                               "PriceElasticity 0.05); the per-block limits follow: 1 - low x e and "
                               "1 + (1 - high) x e (0.98 and 1.02 at Gonka's defaults)")
    window_seconds: float = Field(60.0, gt=0, description="rolling utilisation window (Gonka "
                                  "UtilizationWindowDuration 60 s; blocks = seconds // block seconds, >= 1)")
    grace_period_end_epoch: Optional[int] = Field(
        None, ge=0, description="before this epoch the price is grace_period_unit_price_ngonka and at it the base "
        "price (Gonka GracePeriodEndEpoch 90 with price 0: free inference); None: no grace period (project default, "
        "so that simulated epochs are priced)")
    grace_period_unit_price_ngonka: int = Field(0, ge=0, description="price during the grace period (Gonka "
                                                "GracePeriodPerTokenPrice 0)")

    @model_validator(mode="after")
    def _band(self) -> "PriceRule":
        if self.target_low > self.target_high:
            raise PricingError(f"target_low ({self.target_low}) must be <= target_high ({self.target_high})")
        return self

    def limits(self) -> tuple[Decimal, Decimal]:
        """(largest decrease factor, largest increase factor) per block: 1 - low x e, 1 + (1 - high) x e."""
        lo, hi, e = _dec(self.target_low), _dec(self.target_high), _dec(self.sensitivity)
        return 1 - lo * e, 1 + (1 - hi) * e


def _dec(x: float) -> Decimal:
    """decimal.NewFromFloat: the shortest decimal of the float (NaN and inf have none)."""
    x = float(x)
    if not math.isfinite(x):
        raise PricingError(f"utilisation must be a finite number >= 0, got {x}")
    return Decimal(repr(x))


def next_unit_price(price_ngonka: int, utilisation: "Decimal | float", rule: PriceRule) -> int:
    """Gonka CalculateModelDynamicPrice, in decimals: inside [low, high] unchanged; below:
    x max(max(1 - (low - u) e, 0), 1 - low e); above: x min(1 + (u - high) e, 1 + (1 - high) e); the
    product truncated to an integer (IntPart), then the floor `min_unit_price_ngonka`."""
    u = utilisation if isinstance(utilisation, Decimal) else _dec(utilisation)  # NewFromFloat
    if not u.is_finite() or u < 0:
        raise PricingError(f"utilisation must be a finite number >= 0, got {utilisation}")
    lo, hi, e = _dec(rule.target_low), _dec(rule.target_high), _dec(rule.sensitivity)
    down, up = rule.limits()
    price = int(price_ngonka)
    if lo <= u <= hi:
        new = price
    elif u < lo:
        factor = max(1 - (lo - u) * e, Decimal(0))
        new = int((Decimal(price) * max(factor, down)).to_integral_value(rounding=ROUND_DOWN))
    else:
        new = int((Decimal(price) * min(1 + (u - hi) * e, up)).to_integral_value(rounding=ROUND_DOWN))
    return max(new, rule.min_unit_price_ngonka)


def grace_price(epoch: int, rule: PriceRule) -> int | None:
    """Gonka handleGracePeriod: the price set every block of an epoch <= GracePeriodEndEpoch (the
    grace price before it, the base price at it); None after it (the dynamic rule applies)."""
    end = rule.grace_period_end_epoch
    if end is None or epoch > end:
        return None
    return rule.grace_period_unit_price_ngonka if epoch < end else rule.base_unit_price_ngonka


def cost_ngonka(units: float, unit_price_ngonka: int) -> int:
    """What a request costs, in whole ngonka: ceil(units x price), in decimals on the units' shortest
    decimal (NewFromFloat), so 0.1 unit at 10 ngonka costs 1, not 2."""
    return int((Decimal(repr(float(units))) * int(unit_price_ngonka)).to_integral_value(rounding=ROUND_CEILING))


# ---------------------------------------------------------------------------------------------
# Calibration


class CalibrationPoint(BaseModel):
    model_config = ConfigDict(frozen=True)
    latent_t: int
    latent_h: int
    latent_w: int
    patches: int
    seconds: float


class CalibrationParams(BaseModel):
    """One calibration run (`t2vsim pricing calibrate`, the `pricing-calibration` flow); its result,
    Calibration, records them."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    preset: str = Field("tiny", description="model preset whose transformer is timed")
    device: str = Field("cpu", description="torch device")
    dtype: Literal["bfloat16", "float32", "float16"] = Field(
        "float32", description="dtype of the timed transformer (calibrate() feeds inputs in its first "
        "parameter's dtype)")
    repeats: int = Field(3, ge=1, le=1000, description="timings per size (median)")


class Calibration(BaseModel):
    """alpha, beta (and the constant gamma) fitted to measured forward-pass times, with R^2."""

    model_config = ConfigDict(frozen=True)

    preset: str
    device: str
    dtype: str
    alpha_seconds: float
    beta_seconds: float
    gamma_seconds: float
    r2: float
    points: list[CalibrationPoint]
    repeats: int
    measured_at: str
    # Stage-complete terms (`stage_calibration`; absent from a passes-only calibration: 0 / None).
    text_encoder_seconds: float = 0.0
    text_encoder_points: int = 0
    vae_seconds_per_pixel: float = 0.0
    vae_r2: float | None = None
    overhead_seconds: float = 0.0
    overhead_seconds_per_pixel: float = 0.0
    overhead_r2: float | None = None
    overhead_points: int = 0

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically (temp file + rename)."""
        from models.io import write_atomic

        return write_atomic(path, self.model_dump_json(indent=2))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Calibration":
        path = Path(path)
        if not path.is_file():
            raise PricingError(f"calibration file {str(path)!r} does not exist")
        try:
            return cls.model_validate_json(path.read_text())
        except ValueError as err:
            raise PricingError(f"calibration file {str(path)!r} is not a valid calibration: {err}") from None

    def pricing(self, **overrides: Any) -> PricingParams:
        """The pricing these hold: the stage terms carried but priced only per `overrides`
        (`charge_stages`, `charge_constant`), as for the constant."""
        terms = {k: getattr(self, k) for k in ("alpha_seconds", "beta_seconds", "gamma_seconds", *STAGE_TERMS)}
        return PricingParams(**{**terms, "fit_r2": self.r2, "source": f"calibration {self.preset} on {self.device}",
                                **overrides})


def fit_pass_seconds(patches: Sequence[float], seconds: Sequence[float]) -> tuple[float, float, float, float]:
    """Non-negative least squares of seconds = alpha N^2 + beta N + gamma; returns (alpha, beta, gamma, R^2).

    Columns are scaled before solving (N^2 spans many orders of magnitude)."""
    from scipy.optimize import lsq_linear

    n = np.asarray(patches, dtype=float)
    y = np.asarray(seconds, dtype=float)
    if n.shape != y.shape or n.ndim != 1:
        raise PricingError("patches and seconds must be 1-D sequences of equal length")
    if len(np.unique(n)) < 3:
        raise PricingError(f"a fit of alpha, beta, gamma needs at least 3 distinct sizes, got {len(np.unique(n))}")
    if np.any(y <= 0) or not np.all(np.isfinite(y)):
        raise PricingError("measured seconds must be finite and > 0")
    a = np.stack([n * n, n, np.ones_like(n)], axis=1)
    scale = np.abs(a).max(axis=0)
    res = lsq_linear(a / scale, y, bounds=(0, np.inf))
    coef = res.x / scale
    pred = a @ coef
    ss_res = float(np.sum((y - pred) ** 2))
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0
    return float(coef[0]), float(coef[1]), float(coef[2]), r2


DEFAULT_CALIBRATION_GRID: tuple[tuple[int, int, int], ...] = (
    # latent (T, H, W) before patching; the tiny preset's rope limit (32) bounds T/pt, H/ph, W/pw
    (1, 8, 8), (2, 8, 16), (3, 16, 16), (5, 16, 16), (5, 16, 32), (5, 32, 32), (9, 32, 32), (9, 32, 48),
)


def calibrate(preset: str = "tiny", runtime: "Runtime | None" = None,
              grid: Iterable[tuple[int, int, int]] = DEFAULT_CALIBRATION_GRID, repeats: int = 3,
              warmup: int = 1, weights_seed: int = 0) -> Calibration:
    """Time one forward pass of the high-noise expert (batch 1) over latent shapes (T, H, W) and fit.

    The median of `repeats` timings is taken per shape after `warmup` untimed passes. The text
    embedding has the preset's text length, as in a real request."""
    import torch

    from models.presets import build_pipeline, preset_spec
    from models.request import Runtime

    if repeats < 1:
        raise PricingError(f"repeats must be >= 1, got {repeats}")
    runtime = runtime or Runtime(dtype="float32")
    spec = preset_spec(preset)
    pipe = build_pipeline(preset, runtime, weights_seed)
    model = pipe.transformer
    device = torch.device(runtime.device)
    dtype = next(model.parameters()).dtype
    text_dim = int(spec.transformer_config["text_dim"])
    pt, ph, pw = spec.patch_size
    points: list[CalibrationPoint] = []
    g = torch.Generator(device="cpu").manual_seed(0)
    with runtime.apply(), torch.inference_mode():
        for t, h, w in grid:
            if t % pt or h % ph or w % pw:
                raise PricingError(f"grid: latent shape {(t, h, w)} is not divisible by the patch size {spec.patch_size}")
            x = torch.randn((1, spec.z_dim, t, h, w), generator=g).to(device, dtype)
            text = torch.randn((1, spec.text_len, text_dim), generator=g).to(device, dtype)
            step = torch.tensor([500.0], device=device)

            def once() -> float:
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                t0 = time.perf_counter()
                model(hidden_states=x, timestep=step, encoder_hidden_states=text, return_dict=False)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                return time.perf_counter() - t0

            for _ in range(warmup):
                once()
            secs = float(np.median([once() for _ in range(repeats)]))
            points.append(CalibrationPoint(latent_t=t, latent_h=h, latent_w=w,
                                           patches=(t // pt) * (h // ph) * (w // pw), seconds=secs))
    alpha, beta, gamma, r2 = fit_pass_seconds([p.patches for p in points], [p.seconds for p in points])
    return Calibration(preset=preset, device=runtime.device, dtype=str(dtype).replace("torch.", ""),
                       alpha_seconds=alpha, beta_seconds=beta, gamma_seconds=gamma, r2=r2, points=points,
                       repeats=repeats, measured_at=time.strftime("%Y-%m-%dT%H:%M:%S"))


# ---------------------------------------------------------------------------------------------
# Fairness


class FairnessGrid(BaseModel):
    """The supported grid over which revenue per GPU-second should be flat."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    sizes: tuple[tuple[int, int], ...] = Field(A14B_SIZES, description="(width, height), A14B sizes (docs/facts.md)")
    frames: tuple[int, ...] = Field((17, 33, 49, 65, 81), description="frame counts (4k+1), up to the official 81")
    steps: tuple[int, ...] = Field((10, 20, 30, 40, 50), description="denoising steps around the official 40")
    guidance: tuple[tuple[float, float], ...] = Field(((4.0, 3.0), (4.0, 1.0), (1.0, 1.0)),
                                                      description="(high, low) guidance: official, CFG on high only, none")
    shift: float = Field(12.0, gt=0, description="official Wan2.2 shift")

    @field_validator("frames")
    @classmethod
    def _frames(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        bad = [f for f in v if f < 1 or (f - 1) % 4]
        if bad:
            raise PricingError(f"frames must be of the form 4k+1, got {bad}")
        return v


def grid_requests(grid: FairnessGrid, pricing: PricingParams):
    """Each request of the grid: (units keyword arguments, latent patches, forward passes)."""
    for (w, h) in grid.sizes:
        for f in grid.frames:
            for s in grid.steps:
                for gh, gl in grid.guidance:
                    kw = dict(width=w, height=h, frames=f, steps=s, guidance_high=gh, guidance_low=gl, shift=grid.shift)
                    yield (kw, latent_patches(w, h, f, pricing.vae_stride, pricing.patch_size),
                           forward_passes_for(s, grid.shift, gh > 1, gl > 1, pricing.boundary_ratio))


def fairness_table(pricing: PricingParams | None = None, grid: FairnessGrid | None = None) -> "Any":
    """Revenue per GPU-second at one price for each request of the grid, under four schemes.

    - `dit`: the DiT units above; `per_token_step`: linear in passes x patches (an LLM-like
      per-token price); `per_frame`: frames only; `per_pixel`: width x height x frames.
    Each naive scheme's price is scaled so its total revenue over the grid equals the DiT scheme's,
    so only the shape differs. GPU seconds are the fit's true times (constant included).
    Returns a tidy pandas DataFrame: one row per (request, scheme)."""
    import pandas as pd

    pricing = pricing or PricingParams()
    grid = grid or FairnessGrid()
    rows = []
    for kw, p, passes in grid_requests(grid, pricing):
        w, h, f = kw["width"], kw["height"], kw["frames"]
        rows.append(dict(width=w, height=h, frames=f, steps=kw["steps"], guidance_high=kw["guidance_high"],
                         guidance_low=kw["guidance_low"], patches=p, forward_passes=passes,
                         gpu_seconds=pricing.gpu_seconds(**kw), dit=pricing.units(**kw),
                         per_token_step=float(passes * p), per_frame=float(f), per_pixel=float(w * h * f)))
    df = pd.DataFrame(rows)
    total = df["dit"].sum()
    out = []
    for scheme in ("dit", "per_token_step", "per_frame", "per_pixel"):
        revenue = df[scheme] * (total / df[scheme].sum())
        part = df.drop(columns=["dit", "per_token_step", "per_frame", "per_pixel"]).copy()
        part["scheme"] = scheme
        part["revenue_units"] = revenue
        part["revenue_per_gpu_second"] = revenue / df["gpu_seconds"]
        out.append(part)
    return pd.concat(out, ignore_index=True)


def fairness_summary(table: "Any") -> "Any":
    """Per scheme: the spread of revenue per GPU-second (normalised to the scheme's median).

    Flat is fair: max/min near 1 and a small coefficient of variation."""
    g = table.groupby("scheme")["revenue_per_gpu_second"]
    summary = g.agg(["min", "median", "max", "mean", "std"])
    summary["max_over_min"] = summary["max"] / summary["min"]
    summary["cv"] = summary["std"] / summary["mean"]
    return summary.reset_index()[["scheme", "max_over_min", "cv", "min", "median", "max"]]





# ---------------------------------------------------------------------------------------------
# Fairness against measured seconds


class StageFit(BaseModel):
    """Per-stage seconds fitted to measurements on one card: passes (alpha N^2 + beta N + gamma per
    pass of N patches), VAE decode linear in decoded pixels, the text encoder a constant (median of
    the generations), and the non-model overhead (wall minus the stages) from the generations' wall
    seconds: per decoded pixel through zero with fewer than 3 distinct sizes, else per request + per
    pixel (non-negative least squares)."""

    model_config = ConfigDict(frozen=True)

    device: str
    alpha_seconds: float
    beta_seconds: float
    gamma_seconds: float
    pass_r2: float
    vae_seconds_per_pixel: float
    vae_r2: float
    text_encoder_seconds: float
    text_encoder_points: int = 0
    overhead_seconds: float = 0.0
    overhead_seconds_per_pixel: float = 0.0
    overhead_r2: float | None = None
    overhead_points: int = 0

    def seconds(self, *, width: int, height: int, frames: int, passes: int, patches: int) -> float:
        """Model-stage seconds: text encoder, every pass, VAE (the overhead apart)."""
        per_pass = self.alpha_seconds * patches ** 2 + self.beta_seconds * patches + self.gamma_seconds
        return self.text_encoder_seconds + passes * per_pass + self.vae_seconds_per_pixel * width * height * frames

    def overhead(self, *, width: int, height: int, frames: int) -> float:
        return self.overhead_seconds + self.overhead_seconds_per_pixel * width * height * frames

    def wall_seconds(self, *, width: int, height: int, frames: int, passes: int, patches: int) -> float:
        """Model stages plus the fitted non-model overhead: the predicted wall time of a generation."""
        return (self.seconds(width=width, height=height, frames=frames, passes=passes, patches=patches)
                + self.overhead(width=width, height=height, frames=frames))

    def terms(self) -> dict[str, Any]:
        """The PricingParams fields this fit gives (seconds and fit quality)."""
        return dict(alpha_seconds=self.alpha_seconds, beta_seconds=self.beta_seconds, gamma_seconds=self.gamma_seconds,
                    fit_r2=self.pass_r2, **{k: getattr(self, k) for k in STAGE_TERMS})

    def pricing(self, charge_stages: Sequence[str] | None = None, charge_constant: bool = True,
                **overrides: Any) -> PricingParams:
        """`PricingParams.from_stage_fit(self, ...)`."""
        return PricingParams.from_stage_fit(self, charge_stages, charge_constant, **overrides)


def _r2(y: np.ndarray, pred: np.ndarray) -> float | None:
    """R^2 of a fit (None with fewer than 2 points or no spread)."""
    ss_tot = float(((y - y.mean()) ** 2).sum())
    if len(y) < 2 or ss_tot <= 0:
        return None
    return 1.0 - float(((y - pred) ** 2).sum()) / ss_tot


def fit_per_pixel(pixels: Sequence[float], seconds: Sequence[float]) -> tuple[float, float | None]:
    """Least squares of seconds = k x pixels through zero (k >= 0); returns (k, R^2)."""
    px, y = np.asarray(pixels, dtype=float), np.asarray(seconds, dtype=float)
    k = max(float(px @ y / (px @ px)), 0.0)
    return k, _r2(y, k * px)


def fit_overhead(generations: Sequence[dict]) -> tuple[float, float, float | None, int]:
    """Non-model seconds (wall minus the sum of the stages) of the generations with wall seconds:
    (per request, per decoded pixel, R^2, points). Fewer than 3 distinct sizes: per pixel only."""
    from scipy.optimize import lsq_linear

    pts = [(g["width"] * g["height"] * g["frames"], g["wall_seconds"] - sum(g["stages"].values()))
           for g in generations if "wall_seconds" in g and "stages" in g]
    if not pts:
        return 0.0, 0.0, None, 0
    px, y = (np.array(c, dtype=float) for c in zip(*pts))
    if len(np.unique(px)) < 3:
        k, r2 = fit_per_pixel(px, y)
        return 0.0, k, r2, len(pts)
    a = np.stack([np.ones_like(px), px], axis=1)
    scale = a.max(axis=0)
    coef = lsq_linear(a / scale, y, bounds=(0, np.inf)).x / scale
    return float(coef[0]), float(coef[1]), _r2(y, a @ coef), len(pts)


def fit_stages(measured: dict) -> StageFit:
    """Fit `StageFit` to a `benchmarks/gpu_pricing.py` result (passes, VAE decodes, generations)."""
    passes = [p for p in measured.get("passes", []) if "seconds" in p]
    vae = [v for v in measured.get("vae", []) if "seconds" in v]
    gens = [g for g in measured.get("generate", []) if "stages" in g]
    if not passes or not vae:
        raise PricingError("measured: needs 'passes' and 'vae' entries with seconds")
    alpha, beta, gamma, r2 = fit_pass_seconds([p["tokens"] for p in passes], [p["seconds"] for p in passes])
    k, vae_r2 = fit_per_pixel([v["width"] * v["height"] * v["frames"] for v in vae], [v["seconds"] for v in vae])
    te = float(np.median([g["stages"]["text_encoder"] for g in gens])) if gens else 0.0
    oh, oh_px, oh_r2, oh_n = fit_overhead(gens)
    return StageFit(device=measured.get("device", "?"), alpha_seconds=alpha, beta_seconds=beta, gamma_seconds=gamma,
                    pass_r2=r2, vae_seconds_per_pixel=k, vae_r2=1.0 if vae_r2 is None else vae_r2,
                    text_encoder_seconds=te, text_encoder_points=len(gens), overhead_seconds=oh,
                    overhead_seconds_per_pixel=oh_px, overhead_r2=oh_r2, overhead_points=oh_n)


def stage_calibration(measured: dict) -> Calibration:
    """A calibration JSON's content from a `gpu_pricing.py` result: the pass points and every stage
    term of `fit_stages`, with the R^2 of each fit (`PricingParams.from_calibration` reads it)."""
    fit = fit_stages(measured)
    points = [CalibrationPoint(latent_t=p["latent"][0], latent_h=p["latent"][1], latent_w=p["latent"][2],
                               patches=p["tokens"], seconds=p["seconds"])
              for p in measured.get("passes", []) if "seconds" in p]
    return Calibration(preset=measured.get("preset", "?"), device=fit.device, dtype=measured.get("runtime", "?"),
                       r2=fit.pass_r2, points=points, repeats=int(measured.get("repeats", 2)),  # gpu_pricing.py: 2
                       measured_at=measured.get("measured", "?"),
                       **{k: v for k, v in fit.terms().items() if k != "fit_r2"},
                       text_encoder_points=fit.text_encoder_points)


# The price models compared against measured seconds: (label, charged stages, charge the constant).
MEASURED_VARIANTS: dict[str, tuple[str, tuple[str, ...], bool]] = {
    "a": ("the proposal's formula: passes, no constant (today)", (), False),
    "b": ("+ VAE and text encoder priced", ("text_encoder", "vae"), False),
    "c": ("+ per-pass constant charged", ("text_encoder", "vae"), True),
    "d": ("+ non-model overhead priced", STAGES, True),
}


def _variant_pricings(fit: StageFit) -> dict[str, tuple[str, PricingParams]]:
    """MEASURED_VARIANTS built from one stage fit (stages the fit lacks are left out; (d) needs an
    overhead fitted from wall seconds)."""
    held = {s for s in STAGES if any(getattr(fit, f) for f in STAGE_FIELDS[s])}
    out = {}
    for name, (label, stages, constant) in MEASURED_VARIANTS.items():
        if name == "d" and not fit.overhead_points:
            continue
        out[name] = (label, fit.pricing(tuple(s for s in stages if s in held), constant))
    return out


def _grid_seconds(fit: StageFit, grid: FairnessGrid, pricings: dict[str, PricingParams]) -> "Any":
    """One row per grid request: the fit's stage seconds and wall seconds, and each pricing's units."""
    import pandas as pd

    rows = []
    for kw, p, n in grid_requests(grid, next(iter(pricings.values()))):
        size = dict(width=kw["width"], height=kw["height"], frames=kw["frames"])
        stage = fit.seconds(**size, passes=n, patches=p)
        row = dict({k: v for k, v in kw.items() if k != "shift"}, measured_seconds=stage,
                   wall_seconds=stage + fit.overhead(**size))
        row.update({f"units_{name}": pr.units(**kw) for name, pr in pricings.items()})
        rows.append(row)
    return pd.DataFrame(rows)


def _spread(df: "Any", units: str, seconds: str, unit_seconds: float) -> dict:
    """Revenue per second (over its median) and the unit model's error (units x unit_seconds against
    the seconds) of one pricing's units over the grid."""
    rate = df[units] / df[seconds]
    rate = rate / rate.median()
    err = df[units] * unit_seconds / df[seconds] - 1
    i = err.abs().idxmax()
    return {"min": float(rate.min()), "max": float(rate.max()), "max_over_min": float(rate.max() / rate.min()),
            "cv": float(rate.std() / rate.mean()), "max_error": float(err[i]),
            "worst_request": {**{k: df.loc[i, k].item() for k in ("width", "height", "frames", "steps",
                                                                   "guidance_high", "guidance_low")},
                              "seconds": float(df.loc[i, seconds]), "units": float(df.loc[i, units])}}


def _in_sample_checks(measured: dict, fit: StageFit) -> list[dict]:
    """The generations against the full fit (which saw their text encoder and overhead)."""
    return [dict(g, predicted_seconds=fit.seconds(width=g["width"], height=g["height"], frames=g["frames"],
                                                  passes=sum(g["forward_passes"].values()),
                                                  patches=latent_patches(g["width"], g["height"], g["frames"])),
                 measured_seconds=sum(g["stages"].values()))
            for g in measured.get("generate", []) if "stages" in g]


def measured_fairness(measured: dict, grid: FairnessGrid | None = None, pricing: PricingParams | None = None,
                      end_to_end: dict | None = None) -> dict:
    """Revenue per GPU-second over the fairness grid of the price models of MEASURED_VARIANTS (and of
    `pricing`, default (a), at the top level), with the held-out checks of the fit.

    The grid's seconds are the stage fit's predictions (`StageFit.seconds`; `wall_seconds` adds the
    fitted overhead), not measurements of those 300 requests: a price built on the same fit is flat
    almost by construction. The evidence that it is fair is the fit's R^2 and `held_out_checks`.
    The unit model's error is units x unit_seconds against those seconds."""
    fit = fit_stages(measured)
    grid = grid or FairnessGrid()
    variants = _variant_pricings(fit)
    given = pricing or variants["a"][1]
    df = _grid_seconds(fit, grid, {"given": given, **{k: v[1] for k, v in variants.items()}})
    out = {}
    for name, (label, pr) in variants.items():
        out[name] = {"label": label, "charge_stages": list(pr.charge_stages), "charge_constant": pr.charge_constant,
                     "unit_seconds": pr.unit_seconds,
                     "stages": _spread(df, f"units_{name}", "measured_seconds", pr.unit_seconds)}
        if fit.overhead_points:
            out[name]["wall"] = _spread(df, f"units_{name}", "wall_seconds", pr.unit_seconds)
    top = _spread(df, "units_given", "measured_seconds", given.unit_seconds)
    worst = {k: v for k, v in top["worst_request"].items() if k != "seconds"}
    worst.update(measured_seconds=top["worst_request"]["seconds"], unit_model_error=top["max_error"])
    return {"fit": fit.model_dump(), "requests": len(df),
            "revenue_per_gpu_second": {k: top[k] for k in ("min", "max", "max_over_min", "cv")},
            "unit_model_max_error": top["max_error"], "unit_model_worst_request": worst,
            "variants": out, "held_out": held_out_checks(measured, end_to_end),
            "generation_checks": _in_sample_checks(measured, fit)}


# ---------------------------------------------------------------------------------------------
# Held-out checks of the stage fit


def _rel(pred: float, meas: float) -> float | None:
    """Relative error (None where the measurement is 0)."""
    return float(pred / meas - 1) if meas else None


def _max_abs(rows: list[dict]) -> float | None:
    errs = [abs(r["error"]) for r in rows if r["error"] is not None]
    return max(errs) if errs else None


def _loo_passes(measured: dict) -> dict:
    """Each pass point predicted by the pass fit of all the others."""
    pts = [p for p in measured.get("passes", []) if "seconds" in p]
    rows = []
    for i, p in enumerate(pts):
        rest = pts[:i] + pts[i + 1:]
        if len({q["tokens"] for q in rest}) < 3:
            continue
        a, b, g, _ = fit_pass_seconds([q["tokens"] for q in rest], [q["seconds"] for q in rest])
        pred = a * p["tokens"] ** 2 + b * p["tokens"] + g
        rows.append({"tokens": p["tokens"], "expert": p.get("expert"), "measured": p["seconds"], "predicted": pred,
                     "error": _rel(pred, p["seconds"])})
    return {"points": rows, "max_abs_error": _max_abs(rows)}


def _loo_vae(measured: dict) -> dict:
    """Each VAE decode predicted by the per-pixel fit of all the others."""
    pts = [v for v in measured.get("vae", []) if "seconds" in v]
    rows = []
    for i, v in enumerate(pts):
        rest = pts[:i] + pts[i + 1:]
        if not rest:
            continue
        k, _ = fit_per_pixel([q["width"] * q["height"] * q["frames"] for q in rest], [q["seconds"] for q in rest])
        pred = k * v["width"] * v["height"] * v["frames"]
        rows.append({"width": v["width"], "height": v["height"], "frames": v["frames"], "measured": v["seconds"],
                     "predicted": pred, "error": _rel(pred, v["seconds"])})
    return {"points": rows, "max_abs_error": _max_abs(rows)}


def _held_out_generations(measured: dict) -> list[dict]:
    """Each whole generation predicted per stage and in wall seconds by a fit that did not see it
    (passes and VAE never see a generation; text encoder and overhead come from the other ones)."""
    gens = [g for g in measured.get("generate", []) if "stages" in g]
    rows = []
    for i, g in enumerate(gens):
        fit = fit_stages({**measured, "generate": gens[:i] + gens[i + 1:]})
        size = dict(width=g["width"], height=g["height"], frames=g["frames"])
        p = latent_patches(**size)
        per_pass = fit.alpha_seconds * p ** 2 + fit.beta_seconds * p + fit.gamma_seconds
        pred = {"text_encoder": fit.text_encoder_seconds, "vae": fit.vae_seconds_per_pixel * math.prod(size.values()),
                **{e: n * per_pass for e, n in g["forward_passes"].items()}}
        stages, stage_sum = g["stages"], sum(g["stages"].values())
        row = dict(size, steps=g.get("steps"), predicted_stages=pred, measured_stages=dict(stages),
                   predicted_stage_sum=sum(pred.values()), measured_stage_sum=stage_sum,
                   stage_sum_error=_rel(sum(pred.values()), stage_sum), overhead_points=fit.overhead_points)
        if "wall_seconds" in g:
            wall = sum(pred.values()) + fit.overhead(**size)
            row.update(predicted_wall=wall, measured_wall=g["wall_seconds"], wall_error=_rel(wall, g["wall_seconds"]))
        row["priced"] = _priced_errors(fit, g)
        rows.append(row)
    return rows


def _priced_errors(fit: StageFit, g: dict) -> dict:
    """Per price model: units x unit_seconds of a real generation against its measured stage sum and
    wall. The request's guidance and shift are not recorded: the A14B defaults (4/3, 12, docs/facts.md)
    are assumed and must give the measured pass count, else {}."""
    kw = dict(width=g["width"], height=g["height"], frames=g["frames"], steps=g["steps"],
              guidance_high=g.get("guidance_high", 4.0), guidance_low=g.get("guidance_low", 3.0),
              shift=g.get("shift", 12.0))
    if forward_passes_for(kw["steps"], kw["shift"], kw["guidance_high"] > 1, kw["guidance_low"] > 1) != \
            sum(g["forward_passes"].values()):
        return {}
    out = {}
    for name, (_, pr) in _variant_pricings(fit).items():
        priced = pr.units(**kw) * pr.unit_seconds
        out[name] = {"stage_sum_error": _rel(priced, sum(g["stages"].values()))}
        if "wall_seconds" in g:
            out[name]["wall_error"] = _rel(priced, g["wall_seconds"])
    return out


def _end_to_end_check(fit: StageFit, e2e: dict) -> dict:
    """The non-model overhead and text encoder of a `gpu_end_to_end.py` run (not seen by the fit)
    against the fit. Its runtime may differ (compile, bf16 VAE), so its model stages are no check."""
    a, v = e2e["args"], e2e["video"]
    size = dict(width=a["width"], height=a["height"], frames=a["frames"])
    pred = fit.overhead(**size)
    return {**size, "steps": a["steps"], "runtime": {k: v["runtime"].get(k) for k in ("compile", "vae_dtype",
                                                                                     "attention_backend")},
            "measured_overhead": v["other_seconds"], "predicted_overhead": pred,
            "overhead_error": _rel(pred, v["other_seconds"]),
            "measured_text_encoder": v["stages"]["text_encoder"], "predicted_text_encoder": fit.text_encoder_seconds}


def held_out_checks(measured: dict, end_to_end: dict | None = None) -> dict:
    """Leave-one-out of the pass and VAE fits, the generations predicted by fits that did not see
    them, and (given a `gpu_end_to_end.py` result) its overhead from the generations' fit."""
    out = {"passes_loo": _loo_passes(measured), "vae_loo": _loo_vae(measured),
           "generations": _held_out_generations(measured)}
    if end_to_end is not None:
        out["end_to_end"] = _end_to_end_check(fit_stages(measured), end_to_end)
    return out
