"""The one place that changes chain state: `apply_block(engine, messages)`.

A block is applied in one database transaction: the messages in order, then the end-of-block
rules (vote tallies, payment of inferences whose validation window closed, expiry of unfinished
ones, the utilisation price). Either all of it is written or, on any error, none of it.

- A message id is applied once: ids already on chain (accepted or rejected) and repeats inside the
  block are skipped, so replaying a block changes nothing.
- A message that breaks a rule (unknown participant, a sender without the right role, not enough
  balance, wrong executor, a validator its seed did not sample, closed window) is recorded as
  rejected, with its reason, and changes nothing else; the other messages of the block apply.
  Messages are instances of the schema in sim/chain/messages.py, whose bounds (int64 amounts,
  int32 epochs, no NaN, no NUL) keep every accepted message writable on SQLite and PostgreSQL, so
  one bad message never aborts its block. `apply_block` raises `ChainApplyError` (nothing written)
  only for a database failure or an internal error.
- Participant status follows Gonka's ComputeStatus (sim/chain/rules.py): consecutive failures,
  the invalidation SPRT, the downtime SPRT (INACTIVE) and the confirmation PoC, with Gonka's
  reason codes; the epoch statistics behind the SPRTs are reset when an epoch ends.
- Money only moves through `_State.transfer`, which writes one append-only ledger row per transfer.

For speed the block's working set (participants, the inferences it touches) is loaded once, the
messages are applied in memory, and the results are written with SQLAlchemy bulk inserts and
executemany updates; 1,000 requests per block cost a few tens of milliseconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Iterable, Sequence

from sqlalchemy import bindparam, func, insert, select, update
from sqlalchemy.engine import Connection, Engine

from sim.chain import rules
from sim.chain import tables as T
from sim.chain.messages import (INT64_MAX, CommitSeed, ConfirmationPoc, DepositCollateral,
                                EndEpoch, FinishInference, Mint, PocCommitMsg, PocValidationMsg, RegisterParticipant,
                                SetWeights, StartInference, SubmitValidation, SubmitVote)
from sim.chain.params import ChainParams
from sim.pricing import PricingError, cost_ngonka, grace_price, next_unit_price

_INF = T.Inference.__table__
_PART = T.Participant.__table__
_CHUNK = 500
EXECUTING_ROLES = ("host", "executor")
VALIDATING_ROLES = ("host", "validator")
_INF_MUTABLE = ("status", "escrow_ngonka", "paid_ngonka", "refunded_ngonka", "video_sha256", "commitment_root",
                "finish_block", "traffic_basis", "executor_reputation", "settle_block", "validations", "failed_validations",
                "validators", "failed_by", "reporter",
                "committee", "vote_deadline_block", "truth_deviation")
_PART_MUTABLE = ("role", "status", "status_reason", "balance_ngonka", "collateral_ngonka", "reputation",
                 "epochs_completed", "miss_sum", "poc_weight", "gpu_type", "seconds_per_unit", "consecutive_invalid",
                 "inference_count", "missed_requests", "validated_epoch", "invalidated_epoch", "invalid_llr_e12",
                 "inactive_llr_e12", "confirmation_poc_ratio", "checked_count", "invalidated_count",
                 "invalid_since_block")
_MINT_BURN = frozenset((T.MINT, T.BURN))
# The rows written most (a few per request) are kept as tuples in these column orders.
LEDGER_COLS = ("block", "msg_id", "kind", "from_account", "to_account", "amount_ngonka", "inference_id")
VALIDATION_COLS = ("id", "inference_id", "validator", "score", "passed", "block")
APPLIED_COLS = ("id", "block", "kind", "accepted", "reason")
if (LEDGER_COLS, VALIDATION_COLS, APPLIED_COLS) != tuple(
        tuple(c.name for c in t.__table__.columns if c.name != "id" or t is not T.LedgerEntry)
        for t in (T.LedgerEntry, T.Validation, T.AppliedMessage)):  # pragma: no cover - a schema change
    raise RuntimeError("the ledger, validation or applied_message columns changed: update sim/chain/apply.py")
_ESCROW, _COLLATERAL = T.ESCROW, T.COLLATERAL


def new_participant(pid: str, role: str = "requester") -> dict:
    """A participant row with every field at its initial value."""
    return dict(id=pid, role=role, status="ACTIVE", status_reason="", balance_ngonka=0, collateral_ngonka=0,
                reputation=0, epochs_completed=0, miss_sum="0", poc_weight=0, gpu_type="", seconds_per_unit=0.0,
                consecutive_invalid=0, inference_count=0, missed_requests=0, validated_epoch=0, invalidated_epoch=0,
                invalid_llr_e12=0, inactive_llr_e12=0, confirmation_poc_ratio=None, checked_count=0,
                invalidated_count=0, invalid_since_block=None)


class ChainApplyError(RuntimeError):
    """A block could not be applied; nothing of it was written."""


class Rejected(Exception):
    """A message breaks a rule (recorded as rejected, with this reason)."""


@dataclass
class BlockReport:
    height: int
    epoch: int
    accepted: int = 0
    duplicates: int = 0
    rejected: dict[str, str] = field(default_factory=dict)
    unit_price_ngonka: int = 0
    next_unit_price_ngonka: int = 0
    utilisation: float = 0.0
    units: float = 0.0
    paid: int = 0
    invalidated: list[str] = field(default_factory=list)
    revalidated: int = 0
    expired: int = 0
    new_invalid: list[str] = field(default_factory=list)
    new_inactive: list[str] = field(default_factory=list)
    status_reasons: dict[str, str] = field(default_factory=dict)  # participant -> Gonka reason of a change
    finished: dict[str, tuple[int, int]] = field(default_factory=dict)  # inference -> (traffic basis, reputation)
    slashed_ngonka: int = 0
    voting_opened: list[str] = field(default_factory=list)
    epoch_ended: int | None = None


def _chunks(seq: Sequence[Any], n: int = _CHUNK) -> Iterable[Sequence[Any]]:
    for i in range(0, len(seq), n):
        yield seq[i:i + n]


_UNITS: dict[tuple, tuple[Any, float]] = {}


def request_units(pricing, r) -> float:
    """`pricing.units` of a request, memoised per (pricing object, request shape): a sweep prices
    millions of requests of a few shapes. The entry keeps its pricing object, so an id is never reused."""
    key = (id(pricing), r.width, r.height, r.frames, r.steps, r.guidance_high, r.guidance_low, r.shift)
    hit = _UNITS.get(key)
    if hit is not None and hit[0] is pricing:
        return hit[1]
    units = pricing.units(width=r.width, height=r.height, frames=r.frames, steps=r.steps,
                          guidance_high=r.guidance_high, guidance_low=r.guidance_low, shift=r.shift)
    if len(_UNITS) > 10_000:
        _UNITS.clear()
    _UNITS[key] = (pricing, units)
    return units


_COSTS: dict[tuple[float, int], int] = {}


def _cost(units: float, price: int) -> int:
    """`cost_ngonka`, memoised: a block prices thousands of requests of a few shapes at one price."""
    key = (units, price)
    cost = _COSTS.get(key)
    if cost is None:
        if len(_COSTS) > 100_000:
            _COSTS.clear()
        cost = _COSTS[key] = cost_ngonka(units, price)
    return cost


def _by_id(row: dict) -> str:
    return row["id"]


def _csv(s: str) -> list[str]:
    return [x for x in s.split(",") if x] if s else []


class _State:
    """The block's working set, changed in memory and written at the end."""

    def __init__(self, conn: Connection, meta: dict, params: ChainParams, height: int):
        self.conn, self.meta, self.p, self.height = conn, meta, params, height
        self.parts: dict[str, dict] = self._load_parts()
        self.parts_dirty: set[str] = set()
        self.parts_new: set[str] = set()
        self.infs: dict[str, dict] = {}
        self.infs_new: set[str] = set()
        self.infs_dirty: set[str] = set()
        self.missing: set[str] = set()
        self.ledger: list[tuple] = []  # LEDGER_COLS
        self.validations: list[tuple] = []  # VALIDATION_COLS
        self.votes: list[dict] = []
        self.poc_commits: list[dict] = []
        self.poc_validations: list[dict] = []
        self.seed_commits: list[dict] = []
        self.seeds: dict[tuple[int, str], tuple[str, int]] = {}
        self.seed_epochs: set[int] = set()
        self.confirmations: list[dict] = []
        self._total_power: int | None = None
        self.votes_loaded: dict[str, list[dict]] = {}
        self.block_units = 0.0
        self.capacity = 0.0
        self.report = BlockReport(height=height, epoch=meta["epoch"], unit_price_ngonka=meta["unit_price_ngonka"])

    # ---- loading (sim/chain/batched.py overrides these with its in-memory working set) ------------
    def _load_parts(self) -> dict[str, dict]:
        return {r["id"]: dict(r) for r in self.conn.execute(select(_PART)).mappings()}

    def seen_ids(self, ids: list[str]) -> set[str]:
        """The ids among `ids` already on chain (accepted or rejected)."""
        applied_t = T.AppliedMessage.__table__
        seen: set[str] = set()
        for chunk in _chunks(list(set(ids))):
            seen.update(r[0] for r in self.conn.execute(select(applied_t.c.id).where(applied_t.c.id.in_(chunk))))
        return seen

    # The three end-of-block queries return rows in id order, so that which message of a phase
    # causes a status change (and names its slash) does not depend on the database's row order.
    def voting(self) -> list[dict]:
        """Inferences in VOTING (on chain, and changed in this block), by id."""
        rows = self.query_inferences(_INF.c.status == "VOTING")
        seen = {i["id"] for i in rows}
        rows += [i for i in self.infs.values() if i["status"] == "VOTING" and i["id"] not in seen]
        return sorted(rows, key=_by_id)

    def due_for_payment(self, due: int) -> list[dict]:
        """FINISHED inferences with finish_block <= due, by id."""
        rows = self.query_inferences((_INF.c.status == "FINISHED") & (_INF.c.finish_block <= due))
        seen = {i["id"] for i in rows}
        rows += [i for i in self.infs.values() if i["status"] == "FINISHED" and i["finish_block"] <= due
                 and i["id"] not in seen]
        return sorted(rows, key=_by_id)

    def due_for_expiry(self, due: int) -> list[dict]:
        """STARTED inferences with start_block <= due, by id."""
        return sorted(self.query_inferences((_INF.c.status == "STARTED") & (_INF.c.start_block <= due)), key=_by_id)

    def recent_units(self, window: int) -> list[float]:
        """Units of the `window - 1` blocks before this one."""
        blocks = T.Block.__table__
        return [r[0] for r in self.conn.execute(select(blocks.c.units).where(blocks.c.height > self.height - window))]

    def epoch_ended(self, epoch: int, requests: int, reward_ngonka: int) -> None:
        """Close `epoch` at this block and open the next."""
        epochs = T.Epoch.__table__
        self.conn.execute(update(epochs).where(epochs.c.index == epoch).values(
            end_block=self.height, requests=requests, reward_ngonka=reward_ngonka, settled=True))
        self.conn.execute(insert(epochs).values(index=epoch + 1, start_block=self.height + 1))

    def prepare(self, messages: Sequence[Any]) -> None:
        """Load what the block's messages read: their inferences, and the seed commitments of the
        epochs of the inferences their validations name."""
        self.load_inferences(getattr(m, "inference_id") for m in messages if hasattr(m, "inference_id"))
        self.load_seeds({self.infs[m.inference_id]["epoch"] for m in messages
                         if type(m) is SubmitValidation and m.inference_id in self.infs})

    def load_inferences(self, ids: Iterable[str]) -> None:
        want = [i for i in set(ids) if i not in self.infs and i not in self.missing]
        for chunk in _chunks(want):
            for r in self.conn.execute(select(_INF).where(_INF.c.id.in_(chunk))).mappings():
                self.infs[r["id"]] = dict(r)
        self.missing.update(i for i in want if i not in self.infs)

    def query_inferences(self, where) -> list[dict]:
        """Rows matching `where` in the database, with this block's in-memory versions overlaid."""
        ids = [r[0] for r in self.conn.execute(select(_INF.c.id).where(where))]
        self.load_inferences(ids)
        return [self.infs[i] for i in ids]

    def votes_of(self, inference_id: str) -> list[dict]:
        if inference_id not in self.votes_loaded:
            t = T.InvalidationVote.__table__
            self.votes_loaded[inference_id] = [dict(r) for r in self.conn.execute(
                select(t).where(t.c.inference_id == inference_id)).mappings()]
        return self.votes_loaded[inference_id]

    def load_seeds(self, epochs: Iterable[int]) -> None:
        """Every seed commitment of these epochs, in one query."""
        want = sorted(set(epochs) - self.seed_epochs)
        if want:
            t = T.SeedCommit.__table__
            for ep, pid, sha, block in self.conn.execute(select(t.c.epoch, t.c.participant, t.c.seed_sha256,
                                                                t.c.block).where(t.c.epoch.in_(want))):
                self.seeds[(int(ep), pid)] = (sha, int(block))
            self.seed_epochs.update(want)

    def seed_of(self, epoch: int, pid: str) -> tuple[str, int] | None:
        """(seed commitment, block) of a validator for an epoch, or None."""
        if epoch not in self.seed_epochs:
            self.load_seeds((epoch,))
        return self.seeds.get((epoch, pid))

    # ---- money --------------------------------------------------------------------------
    def transfer(self, kind: str, src: str, dst: str, amount: int, msg_id: str, inference_id: str | None = None) -> None:
        if amount < 0:
            raise ChainApplyError(f"internal: negative transfer {amount} ({kind})")
        if amount == 0:
            return
        for acct, delta in ((src, -amount), (dst, amount)):
            if acct in _MINT_BURN:
                continue
            if acct == _ESCROW:
                inf = self.infs[inference_id]
                inf["escrow_ngonka"] += delta
                if inference_id not in self.infs_new:
                    self.infs_dirty.add(inference_id)
                if inf["escrow_ngonka"] < 0:
                    raise ChainApplyError(f"internal: escrow of {inference_id} would go negative")
            elif acct.startswith(_COLLATERAL):
                continue  # the participant's collateral field carries the change
            else:
                part = self.parts[acct]
                part["balance_ngonka"] += delta
                if acct not in self.parts_new:
                    self.parts_dirty.add(acct)
                if part["balance_ngonka"] < 0:
                    raise ChainApplyError(f"internal: balance of {acct} would go negative")
        self.ledger.append((self.height, msg_id, kind, src, dst, int(amount), inference_id))

    def collateral_deposit(self, pid: str, amount: int, msg_id: str) -> None:
        part = self.parts[pid]
        if part["balance_ngonka"] < amount:
            raise Rejected(f"balance {part['balance_ngonka']} ngonka < collateral {amount} ngonka")
        self.transfer("collateral", pid, f"{T.COLLATERAL}:{pid}", amount, msg_id)
        part["collateral_ngonka"] += amount

    def slash(self, pid: str, fraction: float, msg_id: str) -> int:
        """Burn `fraction` of the collateral (exact decimal product, truncated)."""
        part = self.parts[pid]
        amount = rules.int_part(Decimal(part["collateral_ngonka"]) * rules.dec(float(fraction)))
        if amount > 0:
            part["collateral_ngonka"] -= amount
            self.meta["supply_ngonka"] -= amount
            self.touch_part(pid)
            self.ledger.append((self.height, msg_id, "slash", f"{T.COLLATERAL}:{pid}", T.BURN, amount, None))
        return amount

    def touch_part(self, pid: str) -> None:
        if pid not in self.parts_new:
            self.parts_dirty.add(pid)

    def touch_inf(self, iid: str) -> None:
        if iid not in self.infs_new:
            self.infs_dirty.add(iid)

    # ---- status rules ----------------------------------------------------------------------
    def weight(self, pid: str) -> int:
        return max(int(self.parts[pid]["poc_weight"]), 1)

    def total_power(self) -> int:
        """PoC weight of the ACTIVE participants (Gonka's epoch-group power; out on INVALID/INACTIVE)."""
        if self._total_power is None:
            self._total_power = sum(int(p["poc_weight"]) for p in self.parts.values() if p["status"] == "ACTIVE")
        return self._total_power

    def power(self, pid: str) -> int:
        part = self.parts[pid]
        return int(part["poc_weight"]) if part["status"] == "ACTIVE" else 0

    def record(self, pid: str, scope: int, msg_id: str, **changes: int) -> None:
        """Change a participant's statistics (`changes`: field -> increment) and recompute its status
        with Gonka's ComputeStatus in `scope`; apply the transition's side effects once (slash,
        reputation preserve, out of the epoch's power)."""
        part = self.parts[pid]
        old = {"inference_count": part["inference_count"], "missed_requests": part["missed_requests"],
               "validated_epoch": part["validated_epoch"], "invalidated_epoch": part["invalidated_epoch"]}
        for k, v in changes.items():
            part[k] += v
        if pid not in self.parts_new:
            self.parts_dirty.add(pid)
        was = part["status"]
        status, reason = rules.compute_status(part, old, self.p, scope)
        if reason == rules.CONSECUTIVE_FAILURES:
            part["consecutive_invalid"] = 0
        if reason != rules.ALREADY_SET:
            part["status_reason"] = reason
        if status == was:
            return
        part["status"] = status
        part["invalid_since_block"] = self.height
        self._total_power = None
        self.report.status_reasons[pid] = reason
        p = self.p
        if status == "INVALID":
            fraction, keep = p.slash_invalid_fraction, p.invalid_reputation_preserve
            self.report.new_invalid.append(pid)
        else:
            fraction = p.confirmation_poc_slash_fraction if reason == rules.FAILED_CONFIRMATION_POC \
                else p.slash_downtime_fraction
            keep = p.downtime_reputation_preserve
            self.report.new_inactive.append(pid)
        self.report.slashed_ngonka += self.slash(pid, fraction, msg_id)
        part["epochs_completed"] = rules.preserve(part["epochs_completed"], keep)
        part["reputation"] = rules.reputation_from_miss_sum(part["epochs_completed"], Decimal(part["miss_sum"]), p)

    def checked_outcome(self, executor: str, invalidated: bool, msg_id: str) -> None:
        """A checked inference of `executor` was invalidated or validated (scope: invalidation)."""
        part = self.parts[executor]
        part["checked_count"] += 1
        if invalidated:
            part["invalidated_count"] += 1
            part["consecutive_invalid"] += 1
            self.record(executor, rules.SCOPE_INVALIDATION, msg_id, invalidated_epoch=1)
        else:
            part["consecutive_invalid"] = 0
            self.record(executor, rules.SCOPE_INVALIDATION, msg_id, validated_epoch=1)

    def active_validators(self) -> list[str]:
        return sorted(pid for pid, p in self.parts.items() if p["role"] in VALIDATING_ROLES and p["status"] == "ACTIVE")


