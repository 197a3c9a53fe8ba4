"""The mock chain's tables (SQLModel). Amounts are whole ngonka (BigInteger).

Only sim/chain/apply.py writes to them; everything else reads. `ledger` is append-only: every
transfer (mint, collateral, escrow, refund, payment, validator fee, reward, slash) is one row.

Accounts named in the ledger: a participant id, or one of the system accounts `@mint` (source of
new coins), `@burn` (sink of slashed coins), `@escrow` (requests' escrow, with the inference id),
`@collateral` (with the participant as the other side).
"""

from __future__ import annotations

from typing import Optional

from sqlalchemy import BigInteger, Column, Index, Text
from sqlmodel import Field, SQLModel

SCHEMA_VERSION = 3  # 3: inference.commitment_root (the trajectory's Merkle root)

MINT, BURN, ESCROW, COLLATERAL = "@mint", "@burn", "@escrow", "@collateral"


def _money(default: int = 0, **kw):
    return Field(default=default, sa_type=BigInteger, **kw)


class ChainMeta(SQLModel, table=True):
    """One row: schema version, clock, current price and the rules (ChainParams JSON)."""

    __tablename__ = "chain_meta"
    id: int = Field(default=1, primary_key=True)
    schema_version: int
    height: int = 0
    epoch: int = 0
    epoch_start_block: int = 1
    unit_price_ngonka: int = _money()  # integer price per unit (Gonka truncates it at every update)
    params_json: str = Field(sa_column=Column(Text, nullable=False))
    previous_epoch_requests: int = _money()  # inferences finished in the previous epoch (Gonka PreviousEpochRequests)
    epoch_requests: int = _money()  # inferences started in the current epoch
    epoch_finished: int = _money()  # inferences finished in the current epoch (Gonka NumberOfRequests)
    supply_ngonka: int = _money()  # minted - burned; kept <= int64 so no balance can overflow


class Participant(SQLModel, table=True):
    __tablename__ = "participant"
    id: str = Field(primary_key=True)
    role: str  # requester | host (executes and validates) | executor | validator
    status: str = "ACTIVE"  # ACTIVE | INVALID | INACTIVE
    status_reason: str = ""  # Gonka's reason codes (sim.chain.rules): consecutive_failures, downtime, ...
    balance_ngonka: int = _money()
    collateral_ngonka: int = _money()
    reputation: int = 0  # 0..100
    epochs_completed: int = 0
    miss_sum: str = "0"  # exact decimal: sum of the epochs' miss rates above the cutoff (reputation)
    poc_weight: int = _money()
    gpu_type: str = ""
    seconds_per_unit: float = 0.0  # GPU seconds per compute unit (capacity); 0 for requesters
    consecutive_invalid: int = _money()
    # current-epoch statistics (Gonka CurrentEpochStats; reset when an epoch ends)
    inference_count: int = _money()  # finished
    missed_requests: int = _money()  # expired
    validated_epoch: int = _money()
    invalidated_epoch: int = _money()
    invalid_llr_e12: int = _money()  # invalidation SPRT LLR in units of 1e-12 (exact)
    inactive_llr_e12: int = _money()  # downtime SPRT LLR in units of 1e-12 (exact)
    confirmation_poc_ratio: Optional[str] = None  # exact decimal, None when no confirmation PoC ran
    # lifetime counters (reports)
    checked_count: int = _money()
    invalidated_count: int = _money()
    invalid_since_block: Optional[int] = None


class Epoch(SQLModel, table=True):
    __tablename__ = "epoch"
    index: int = Field(primary_key=True)
    start_block: int
    end_block: Optional[int] = None
    requests: int = 0
    reward_ngonka: int = _money()
    settled: bool = False


class Block(SQLModel, table=True):
    __tablename__ = "block"
    height: int = Field(primary_key=True)
    epoch: int
    unit_price_ngonka: int = _money()  # price in force during this block
    next_unit_price_ngonka: int = _money()
    utilisation: float  # float view of the exact decimal utilisation
    units: float  # units started in this block
    capacity_units: float  # units per block the ACTIVE executors can serve
    messages: int
    rejected: int


