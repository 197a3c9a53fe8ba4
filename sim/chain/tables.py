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

SCHEMA_VERSION = 1

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
    unit_price_ngonka: float
    params_json: str = Field(sa_column=Column(Text, nullable=False))
    previous_epoch_requests: int = 0
    epoch_requests: int = 0


class Participant(SQLModel, table=True):
    __tablename__ = "participant"
    id: str = Field(primary_key=True)
    role: str  # requester | host (executes and validates) | executor | validator
    status: str = "ACTIVE"  # ACTIVE | INVALID
    balance_ngonka: int = _money()
    collateral_ngonka: int = _money()
    reputation: int = 0
    epochs_completed: int = 0
    poc_weight: int = _money()
    gpu_type: str = ""
    seconds_per_unit: float = 0.0  # GPU seconds per compute unit (capacity); 0 for requesters
    consecutive_invalid: int = 0
    sprt_llr: float = 0.0
    checked_count: int = 0
    invalidated_count: int = 0
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
    unit_price_ngonka: float  # price in force during this block
    next_unit_price_ngonka: float
    utilisation: float
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
    unit_price_ngonka: float
    cost_ngonka: int = _money()  # = escrow at start (exact: the units are known up front)
    escrow_ngonka: int = _money()  # outstanding escrow (0 once paid, refunded or expired)
    paid_ngonka: int = _money()
    refunded_ngonka: int = _money()
    video_sha256: Optional[str] = None
    commitment_root: Optional[str] = None  # Merkle root of the committed trajectory (sim/commitment.py)
    status: str = "STARTED"  # STARTED FINISHED VOTING VALIDATED INVALIDATED EXPIRED
    start_block: int
    finish_block: Optional[int] = None
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
    nonce_count: int
    weight: int = _money()


class PocValidation(SQLModel, table=True):
    __tablename__ = "poc_validation"
    id: str = Field(primary_key=True)
    epoch: int = Field(index=True)
    validator: str
    participant: str
    sampled: int
    mismatches: int
    accepted: bool


class PriceHistory(SQLModel, table=True):
    __tablename__ = "price_history"
    block: int = Field(primary_key=True)
    unit_price_ngonka: float
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
