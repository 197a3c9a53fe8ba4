"""Validation policies: how a validator checks an executor's claim, and what that costs.

The executor and the validator talk only through stored artifacts, like the real trust boundary: a
`Claim` is the request, the SHA-256 the chain recorded, and the executor's files (the MP4 and,
where the policy needs them, captured latents with their solver state). A policy returns scores
(distances: larger = more different) and the compute it spent; `verdict` turns a score into
pass/fail under a threshold, so FAR/FRR can be recomputed at any threshold from stored scores.

- `full`: regenerate from the request and compare final videos frame by frame.
- `checkpoint`: compare the executor's latents at each stored checkpoint with the validator's,
  continuing after each checkpoint from the executor's latent (the proposal's fallback).
- `fingerprint`: the same comparison on seeded Johnson-Lindenstrauss projections of the latents
  (a few bytes per checkpoint); without the executor's latents the validator cannot continue from
  them, so it compares its own uninterrupted trajectory.
- `segment`: commit-then-challenge (`sim.commitment`): Merkle-committed checkpoints every k steps;
  each committed segment replayed from its opened start (latent + solver state) and compared where
  it ends; the seeded noise and the decode of the final latent against the MP4 checked. A deployed
  validator replays only the challenged segments (`sim.deployable`): a fraction of the cost.

`prepare` splits a policy's `score` in two: the device part (its regenerations, the validator's VAE
decode) runs at once on the calling thread, and the CPU-side rest (the distances, the fingerprints,
the frame metrics, the MP4 encode and decode) comes back as a function that may run on another
thread (the experiment runs it beside the next generation, `sim.overlap`) and gives the same
result as `score`, float for float.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable

from models.request import GenerationRequest, Runtime

INF = math.inf


class PolicyError(ValueError):
    pass


@dataclass
class Claim:
    """What the validator receives: the request, the chain's hash, the executor's files."""

    request: GenerationRequest
    sha256: str
    directory: Path  # holds video.mp4 and, for latent policies, latents.safetensors

    @property
    def video_path(self) -> Path:
        return self.directory / "video.mp4"

    @property
    def latents_path(self) -> Path:
        return self.directory / "latents.safetensors"


@dataclass
class PolicyResult:
    scores: dict[str, float]
    validator_compute_share: float  # validator transformer work / the claimed request's honest work
    bytes_kept: int  # what the executor must keep (and send) for this policy
    reason: str = ""


def rejected(keys, reason: str, validator_compute_share: float = 0.0, bytes_kept: int = 0) -> PolicyResult:
    """A claim that could not be scored (missing, tampered or malformed artifacts): every score inf."""
    return PolicyResult({k: INF for k in keys}, validator_compute_share, bytes_kept, reason=reason)


# The CPU-side rest of a policy's score (`ValidationPolicy.prepare`): called once, on any thread.
Scoring = Callable[[], PolicyResult]


def ready(result: PolicyResult) -> Scoring:
    """A `Scoring` whose work is done (a claim rejected before any regeneration)."""
    return lambda: result


@dataclass
class ValidationContext:
    """The validator's side: its runtime, and replays of requests it already regenerated."""

    runtime: Runtime = field(default_factory=Runtime)
    replays: dict[str, Any] = field(default_factory=dict)  # request key -> Generation
    replay_seconds: float = 0.0  # wall time spent regenerating (the rest of a policy's time is scoring)
    device_seconds: float = 0.0  # of which the regenerations' device time (their `Cost.seconds`)
    fingerprint_k: int = 32
    fingerprint_seed: int = 0
    # The checkpoints the checkpoint and fingerprint policies compare (the executor may keep more:
    # the committed points of the segment policy); None: all stored ones.
    capture: tuple[str, ...] | None = None
    commit_every: int = 2  # steps per committed segment (segment policy)
    metrics: tuple[str, ...] = ("ssim", "psnr", "gmsd", "haarpsi")
    aggregations: tuple[str, ...] = ("mean", "worst", "p90")
    weights_dir: str | None = None
    # PyTorch intra-op threads of the frame metrics when one claim is scored at a time; None: the
    # count in force (the one generation uses). The distances do not depend on it (tests/test_metrics.py).
    scoring_threads: int | None = None
    # Claims scored side by side, one PyTorch thread each, by `score_many` of the full policy (frames
    # are decoded and compared in parallel: PyAV and PyTorch release the GIL); None: the CPUs this
    # process may use, at most 4 (each worker holds a batch of frames and the metrics' buffers).
    scoring_workers: int | None = None
    # (path, (size, mtime), result) of the last latent file read, shared by the policies of one claim
    _claim_checkpoints: tuple | None = field(default=None, init=False, repr=False, compare=False)

    def replay(self, request: GenerationRequest):
        """The validator's own generation of the request (cached by request)."""
        key = request.key()
        if key not in self.replays:
            self.replays[key] = self.run(request)
        return self.replays[key]

    def frames_of(self, replay):
        """The validator's own video as decoded from its MP4 (decoded once per replay)."""
        from sim.video_io import decode_mp4

        key = ("frames", replay.sha256)
        if key not in self.replays:
            self.replays[key] = decode_mp4(replay.mp4)
        return self.replays[key]

    def workers(self) -> int:
        if self.scoring_workers is not None:
            return max(1, int(self.scoring_workers))
        try:
            cpus = len(os.sched_getaffinity(0))
        except AttributeError:  # pragma: no cover - not Linux
            cpus = os.cpu_count() or 1
        return max(1, min(4, cpus))

    def fingerprint_of(self, request: GenerationRequest, name: str, fp) -> Any:
        """The fingerprint of the validator's own latent `name` of its replay of `request` (projected
        once per replay, not once per claim)."""
        key = ("fingerprint", request.key(), name, fp.k, fp.seed)
        if key not in self.replays:
            self.replays[key] = fp.project(self.replay(request).latents[name])
        return self.replays[key]

    def checkpoints(self, claim: Claim):
        """`(checkpoints, "")` of the claim's latent file, or `(None, reason)` when it cannot be read.
        The file is read once for all policies scoring the same claim in a row (keyed by its path,
        size and modification time); each call gets its own copies of the tensors."""
        path = claim.latents_path
        try:
            st = path.stat()
            stamp = (st.st_size, st.st_mtime_ns)
        except OSError:
            stamp = None
        cached = self._claim_checkpoints
        if stamp is None or cached is None or cached[0] != path or cached[1] != stamp:
            cached = (path, stamp, _checkpoints_or_none(claim))
            self._claim_checkpoints = cached if stamp is not None else None
        cks, err = cached[2]
        return (_copy_checkpoints(cks), err) if cks is not None else (None, err)

    def compared(self, claim: Claim):
        """`checkpoints`, restricted to the names in `capture` (those the claim has)."""
        cks, err = self.checkpoints(claim)
        if cks is not None and self.capture is not None:
            cks = {n: ck for n, ck in cks.items() if n in self.capture}
            if not cks:
                return None, f"none of the checkpoints {list(self.capture)} is stored"
        return cks, err

    def run(self, request: GenerationRequest, **kwargs):
        """A validator generation (timed as replay, not scoring)."""
        import time

        from models.engine import generate

        t0 = time.perf_counter()
        try:
            gen = generate(request, self.runtime, **kwargs)
        finally:
            self.replay_seconds += time.perf_counter() - t0
        self.device_seconds += float(sum(gen.cost.seconds.values()))
        return gen