# ---------------------------------------------------------------------------------------------
# Message handlers: check everything first, then change state.


def _require(state: _State, pid: str, roles: tuple[str, ...] | None = None, active: bool = False, what: str = "") -> dict:
    part = state.parts.get(pid)
    if part is None:
        raise Rejected(f"{what or 'participant'} {pid!r} is not registered")
    if roles and part["role"] not in roles:
        raise Rejected(f"{what or 'participant'} {pid!r} has role {part['role']!r}; allowed: {', '.join(roles)}")
    if active and part["status"] != "ACTIVE":
        raise Rejected(f"{what or 'participant'} {pid!r} is {part['status']}")
    return part


def _authority(state: _State, m) -> None:
    if m.sender != state.p.module_authority:
        raise Rejected(f"sender {m.sender!r} may not send {m.kind}: only the module authority "
                       f"{state.p.module_authority!r} may")


def _mint(state: _State, m: Mint) -> None:
    _authority(state, m)
    if state.meta["supply_ngonka"] + m.amount_ngonka > INT64_MAX:
        raise Rejected(f"amount_ngonka {m.amount_ngonka}: the total supply would exceed int64 ({INT64_MAX})")
    if m.to not in state.parts:
        # minting to a new account creates it as a requester-to-be (registered later or not)
        state.parts[m.to] = new_participant(m.to)
        state.parts_new.add(m.to)
    state.transfer("mint", T.MINT, m.to, m.amount_ngonka, m.id)
    state.meta["supply_ngonka"] += m.amount_ngonka


