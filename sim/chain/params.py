"""The chain's rules as one frozen, documented parameter object.

Every default mirrors Gonka (gonka-ai/gonka, mid-2026 main; docs/facts.md section 2 and the chain's
`DefaultValidationParams`) unless its description says otherwise. Units are in the names:
`_ngonka` (1 GNK = 1e9 ngonka), `_blocks`, `_seconds`, `_epochs`.
"""

from __future__ import annotations

import math
from typing import Literal, Optional

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
    full_validation_traffic_cutoff: int = Field(10_000, ge=2, description="FullValidationTrafficCutoff (Gonka "
                                                "10,000; >= 2: Gonka divides by half of it)")
    sampling_draw: Literal["sha256", "splitmix64"] = Field(
        "sha256", description="the draw ShouldValidate compares with the probability: Gonka's "
        "SHA256(seed:id)[:8] / (2^64 - 1), or (project speed option) SplitMix64 of seed and the inference's "
        "number, the digits after the last '-' of its id")
    validation_rate_multiplier: float = Field(1.0, ge=0, description="scales the expected validators per "
                                              "inference (1.0 = Gonka; a protocol-design knob for sweeps)")
    expiration_blocks: int = Field(20, ge=1, description="a started inference not finished within this "
                                   "many blocks expires and is refunded (Gonka ExpirationBlocks 20)")
    validation_window_blocks: int = Field(
        20, ge=1, description="blocks after finish during which validations are accepted; then the "
        "inference is paid (project choice, equal to Gonka's ExpirationBlocks)")

    # --- invalidation and status (Gonka ValidationParams, CollateralParams) ----------------------
    vote_committee_size: int = Field(3, ge=0, description="validators asked to vote on a failed validation "
                                     "(project choice: Gonka asks the epoch group; a committee keeps real "
                                     "mode affordable)")
    vote_timeout_blocks: int = Field(5, ge=1, description="blocks a vote stays open; missing votes count as "
                                     "valid (project choice)")
    vote_quorum: float = Field(0.5, ge=0, le=1, description="share of voting weight (reporter + committee) "
                               "that must find the work invalid (Gonka: majority)")
    quick_failure_threshold: float = Field(
        0.000001, ge=0, le=1, description="INVALID when sprt_p0^consecutive < this (Gonka QuickFailureThreshold "
        "1e-6: 5 consecutive invalidations at p0 0.05)")
    invalid_consecutive: Optional[int] = Field(
        None, ge=1, description="override: INVALID after this many consecutive invalidations (None: Gonka's "
        "rule from sprt_p0 and quick_failure_threshold)")
    sprt_p0: float = Field(0.05, ge=0, le=1, description="invalidation SPRT honest rate (Gonka FalsePositiveRate "
                           "0.05); outside (0, 1) the SPRT reports algorithm_error, as in Gonka")
    sprt_p1: float = Field(0.20, ge=0, le=1, description="invalidation SPRT cheating rate (Gonka "
                           "BadParticipantInvalidationRate 0.20)")
    sprt_llr_threshold: float = Field(4.0, gt=0, description="natural-log likelihood-ratio bound H: INVALID at "
                                      "LLR >= H (Gonka InvalidationHThreshold 4)")
    sprt_restart_on_accept: bool = Field(
        False, description="project option: restart the invalidation SPRT at 0 when the LLR reaches -H (Wald's "
        "repeated SPRT). Gonka (False) lets the LLR fall without bound within the epoch and resets it at the "
        "next epoch")
    downtime_good_percentage: float = Field(0.1, ge=0, le=1, description="downtime SPRT P0: miss rate of a "
                                            "reliable host (Gonka DowntimeGoodPercentage 0.1)")
    downtime_bad_percentage: float = Field(0.2, ge=0, le=1, description="downtime SPRT P1 (Gonka "
                                           "DowntimeBadPercentage 0.2)")
    downtime_h_threshold: float = Field(4.0, gt=0, description="downtime SPRT bound: INACTIVE at LLR >= H "
                                        "(Gonka DowntimeHThreshold 4)")
    slash_invalid_fraction: float = Field(0.20, ge=0, le=1, description="collateral slashed on INVALID (Gonka "
                                          "SlashFractionInvalid 0.20)")
    slash_downtime_fraction: float = Field(0.10, ge=0, le=1, description="collateral slashed on INACTIVE for "
                                           "downtime (Gonka SlashFractionDowntime 0.10)")
    invalid_reputation_preserve: float = Field(0.0, ge=0, le=1, description="share of completed epochs kept on "
                                               "INVALID (Gonka InvalidReputationPreserve 0.0)")
    downtime_reputation_preserve: float = Field(0.0, ge=0, le=1, description="share of completed epochs kept "
                                                "on INACTIVE (Gonka DowntimeReputationPreserve 0.0)")
    confirmation_poc_alpha_threshold: float = Field(
        0.0, ge=0, description="INACTIVE when a confirmation PoC's ratio is below this; 0 disables (Gonka "
        "ConfirmationPoCParams.AlphaThreshold 0.0, the feature off by default)")
    confirmation_poc_slash_fraction: float = Field(0.0, ge=0, le=1, description="collateral slashed on a failed "
                                                   "confirmation PoC (Gonka ConfirmationPoCParams.SlashFraction 0.0)")
    invalid_rejoins_next_epoch: bool = Field(True, description="an INVALID or INACTIVE participant rejoins at the "
                                             "next epoch (Gonka: status is reset at epoch start)")
    module_authority: str = Field("@gov", min_length=1, description="the only sender allowed to mint, set "
                                  "weights, report confirmation PoC and end an epoch (Gonka: the module/gov "
                                  "authority; the mock chain has no signatures, the sender field stands for one)")

    # --- payments and rewards ---------------------------------------------------------------
    validator_fee_fraction: float = Field(
        0.10, ge=0, le=1, description="share of a paid inference's cost split among the validators that "
        "checked it (Gonka splits the cost between executor and validators; the share is a project assumption)")
    epoch_reward_gnk: float = Field(323_000.0, ge=0, description="reward minted per epoch (Gonka 323,000 GNK)")
    epoch_reward_decay: float = Field(0.000475, ge=0, description="reward x exp(-decay x epoch) (Gonka 0.000475)")
    epochs_to_max_reputation: int = Field(30, ge=1, description="epochs to reputation 100 (Gonka EpochsToMax 30)")
    miss_percentage_cutoff: float = Field(0.01, ge=0, description="an epoch's miss rate (missed / finished) counts "
                                          "against reputation above this (Gonka MissPercentageCutoff 0.01)")
    miss_requests_penalty: float = Field(1.0, ge=0, description="epochs lost per unit of miss rate (Gonka "
                                         "MissRequestsPenalty 1.0)")

    # --- pricing ------------------------------------------------------------------------------
    pricing: PricingParams = Field(default_factory=PricingParams, description="DiT units (sim/pricing.py)")
    price_rule: PriceRule = Field(default_factory=PriceRule, description="Gonka's utilisation price rule")

    @model_validator(mode="after")
    def _check(self) -> "ChainParams":
        if 0 < self.sprt_p0 < 1 and 0 < self.sprt_p1 < 1 and self.sprt_p1 <= self.sprt_p0:
            raise ValueError(f"sprt_p1 ({self.sprt_p1}) must be > sprt_p0 ({self.sprt_p0})")
        if self.module_authority[0] != "@":
            raise ValueError(f"module_authority {self.module_authority!r} must start with '@' (a system account)")
        return self

    @property
    def window_blocks(self) -> int:
        """Blocks in the utilisation window: seconds // block seconds, at least 1 (Gonka SecondsToBlocks)."""
        return max(1, int(self.price_rule.window_seconds // self.block_seconds))

    def epoch_reward_ngonka(self, epoch: int) -> int:
        return int(self.epoch_reward_gnk * math.exp(-self.epoch_reward_decay * epoch) * NGONKA_PER_GNK)