def _checkpoints_or_none(claim: Claim):
    from models.engine import ArtifactError, load_checkpoints

    try:
        checkpoints = load_checkpoints(claim.latents_path)
    except ArtifactError as err:
        return None, str(err)
    if not checkpoints:  # e.g. an executor on an engine that exposes no latents (vllm-omni)
        return None, f"{claim.latents_path}: the executor kept no latents"
    return checkpoints, ""


def _copy_checkpoints(checkpoints):
    """Copies a policy may change without touching the cached ones (tensors cloned, lists copied)."""
    import torch

    from models.engine import Checkpoint

    def cp(v):
        if isinstance(v, torch.Tensor):
            return v.clone()
        if isinstance(v, list):
            return [cp(x) for x in v]
        return v

    return {n: Checkpoint(step=ck.step, latents=ck.latents.clone(),
                          solver=None if ck.solver is None else {k: cp(v) for k, v in ck.solver.items()})
            for n, ck in checkpoints.items()}


@functools.lru_cache(maxsize=256)
def _forward_passes(request: GenerationRequest) -> int:
    from models.engine import forward_passes

    return forward_passes(request)


def _latent_names(checkpoints) -> list[str]:
    return sorted(checkpoints, key=lambda n: checkpoints[n].step)


def _claimed_steps(request: GenerationRequest, names: Iterable[str]) -> dict[str, int]:
    """Where each named checkpoint must lie on the claimed request's schedule."""
    from models.engine import resolve_captures
    from models.presets import preset_spec

    return resolve_captures(names, list(_timesteps(request.steps, request.shift)), preset_spec(request.model).boundary_ratio)