def _register(state: _State, m: RegisterParticipant) -> None:
    part = state.parts.get(m.participant)
    if part is not None and (part["role"] != "requester" or part["seconds_per_unit"] or part["collateral_ngonka"]):
        raise Rejected(f"participant {m.participant!r} is already registered as {part['role']}")
    if m.role in EXECUTING_ROLES and not 0 < m.seconds_per_unit < math.inf:
        raise Rejected(f"seconds_per_unit must be > 0 for role {m.role!r}")
    balance = part["balance_ngonka"] if part else 0
    if balance < m.collateral_ngonka:
        raise Rejected(f"balance {balance} ngonka < collateral {m.collateral_ngonka} ngonka")
    if part is None:
        part = new_participant(m.participant)
        state.parts[m.participant] = part
        state.parts_new.add(m.participant)
    part.update(role=m.role, gpu_type=m.gpu_type, seconds_per_unit=float(m.seconds_per_unit))
    state.touch_part(m.participant)
    state.collateral_deposit(m.participant, m.collateral_ngonka, m.id)


def _deposit(state: _State, m: DepositCollateral) -> None:
    _require(state, m.participant)
    state.collateral_deposit(m.participant, m.amount_ngonka, m.id)


def _set_weights(state: _State, m: SetWeights) -> None:
    _authority(state, m)
    if m.epoch != state.meta["epoch"]:
        raise Rejected(f"weights for epoch {m.epoch}, but the current epoch is {state.meta['epoch']}")
    unknown = [pid for pid in m.weights if pid not in state.parts]
    if unknown:
        raise Rejected(f"weights name unregistered participants {unknown[:5]}")
    if any(w < 0 for w in m.weights.values()):
        raise Rejected("weights must be >= 0")
    for pid, part in state.parts.items():
        w = int(m.weights.get(pid, 0))
        if part["poc_weight"] != w:
            part["poc_weight"] = w
            state.touch_part(pid)
    state._total_power = None


