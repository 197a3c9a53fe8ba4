"""A PoC stage: participants compute and commit, a validator samples, checks and decides.

Order of events (Gonka PoC v2, docs/facts.md section 2):

1. every participant computes as many nonces as its hardware allows during the stage (its
   `capacity`), builds a Merkle tree over its (nonce, vector) leaves and commits (root, count);
2. after the commitments, the validator draws `params.samples` leaf indices per participant (here
   from the stage seed; on a chain from a later block), asks for those leaves and their right
   neighbours with proofs, checks them, recomputes the sampled nonces with its own runtime and
   runs the binomial test;
3. the weight of an accepted participant is `count x weight_per_nonce`; a rejected one gets 0.

Two fidelities share every step except where vectors come from:

- `real`: the vectors are computed by the PoC forward of the preset (`models.poc`), each
  participant with its own runtime and its strategy's model, and the validator recomputes;
- `surrogate`: no model runs. A participant whose tree is regular (count = leaves, nonces
  increasing) passes the structural checks by construction; any other tree is built for real
  (with placeholder vectors) and checked by the same code as in `real`. The distance of each
  sampled leaf is then drawn from the measured distribution of its category (honest, fp8, int4,
  wrong-expert, fabricated, copied), see `sim.poc.measure`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from models.seeds import poc_public_key
from sim.poc.merkle import MerkleTree, encode_leaf
from sim.poc.params import PocParams
from sim.poc.strategies import (
    COPIED, FABRICATED, HONEST, CopyFrom, LeafPlan, PocStrategy, StrategyError, parse_strategy,
)
from sim.poc.validator import (
    Commitment, Opening, Verdict, binomial_verdict, check_openings, rejected, requested_indices,
    sample_indices, validate,
)

if TYPE_CHECKING:  # pragma: no cover
    from models.request import Runtime

Fidelity = Literal["real", "surrogate"]


class PocStageError(ValueError):
    """Bad stage input: names the field and what is allowed."""


@dataclass(frozen=True)
class PocParticipant:
    """A node in a PoC stage: id, public key, nonces its hardware computes in the stage, behaviour."""

    id: str
    public_key: str
    capacity: int
    strategy: PocStrategy | str = "honest"
    runtime: "Runtime | None" = None  # real fidelity: how this node runs (None: the stage runtime)

    def __post_init__(self):
        if not isinstance(self.id, str) or not self.id:
            raise PocStageError(f"participant id must be a non-empty string, got {self.id!r}")
        if not isinstance(self.public_key, str) or not self.public_key:
            raise PocStageError(f"participant {self.id}: public_key must be a non-empty string")
        if not isinstance(self.capacity, (int, np.integer)) or isinstance(self.capacity, bool) or self.capacity < 0:
            raise PocStageError(f"participant {self.id}: capacity must be an integer >= 0, got {self.capacity!r}")
        try:
            object.__setattr__(self, "strategy", parse_strategy(self.strategy))
        except StrategyError as err:
            raise PocStageError(f"participant {self.id}: strategy: {err}") from None


@dataclass
class Submission:
    """A participant's tree and commitment; answers the validator's sample with openings."""

    plan: LeafPlan
    vectors: np.ndarray  # float16, one row per leaf (placeholders in surrogate fidelity)
    leaves: list[bytes]
    tree: MerkleTree
    commitment: Commitment

    @classmethod
    def build(cls, plan: LeafPlan, vectors: np.ndarray) -> "Submission":
        leaves = [encode_leaf(int(n), v) for n, v in zip(plan.nonces, vectors)]
        tree = MerkleTree(leaves)
        return cls(plan, vectors, leaves, tree, Commitment(tree.root, int(plan.count)))

    def answer(self, indices: Sequence[int]) -> list[Opening]:
        """Openings for the requested leaves that exist in the tree (others cannot be opened)."""
        return [Opening(i, self.leaves[i], tuple(self.tree.proof(i))) for i in indices if 0 <= i < self.tree.size]


@dataclass(frozen=True)
class PocStageResult:
    """What a stage decided: weights (0 when rejected), verdicts, commitments, and its settings."""

    block_hash: str
    fidelity: str
    preset: str
    seed: int
    params: PocParams
    weights: dict[str, float]
    verdicts: dict[str, Verdict]
    commitments: dict[str, Commitment]
    strategies: dict[str, str]
    nonces_computed: dict[str, int]
    seconds: float
    measurement: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def rows(self) -> list[dict[str, Any]]:
        """Tidy rows, one per participant."""
        return [{"participant": pid, "strategy": self.strategies[pid], "count": self.commitments[pid].count,
                 "nonces_computed": self.nonces_computed[pid], "weight": self.weights[pid],
                 "root": self.commitments[pid].root.hex(), **self.verdicts[pid].to_dict(),
                 "block_hash": self.block_hash, "fidelity": self.fidelity, "preset": self.preset,
                 "seed": self.seed} for pid in self.weights]

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per strategy: participants, accepted, rejected, mean mismatch rate."""
        out: dict[str, dict[str, Any]] = {}
        for pid, v in self.verdicts.items():
            s = out.setdefault(self.strategies[pid], {"participants": 0, "accepted": 0, "rejected": 0,
                                                      "mismatches": 0, "sampled": 0})
            s["participants"] += 1
            s["accepted" if v.accepted else "rejected"] += 1
            s["mismatches"] += v.mismatches
            s["sampled"] += v.sampled
        for s in out.values():
            s["mismatch_rate"] = s["mismatches"] / s["sampled"] if s["sampled"] else 0.0
        return out

    def to_markdown(self) -> str:
        """A short report: per-strategy outcome, then one line per non-honest or rejected participant."""
        lines = [f"# PoC stage {self.block_hash} ({self.fidelity}, preset {self.preset}, seed {self.seed})", "",
                 f"samples {self.params.samples}, distance threshold {self.params.distance_threshold:g}, "
                 f"allowed mismatch rate {self.params.allowed_mismatch_rate:g}, p < {self.params.p_value:g}", "",
                 "| strategy | participants | accepted | rejected | leaf mismatch rate |", "|---|---|---|---|---|"]
        for spec, s in self.summary().items():
            lines.append(f"| {spec} | {s['participants']} | {s['accepted']} | {s['rejected']} | {s['mismatch_rate']:.3f} |")
        lines += ["", "| participant | strategy | count | weight | verdict |", "|---|---|---|---|---|"]
        for pid, v in self.verdicts.items():
            lines.append(f"| {pid} | {self.strategies[pid]} | {self.commitments[pid].count} | "
                         f"{self.weights[pid]:g} | {v.reason} |")
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict[str, Any]:
        return {"block_hash": self.block_hash, "fidelity": self.fidelity, "preset": self.preset,
                "seed": self.seed, "params": self.params.model_dump(), "seconds": self.seconds,
                "measurement": self.measurement, "participants": self.rows(), "summary": self.summary()}


