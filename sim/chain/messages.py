"""Messages agents submit to the chain. Each has a unique `id`; the chain applies an id once.

Agents decide; only sim/chain/apply.py changes state. Field validation here refuses malformed
messages (negative amounts, unknown roles); rules that need chain state (enough balance, the right
executor, a designated voter) are checked when the message is applied, and a message that breaks
them is recorded as rejected with its reason and changes nothing.
"""

from __future__ import annotations

from typing import Annotated, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter


class _Msg(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    id: str = Field(min_length=1, max_length=200, description="unique message id (idempotency key)")


class Mint(_Msg):
    """Genesis funding of an account (the only mint besides epoch rewards)."""

    kind: Literal["mint"] = "mint"
    to: str = Field(min_length=1)
    amount_ngonka: int = Field(ge=0)


class RegisterParticipant(_Msg):
    """Join the network; `collateral_ngonka` moves from balance to collateral."""

    kind: Literal["register"] = "register"
    participant: str = Field(min_length=1, max_length=100)
    role: Literal["requester", "host", "executor", "validator"]
    gpu_type: str = ""
    seconds_per_unit: float = Field(0.0, ge=0, description="GPU seconds per compute unit; > 0 for executors")
    collateral_ngonka: int = Field(0, ge=0)


class DepositCollateral(_Msg):
    kind: Literal["deposit_collateral"] = "deposit_collateral"
    participant: str
    amount_ngonka: int = Field(ge=0)


class PocCommitMsg(_Msg):
    """A participant's PoC commitment of an epoch: Merkle root and nonce count."""

    kind: Literal["poc_commit"] = "poc_commit"
    epoch: int = Field(ge=0)
    participant: str
    merkle_root: str
    nonce_count: int = Field(ge=0)


class PocValidationMsg(_Msg):
    kind: Literal["poc_validation"] = "poc_validation"
    epoch: int = Field(ge=0)
    validator: str
    participant: str
    sampled: int = Field(ge=0)
    mismatches: int = Field(ge=0)
    accepted: bool


class SetWeights(_Msg):
    """The accepted PoC weights of an epoch (the outcome of the PoC stage)."""

    kind: Literal["set_weights"] = "set_weights"
    epoch: int = Field(ge=0)
    weights: dict[str, int]


class RequestParams(BaseModel):
    """The request as recorded on chain (prompt by hash)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    model: str = "a14b-random"
    prompt_sha256: str = ""
    width: int = Field(832, ge=16)
    height: int = Field(480, ge=16)
    frames: int = Field(81, ge=1)
    steps: int = Field(40, ge=1)
    guidance_high: float = Field(4.0, ge=0)
    guidance_low: float = Field(3.0, ge=0)
    shift: float = Field(12.0, gt=0)
    seed: int = Field(0, ge=0, lt=2**63)


class StartInference(_Msg):
    """A requester asks `executor` for a generation; the chain prices it and escrows the cost."""

    kind: Literal["start_inference"] = "start_inference"
    inference_id: str = Field(min_length=1, max_length=200)
    requester: str
    executor: str
    request: RequestParams
    max_cost_ngonka: Optional[int] = Field(None, ge=0, description="refuse if the cost would exceed this")


class FinishInference(_Msg):
    kind: Literal["finish_inference"] = "finish_inference"
    inference_id: str
    executor: str
    video_sha256: str = Field(min_length=1)
    commitment_root: Optional[str] = Field(None, pattern="^[0-9a-f]{64}$", description="hex Merkle root of the "
                                           "committed latent trajectory (sim/commitment.py): 32 bytes")
    truth_deviation: Optional[str] = Field(None, description="simulation ground truth (not a chain field)")


class SubmitValidation(_Msg):
    kind: Literal["validation"] = "validation"
    inference_id: str
    validator: str
    score: float
    passed: bool


class SubmitVote(_Msg):
    kind: Literal["vote"] = "vote"
    inference_id: str
    voter: str
    invalid: bool


class EndEpoch(_Msg):
    """Settle the epoch: rewards by weight, reputation, rejoin of INVALID participants."""

    kind: Literal["end_epoch"] = "end_epoch"
    epoch: int = Field(ge=0)


Message = Annotated[
    Union[Mint, RegisterParticipant, DepositCollateral, PocCommitMsg, PocValidationMsg, SetWeights,
          StartInference, FinishInference, SubmitValidation, SubmitVote, EndEpoch],
    Field(discriminator="kind"),
]
MESSAGE_ADAPTER: TypeAdapter = TypeAdapter(Message)


def parse_message(data: dict) -> BaseModel:
    """Validate a message given as a dict (e.g. from JSON)."""
    return MESSAGE_ADAPTER.validate_python(data)