def _confirmation_poc(state: _State, m: ConfirmationPoc) -> None:
    _authority(state, m)
    _require(state, m.participant, EXECUTING_ROLES + ("validator",))
    if m.epoch != state.meta["epoch"]:
        raise Rejected(f"confirmation PoC for epoch {m.epoch}, but the current epoch is {state.meta['epoch']}")
    ratio = str(rules.dec(float(m.ratio)))
    state.parts[m.participant]["confirmation_poc_ratio"] = ratio
    state.confirmations.append(dict(id=m.id, epoch=m.epoch, participant=m.participant, ratio=ratio, block=state.height))
    state.record(m.participant, rules.SCOPE_CONFIRMATION_POC, m.id)


def _commit_seed(state: _State, m: CommitSeed) -> None:
    _require(state, m.participant, VALIDATING_ROLES, what="validator")
    if m.epoch != state.meta["epoch"]:
        raise Rejected(f"seed commitment for epoch {m.epoch}, but the current epoch is {state.meta['epoch']}")
    if state.seed_of(m.epoch, m.participant) is not None:
        raise Rejected(f"{m.participant!r} already committed a seed for epoch {m.epoch}")
    state.seeds[(m.epoch, m.participant)] = (m.seed_sha256, state.height)
    state.seed_commits.append(dict(epoch=m.epoch, participant=m.participant, seed_sha256=m.seed_sha256,
                                   block=state.height))


