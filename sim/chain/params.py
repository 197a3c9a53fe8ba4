"""The chain's rules as one frozen, documented parameter object.

Every default mirrors Gonka (gonka-ai/gonka, mid-2026 main; facts.md section 2 and the chain's
`DefaultValidationParams`) unless its description says otherwise. Units are in the names:
`_ngonka` (1 GNK = 1e9 ngonka), `_blocks`, `_seconds`, `_epochs`.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field, model_validator

from sim.pricing import PriceRule, PricingParams

NGONKA_PER_GNK = 1_000_000_000


class ChainParams(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    # --- clock -------------------------------------------------------------------------------
    block_seconds: float = Field(5.0, gt=0, description="seconds per block (Gonka ~5 s)")
    epoch_length_blocks: int = Field(
        17_280, ge=1, description="blocks per epoch (Gonka 17,280 = ~1 day); the network simulation "
        "compresses it (NetworkParams.blocks_per_epoch) without changing any per-block rule")

    # --- validation sampling (Gonka ValidationParams) ----------------------------------------
    max_validation_average: float = Field(1.0, ge=0, description="MaxValidationAverage: expected validators "
                                          "per inference at reputation 0 (Gonka 1.0)")
    min_validation_average: float = Field(0.01, ge=0, description="MinValidationAverage at >= full-traffic "
                                          "cutoff requests per epoch (Gonka 0.01)")
    min_validation_halfway: float = Field(0.05, ge=0, description="MinValidationHalfway at 5,000 requests (Gonka 0.05)")
    min_validation_traffic_cutoff: int = Field(100, ge=0, description="below this many requests per epoch "
                                               "the minimum is 1.0 (Gonka 100)")
    full_validation_traffic_cutoff: int = Field(10_000, ge=1, description="FullValidationTrafficCutoff (Gonka 10,000)")
    validation_rate_multiplier: float = Field(1.0, ge=0, description="scales the expected validators per "
                                              "inference (1.0 = Gonka; a protocol-design knob for sweeps)")
    expiration_blocks: int = Field(20, ge=1, description="a started inference not finished within this "
                                   "many blocks expires and is refunded (Gonka ExpirationBlocks 20)")
    validation_window_blocks: int = Field(
        20, ge=1, description="blocks after finish during which validations are accepted; then the "
        "inference is paid (project choice, equal to Gonka's ExpirationBlocks)")

    # --- invalidation -----------------------------------------------------------------------
    vote_committee_size: int = Field(3, ge=0, description="validators asked to vote on a failed validation "
                                     "(project choice: Gonka asks the epoch group; a committee keeps real "
                                     "mode affordable)")
    vote_timeout_blocks: int = Field(5, ge=1, description="blocks a vote stays open; missing votes count as "
                                     "valid (project choice)")
    vote_quorum: float = Field(0.5, ge=0, le=1, description="share of voting weight (reporter + committee) "
                               "that must find the work invalid (Gonka: majority)")
    invalid_consecutive: int = Field(5, ge=1, description="consecutive invalidations -> INVALID "
                                     "(Gonka 5: 0.05^5 < 1e-6)")
    sprt_p0: float = Field(0.05, gt=0, lt=1, description="SPRT honest invalidation rate (Gonka FalsePositiveRate 0.05)")
    sprt_p1: float = Field(0.10, gt=0, lt=1, description="SPRT cheating invalidation rate (Gonka 0.10)")
    sprt_llr_threshold: float = Field(4.0, gt=0, description="natural-log likelihood-ratio bound -> INVALID (Gonka 4)")
    sprt_restart_on_accept: bool = Field(True, description="restart the test when the LLR falls to -threshold "
                                         "(Wald's repeated SPRT; project choice)")
    slash_invalid_fraction: float = Field(0.20, ge=0, le=1, description="collateral slashed on INVALID (Gonka 20%)")
    invalid_rejoins_next_epoch: bool = Field(True, description="an INVALID participant rejoins at the next "
                                             "epoch's PoC (Gonka)")

    # --- payments and rewards ---------------------------------------------------------------
    validator_fee_fraction: float = Field(
        0.10, ge=0, le=1, description="share of a paid inference's cost split among the validators that "
        "checked it (Gonka splits the cost between executor and validators; the share is a project assumption)")
    epoch_reward_gnk: float = Field(323_000.0, ge=0, description="reward minted per epoch (Gonka 323,000 GNK)")
    epoch_reward_decay: float = Field(0.000475, ge=0, description="reward x exp(-decay x epoch) (Gonka 0.000475)")
    epochs_to_max_reputation: int = Field(30, ge=1, description="reputation = floor(100 x epochs / 30) (Gonka EpochsToMax 30)")

    # --- pricing ------------------------------------------------------------------------------
    pricing: PricingParams = Field(default_factory=PricingParams, description="DiT units (sim/pricing.py)")
    price_rule: PriceRule = Field(default_factory=PriceRule, description="Gonka's utilisation price rule")

    @model_validator(mode="after")
    def _check(self) -> "ChainParams":
        if self.sprt_p1 <= self.sprt_p0:
            raise ValueError(f"sprt_p1 ({self.sprt_p1}) must be > sprt_p0 ({self.sprt_p0})")
        if self.min_validation_traffic_cutoff >= self.full_validation_traffic_cutoff:
            raise ValueError("min_validation_traffic_cutoff must be < full_validation_traffic_cutoff")
        return self

    @property
    def window_blocks(self) -> int:
        """Blocks in the utilisation window (Gonka: 60 s)."""
        return max(1, math.ceil(self.price_rule.window_seconds / self.block_seconds))

    def epoch_reward_ngonka(self, epoch: int) -> int:
        return int(self.epoch_reward_gnk * math.exp(-self.epoch_reward_decay * epoch) * NGONKA_PER_GNK)