class Inference(SQLModel, table=True):
    """The per-inference record (Gonka's fields; the video SHA-256 stands for the response hash and
    the request parameters for the token counts)."""

    __tablename__ = "inference"
    __table_args__ = (Index("ix_inference_status_finish", "status", "finish_block"),
                      Index("ix_inference_status_start", "status", "start_block"),
                      Index("ix_inference_executor", "executor"))
    id: str = Field(primary_key=True)
    epoch: int
    requester: str
    executor: str
    model: str
    prompt_sha256: str
    width: int
    height: int
    frames: int
    steps: int
    guidance_high: float
    guidance_low: float
    shift: float
    seed: int = Field(sa_type=BigInteger)
    units: float
    unit_price_ngonka: int = _money()
    cost_ngonka: int = _money()  # = escrow at start (exact: the units are known up front)
    escrow_ngonka: int = _money()  # outstanding escrow (0 once paid, refunded or expired)
    paid_ngonka: int = _money()
    refunded_ngonka: int = _money()
    video_sha256: Optional[str] = None
    commitment_root: Optional[str] = None  # Merkle root of the committed trajectory (sim/commitment.py)
    status: str = "STARTED"  # STARTED FINISHED VOTING VALIDATED INVALIDATED EXPIRED
    start_block: int
    finish_block: Optional[int] = None
    traffic_basis: Optional[int] = Field(default=None, sa_type=BigInteger)  # recorded at finish (Gonka TrafficBasis)
    executor_reputation: Optional[int] = None  # recorded at finish (Gonka ExecutorReputation)
    settle_block: Optional[int] = None
    validations: int = 0
    failed_validations: int = 0
    validators: str = ""  # comma-separated validators that passed it
    failed_by: str = ""  # comma-separated validators that failed it
    reporter: Optional[str] = None
    committee: str = ""
    vote_deadline_block: Optional[int] = None
    # simulation ground truth, never read by the chain's rules; kept for reports
    truth_deviation: Optional[str] = None


class Validation(SQLModel, table=True):
    __tablename__ = "validation"
    id: str = Field(primary_key=True)  # message id
    inference_id: str = Field(index=True)
    validator: str
    score: float
    passed: bool
    block: int


class InvalidationVote(SQLModel, table=True):
    __tablename__ = "invalidation_vote"
    id: str = Field(primary_key=True)
    inference_id: str = Field(index=True)
    voter: str
    invalid: bool
    weight: int = _money()
    block: int


class PocCommit(SQLModel, table=True):
    __tablename__ = "poc_commit"
    id: str = Field(primary_key=True)
    epoch: int = Field(index=True)
    participant: str
    merkle_root: str
    nonce_count: int = _money()
    weight: int = _money()


class PocValidation(SQLModel, table=True):
    __tablename__ = "poc_validation"
    id: str = Field(primary_key=True)
    epoch: int = Field(index=True)
    validator: str
    participant: str
    sampled: int = _money()
    mismatches: int = _money()
    accepted: bool


class SeedCommit(SQLModel, table=True):
    """A validator's seed commitment of an epoch (one per validator and epoch)."""

    __tablename__ = "seed_commit"
    epoch: int = Field(primary_key=True)
    participant: str = Field(primary_key=True)
    seed_sha256: str
    block: int


class ConfirmationPocResult(SQLModel, table=True):
    __tablename__ = "confirmation_poc"
    id: str = Field(primary_key=True)  # message id
    epoch: int = Field(index=True)
    participant: str
    ratio: str  # exact decimal
    block: int


class PriceHistory(SQLModel, table=True):
    __tablename__ = "price_history"
    block: int = Field(primary_key=True)
    unit_price_ngonka: int = _money()
    utilisation: float


class LedgerEntry(SQLModel, table=True):
    """Append-only: one row per transfer."""

    __tablename__ = "ledger"
    __table_args__ = (Index("ix_ledger_kind", "kind"),)
    id: Optional[int] = Field(default=None, primary_key=True)
    block: int
    msg_id: str
    kind: str  # mint collateral escrow refund payment validator_fee reward slash
    from_account: str
    to_account: str
    amount_ngonka: int = _money()
    inference_id: Optional[str] = None


class AppliedMessage(SQLModel, table=True):
    """Every message id seen (accepted or rejected): replays change nothing."""

    __tablename__ = "applied_message"
    id: str = Field(primary_key=True)
    block: int
    kind: str
    accepted: bool
    reason: str = ""