def _poc_commit(state: _State, m: PocCommitMsg) -> None:
    _require(state, m.participant, EXECUTING_ROLES)
    if m.epoch != state.meta["epoch"]:
        raise Rejected(f"PoC commit for epoch {m.epoch}, but the current epoch is {state.meta['epoch']}")
    state.poc_commits.append(dict(id=m.id, epoch=m.epoch, participant=m.participant, merkle_root=m.merkle_root,
                                  nonce_count=m.nonce_count, weight=m.nonce_count))


def _poc_validation(state: _State, m: PocValidationMsg) -> None:
    _require(state, m.validator, VALIDATING_ROLES)
    _require(state, m.participant)
    if m.epoch != state.meta["epoch"]:
        raise Rejected(f"PoC validation for epoch {m.epoch}, but the current epoch is {state.meta['epoch']}")
    if m.mismatches > m.sampled:
        raise Rejected(f"mismatches ({m.mismatches}) > sampled ({m.sampled})")
    state.poc_validations.append(dict(id=m.id, epoch=m.epoch, validator=m.validator, participant=m.participant,
                                      sampled=m.sampled, mismatches=m.mismatches, accepted=m.accepted))


def _start(state: _State, m: StartInference) -> None:
    if m.inference_id in state.infs:
        raise Rejected(f"inference {m.inference_id!r} already exists")
    req = _require(state, m.requester, what="requester")
    _require(state, m.executor, EXECUTING_ROLES, active=True, what="executor")
    if m.executor == m.requester:
        raise Rejected("requester and executor must differ")
    r = m.request
    try:
        units = request_units(state.p.pricing, r)
    except PricingError as err:
        raise Rejected(f"request: {err}") from None
    if not math.isfinite(units):
        raise Rejected(f"request: {units} compute units is not a finite number")
    price = state.meta["unit_price_ngonka"]
    cost = _cost(units, price)
    if m.max_cost_ngonka is not None and cost > m.max_cost_ngonka:
        raise Rejected(f"cost {cost} ngonka > max_cost_ngonka {m.max_cost_ngonka}")
    if req["balance_ngonka"] < cost:
        raise Rejected(f"requester balance {req['balance_ngonka']} ngonka < cost {cost} ngonka")
    state.infs[m.inference_id] = dict(
        id=m.inference_id, epoch=state.meta["epoch"], requester=m.requester, executor=m.executor, model=r.model,
        prompt_sha256=r.prompt_sha256, width=r.width, height=r.height, frames=r.frames, steps=r.steps,
        guidance_high=r.guidance_high, guidance_low=r.guidance_low, shift=r.shift, seed=r.seed, units=units,
        unit_price_ngonka=price, cost_ngonka=cost, escrow_ngonka=0, paid_ngonka=0, refunded_ngonka=0,
        video_sha256=None, commitment_root=None, status="STARTED", start_block=state.height, finish_block=None,
        traffic_basis=None, executor_reputation=None, settle_block=None,
        validations=0, failed_validations=0, validators="", failed_by="", reporter=None, committee="",
        vote_deadline_block=None, truth_deviation=None)
    state.infs_new.add(m.inference_id)
    state.missing.discard(m.inference_id)
    state.transfer("escrow", m.requester, T.ESCROW, cost, m.id, m.inference_id)
    state.block_units += units
    state.meta["epoch_requests"] += 1


def _get_inf(state: _State, iid: str) -> dict:
    inf = state.infs.get(iid)
    if inf is None:
        raise Rejected(f"inference {iid!r} does not exist")
    return inf


def _finish(state: _State, m: FinishInference) -> None:
    inf = _get_inf(state, m.inference_id)
    if inf["executor"] != m.executor:
        raise Rejected(f"inference {m.inference_id!r} belongs to executor {inf['executor']!r}, not {m.executor!r}")
    if inf["status"] != "STARTED":
        raise Rejected(f"inference {m.inference_id!r} is {inf['status']}, not STARTED")
    meta = state.meta
    meta["epoch_finished"] += 1
    # Gonka records the sampling inputs at finish: TrafficBasis = max(this epoch's finished requests,
    # the previous epoch's), and the executor's reputation
    basis = max(meta["epoch_finished"], meta["previous_epoch_requests"])
    rep = int(state.parts[m.executor]["reputation"])
    inf.update(status="FINISHED", finish_block=state.height, video_sha256=m.video_sha256,
               commitment_root=m.commitment_root,
               truth_deviation=m.truth_deviation, traffic_basis=basis, executor_reputation=rep)
    state.touch_inf(m.inference_id)
    state.report.finished[m.inference_id] = (basis, rep)
    state.record(m.executor, rules.RUN_ALL, m.id, inference_count=1)