def public_key_for(pid: str, seed: int) -> str:
    """A deterministic stand-in public key for a simulated participant."""
    return poc_public_key(pid, seed)


# Bounds of one stage (project choices: a Gonka PoC stage has hundreds of participants).
MAX_PARTICIPANTS = 10_000
MAX_CAPACITY = 100_000_000


def participants_from_mix(mix: str | dict[str, int], capacity: int, *, seed: int = 0) -> list[PocParticipant]:
    """Participants from a mix like `honest=8,fp8=1,one-expert:high=1,copy=1` (copy: of the first honest)."""
    if isinstance(mix, str):
        items: dict[str, int] = {}
        for part in filter(None, (p.strip() for p in mix.split(","))):
            spec, eq, n = part.rpartition("=")
            if not eq or not spec:
                raise PocStageError(f"mix: each part must be STRATEGY=N, got {part!r}")
            try:
                items[spec] = items.get(spec, 0) + int(n)
            except ValueError:
                raise PocStageError(f"mix: count of {spec!r} must be an integer, got {n!r}") from None
        mix = items
    if not mix:
        raise PocStageError("mix: at least one STRATEGY=N is needed")
    if isinstance(capacity, bool) or not isinstance(capacity, int) or not 1 <= capacity <= MAX_CAPACITY:
        raise PocStageError(f"capacity: nonces per participant must be an integer in 1..{MAX_CAPACITY:,}, got {capacity!r}")
    total = sum(n for n in mix.values() if isinstance(n, int))
    if total > MAX_PARTICIPANTS:
        raise PocStageError(f"mix: {total:,} participants; at most {MAX_PARTICIPANTS:,} in one stage")
    out: list[PocParticipant] = []
    first_honest = None
    for spec, n in mix.items():
        if n < 0:
            raise PocStageError(f"mix: count of {spec!r} must be >= 0, got {n}")
        for _ in range(n):
            pid = f"p{len(out):03d}"
            s = spec
            if spec == "copy":
                s = "copy:__first_honest__"
            out.append(PocParticipant(pid, public_key_for(pid, seed), capacity, s))
            if first_honest is None and out[-1].strategy.name == "honest":
                first_honest = pid
    fixed = []
    for p in out:
        if isinstance(p.strategy, CopyFrom) and p.strategy.source == "__first_honest__":
            if first_honest is None:
                raise PocStageError("mix: `copy` copies the first honest participant, but the mix has none")
            p = PocParticipant(p.id, p.public_key, p.capacity, f"copy:{first_honest}", p.runtime)
        fixed.append(p)
    return fixed


