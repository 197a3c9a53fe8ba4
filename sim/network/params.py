"""Parameters of a network simulation: one frozen, documented object per run.

Defaults: Gonka for protocol rules (sim/chain/params.py), the official Wan2.2-T2V-A14B settings
for requests (facts.md section 1), and project assumptions where neither says (each marked).
"""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from sim.chain.params import ChainParams


class RequestShape(BaseModel):
    """One kind of request in the workload mix."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    width: int = Field(832, ge=16, description="pixels, multiple of 16 (A14B default 832)")
    height: int = Field(480, ge=16, description="pixels, multiple of 16 (A14B default 480)")
    frames: int = Field(81, ge=1, description="4k+1 (A14B default 81)")
    steps: int = Field(40, ge=1, description="denoising steps (A14B default 40)")
    guidance_high: float = Field(4.0, ge=0, description="CFG of the high-noise expert (A14B 4.0)")
    guidance_low: float = Field(3.0, ge=0, description="CFG of the low-noise expert (A14B 3.0)")
    shift: float = Field(12.0, gt=0, description="flow shift (A14B 12.0)")
    share: float = Field(1.0, gt=0, description="relative frequency in the mix")

    @field_validator("width", "height")
    @classmethod
    def _m16(cls, v: int, info) -> int:
        if v % 16:
            raise ValueError(f"{info.field_name} must be a multiple of 16, got {v}")
        return v

    @field_validator("frames")
    @classmethod
    def _f(cls, v: int) -> int:
        if (v - 1) % 4:
            raise ValueError(f"frames must be of the form 4k+1, got {v}")
        return v


DEFAULT_MIX = (
    RequestShape(),  # 480p landscape, 81 frames, 40 steps (official)
    RequestShape(width=480, height=832, share=0.5),
    RequestShape(width=1280, height=720, share=0.25),
    RequestShape(frames=41, steps=30, share=0.5),
)
TINY_MIX = (RequestShape(width=64, height=64, frames=9, steps=4),)


class ExecutorGroup(BaseModel):
    """`count` hosts (each executes and validates) sharing a GPU type and a strategy."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    count: int = Field(ge=1, description="hosts in the group")
    gpu_type: str = Field("H100", description="label of the GPU type")
    seconds_per_unit: Optional[float] = Field(
        None, gt=0, description="GPU seconds per compute unit (None: the pricing unit's seconds, i.e. the "
        "calibrated GPU)")
    strategy: Literal["honest", "malicious"] = "honest"
    deviation: Optional[str] = Field(None, description="malign deviation spec the group cheats with (malicious)")
    cheat_rate: float = Field(0.0, ge=0, le=1, description="share of its requests a malicious host cheats on")
    collateral_gnk: float = Field(1_000.0, ge=0, description="collateral per host (project assumption)")

    @model_validator(mode="after")
    def _strategy(self) -> "ExecutorGroup":
        if self.strategy == "malicious" and not self.deviation:
            raise ValueError("deviation is required for a malicious group (e.g. 'steps:2')")
        if self.strategy == "honest" and (self.deviation or self.cheat_rate):
            raise ValueError("an honest group takes neither deviation nor cheat_rate")
        return self


class NetworkParams(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    seed: int = Field(0, ge=0, description="one seed per run, split per role with SeedSequence.spawn")
    fidelity: Literal["surrogate", "real"] = Field("surrogate", description="surrogate draws validation scores "
                                                    "from an experiment run; real runs the models")
    run_dir: Optional[str] = Field(None, description="experiment run directory (surrogate: scores.parquet and "
                                   "thresholds.json)")
    policy: str = Field("full", description="validation policy (full, checkpoint, fingerprint, segment)")
    metric: Optional[str] = Field(None, description="metric of the policy (None: the only one the run has)")
    threshold: Optional[float] = Field(None, description="override the run's calibrated threshold")
    score_split: Literal["test", "calib", "all"] = Field("test", description="which rows of scores.parquet "
                                                         "to draw from (test: not used for the threshold)")
    preset: str = Field("a14b-random", description="model preset recorded on chain (real fidelity: the one run)")
    epochs: int = Field(2, ge=1, le=10_000)
    blocks_per_epoch: int = Field(
        100, ge=2, description="blocks per epoch (Gonka 17,280; compressed so a sweep runs fast; every "
        "per-block rule is unchanged)")
    requests_per_epoch: int = Field(1_000, ge=0, description="requests arriving per epoch (Poisson per block)")
    requesters: int = Field(10, ge=1, description="requester accounts")
    hosts: tuple[ExecutorGroup, ...] = Field(
        (ExecutorGroup(count=8), ExecutorGroup(count=2, strategy="malicious", deviation="steps:2", cheat_rate=0.5)),
        description="executor groups")
    mix: tuple[RequestShape, ...] = Field(DEFAULT_MIX, description="request mix")
    finish_delay_blocks: int = Field(1, ge=1, description="blocks from start to finish (project assumption)")
    sampling_hash: Literal["sha256", "splitmix64"] = Field(
        "sha256", description="validator draw: Gonka's SHA256(seed:id) or a vectorised SplitMix64 of the "
        "same inputs (same distribution, 50x faster, for large sweeps)")
    gpu_cost_fraction: float = Field(
        0.5, ge=0, description="GPU cost per second as a share of the revenue per GPU-second at the base "
        "price (project assumption; only the economics use it)")
    chain: ChainParams = Field(default_factory=lambda: ChainParams(
        block_seconds=864.0, validation_window_blocks=5, expiration_blocks=10, vote_timeout_blocks=3),
        description="the protocol's rules (Gonka defaults, except: an epoch keeps Gonka's length in time "
        "(a day) over 100 compressed blocks, so block_seconds = 864 and the utilisation window is one "
        "block; windows in blocks are shortened to fit)")

    @model_validator(mode="after")
    def _check(self) -> "NetworkParams":
        if self.fidelity == "surrogate" and not self.run_dir:
            raise ValueError("run_dir is required for surrogate fidelity (an experiment run directory with "
                             "scores.parquet and thresholds.json)")
        if not self.hosts:
            raise ValueError("hosts: at least one executor group is needed")
        if sum(g.count for g in self.hosts) < 2:
            raise ValueError("hosts: at least two hosts are needed (an executor cannot validate itself)")
        if not self.mix:
            raise ValueError("mix: at least one request shape is needed")
        return self

    @property
    def n_hosts(self) -> int:
        return sum(g.count for g in self.hosts)
