"""Commit-then-challenge: binding a video to the trajectory that made it, and checking a few segments.

The protocol (one inference):

1. **Commit.** With the MP4's SHA-256, the executor puts on the chain (`FinishInference`) the Merkle
   root over the digests of its latent trajectory at the committed points: the initial noise, every
   k-th step, and the final latent (`CommitSchedule`). A leaf is the step number (8 bytes, signed,
   big-endian) and the SHA-256 of the checkpoint: latent and solver state (float32 bytes, shapes,
   the solver's scalars). The tree is the PoC's RFC 6962 tree (`sim.poc.merkle`): its 32-byte root
   is all that goes on chain (k is a chain parameter and the leaf count follows from the request's
   steps), 64 bytes with the MP4's hash.
2. **Challenge.** After the commitment is on chain, randomness the executor cannot know when it
   commits picks which segments to open: a later block hash or the validator's secret seed
   (`challenge`), hashed with the root; never the executor's data alone (the MP4's hash is the
   executor's: a challenge drawn from it can be ground or predicted and cheated around).
3. **Open.** The executor sends, for each challenged segment, its start checkpoint (latent and
   solver state) and end latent, and always the final latent, each with its audit path
   (`open_checkpoints`). It keeps every committed checkpoint until the validation window closes.
4. **Check** (`verify_openings`, then the replays in `sim.policies.CommitChallenge`): every proof
   against the root; the initial noise recomputed from the seed (exact, free); each challenged
   segment replayed from the opened start and compared with the opened end; the final latent
   decoded by the validator and compared with the committed MP4 (so the video is the one the
   trajectory made).

Why a cheater gains nothing by knowing the rule: the end of segment i is the start of segment i+1
(one leaf), the first start is the seeded noise and the last end decodes to the delivered video, so a
commitment whose every segment replays correctly is an honest trajectory; a cheater can only cheat
on some segments and hope they are not challenged (caught with probability 1 - C(n-b, m)/C(n, m)
for b bad of n segments, m challenged), or open something else than it committed (the proof fails).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from models import seeds
from sim.poc.merkle import HASH_BYTES, MerkleTree, verify_proof

STEP_BYTES = 8
LEAF_BYTES = STEP_BYTES + HASH_BYTES
# What goes on chain besides the MP4's SHA-256: the root (k is a chain parameter; the leaf count
# follows from the request's steps and k).
COMMITMENT_CHAIN_BYTES = HASH_BYTES


class CommitmentError(ValueError):
    pass


@dataclass(frozen=True)
class CommitSchedule:
    """Which latents are committed: the initial noise (-1), every `every`-th step, and the last step."""

    steps: int
    every: int

    def __post_init__(self):
        if self.steps < 1:
            raise CommitmentError(f"steps must be >= 1, got {self.steps}")
        if not 1 <= self.every <= self.steps:
            raise CommitmentError(f"every must be in 1..{self.steps} (the steps), got {self.every}")

    @property
    def points(self) -> list[int]:
        pts = [-1, *range(self.every - 1, self.steps, self.every)]
        return pts if pts[-1] == self.steps - 1 else [*pts, self.steps - 1]

    @property
    def names(self) -> list[str]:
        """Capture names of `models.engine` for the points."""
        return ["init" if p == -1 else "final" if p == self.steps - 1 else f"step:{p}" for p in self.points]

    @property
    def segments(self) -> int:
        return len(self.points) - 1

    def segment(self, i: int) -> tuple[int, int]:
        """(start step, end step) of segment i: replay steps start+1 .. end."""
        return self.points[i], self.points[i + 1]


def capture_names(steps: int, every: int) -> tuple[str, ...]:
    return tuple(CommitSchedule(steps, every).names)


def _tensor_bytes(t) -> bytes:
    import torch

    t = t.detach().to("cpu").contiguous()
    if t.dtype == torch.bfloat16:  # numpy has no bf16: hash the raw 16-bit words
        return t.view(torch.int16).numpy().astype("<i2").tobytes()
    return t.numpy().astype(t.numpy().dtype.newbyteorder("<")).tobytes()


def checkpoint_digest(step: int, latents, solver: Mapping[str, Any] | None) -> bytes:
    """SHA-256 over a checkpoint: the step, the latent (dtype, shape, bytes) and the solver state (its
    tensors in key order, its scalars as JSON)."""
    import torch

    h = hashlib.sha256()
    h.update(int(step).to_bytes(STEP_BYTES, "big", signed=True))

    def put(name: str, t) -> None:
        h.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode())
        h.update(_tensor_bytes(t))

    put("latents", latents)
    scalars: dict[str, Any] = {}
    for key in sorted(solver or {}):
        v = solver[key]
        if isinstance(v, torch.Tensor):
            put(key, v)
        elif isinstance(v, list):
            for i, x in enumerate(v):
                if isinstance(x, torch.Tensor):
                    put(f"{key}.{i}", x)
            scalars[key] = [None if isinstance(x, torch.Tensor) else x for x in v]
        else:
            scalars[key] = v
    h.update(json.dumps(scalars, sort_keys=True, default=str).encode())
    return h.digest()


def leaf(step: int, digest: bytes) -> bytes:
    return int(step).to_bytes(STEP_BYTES, "big", signed=True) + bytes(digest)


@dataclass(frozen=True)
class Commitment:
    """What goes on chain with the MP4's SHA-256."""

    root: bytes
    every: int
    count: int  # leaves

    def hex(self) -> str:
        return self.root.hex()

    @property
    def chain_bytes(self) -> int:
        return COMMITMENT_CHAIN_BYTES


