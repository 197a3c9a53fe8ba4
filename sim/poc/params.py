"""Parameters of a PoC stage and its validation (one frozen object per run)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# Chosen from the measurements in docs/poc.md. On the tiny preset (CPU) 0.02 was the smallest
# threshold of the sweep at which bf16 honest nodes mismatch at most 2% against a float32
# validator; at A14B scale (a14b-random, bf16, on an H200) other attention kernels and a batch of 4
# put 3.7-5.6% of 160 nonces over 0.02 and none over 0.03, while FP8 weights still put 99.4% over
# 0.03. So the default is 0.03: the smallest swept threshold that keeps every measured benign
# condition, at every scale, at or below 2%.
MEASURED_DISTANCE_THRESHOLD = 0.03


class PocParams(BaseModel):
    """How a PoC stage is validated. Every default names its source."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    samples: int = Field(200, ge=1, le=100_000,
                         description="leaves a validator samples per participant (Gonka PoC v2: 200)")
    distance_threshold: float = Field(
        MEASURED_DISTANCE_THRESHOLD, gt=0.0, le=2.0,
        description="L2 distance between the committed and recomputed unit vectors above which a leaf is "
        "a mismatch (measured, docs/poc.md; Gonka uses 0.2 for Qwen, code default 0.4)")
    allowed_mismatch_rate: float = Field(0.1, gt=0.0, lt=1.0,
                                         description="mismatch rate honest nodes are allowed (Gonka PMismatch 0.1)")
    p_value: float = Field(0.05, gt=0.0, lt=1.0,
                           description="reject when the one-sided binomial test gives p below this (Gonka 0.05)")
    vector_dim: int = Field(12, ge=1, le=1024, description="PoC vector length (Gonka PoC v2: 12, float16)")
    weight_per_nonce: float = Field(1.0, gt=0.0,
                                    description="weight of one accepted nonce (Gonka: count x per-model scale)")
    width: int | None = Field(None, description="PoC latent width in pixels (None: the preset's smallest request)")
    height: int | None = Field(None, description="PoC latent height in pixels (None: the preset's smallest request)")
    frames: int | None = Field(None, description="PoC frames, 4k+1 (None: the preset's smallest request)")
    honest_condition: str = Field(
        "dtype:bfloat16",
        description="surrogate fidelity: the measured benign condition whose distances honest nodes draw "
        "(bf16 against a float32 validator: the largest benign difference measurable on a CPU)")
    measurement: str | None = Field(
        None, description="surrogate fidelity: path of a `t2vsim poc measure` file (None: the bundled "
        "measurement sim/poc/data/measured_distances.json)")

    @field_validator("width", "height", "frames")
    @classmethod
    def _positive(cls, v, info):
        if v is not None and v < 1:
            raise ValueError(f"{info.field_name} must be >= 1 or None, got {v}")
        return v


# The participants of a stage by default: honest nodes and one of each cheat.
DEFAULT_STAGE_MIX = "honest=8,fp8=1,int4=1,one-expert:high=1,fabricate:0.5=1,copy=1,inflate:2=1,duplicate:2=1"
# What a stage run writes into its output directory (flows/poc.py).
POC_FILES = ("params.json", "poc_stage.json", "poc_stage.md")


class PocStageParams(BaseModel):
    """One PoC stage run (`t2vsim poc run`, the `poc-stage` flow); saved as OUT/params.json."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    mix: str = Field(DEFAULT_STAGE_MIX, description="participants as STRATEGY=N,...; `copy` copies the first "
                                                    "honest one")
    capacity: int = Field(1000, description="nonces each participant computes in the stage")
    block_hash: str = Field("block-0", description="the stage's block hash (seeds every nonce)")
    validation: PocParams = Field(default_factory=PocParams, description="how the stage is validated")
    fidelity: Literal["surrogate", "real"] = Field("surrogate", description="surrogate (measured distances) "
                                                   "or real (run the model)")
    preset: str = Field("tiny", description="model preset for real fidelity")
    seed: int = Field(0, ge=0, description="stage seed (plans, sampling, surrogate draws)")
    device: str = Field("cpu", description="validator device for real fidelity")
    dtype: Literal["bfloat16", "float32", "float16"] = Field("float32", description="validator dtype for real "
                                                             "fidelity (the reference's)")
