"""Messages agents submit to the chain. Each has a unique `id`; the chain applies an id once.

Agents decide; only sim/chain/apply.py changes state. Field validation here refuses malformed
messages (negative amounts, unknown roles, amounts and counts beyond int64, epochs beyond int32,
NaN scores, widths beyond 8192, NUL characters, names of system accounts), so that every message
that passes can be stored by SQLite and PostgreSQL alike. Rules that need chain state (the right
sender, enough balance, the right executor, a sampled validator, a designated voter) are checked
when the message is applied; a message that breaks them is recorded as rejected with its reason
and changes nothing, and the rest of its block applies.

The mock chain has no signatures: the acting field of a message (`sender`, `participant`,
`requester`, `executor`, `validator`, `voter`) stands for its signer.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator


INT64_MAX = 2**63 - 1
INT32_MAX = 2**31 - 1

# Bounds every message field is held to, so that any accepted message can be written by SQLite and
# PostgreSQL alike (BIGINT amounts and counts, INTEGER epochs and sizes, no NUL in text, no NaN).
Amount = Annotated[int, Field(ge=0, le=INT64_MAX)]
Count = Annotated[int, Field(ge=0, le=INT64_MAX)]
Epoch = Annotated[int, Field(ge=0, le=INT32_MAX)]
Name = Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[^@\x00][^\x00]*$")]
Text = Annotated[str, Field(max_length=200, pattern=r"^[^\x00]*$")]
Key = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[^\x00]+$")]


class _Msg(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)
    id: Key = Field(description="unique message id (idempotency key)")


class Mint(_Msg):
    """Funding of an account by the module authority (genesis; epoch rewards are minted by the chain)."""

    kind: Literal["mint"] = "mint"
    sender: Text = Field(description="must be ChainParams.module_authority")
    to: Name
    amount_ngonka: Amount


class RegisterParticipant(_Msg):
    """Join the network; `collateral_ngonka` moves from balance to collateral."""

    kind: Literal["register"] = "register"
    participant: Name
    role: Literal["requester", "host", "executor", "validator"]
    gpu_type: Text = ""
    seconds_per_unit: float = Field(0.0, ge=0, le=1e9, description="GPU seconds per compute unit; > 0 for executors")
    collateral_ngonka: Amount = 0


class DepositCollateral(_Msg):
    kind: Literal["deposit_collateral"] = "deposit_collateral"
    participant: Name
    amount_ngonka: Amount


class PocCommitMsg(_Msg):
    """A participant's PoC commitment of an epoch: Merkle root and nonce count."""

    kind: Literal["poc_commit"] = "poc_commit"
    epoch: Epoch
    participant: Name
    merkle_root: Text
    nonce_count: Count


class PocValidationMsg(_Msg):
    kind: Literal["poc_validation"] = "poc_validation"
    epoch: Epoch
    validator: Name
    participant: Name
    sampled: Count
    mismatches: Count
    accepted: bool


class SetWeights(_Msg):
    """The accepted PoC weights of an epoch (the outcome of the PoC stage), set by the module authority."""

    kind: Literal["set_weights"] = "set_weights"
    sender: Text = Field(description="must be ChainParams.module_authority")
    epoch: Epoch
    weights: dict[Name, Amount] = Field(max_length=100_000)


class ConfirmationPoc(_Msg):
    """The outcome of a confirmation PoC for one participant (Gonka ConfirmationPoCRatio: confirmed
    weight over the weight it claimed), reported by the module authority."""

    kind: Literal["confirmation_poc"] = "confirmation_poc"
    sender: Text = Field(description="must be ChainParams.module_authority")
    epoch: Epoch
    participant: Name
    ratio: float = Field(ge=0, le=1e6)


class CommitSeed(_Msg):
    """A validator's commitment to its secret sampling seed of an epoch: SHA-256 of the seed in base
    10 (`rules.seed_commitment`). One per validator and epoch; validations reveal the seed."""

    kind: Literal["commit_seed"] = "commit_seed"
    epoch: Epoch
    participant: Name
    seed_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class RequestParams(BaseModel):
    """The request as recorded on chain (prompt by hash)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)
    model: Text = "a14b-random"
    prompt_sha256: Text = ""
    width: int = Field(832, ge=16, le=8192)
    height: int = Field(480, ge=16, le=8192)
    frames: int = Field(81, ge=1, le=4097)
    steps: int = Field(40, ge=1, le=1000)
    guidance_high: float = Field(4.0, ge=0, le=1e6)
    guidance_low: float = Field(3.0, ge=0, le=1e6)
    shift: float = Field(12.0, gt=0, le=1e6)
    seed: int = Field(0, ge=0, le=INT64_MAX)


class StartInference(_Msg):
    """A requester asks `executor` for a generation; the chain prices it and escrows the cost."""

    kind: Literal["start_inference"] = "start_inference"
    inference_id: Key
    requester: Name
    executor: Name
    request: RequestParams
    max_cost_ngonka: Optional[Amount] = Field(None, description="refuse if the cost would exceed this")


class FinishInference(_Msg):
    kind: Literal["finish_inference"] = "finish_inference"
    inference_id: Key
    executor: Name
    video_sha256: Key
    commitment_root: Optional[str] = Field(None, pattern="^[0-9a-f]{64}$", description="hex Merkle root of the "
                                           "committed latent trajectory (sim/commitment.py): 32 bytes")
    truth_deviation: Optional[Text] = Field(None, description="simulation ground truth (not a chain field)")


class SubmitValidation(_Msg):
    """A validator's verdict on an inference its seed sampled; `seed` reveals that seed (checked against
    the validator's commitment of the inference's epoch and against Gonka's ShouldValidate)."""

    kind: Literal["validation"] = "validation"
    inference_id: Key
    validator: Name
    seed: int = Field(ge=-(2**63), le=INT64_MAX, description="the validator's epoch seed (Gonka: int64)")
    score: float = Field(allow_inf_nan=True, description="any number but NaN (a PSNR of identical videos is inf)")
    passed: bool

    @field_validator("score")
    @classmethod
    def _not_nan(cls, v: float) -> float:
        if math.isnan(v):
            raise ValueError("score must be a number, not NaN")
        return v


class SubmitVote(_Msg):
    kind: Literal["vote"] = "vote"
    inference_id: Key
    voter: Name
    invalid: bool


class EndEpoch(_Msg):
    """Settle the epoch (module authority): rewards by weight, reputation, statistics reset, rejoin."""

    kind: Literal["end_epoch"] = "end_epoch"
    sender: Text = Field(description="must be ChainParams.module_authority")
    epoch: Epoch


Message = Annotated[
    Union[Mint, RegisterParticipant, DepositCollateral, PocCommitMsg, PocValidationMsg, SetWeights, ConfirmationPoc,
          CommitSeed, StartInference, FinishInference, SubmitValidation, SubmitVote, EndEpoch],
    Field(discriminator="kind"),
]
MESSAGE_ADAPTER: TypeAdapter = TypeAdapter(Message)
AUTHORITY_MESSAGES = (Mint, SetWeights, ConfirmationPoc, EndEpoch)


def parse_message(data: dict) -> BaseModel:
    """Validate a message given as a dict (e.g. from JSON)."""
    return MESSAGE_ADAPTER.validate_python(data)