@functools.lru_cache(maxsize=256)
def _timesteps(steps: int, shift: float) -> tuple[float, ...]:
    from models.engine import schedule
    from models.presets import SCHEDULER_CONFIG

    return tuple(schedule(GenerationRequest(prompt="-", steps=steps, shift=shift), SCHEDULER_CONFIG))


class ValidationPolicy:
    name: ClassVar[str]
    description: ClassVar[str]

    def score(self, claim: Claim, ctx: ValidationContext) -> PolicyResult:  # pragma: no cover - abstract
        raise NotImplementedError

    def prepare(self, claim: Claim, ctx: ValidationContext) -> Scoring:
        """`score` in two parts: the device part (regenerations) runs now, on this thread, and the
        CPU-side rest is returned, to be called once, on any thread, for `score`'s result. The rest
        may read the claim's MP4 but leaves `ctx`'s timers, its regenerations and its cache of the
        claim's latents alone (it may add the validator's own fingerprints or decoded frames to
        `ctx.replays`). This default runs all of `score` now (a policy that does not split it)."""
        return ready(self.score(claim, ctx))

    # Policies whose claims can be scored together, after the executor's generations (no
    # regeneration per claim): the experiment hands them all claims of a prompt in one `score_many`.
    batched: ClassVar[bool] = False

    def score_many(self, claims: list[Claim], ctx: ValidationContext) -> list[PolicyResult]:
        """`score` of each claim, in order (a policy may score them side by side)."""
        return [self.score(c, ctx) for c in claims]

    @staticmethod
    def verdict(score: float, threshold: float) -> bool:
        """Pass when the distance is at most the threshold (NaN fails)."""
        return bool(score <= threshold)

    def primary_metric(self, ctx: ValidationContext) -> str:  # pragma: no cover - abstract
        raise NotImplementedError