@dataclass(frozen=True)
class Opening:
    """One opened leaf: its index, the checkpoint (step, latent, solver state) and the audit path."""

    index: int
    step: int
    latents: Any
    solver: Mapping[str, Any] | None
    proof: tuple[bytes, ...]

    def nbytes(self) -> int:
        from models.engine import Checkpoint

        return Checkpoint(self.step, self.latents, dict(self.solver) if self.solver else None).nbytes() + \
            HASH_BYTES * len(self.proof) + STEP_BYTES


class Executor:
    """The executor's side: commits to its checkpoints and opens what is challenged."""

    def __init__(self, checkpoints: Mapping[str, Any], schedule: CommitSchedule):
        self.schedule = schedule
        missing = [n for n in schedule.names if n not in checkpoints]
        if missing:
            raise CommitmentError(f"checkpoints: missing {missing} for the committed points {schedule.names}")
        self.checkpoints = [checkpoints[n] for n in schedule.names]
        self.tree = MerkleTree([leaf(ck.step, checkpoint_digest(ck.step, ck.latents, ck.solver))
                                for ck in self.checkpoints])
        self.commitment = Commitment(self.tree.root, schedule.every, self.tree.size)

    def open(self, indices: Iterable[int]) -> list[Opening]:
        out = []
        for i in sorted(set(int(i) for i in indices)):
            ck = self.checkpoints[i]
            out.append(Opening(i, ck.step, ck.latents, ck.solver, tuple(self.tree.proof(i))))
        return out

    def kept_bytes(self) -> int:
        """What the executor keeps until the validation window closes: every committed checkpoint."""
        return sum(ck.nbytes() for ck in self.checkpoints)


def open_indices(challenged: Sequence[int], schedule: CommitSchedule) -> list[int]:
    """Leaves to open for challenged segments: each segment's start and end, the initial noise and the
    final latent (always: the noise check is free and the decode binds the video)."""
    idx = {0, schedule.segments}
    for s in challenged:
        idx |= {int(s), int(s) + 1}
    return sorted(idx)


def challenge(root: bytes, beacon: bytes, segments: int, m: int) -> list[int]:
    """`m` distinct segments (of `segments`) drawn from `beacon` (a block hash after the commitment, or
    the validator's secret seed) and the root: the executor cannot know them when it commits."""
    if not isinstance(beacon, (bytes, bytearray)) or len(beacon) < 16:
        raise CommitmentError("beacon must be at least 16 bytes of randomness fixed after the commitment")
    m = max(0, min(int(m), int(segments)))
    seed = seeds.challenge_seed(beacon, root)
    return sorted(int(i) for i in np.random.default_rng(seed).choice(segments, size=m, replace=False))