def _unit_vectors(n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    z = rng.standard_normal((n, dim))
    return (z / np.linalg.norm(z, axis=1, keepdims=True)).astype(np.float16)


class _RealModel:
    """Vectors from the PoC forward of a preset (imports torch only when used)."""

    def __init__(self, preset: str, params: PocParams, block_hash: str, runtime):
        from models.poc import poc_shape

        self.preset, self.params, self.block_hash, self.runtime = preset, params, block_hash, runtime
        self.shape = poc_shape(preset, width=params.width, height=params.height, frames=params.frames)

    def vectors(self, public_key: str, nonces: Sequence[int], strategy: PocStrategy | None, runtime) -> np.ndarray:
        from models.poc import PocVariant, poc_vectors
        from models.presets import build_pipeline

        runtime = runtime or self.runtime
        variant = PocVariant(held_expert=getattr(strategy, "held_expert", None),
                             weights=getattr(strategy, "weights", None))
        pipe = build_pipeline(self.preset, runtime)
        return poc_vectors(pipe, self.block_hash, public_key, nonces, shape=self.shape, runtime=runtime,
                           variant=variant, dim=self.params.vector_dim)


def _ordered(participants: Sequence[PocParticipant]) -> list[PocParticipant]:
    """Copiers last (they need their source's leaves); a copier must copy a non-copier."""
    ids = {p.id for p in participants}
    for p in participants:
        if isinstance(p.strategy, CopyFrom):
            if p.strategy.source not in ids:
                raise PocStageError(f"participant {p.id}: strategy copy:{p.strategy.source}: no participant "
                                    f"with that id; ids: {', '.join(sorted(ids))}")
            src = next(q for q in participants if q.id == p.strategy.source)
            if isinstance(src.strategy, CopyFrom):
                raise PocStageError(f"participant {p.id}: copies {src.id}, which itself copies; copy an original")
    return sorted(participants, key=lambda p: isinstance(p.strategy, CopyFrom))


def run_poc_stage(participants: Iterable[PocParticipant], *, block_hash: str, params: PocParams | None = None,
                  fidelity: Fidelity = "surrogate", preset: str = "tiny", runtime: "Runtime | None" = None,
                  seed: int = 0) -> PocStageResult:
    """Run one PoC stage and return weights and verdicts per participant id."""
    t0 = time.perf_counter()
    params = params or PocParams()
    participants = list(participants)
    _check_stage(participants, block_hash, fidelity, seed)
    index = {p.id: k for k, p in enumerate(participants)}
    plan_ss, sample_ss, draw_ss = np.random.SeedSequence(int(seed)).spawn(3)
    rngs = [[np.random.default_rng(s) for s in ss.spawn(len(participants))] for ss in (plan_ss, sample_ss, draw_ss)]
    model = measurement = None
    if fidelity == "real":
        from models.request import Runtime

        runtime = runtime or Runtime(dtype="float32")
        model = _RealModel(preset, params, block_hash, runtime)
    else:
        from sim.poc.measure import Measurement

        measurement = Measurement.load(params.measurement)
    plans: dict[str, LeafPlan] = {}
    subs: dict[str, Submission] = {}
    verdicts: dict[str, Verdict] = {}
    computed: dict[str, int] = {}
    for p in _ordered(participants):
        plan_rng, sample_rng, draw_rng = (r[index[p.id]] for r in rngs)
        plans[p.id] = plan = _plan_of(p, plans, plan_rng)
        if fidelity == "real":
            subs[p.id], verdicts[p.id], computed[p.id] = _real_submission(p, plan, subs, model, params, runtime,
                                                                          plan_rng, sample_rng)
        else:
            computed[p.id] = 0 if plan.copied_from else int(len(np.unique(plan.nonces[~plan.fabricated])))
            verdicts[p.id], subs[p.id] = _surrogate_verdict(p, plan, params, block_hash, measurement,  # type: ignore[assignment]
                                                            sample_rng, draw_rng)
    commitments = {pid: (s.commitment if isinstance(s, Submission) else s) for pid, s in subs.items()}
    weights = {p.id: (commitments[p.id].count * params.weight_per_nonce if verdicts[p.id].accepted else 0.0)
               for p in participants}
    return PocStageResult(
        block_hash=block_hash, fidelity=fidelity, preset=preset, seed=int(seed), params=params,
        weights=weights, verdicts={p.id: verdicts[p.id] for p in participants},
        commitments={p.id: commitments[p.id] for p in participants},
        strategies={p.id: p.strategy.spec for p in participants},
        nonces_computed={p.id: computed[p.id] for p in participants},
        seconds=time.perf_counter() - t0, measurement=measurement.path if measurement else None)


def _check_stage(participants: list, block_hash: str, fidelity: str, seed: int) -> None:
    if fidelity not in ("real", "surrogate"):
        raise PocStageError(f"fidelity must be 'real' or 'surrogate', got {fidelity!r}")
    if not isinstance(block_hash, str) or not block_hash:
        raise PocStageError("block_hash must be a non-empty string")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise PocStageError(f"seed must be an integer >= 0, got {seed!r}")
    for p in participants:
        if not isinstance(p, PocParticipant):
            raise PocStageError(f"participants must be PocParticipant objects, got {type(p).__name__}")
    for field_name in ("id", "public_key"):
        values = [getattr(p, field_name) for p in participants]
        dup = {v for v in values if values.count(v) > 1}
        if dup:
            raise PocStageError(f"participant {field_name} must be unique; repeated: {', '.join(sorted(dup))}")


def _plan_of(p: PocParticipant, plans: dict[str, LeafPlan], rng: np.random.Generator) -> LeafPlan:
    """The leaves `p` commits to (a copier's are its source's, planned before it)."""
    s = p.strategy
    if isinstance(s, CopyFrom):
        src = plans[s.source]
        return LeafPlan(src.nonces, src.fabricated, src.count, copied_from=s.source)
    return s.plan(int(p.capacity), rng)


def _real_submission(p: PocParticipant, plan: LeafPlan, subs: dict, model, params: PocParams, runtime,
                     plan_rng: np.random.Generator, sample_rng: np.random.Generator):
    """Real fidelity: the participant's vectors computed by the model, its submission, the
    validator's verdict (recomputing sampled leaves) and how many nonces it computed."""
    if plan.copied_from is not None:
        vectors = subs[plan.copied_from].vectors.copy()
        computed = 0
    else:
        vectors = np.zeros((len(plan.nonces), params.vector_dim), dtype=np.float16)
        real = ~plan.fabricated
        uniq, inverse = np.unique(plan.nonces[real], return_inverse=True)
        vectors[real] = model.vectors(p.public_key, uniq.tolist(), p.strategy, p.runtime)[inverse]
        vectors[plan.fabricated] = _unit_vectors(int(plan.fabricated.sum()), params.vector_dim, plan_rng)
        computed = int(len(uniq))
    sub = Submission.build(plan, vectors)
    verdict = validate(sub.commitment, sub.answer,
                       lambda nonces, key=p.public_key: model.vectors(key, nonces, None, runtime), params, sample_rng)
    return sub, verdict, computed


def _surrogate_verdict(p: PocParticipant, plan: LeafPlan, params: PocParams, block_hash: str, measurement,
                       sample_rng: np.random.Generator, draw_rng: np.random.Generator) -> tuple[Verdict, Commitment]:
    from models.poc import nonce_expert

    if plan.regular:
        # An honest-shaped tree passes every structural check; its root is not needed to decide.
        commitment = Commitment(b"\x00" * 32, int(plan.count))
        sampled = sample_indices(plan.count, params.samples, sample_rng)
    else:
        sub = Submission.build(plan, np.zeros((len(plan.nonces), params.vector_dim), dtype=np.float16))
        commitment = sub.commitment
        sampled = sample_indices(plan.count, params.samples, sample_rng)
        requested = requested_indices(sampled, plan.count)
        _, reason = check_openings(commitment, requested, sub.answer(requested), params.vector_dim)
        if reason:
            return rejected(reason, sampled.size, plan.count), commitment
    if sampled.size == 0:
        return binomial_verdict(np.zeros(0), params, plan.count), commitment
    cats = []
    for i in sampled:
        if plan.fabricated[i]:
            cats.append(FABRICATED)
        elif plan.copied_from is not None:
            cats.append(COPIED)
        else:
            expert = nonce_expert(block_hash, p.public_key, int(plan.nonces[i])) if p.strategy.held_expert else ""
            cats.append(p.strategy.category(expert))
    cats_arr = np.array(cats)
    d = np.zeros(len(cats))
    for cat in sorted(set(cats)):
        cond = params.honest_condition if cat == HONEST else cat
        mask = cats_arr == cat
        d[mask] = measurement.draw(cond, int(mask.sum()), draw_rng)
    return binomial_verdict(d, params, plan.count), commitment