class FullReplay(ValidationPolicy):
    name = "full"
    description = "regenerate the video and compare final frames (perceptual/pixel metrics)"

    def primary_metric(self, ctx):
        return f"{ctx.metrics[0]}.mean"

    batched = True

    def score(self, claim, ctx):
        return self._score(claim, ctx, ctx.scoring_threads)

    def prepare(self, claim, ctx):
        """The validator's own video now (regenerated if need be); the decode and frame metrics later."""
        ctx.replay(claim.request)
        return functools.partial(self._score, claim, ctx, ctx.scoring_threads)

    def score_many(self, claims, ctx):
        """Claims scored side by side by `ctx.workers()` threads with one PyTorch thread each: the
        same distances as one at a time (tests/test_policies.py), less wall time on several cores."""
        from concurrent.futures import ThreadPoolExecutor

        from sim.metrics import torch_threads

        workers = min(ctx.workers(), len(claims))
        if workers <= 1:
            return super().score_many(claims, ctx)
        for claim in claims:  # the validator's own videos first: regenerated (if need be) and decoded once
            ctx.frames_of(ctx.replay(claim.request))
        with torch_threads(1), ThreadPoolExecutor(workers) as pool:  # worker threads inherit 1 thread
            return list(pool.map(lambda c: self._score(c, ctx, None), claims))

    def _score(self, claim, ctx, threads):
        from sim.metrics import score_frames
        from sim.video_io import CorruptVideo, VideoHashMismatch, read_committed_video

        replay = ctx.replay(claim.request)
        keys = [f"{m}.{a}" for m in ctx.metrics for a in ctx.aggregations]
        size = claim.video_path.stat().st_size if claim.video_path.exists() else 0
        try:
            frames = read_committed_video(claim.video_path, claim.sha256)
        except (VideoHashMismatch, CorruptVideo, FileNotFoundError) as err:
            return rejected(keys, str(err), 1.0, size)
        ref = ctx.frames_of(replay)
        scores = score_frames(ref, frames, ctx.metrics, ctx.aggregations, weights_dir=ctx.weights_dir, threads=threads)
        return PolicyResult(scores, replay.cost.compute_share, size)


def _latent_scores(pairs: dict[str, tuple[Any, Any]]) -> dict[str, float]:
    from sim.metrics import score_latents

    out: dict[str, float] = {}
    for name, (ref, test) in pairs.items():
        for metric, v in score_latents(ref, test).items():
            out[f"{metric}.{name}"] = v
    for metric in ("rel_l2", "cosine"):
        vals = [v for k, v in out.items() if k.startswith(metric + ".")]
        out[f"{metric}.max"] = max(vals) if vals else INF
    return out


def _latent_bytes(checkpoints, with_solver: bool) -> int:
    """Bytes of the checkpoints as stored and compared (float32: `models.engine.LATENT_DTYPE_NAME`)."""
    return sum(ck.nbytes(with_solver) for ck in checkpoints.values())


class CheckpointReplay(ValidationPolicy):
    name = "checkpoint"
    description = "compare latents at each stored checkpoint, continuing from the executor's latent"

    def primary_metric(self, ctx):
        return "rel_l2.max"

    def score(self, claim, ctx):
        return self.prepare(claim, ctx)()

    def prepare(self, claim, ctx):
        """The replay now; the latent distances later."""
        cks, err = ctx.compared(claim)
        if cks is None:
            return ready(rejected(("rel_l2.max", "cosine.max"), err))
        names = _latent_names(cks)
        try:
            at = _claimed_steps(claim.request, names)
        except ValueError as e:
            return ready(rejected(("rel_l2.max", "cosine.max"), str(e)))
        last = max(at.values())
        # Continue from the executor's latent after every checkpoint but the last one.
        substitute = {at[n]: cks[n].latents for n in names if 0 <= at[n] < last}
        run = ctx.run(claim.request, capture=names, substitute=substitute, decode=False)
        pairs = {n: (run.latents[n], cks[n].latents) for n in names}
        share, kept = run.cost.compute_share, _latent_bytes(cks, False)
        return lambda: PolicyResult(_latent_scores(pairs), share, kept)


class FingerprintReplay(ValidationPolicy):
    name = "fingerprint"
    description = "compare seeded JL projections of the latents at each checkpoint (bytes, not megabytes)"

    def primary_metric(self, ctx):
        return "fp_dist.max"

    def score(self, claim, ctx):
        return self.prepare(claim, ctx)()

    def prepare(self, claim, ctx):
        """The validator's own generation now (regenerated if need be); the projections later."""
        cks, err = ctx.compared(claim)
        if cks is None:
            return ready(rejected(("fp_dist.max",), err))
        ctx.replay(claim.request)
        return functools.partial(_fingerprint_scores, claim, cks, ctx)


