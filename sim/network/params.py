"""Parameters of a network simulation: one frozen, documented object per run.

Defaults: Gonka for protocol rules (sim/chain/params.py), the official Wan2.2-T2V-A14B settings
for requests (docs/facts.md section 1), and project assumptions where neither says (each marked).
"""

from __future__ import annotations

from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from models.request import no_bool
from sim.chain.params import ChainParams
from sim.poc.params import PocParams


class RequestShape(BaseModel):
    """One kind of request in the workload mix."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

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
# Upper bounds (project choices: far above any simulated network, below what only exhausts memory).
MAX_REQUESTS_PER_EPOCH = 10_000_000
MAX_BLOCKS_PER_EPOCH = 1_000_000
TINY_MIX = (RequestShape(width=64, height=64, frames=9, steps=4),)


class ExecutorGroup(BaseModel):
    """`count` hosts (each executes and validates) sharing a GPU type and a strategy."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    _no_bool = field_validator("count", "cheat_rate", mode="before")(no_bool)

    count: int = Field(ge=1, le=100_000, description="hosts in the group")
    gpu_type: str = Field("H100", description="label of the GPU type")
    seconds_per_unit: Optional[float] = Field(
        None, gt=0, description="GPU seconds per compute unit (None: the pricing unit's seconds, i.e. the "
        "calibrated GPU)")
    strategy: Literal["honest", "malicious"] = "honest"
    deviation: Optional[str] = Field(None, description="malign deviation spec the group cheats with (malicious)")
    cheat_rate: float = Field(0.0, ge=0, le=1, description="share of its requests a malicious host cheats on")
    collateral_gnk: float = Field(1_000.0, ge=0, description="collateral per host (project assumption)")
    poc_strategy: str = Field(
        "honest", description="behaviour in the PoC stage when NetworkParams.weights_source='poc': a sim.poc "
        "strategy spec (honest, one-expert[:high|low], fp8, int4, fabricate:F, inflate:X, duplicate:K, copy:HOST)")

    @field_validator("poc_strategy")
    @classmethod
    def _poc_strategy(cls, v: str) -> str:
        from sim.poc.strategies import StrategyError, parse_strategy

        try:
            return parse_strategy(v).spec
        except StrategyError as err:
            raise ValueError(str(err)) from None

    @model_validator(mode="after")
    def _strategy(self) -> "ExecutorGroup":
        if self.strategy == "malicious" and not self.deviation:
            raise ValueError("deviation is required for a malicious group (e.g. 'steps:2')")
        if self.strategy == "honest" and (self.deviation or self.cheat_rate):
            raise ValueError("an honest group takes neither deviation nor cheat_rate")
        return self