def _validation(state: _State, m: SubmitValidation) -> None:
    if math.isnan(m.score):  # the schema refuses NaN; agents that skip validation are held to it here
        raise Rejected("score must be a number, not NaN")
    inf = _get_inf(state, m.inference_id)
    _require(state, m.validator, VALIDATING_ROLES, active=True, what="validator")
    if m.validator == inf["executor"]:
        raise Rejected("an executor cannot validate its own inference")
    if inf["status"] not in ("FINISHED", "VOTING"):
        raise Rejected(f"inference {m.inference_id!r} is {inf['status']}; validations need FINISHED or VOTING")
    if state.height > inf["finish_block"] + state.p.validation_window_blocks:
        raise Rejected("validation window closed")
    if m.validator in _csv(inf["validators"]) or m.validator in _csv(inf["failed_by"]):
        raise Rejected(f"validator {m.validator!r} already validated {m.inference_id!r}")
    commit = state.seed_of(inf["epoch"], m.validator)
    if commit is None:
        raise Rejected(f"validator {m.validator!r} committed no seed for epoch {inf['epoch']}")
    if rules.seed_commitment(m.seed) != commit[0]:
        raise Rejected(f"seed does not match {m.validator!r}'s commitment for epoch {inf['epoch']}")
    if commit[1] >= inf["start_block"]:
        raise Rejected(f"{m.validator!r}'s seed was committed at block {commit[1]}, not before the inference "
                       f"started (block {inf['start_block']})")
    if not rules.should_validate(m.seed, m.inference_id, inf["traffic_basis"], inf["executor_reputation"],
                                 state.total_power(), state.power(m.validator), state.power(inf["executor"]),
                                 state.p):
        raise Rejected(f"validator {m.validator!r} was not sampled for {m.inference_id!r} (Gonka ShouldValidate)")
    state.validations.append((m.id, m.inference_id, m.validator, float(m.score), bool(m.passed), state.height))
    state.touch_inf(m.inference_id)
    inf["validations"] += 1
    if m.passed:
        # Gonka's MsgValidation: a pass resets ConsecutiveInvalidInferences and counts a validated
        # inference for the SPRT at once, per passing validation (payment still waits for the window)
        inf["validators"] = ",".join([*_csv(inf["validators"]), m.validator])
        state.checked_outcome(inf["executor"], False, m.id)
        return
    inf["failed_validations"] += 1
    inf["failed_by"] = ",".join([*_csv(inf["failed_by"]), m.validator])
    if inf["status"] == "FINISHED":
        members = rules.committee(m.inference_id, state.active_validators(), state.p.vote_committee_size,
                                  exclude=(inf["executor"], m.validator))
        inf.update(status="VOTING", reporter=m.validator, committee=",".join(members),
                   vote_deadline_block=state.height + state.p.vote_timeout_blocks)
        state.report.voting_opened.append(m.inference_id)


def _vote(state: _State, m: SubmitVote) -> None:
    inf = _get_inf(state, m.inference_id)
    if inf["status"] != "VOTING":
        raise Rejected(f"inference {m.inference_id!r} is {inf['status']}, not VOTING")
    if m.voter not in _csv(inf["committee"]):
        raise Rejected(f"{m.voter!r} is not on the vote committee of {m.inference_id!r}")
    if any(v["voter"] == m.voter for v in state.votes_of(m.inference_id)):
        raise Rejected(f"{m.voter!r} already voted on {m.inference_id!r}")
    row = dict(id=m.id, inference_id=m.inference_id, voter=m.voter, invalid=bool(m.invalid),
               weight=state.weight(m.voter), block=state.height)
    state.votes.append(row)
    state.votes_of(m.inference_id).append(row)
    # the committee's last vote closes the vote at once, between the block's other messages (as a
    # group proposal executes when its last vote arrives), not after all of them
    if set(_csv(inf["committee"])) <= {v["voter"] for v in state.votes_of(m.inference_id)}:
        _close_vote(state, inf, m.id)


def _end_epoch(state: _State, m: EndEpoch) -> None:
    meta, p = state.meta, state.p
    _authority(state, m)
    if m.epoch != meta["epoch"]:
        raise Rejected(f"end of epoch {m.epoch}, but the current epoch is {meta['epoch']}")
    eligible = {pid: part["poc_weight"] for pid, part in state.parts.items()
                if part["status"] == "ACTIVE" and part["poc_weight"] > 0 and part["role"] != "requester"}
    total_w = sum(eligible.values())
    reward_total = p.epoch_reward_ngonka(m.epoch) if total_w > 0 else 0
    if meta["supply_ngonka"] + reward_total > INT64_MAX:
        reward_total = 0  # the supply stays within int64: no reward once it would overflow
    minted = 0
    for pid in sorted(eligible):
        share = reward_total * eligible[pid] // total_w
        state.transfer("reward", T.MINT, pid, share, m.id)
        minted += share
    meta["supply_ngonka"] += minted
    cutoff = rules.dec(p.miss_percentage_cutoff)
    for pid, part in state.parts.items():
        if part["role"] == "requester":
            continue
        if part["status"] == "ACTIVE" and part["poc_weight"] > 0:
            # Gonka: one more epoch, and this epoch's miss rate (missed / finished) if above the cutoff
            miss = rules.epoch_miss_rate(part["inference_count"], part["missed_requests"])
            if miss > cutoff:
                part["miss_sum"] = str(Decimal(part["miss_sum"]) + miss)
            part["epochs_completed"] += 1
            part["reputation"] = rules.reputation_from_miss_sum(part["epochs_completed"], Decimal(part["miss_sum"]), p)
        elif part["status"] in ("INVALID", "INACTIVE") and p.invalid_rejoins_next_epoch:
            part.update(status="ACTIVE", status_reason="", consecutive_invalid=0, invalid_since_block=None)
        # Gonka CurrentEpochStats: per epoch
        part.update(inference_count=0, missed_requests=0, validated_epoch=0, invalidated_epoch=0, invalid_llr_e12=0,
                    inactive_llr_e12=0, confirmation_poc_ratio=None)
        state.touch_part(pid)
    state._total_power = None
    state.epoch_ended(m.epoch, meta["epoch_requests"], minted)
    meta.update(epoch=m.epoch + 1, epoch_start_block=state.height + 1,
                previous_epoch_requests=meta["epoch_finished"], epoch_requests=0, epoch_finished=0)
    state.report.epoch_ended = m.epoch