def validator_beacon(secret_seed: int, inference_key: str) -> bytes:
    """The validator's secret randomness for one inference (kept until it has the commitment)."""
    return seeds.validator_beacon(secret_seed, inference_key)


def verify_openings(commitment: Commitment, schedule: CommitSchedule, openings: Sequence[Opening],
                    needed: Iterable[int]) -> str | None:
    """None if every needed leaf is opened, at its committed step, and proves against the root; else why not."""
    if commitment.count != len(schedule.points) or commitment.every != schedule.every:
        return (f"commitment of {commitment.count} leaves every {commitment.every} steps does not match the "
                f"claimed schedule ({len(schedule.points)} leaves every {schedule.every})")
    by_index = {}
    for o in openings:
        if o.index in by_index:
            return f"leaf {o.index} opened twice"
        by_index[o.index] = o
    for i in needed:
        o = by_index.get(i)
        if o is None:
            return f"leaf {i} not opened"
        if o.step != schedule.points[i]:
            return f"leaf {i} opened at step {o.step}, committed at step {schedule.points[i]}"
        try:
            data = leaf(o.step, checkpoint_digest(o.step, o.latents, o.solver))
        except Exception as err:  # malformed tensors from the executor
            return f"leaf {i}: malformed opening ({type(err).__name__})"
        if not verify_proof(data, i, commitment.count, o.proof, commitment.root):
            return f"leaf {i}: the opening does not match the commitment (Merkle proof fails)"
    return None


def detection_probability(bad: int, segments: int, m: int, per_segment: float = 1.0) -> float:
    """Derived: P(at least one of `bad` cheated segments among `m` of `segments` drawn uniformly without
    replacement), each caught with `per_segment` when challenged:
    1 - sum_j P(j bad drawn) (1 - per_segment)^j (hypergeometric)."""
    from scipy.stats import hypergeom

    m = min(m, segments)
    if bad <= 0 or m <= 0:
        return 0.0
    j = np.arange(0, min(bad, m) + 1)
    pmf = hypergeom.pmf(j, segments, bad, m)
    return float(1.0 - np.sum(pmf * (1.0 - per_segment) ** j))


def opened_bytes(latent_numel: int, solver_numel: int, m: int, schedule: CommitSchedule, dtype_bytes: int = 4) -> int:
    """Bytes an executor sends for `m` challenged segments (adjacent segments share a leaf; counted apart:
    an upper bound): starts with solver state, ends, the noise and the final latent, plus proofs."""
    depth = max(1, math.ceil(math.log2(max(2, len(schedule.points)))))
    per_start = (latent_numel + solver_numel) * dtype_bytes
    per_end = latent_numel * dtype_bytes
    return m * (per_start + per_end) + 2 * per_end + (2 * m + 2) * (depth * HASH_BYTES + STEP_BYTES)


def decode_final(request, runtime, latents):
    """The validator's decode of an opened final latent: the pipeline's own VAE steps (latent
    de-normalisation, `vae.decode`, `video_processor.postprocess_video`), then uint8 frames."""
    import torch

    from models.engine import session_vae
    from models.presets import build_pipeline
    from models.video import frames_to_uint8

    pipe = build_pipeline(request.model, runtime)
    with contextlib.ExitStack() as stack, runtime.apply(), torch.no_grad():
        session_vae(stack, pipe, runtime.vae_dtype)
        vae = pipe.vae
        lat = latents.to(next(vae.parameters()).device, dtype=vae.dtype)
        mean = torch.tensor(vae.config.latents_mean).view(1, vae.config.z_dim, 1, 1, 1).to(lat.device, lat.dtype)
        inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, vae.config.z_dim, 1, 1, 1).to(lat.device, lat.dtype)
        video = vae.decode(lat / inv_std + mean, return_dict=False)[0]
        frames = pipe.video_processor.postprocess_video(video, output_type="np")
    return frames_to_uint8(frames[0])