def _fingerprint_scores(claim: Claim, cks, ctx: ValidationContext) -> PolicyResult:
    """The fingerprint policy's distances: the executor's projected checkpoints against the
    validator's (projected once per replay, cached in `ctx.replays`)."""
    from sim.fingerprint import Fingerprinter

    fp = Fingerprinter(k=ctx.fingerprint_k, seed=ctx.fingerprint_seed)
    replay = ctx.replay(claim.request)
    scores: dict[str, float] = {}
    for n, ck in cks.items():
        # The executor publishes only these vectors; the latents are not sent.
        theirs = fp.project(ck.latents)
        if n not in replay.latents or replay.latents[n].shape != ck.latents.shape:
            scores[f"fp_dist.{n}"] = INF
            continue
        scores[f"fp_dist.{n}"] = float(fp.distance(ctx.fingerprint_of(claim.request, n, fp), theirs))
    scores["fp_dist.max"] = max(scores.values()) if scores else INF
    return PolicyResult(scores, replay.cost.compute_share, len(cks) * fp.bytes_per_vector)


class SegmentReplay(ValidationPolicy):
    """Commit-then-challenge (`sim.commitment`): the executor's checkpoints at the committed points
    (the noise, every `ctx.commit_every`-th step, the final latent) are committed to by their Merkle
    root; the validator opens them, checks the proofs and the seeded noise, replays every committed
    segment from its opened start (latent + solver state) and compares with the opened end, and
    decodes the final latent and compares it with the committed MP4.

    Scoring every segment gives the view of a validator that challenges all of them (the oracle
    table); a deployed validator challenges `m` drawn after the commitment (`sim.deployable`), whose
    rates follow from the per-segment scores `rel_l2.seg{i}` / `cosine.seg{i}`."""

    name = "segment"
    description = ("commit-then-challenge: Merkle-committed checkpoints every k steps, each segment replayed from "
                   "the opened start, noise and final decode checked")

    def primary_metric(self, ctx):
        return "rel_l2.end"

    def score(self, claim, ctx):
        return self.prepare(claim, ctx)()

    def prepare(self, claim, ctx):
        """The openings checked and every segment replayed, the final latent decoded, now; the
        distances, the noise check and the MP4 comparison later."""
        from models.engine import Checkpoint

        opened = _opened_segments(claim, ctx)
        if isinstance(opened, PolicyResult):
            return ready(opened)
        schedule, openings, kept = opened
        ends: list[tuple[Any, Any] | None] = []  # per segment: (the validator's end, the opened end)
        passes = 0
        for i in range(schedule.segments):
            a, b = openings[i], openings[i + 1]
            if a.step >= 0 and a.solver is None:
                ends.append(None)
                continue
            run = ctx.run(claim.request, capture=(schedule.names[i + 1],),
                          resume_from=Checkpoint(step=a.step, latents=a.latents, solver=a.solver),
                          stop_after=b.step, decode=False)
            passes += run.cost.total_passes
            ends.append((run.latents[schedule.names[i + 1]], b.latents))
        decoded = _validator_decode(claim, openings[-1].latents, ctx)
        share = passes / max(1, _forward_passes(claim.request))
        return functools.partial(_segment_scores, claim, openings[0].latents, ends, decoded, share, kept)


def _opened_segments(claim: Claim, ctx: ValidationContext):
    """`(schedule, openings, bytes kept)` of a claim whose commitment opens and verifies at the
    committed steps, or the `PolicyResult` rejecting it."""
    from sim.commitment import CommitmentError, CommitSchedule, Executor, verify_openings

    cks, err = ctx.checkpoints(claim)
    try:
        schedule = CommitSchedule(claim.request.steps, min(ctx.commit_every, claim.request.steps))
    except CommitmentError as e:
        return rejected(segment_keys(1), str(e))
    keys = segment_keys(schedule.segments)
    if cks is None:
        return rejected(keys, err)
    try:
        executor = Executor(cks, schedule)  # what the executor committed on chain (root, k, count)
    except CommitmentError as e:
        return rejected(keys, str(e))
    kept = executor.kept_bytes()
    everything = range(len(schedule.points))
    openings = executor.open(everything)
    bad = verify_openings(executor.commitment, schedule, openings, everything)
    if bad:
        return rejected(keys, bad, bytes_kept=kept)
    at = _claimed_steps(claim.request, schedule.names)
    if any(at[n] != p for n, p in zip(schedule.names, schedule.points)):
        return rejected(keys, "checkpoints are not at the committed steps", bytes_kept=kept)
    return schedule, openings, kept


