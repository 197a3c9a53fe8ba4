"""How a participant behaves in a PoC stage: honest, or one of the cheats, each a class.

A strategy says two things:

- which model it runs (`held_expert`, `weights`): the honest model, one expert only, or weights
  rounded through FP8 / int4;
- which leaves it commits (`plan`): the nonces of its tree in order, which of them carry made-up
  vectors, and the count it claims (which may exceed the tree).

Both fidelities use the same plan: `real` computes the vectors with the model, `surrogate` only
labels each sampled leaf with the measured distance distribution it draws from.

Specs (`parse_strategy`): `honest`, `one-expert[:high|low]`, `fp8`, `int4`, `fabricate:F`
(a share F of the leaves made up, to claim capacity / (1 - F) leaves), `copy:ID` (another
participant's leaves), `inflate:X` (claim X times the leaves in the tree), `duplicate:K` (repeat
every computed leaf K times to claim K x capacity). New strategies: subclass `PocStrategy` and
decorate with `register_strategy`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

# Surrogate categories of a leaf (each maps to a measured distance distribution).
HONEST, FP8, INT4, WRONG_EXPERT, FABRICATED, COPIED = "honest", "fp8", "int4", "wrong-expert", "fabricated", "copied"


class StrategyError(ValueError):
    """An unknown strategy or a bad strategy argument."""


@dataclass(frozen=True)
class LeafPlan:
    """The leaves a participant commits, before any vector is computed."""

    nonces: np.ndarray  # int64, leaves of the tree in order (len = tree size)
    fabricated: np.ndarray  # bool, leaves whose vector is made up
    count: int  # claimed count (the on-chain number)
    copied_from: str | None = None  # id of the participant whose leaves these are

    @property
    def regular(self) -> bool:
        """True when the tree is what an honest node commits: count = size, nonces increasing."""
        n = self.nonces
        return self.count == len(n) and bool(np.all(n[1:] > n[:-1]))


_REGISTRY: dict[str, type["PocStrategy"]] = {}


def register_strategy(cls: type["PocStrategy"]) -> type["PocStrategy"]:
    if not cls.name:
        raise TypeError(f"strategy class {cls.__name__} must set `name`")
    _REGISTRY[cls.name] = cls
    return cls


class PocStrategy:
    """Honest behaviour; cheats override what differs."""

    name: ClassVar[str] = ""
    kind: ClassVar[str] = "malign"
    arg_help: ClassVar[str] = ""
    description: ClassVar[str] = ""
    held_expert: str | None = None
    weights: str | None = None

    def __init__(self, arg: str | None = None):
        self.arg = arg
        self.parse(arg)

    def parse(self, arg: str | None) -> None:
        if arg not in (None, ""):
            raise StrategyError(f"strategy {self.name!r} takes no argument, got {arg!r}")

    @property
    def spec(self) -> str:
        return self.name if self.arg in (None, "") else f"{self.name}:{self.arg}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r})"

    def plan(self, capacity: int, rng: np.random.Generator) -> LeafPlan:
        n = np.arange(capacity, dtype=np.int64)
        return LeafPlan(n, np.zeros(capacity, dtype=bool), capacity)

    def category(self, expert_of_nonce: str) -> str:
        """Surrogate label of a computed (not made-up, not copied) leaf."""
        if self.weights:
            return self.weights
        if self.held_expert and expert_of_nonce != self.held_expert:
            return WRONG_EXPERT
        return HONEST


@register_strategy
class Honest(PocStrategy):
    name, kind = "honest", "honest"
    description = "computes every nonce it claims with both experts and the real weights"


@register_strategy
class OneExpert(PocStrategy):
    name, arg_help = "one-expert", "high|low"
    description = "loaded one expert only and answers every nonce with it"

    def parse(self, arg):
        arg = arg or "high"
        if arg not in ("high", "low"):
            raise StrategyError(f"one-expert: argument must be 'high' or 'low', got {arg!r}")
        self.held_expert = arg
        self.arg = arg


@register_strategy
class FP8Weights(PocStrategy):
    name = "fp8"
    description = "transformer Linear weights rounded through float8_e4m3fn (per-tensor scale)"
    weights = "fp8"


@register_strategy
class Int4Weights(PocStrategy):
    name = "int4"
    description = "transformer Linear weights rounded to 4 bits (one scale per 32 inputs)"
    weights = "int4"


@register_strategy
class Fabricate(PocStrategy):
    name, arg_help = "fabricate", "F in (0,1)"
    description = "makes up a share F of its vectors to claim capacity / (1 - F) nonces"

    def parse(self, arg):
        try:
            f = float(arg if arg not in (None, "") else 0.5)
        except ValueError:
            raise StrategyError(f"fabricate: argument must be a number in (0, 1), got {arg!r}") from None
        if not 0.0 < f < 1.0:
            raise StrategyError(f"fabricate: argument must be in (0, 1), got {f}")
        self.fraction = f
        self.arg = f"{f:g}"

    def plan(self, capacity, rng):
        count = int(capacity / (1.0 - self.fraction))
        made_up = np.zeros(count, dtype=bool)
        n_fab = count - capacity
        if n_fab > 0:
            made_up[rng.choice(count, size=n_fab, replace=False)] = True
        return LeafPlan(np.arange(count, dtype=np.int64), made_up, count)


@register_strategy
class CopyFrom(PocStrategy):
    name, arg_help = "copy", "participant id"
    description = "commits another participant's (nonce, vector) leaves as its own"

    def parse(self, arg):
        if arg in (None, ""):
            raise StrategyError("copy: argument must be the id of the participant copied from")
        self.source = str(arg)


@register_strategy
class InflateCount(PocStrategy):
    name, arg_help = "inflate", "X > 1"
    description = "computes its capacity honestly but claims X times as many nonces"

    def parse(self, arg):
        try:
            x = float(arg if arg not in (None, "") else 2.0)
        except ValueError:
            raise StrategyError(f"inflate: argument must be a number > 1, got {arg!r}") from None
        if not x > 1.0:
            raise StrategyError(f"inflate: argument must be > 1, got {x}")
        self.factor = x
        self.arg = f"{x:g}"

    def plan(self, capacity, rng):
        n = np.arange(capacity, dtype=np.int64)
        return LeafPlan(n, np.zeros(capacity, dtype=bool), int(capacity * self.factor))


@register_strategy
class DuplicateNonces(PocStrategy):
    name, arg_help = "duplicate", "K >= 2"
    description = "repeats every computed leaf K times to fill a tree of K x capacity leaves"

    def parse(self, arg):
        try:
            k = int(arg if arg not in (None, "") else 2)
        except ValueError:
            raise StrategyError(f"duplicate: argument must be an integer >= 2, got {arg!r}") from None
        if k < 2:
            raise StrategyError(f"duplicate: argument must be >= 2, got {k}")
        self.k = k
        self.arg = str(k)

    def plan(self, capacity, rng):
        n = np.repeat(np.arange(capacity, dtype=np.int64), self.k)
        return LeafPlan(n, np.zeros(len(n), dtype=bool), len(n))


def strategy_names() -> list[str]:
    return list(_REGISTRY)


def parse_strategy(spec: "str | PocStrategy") -> PocStrategy:
    """A strategy from its spec (`name` or `name:arg`), or the instance itself."""
    if isinstance(spec, PocStrategy):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise StrategyError(f"strategy must be a non-empty string; allowed: {', '.join(strategy_table_specs())}")
    name, _, arg = spec.strip().partition(":")
    cls = _REGISTRY.get(name)
    if cls is None:
        raise StrategyError(f"unknown strategy {name!r}; allowed: {', '.join(strategy_table_specs())}")
    return cls(arg or None)


def strategy_table_specs() -> list[str]:
    return [c.name + (f":{c.arg_help}" if c.arg_help else "") for c in _REGISTRY.values()]


def strategy_table() -> list[dict[str, str]]:
    return [{"spec": c.name + (f":{c.arg_help}" if c.arg_help else ""), "kind": c.kind,
             "description": c.description} for c in _REGISTRY.values()]