_HANDLERS = {Mint: _mint, RegisterParticipant: _register, DepositCollateral: _deposit, SetWeights: _set_weights,
             ConfirmationPoc: _confirmation_poc, CommitSeed: _commit_seed, PocCommitMsg: _poc_commit,
             PocValidationMsg: _poc_validation, StartInference: _start, FinishInference: _finish,
             SubmitValidation: _validation, SubmitVote: _vote, EndEpoch: _end_epoch}


# ---------------------------------------------------------------------------------------------
# End of block


def _tally(state: _State) -> None:
    """Close votes whose deadline passed (a vote whose committee has fully voted closes at its
    last vote, in `_vote`; one still open here is closed too)."""
    h = state.height
    for inf in state.voting():
        if inf["status"] != "VOTING":
            continue
        voted = {v["voter"] for v in state.votes_of(inf["id"])}
        if set(_csv(inf["committee"])) <= voted or h >= inf["vote_deadline_block"]:
            _close_vote(state, inf, f"block:{h}:tally:{inf['id']}")


def _close_vote(state: _State, inf: dict, msg_id: str) -> None:
    """Count a vote by weight: the work is invalidated (refunded, an invalidation on the executor's
    record) when the failing weight is above the quorum, else it returns to FINISHED."""
    h = state.height
    members = _csv(inf["committee"])
    votes = state.votes_of(inf["id"])
    voted = {v["voter"] for v in votes}
    extra_failers = [v for v in _csv(inf["failed_by"]) if v != inf["reporter"] and v in state.parts]
    total = state.weight(inf["reporter"]) + sum(state.weight(v) for v in members)
    invalid = state.weight(inf["reporter"]) + sum(v["weight"] for v in votes if v["invalid"])
    invalid += sum(state.weight(v) for v in extra_failers if v not in voted and v not in members)
    total += sum(state.weight(v) for v in extra_failers if v not in members)
    state.touch_inf(inf["id"])
    if invalid / total > state.p.vote_quorum:
        refund = inf["escrow_ngonka"]
        state.transfer("refund", T.ESCROW, inf["requester"], refund, msg_id, inf["id"])
        inf.update(status="INVALIDATED", settle_block=h, refunded_ngonka=inf["refunded_ngonka"] + refund)
        state.report.invalidated.append(inf["id"])
        state.checked_outcome(inf["executor"], True, msg_id)
    else:
        inf["status"] = "FINISHED"
        state.report.revalidated += 1