class NetworkParams(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    seed: int = Field(0, ge=0, description="one seed per run, split per role with SeedSequence.spawn")
    fidelity: Literal["surrogate", "real"] = Field("surrogate", description="surrogate draws validation scores "
                                                    "from an experiment run; real runs the models")
    run_dir: Optional[str] = Field(None, description="experiment run directory (surrogate: scores.parquet and "
                                   "thresholds.json)")
    policy: str = Field("full", description="validation policy (full, checkpoint, fingerprint, segment)")
    metric: Optional[str] = Field(None, description="metric of the policy (None: the only one the run has)")
    threshold: Optional[float] = Field(None, description="override the run's calibrated threshold (finite; not "
                                       "below the metric's identity value, 0 or psnr's -80)")
    score_split: Literal["test", "calib", "all"] = Field("test", description="which rows of scores.parquet "
                                                         "to draw from (test: not used for the threshold)")
    benign_eps: Union[float, Literal["run", "all", "none"]] = Field(
        "run", description="emulated-hardware-noise rows (hwnoise:EPS) that count as honest work: run (the "
        "experiment's hwnoise_headline, the class its thresholds were chosen on), all, none, or a level")
    score_draw: Literal["per_inference", "per_validation"] = Field(
        "per_inference", description="surrogate: per_inference gives every validator of an inference the same "
        "measured score (deterministic replays of one output, as in the experiment); per_validation draws "
        "independently per validation (validators that disagree, e.g. on different hardware)")
    preset: str = Field("a14b-random", description="model preset recorded on chain (real fidelity: the one run)")
    epochs: int = Field(2, ge=1, le=10_000)
    blocks_per_epoch: int = Field(
        100, ge=2, le=MAX_BLOCKS_PER_EPOCH, description="blocks per epoch (Gonka 17,280; compressed so a sweep runs fast; every "
        "per-block rule is unchanged)")
    requests_per_epoch: int = Field(1_000, ge=0, le=MAX_REQUESTS_PER_EPOCH, description="requests arriving per epoch (Poisson per block)")
    requesters: int = Field(10, ge=1, description="requester accounts")
    hosts: tuple[ExecutorGroup, ...] = Field(
        (ExecutorGroup(count=8), ExecutorGroup(count=2, strategy="malicious", deviation="steps:2", cheat_rate=0.5)),
        description="executor groups")
    mix: tuple[RequestShape, ...] = Field(DEFAULT_MIX, description="request mix")
    finish_delay_blocks: int = Field(1, ge=1, description="blocks from start to finish (project assumption)")
    sampling_hash: Literal["sha256", "splitmix64"] = Field(
        "sha256", description="validator draw: Gonka's SHA256(seed:id) or a vectorised SplitMix64 of the "
        "same inputs (same distribution, 50x faster, for large sweeps; the chain then re-checks that draw)")
    chain_writes: Literal["batched", "per_block"] = Field(
        "batched", description="how the chain is written: batched (sim/chain/batched.py: the same rules on an "
        "in-memory working set, flushed every `flush_blocks` blocks; fast) or per_block (apply_block, one "
        "transaction per block; the reference the batched path is tested against)")
    flush_blocks: int = Field(10, ge=1, le=MAX_BLOCKS_PER_EPOCH, description="batched writes: blocks per database "
                              "flush (also flushed whenever the simulation reads the chain)")
    weights_source: Literal["capacity", "poc"] = Field(
        "capacity", description="where each epoch's weights come from: capacity (what an honest PoC stage "
        "measures: proportional to GPU speed) or poc (sim.poc's stage, with each group's poc_strategy)")
    poc_fidelity: Literal["surrogate", "real"] = Field(
        "surrogate", description="PoC stage fidelity (weights_source='poc'): surrogate draws leaf distances "
        "from the PoC measurement; real runs the PoC forward of `poc_preset`")
    poc_preset: str = Field("tiny", description="model preset of a real PoC stage")
    poc_nonces: int = Field(
        1_000, ge=1, le=1_000_000, description="nonces one PoC stage yields for a host of the pricing unit's "
        "speed (project assumption; a host's count scales with 1/seconds_per_unit, as its PoC throughput does)")
    poc: PocParams = Field(default_factory=PocParams, description="PoC validation rules (sim/poc/params.py)")
    gpu_cost_fraction: float = Field(
        0.5, ge=0, description="GPU cost per second as a share of the revenue per GPU-second at the base "
        "price (project assumption; only the economics use it)")
    chain: ChainParams = Field(default_factory=lambda: ChainParams(
        block_seconds=864.0, validation_window_blocks=5, expiration_blocks=10, vote_timeout_blocks=3),
        description="the protocol's rules (Gonka defaults, except: an epoch keeps Gonka's length in time "
        "(a day) over 100 compressed blocks, so block_seconds = 864 and the utilisation window is one "
        "block; windows in blocks are shortened to fit)")

    _no_bool = field_validator("seed", "epochs", "blocks_per_epoch", "requests_per_epoch", "requesters",
                               "finish_delay_blocks", "poc_nonces", "threshold", "gpu_cost_fraction", "flush_blocks",
                               mode="before")(no_bool)

    @field_validator("threshold")
    @classmethod
    def _threshold_floor(cls, v):
        from sim.metrics import IDENTITY

        floor = min(IDENTITY.values(), default=0.0)
        if v is not None and v < floor:
            raise ValueError(f"threshold must be >= {floor:g} (no metric's distance is lower), got {v}")
        return v

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
        ids = [f"host{i:03d}" for i in range(self.n_hosts)]
        for gi, g in enumerate(self.hosts):
            if g.poc_strategy != "honest" and self.weights_source != "poc":
                raise ValueError(f"hosts.{gi}.poc_strategy {g.poc_strategy!r} needs weights_source='poc' "
                                 "(capacity weights run no PoC stage)")
            if g.poc_strategy.startswith("copy:") and g.poc_strategy.split(":", 1)[1] not in ids:
                raise ValueError(f"hosts.{gi}.poc_strategy {g.poc_strategy!r}: copy needs a host id; "
                                 f"allowed: {ids[0]}..{ids[-1]}")
        return self

    @property
    def chain_params(self):
        """The chain's rules, with the validators' draw (`sampling_hash`) the chain re-checks."""
        if self.chain.sampling_draw == self.sampling_hash:
            return self.chain
        return self.chain.model_copy(update={"sampling_draw": self.sampling_hash})

    @property
    def n_hosts(self) -> int:
        return sum(g.count for g in self.hosts)

    def surrogate_backend(self):
        """The surrogate backend these parameters describe (reads and checks `run_dir`)."""
        from sim.network.backends import SurrogateBackend

        return SurrogateBackend(self.run_dir, self.policy, self.metric, self.threshold, self.score_split,
                                None if self.benign_eps == "none" else self.benign_eps, self.score_draw)