def _segment_scores(claim: Claim, start, ends, decoded, share: float, kept: int) -> PolicyResult:
    """The segment policy's scores from what its device part computed: the opened noise against
    the seeded one, each replayed segment's end against the opened one (inf where the opened start
    has no solver state), the decode check."""
    from models.engine import initial_noise
    from sim.metrics import rel_l2, score_latents

    scores = {"rel_l2.start": rel_l2(initial_noise(claim.request), start)}
    for i, pair in enumerate(ends):
        if pair is None:
            scores[f"rel_l2.seg{i}"] = scores[f"cosine.seg{i}"] = INF
            continue
        end = score_latents(*pair)
        scores[f"rel_l2.seg{i}"], scores[f"cosine.seg{i}"] = end["rel_l2"], end["cosine"]
    scores["rel_l2.end"] = max(scores[f"rel_l2.seg{i}"] for i in range(len(ends)))
    scores["cosine.end"] = max(scores[f"cosine.seg{i}"] for i in range(len(ends)))
    scores["decode.mad"] = _decode_distance(claim, decoded)
    return PolicyResult(scores, share, kept)


def segment_keys(segments: int) -> tuple[str, ...]:
    return ("rel_l2.start", "rel_l2.end", "cosine.end", "decode.mad",
            *(f"{m}.seg{i}" for i in range(segments) for m in ("rel_l2", "cosine")))


def _validator_decode(claim: Claim, final, ctx: ValidationContext):
    """The validator's decode of the opened final latent (device work, timed as replay), as uint8
    frames; None when the committed MP4 is missing or its SHA-256 is not the claim's (then the
    decode check fails without decoding)."""
    import time

    from sim.commitment import decode_final
    from sim.video_io import sha256_file

    if not claim.video_path.is_file() or sha256_file(claim.video_path) != str(claim.sha256).lower():
        return None
    t0 = time.perf_counter()
    try:
        return decode_final(claim.request, ctx.runtime, final)
    finally:
        ctx.replay_seconds += time.perf_counter() - t0


def _decode_distance(claim: Claim, decoded) -> float:
    """Mean absolute difference (0-255) between the committed MP4's frames and the validator's decode
    of the opened final latent (`_validator_decode`), put through the same encoder (encoding is a
    pure function of the frames: an honest claim on the validator's hardware gives exactly 0)."""
    import numpy as np

    from models.video import encode_mp4
    from sim.video_io import CorruptVideo, VideoHashMismatch, decode_mp4, read_committed_video

    try:
        theirs = read_committed_video(claim.video_path, claim.sha256)
    except (VideoHashMismatch, CorruptVideo, FileNotFoundError):
        return INF
    if decoded is None:  # pragma: no cover - the file changed between the two parts
        return INF
    ours = decode_mp4(encode_mp4(decoded, claim.request.fps))
    if ours.shape != theirs.shape:
        return INF
    return float(np.abs(ours.astype(np.int16) - theirs.astype(np.int16)).mean())


POLICIES: dict[str, type[ValidationPolicy]] = {
    p.name: p for p in (FullReplay, CheckpointReplay, FingerprintReplay, SegmentReplay)
}


def get_policy(name: str) -> ValidationPolicy:
    try:
        return POLICIES[name]()
    except KeyError:
        raise PolicyError(f"unknown policy {name!r}; allowed: {', '.join(POLICIES)}") from None


def check_policies(names: Iterable[str]) -> tuple[str, ...]:
    names = tuple(names)
    for n in names:
        get_policy(n)
    if not names:
        raise PolicyError("policies: at least one policy is needed")
    return names