def _settle(state: _State) -> None:
    """Pay every FINISHED inference whose validation window has closed (exactly once)."""
    h = state.height
    due = h - state.p.validation_window_blocks
    rows = state.due_for_payment(due)
    frac = state.p.validator_fee_fraction
    for inf in rows:
        if inf["status"] != "FINISHED":
            continue
        msg_id = f"block:{h}:settle:{inf['id']}"
        amount = inf["escrow_ngonka"]
        vals = [v for v in _csv(inf["validators"]) if v in state.parts]
        fee_each = (int(amount * frac) // len(vals)) if vals else 0
        for v in vals:
            state.transfer("validator_fee", T.ESCROW, v, fee_each, msg_id, inf["id"])
        to_exec = amount - fee_each * len(vals)
        state.transfer("payment", T.ESCROW, inf["executor"], to_exec, msg_id, inf["id"])
        inf.update(status="VALIDATED", settle_block=h, paid_ngonka=inf["paid_ngonka"] + amount)
        state.touch_inf(inf["id"])
        state.report.paid += 1


def _expire(state: _State) -> None:
    h = state.height
    due = h - state.p.expiration_blocks
    for inf in state.due_for_expiry(due):
        if inf["status"] != "STARTED":
            continue
        msg_id = f"block:{h}:expire:{inf['id']}"
        refund = inf["escrow_ngonka"]
        state.transfer("refund", T.ESCROW, inf["requester"], refund, msg_id, inf["id"])
        inf.update(status="EXPIRED", settle_block=h, refunded_ngonka=inf["refunded_ngonka"] + refund)
        state.touch_inf(inf["id"])
        state.report.expired += 1
        if inf["executor"] in state.parts:  # Gonka MissedRequests (scope: missed inference)
            state.record(inf["executor"], rules.SCOPE_MISSED_INFERENCE, msg_id, missed_requests=1)


def _price(state: _State) -> tuple[int, Decimal, float]:
    """Gonka's dynamic price for the next block (keeper/dynamic_pricing.go, rolling_window_state.go):
    the average load per block over the full window (zero-padded before the chain's first blocks),
    over the ACTIVE executors' capacity per block, in decimals; the grace-period price instead while
    the epoch is within the grace period. Returns (next price, utilisation, capacity)."""
    p, h = state.p, state.height
    capacity = sum(p.block_seconds / part["seconds_per_unit"] for part in state.parts.values()
                   if part["role"] in EXECUTING_ROLES and part["status"] == "ACTIVE" and part["seconds_per_unit"] > 0)
    grace = grace_price(state.meta["epoch"], p.price_rule)
    window = p.window_blocks
    loads = [state.block_units]
    if window > 1:
        loads += state.recent_units(window)
    total = sum((Decimal(float(x)) for x in loads), Decimal(0))
    average = rules.div16(total, window)
    utilisation = rules.div16(average, Decimal(capacity)) if capacity > 0 else Decimal(0)
    if grace is not None:
        return grace, utilisation, capacity
    return next_unit_price(state.meta["unit_price_ngonka"], utilisation, p.price_rule), utilisation, capacity


# ---------------------------------------------------------------------------------------------


_PARAMS_CACHE: dict[str, ChainParams] = {}


def apply_block(engine: Engine, messages: Sequence[Any]) -> BlockReport:
    """Apply one block of messages in one transaction; see the module docstring."""
    try:
        with engine.begin() as conn:
            return _apply(conn, messages)
    except ChainApplyError:
        raise
    except Exception as err:
        raise ChainApplyError(f"block not applied (nothing written): {type(err).__name__}: {err}") from err


def params_of(meta: dict) -> ChainParams:
    params = _PARAMS_CACHE.get(meta["params_json"])
    if params is None:
        params = _PARAMS_CACHE.setdefault(meta["params_json"], ChainParams.model_validate_json(meta["params_json"]))
    return params


def _apply(conn: Connection, messages: Sequence[Any]) -> BlockReport:
    meta_t = T.ChainMeta.__table__
    meta = dict(conn.execute(select(meta_t).where(meta_t.c.id == 1)).mappings().one())
    state = _State(conn, meta, params_of(meta), meta["height"] + 1)
    applied = run_block(state, messages)
    _flush(state, applied, state.report.next_unit_price_ngonka, state.report.utilisation, state.capacity)
    return state.report


def run_block(state: _State, messages: Sequence[Any]) -> list[dict]:
    """Apply the messages and the end-of-block rules to `state` (nothing written); the block's
    applied-message rows."""
    height, report, ledger = state.height, state.report, state.ledger
    # Idempotency: skip ids already on chain and repeats within the block.
    ids = [m.id for m in messages]
    seen = state.seen_ids(ids)
    if not seen and len(set(ids)) == len(ids):
        todo = list(messages)
    else:
        todo = []
        for m in messages:
            if m.id in seen:
                report.duplicates += 1
                continue
            seen.add(m.id)
            todo.append(m)

    state.prepare(todo)
    applied: list[tuple] = []  # APPLIED_COLS
    append, handlers, rejected = applied.append, _HANDLERS, report.rejected
    for m in todo:
        handler = handlers.get(type(m))
        if handler is None:
            raise ChainApplyError(f"unknown message type {type(m).__name__}")
        snapshot = len(ledger)
        try:
            handler(state, m)
        except Rejected as err:
            if len(ledger) != snapshot:  # handlers check before they move money
                raise ChainApplyError(f"internal: message {m.id} rejected after moving money: {err}") from None
            rejected[m.id] = str(err)
            append((m.id, height, m.kind, False, str(err)[:500]))
            continue
        append((m.id, height, m.kind, True, ""))
    report.accepted += len(applied) - len(rejected)

    _tally(state)
    _settle(state)
    _expire(state)
    next_price, utilisation_exact, capacity = _price(state)
    utilisation = float(utilisation_exact)
    state.report.next_unit_price_ngonka = next_price
    state.report.utilisation = utilisation
    state.report.units = state.block_units
    state.report.epoch = state.meta["epoch"]
    state.capacity = capacity
    return applied


def _dicts(cols: tuple[str, ...], rows: list[tuple]) -> list[dict]:
    return [dict(zip(cols, r)) for r in rows]


def _flush(state: _State, applied: list[tuple], next_price: int, utilisation: float, capacity: float) -> None:
    conn, meta, h = state.conn, state.meta, state.height
    if state.parts_new:
        conn.execute(insert(_PART), [state.parts[p] for p in sorted(state.parts_new)])
    if state.parts_dirty:
        stmt = update(_PART).where(_PART.c.id == bindparam("_id")).values(
            {c: bindparam(c) for c in _PART_MUTABLE})
        conn.execute(stmt, [{"_id": p, **{c: state.parts[p][c] for c in _PART_MUTABLE}} for p in sorted(state.parts_dirty)])
    if state.infs_new:
        conn.execute(insert(_INF), [state.infs[i] for i in state.infs_new])
    dirty = state.infs_dirty - state.infs_new
    if dirty:
        stmt = update(_INF).where(_INF.c.id == bindparam("_id")).values({c: bindparam(c) for c in _INF_MUTABLE})
        conn.execute(stmt, [{"_id": i, **{c: state.infs[i][c] for c in _INF_MUTABLE}} for i in dirty])
    for table, rows in ((T.Validation, _dicts(VALIDATION_COLS, state.validations)), (T.InvalidationVote, state.votes),
                        (T.PocCommit, state.poc_commits), (T.PocValidation, state.poc_validations),
                        (T.SeedCommit, state.seed_commits), (T.ConfirmationPocResult, state.confirmations),
                        (T.LedgerEntry, _dicts(LEDGER_COLS, state.ledger)),
                        (T.AppliedMessage, _dicts(APPLIED_COLS, applied))):
        if rows:
            conn.execute(insert(table.__table__), rows)
    conn.execute(insert(T.Block.__table__).values(
        height=h, epoch=state.report.epoch, unit_price_ngonka=meta["unit_price_ngonka"],
        next_unit_price_ngonka=next_price, utilisation=utilisation, units=state.block_units,
        capacity_units=capacity, messages=len(applied), rejected=len(state.report.rejected)))
    conn.execute(insert(T.PriceHistory.__table__).values(block=h, unit_price_ngonka=next_price, utilisation=utilisation))
    meta_t = T.ChainMeta.__table__
    conn.execute(update(meta_t).where(meta_t.c.id == 1).values(
        height=h, epoch=meta["epoch"], epoch_start_block=meta["epoch_start_block"], unit_price_ngonka=next_price,
        previous_epoch_requests=meta["previous_epoch_requests"], epoch_requests=meta["epoch_requests"],
        epoch_finished=meta["epoch_finished"], supply_ngonka=meta["supply_ngonka"]))
