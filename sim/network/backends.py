"""Where execution and validation outcomes come from: the two fidelities.

- `SurrogateBackend` reads an experiment run directory (RUN/scores.parquet, RUN/thresholds.json,
  written by sim/experiment.py) and draws each validation score from the scores measured for the
  executor's deviation (honest executors: the benign rows). No model runs; the video hash of a
  surrogate generation is a stand-in (SHA-256 of the inference id and deviation), since there is
  no video.
- `RealBackend` (sim/network/real.py) runs `models.engine.generate` for every generation and the
  validation policies of `sim.policies` for every validation.

Both expose `execute(...)` and `validate(...)` over batches, so the epoch loop is the same.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

SCORE_COLUMNS = ("run_id", "preset", "prompt_id", "split", "deviation", "kind", "policy", "metric", "score",
                 "executor_compute_share", "validator_compute_share", "bytes_kept")


class RunDirError(ValueError):
    """The experiment run directory is missing, incomplete or does not match the request."""


@dataclass
class Execution:
    video_sha256: list[str]
    compute_share: np.ndarray  # executor compute relative to the honest run


class Backend(Protocol):
    threshold: float

    def check_deviation(self, deviation: str) -> None: ...

    def execute(self, inference_ids: Sequence[str], requests: Sequence[dict],
                deviations: Sequence[str | None]) -> Execution: ...

    def validate(self, inference_ids: Sequence[str], deviations: Sequence[str | None], validators: Sequence[str],
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]: ...


class SurrogateBackend:
    """Validation scores drawn from an experiment's measured distributions."""

    reads_requests = False  # execute() needs no request parameters (no model runs)

    def __init__(self, run_dir: str | Path, policy: str = "full", metric: str | None = None,
                 threshold: float | None = None, split: str = "test", benign_eps: "float | str | None" = "run",
                 score_draw: str = "per_inference"):
        root = Path(run_dir).expanduser()
        df, thresholds, scores_path, thr_path = _read_run(root)
        df, metric = _policy_rows(df, root, policy, metric, scores_path)
        key = f"{policy}/{metric}"
        threshold = _threshold_of(key, metric, threshold, thresholds, thr_path)
        if score_draw not in ("per_inference", "per_validation"):
            raise ValueError(f"score_draw must be 'per_inference' or 'per_validation', got {score_draw!r}")
        benign_eps = _resolve_benign_eps(root, benign_eps)
        if split != "all":
            part = df[df["split"] == split]
            if part.empty:
                raise RunDirError(f"{scores_path}: no rows with split {split!r} for {key}; use split='all'")
            df = part
        benign = _benign_rows(df, benign_eps)
        if benign.empty:
            raise RunDirError(f"{scores_path}: no benign rows for {key} (benign_eps={benign_eps!r}): honest "
                              "executors need them")
        self.run_dir, self.policy, self.metric, self.threshold, self.split = root, policy, metric, threshold, split
        self.benign_eps, self.score_draw = benign_eps, score_draw
        self._salt: int | None = None
        self.presets = sorted(df["preset"].unique())
        self.benign = benign["score"].to_numpy(float)
        self.benign_deviations = sorted(benign["deviation"].unique())
        malign = df[df["kind"] == "malign"]
        self.malign = {d: g["score"].to_numpy(float) for d, g in malign.groupby("deviation")}
        self.executor_share = {d: float(g["executor_compute_share"].mean()) for d, g in malign.groupby("deviation")}
        self.validator_share = float(df["validator_compute_share"].mean())
        self.bytes_kept = float(df["bytes_kept"].mean())
        self.frame = df

    # ---- queries -------------------------------------------------------------------------
    def check_deviation(self, deviation: str) -> None:
        if deviation not in self.malign:
            raise RunDirError(f"deviation {deviation!r} was not measured in {self.run_dir} for "
                              f"{self.policy}/{self.metric}; allowed: {sorted(self.malign)}")

    def scores_for(self, deviation: str | None) -> np.ndarray:
        return self.benign if deviation is None else self.malign[deviation]

    def fail_rate(self, deviation: str | None, threshold: float | None = None) -> float:
        """P(one validation fails): share of measured scores above the threshold."""
        thr = self.threshold if threshold is None else threshold
        return float(np.mean(self.scores_for(deviation) > thr))

    # ---- the fidelity interface ------------------------------------------------------------
    def execute(self, inference_ids, requests, deviations) -> Execution:
        shas = [hashlib.sha256(f"surrogate:{i}:{d or ''}".encode()).hexdigest() for i, d in zip(inference_ids, deviations)]
        share = np.array([1.0 if d is None else self.executor_share[d] for d in deviations], float)
        return Execution(shas, share)

    def validate(self, inference_ids, deviations, validators, rng: np.random.Generator):
        """Scores of the given (inference, validator) pairs.

        `per_inference` (default): an inference gets one measured row (a keyed draw from its
        deviation's rows) and every validator of it sees that score, as deterministic replays of
        one output do in the experiment (one score per prompt and deviation); `per_validation`:
        every validation draws its own row (independent validators)."""
        n = len(inference_ids)
        scores = np.empty(n, float)
        devs = np.array([d or "" for d in deviations], dtype=object)
        if self.score_draw == "per_inference" and self._salt is None:
            self._salt = int(rng.integers(0, 2**62))
        for d in set(devs.tolist()):
            idx = np.nonzero(devs == d)[0]
            pool = self.scores_for(d or None)
            if self.score_draw == "per_inference":
                u = keyed_uniforms(self._salt, [inference_ids[i] for i in idx])
                pick = np.minimum((u * len(pool)).astype(np.int64), len(pool) - 1)
            else:
                pick = rng.integers(0, len(pool), size=len(idx))
            scores[idx] = pool[pick]
        return scores, ~(scores > self.threshold)


def _read_run(root: Path):
    """scores.parquet (checked for its columns) and thresholds.json of an experiment run directory."""
    import pandas as pd

    if not root.is_dir():
        raise RunDirError(f"run_dir {str(root)!r} does not exist (an experiment run directory is needed: "
                          "`t2vsim experiment ... --out DIR`)")
    scores_path, thr_path = root / "scores.parquet", root / "thresholds.json"
    for pth in (scores_path, thr_path):
        if not pth.is_file():
            raise RunDirError(f"run_dir {str(root)!r} has no {pth.name}; is it a finished experiment run?")
    try:
        df = pd.read_parquet(scores_path)
    except Exception as err:  # pyarrow raises several types
        raise RunDirError(f"{scores_path}: not a readable Parquet file ({err})") from None
    missing = [c for c in SCORE_COLUMNS if c not in df.columns]
    if missing:
        raise RunDirError(f"{scores_path}: missing columns {missing}; expected {list(SCORE_COLUMNS)}")
    try:
        thresholds = json.loads(thr_path.read_text())
    except json.JSONDecodeError as err:
        raise RunDirError(f"{thr_path}: not valid JSON ({err})") from None
    return df, thresholds, scores_path, thr_path


def _policy_rows(df, root: Path, policy: str, metric: str | None, scores_path: Path):
    """The rows of `policy` under `metric` (None: the policy's only metric, or the run's primary one)."""
    policies = sorted(df["policy"].unique())
    if policy not in policies:
        raise RunDirError(f"policy {policy!r} is not in {scores_path}; allowed: {policies}")
    df = df[df["policy"] == policy]
    metrics = sorted(df["metric"].unique())
    if metric is None:
        metric = metrics[0] if len(metrics) == 1 else _primary_metric(root, policy)
        if metric not in metrics:
            raise RunDirError(f"policy {policy!r} has metrics {metrics}; choose one with metric=")
    if metric not in metrics:
        raise RunDirError(f"metric {metric!r} is not measured for policy {policy!r}; allowed: {metrics}")
    return df[df["metric"] == metric], metric


def _threshold_of(key: str, metric: str, threshold: float | None, thresholds: dict, thr_path: Path) -> float:
    """The given threshold (checked against the metric's distance of identical outputs), else the
    run's calibrated one for `key`."""
    if threshold is not None:
        from sim.metrics import IDENTITY

        floor = IDENTITY.get(str(metric).split(".")[0], 0.0)
        if not np.isfinite(threshold) or threshold < floor:
            raise RunDirError(f"threshold: must be a finite distance >= {floor:g} for {key} (the distance of "
                              f"identical outputs), got {threshold}")
        return threshold
    if key not in thresholds or "threshold" not in thresholds[key]:
        raise RunDirError(f"{thr_path} has no threshold for {key!r}; keys: {sorted(thresholds)}")
    if thresholds[key]["threshold"] is None:
        usable = sorted(k for k, v in thresholds.items() if isinstance(v, dict) and v.get("threshold") is not None)
        raise RunDirError(f"{thr_path}: the threshold of {key!r} is undetermined ({thresholds[key].get('rule')}); "
                          f"pass threshold= or choose one of {usable}")
    return float(thresholds[key]["threshold"])


def _benign_rows(df, benign_eps):
    """The benign rows, hwnoise ones only at `benign_eps` (None: none; "all": every level)."""
    benign = df[df["kind"] == "benign"]
    if benign_eps != "all" and "hwnoise_eps" in benign.columns:
        hw = benign["deviation"].astype(str).str.startswith("hwnoise:")
        keep = ~hw if benign_eps is None else (~hw | np.isclose(benign["hwnoise_eps"].astype(float),
                                                               float(benign_eps), rtol=1e-9, atol=0.0))
        benign = benign[keep]
    return benign


def keyed_uniforms(salt: int, keys: Sequence[str]) -> np.ndarray:
    """Uniforms in [0, 1) from SHA-256 of "salt:key" (the same key always gives the same value)."""
    prefix = f"{salt}:".encode()
    out = np.fromiter((int.from_bytes(hashlib.sha256(prefix + k.encode()).digest()[:8], "big") for k in keys),
                      dtype=np.uint64, count=len(keys))
    return out.astype(np.float64) / float(2**64)


def _primary_metric(root: Path, policy: str) -> str | None:
    """The policy's primary metric for the run's frame metrics (RUN/params.json), or None."""
    from types import SimpleNamespace

    try:
        from sim.policies import get_policy

        run = json.loads((root / "params.json").read_text())
        return get_policy(policy).primary_metric(SimpleNamespace(metrics=tuple(run.get("metrics") or ())))
    except Exception:  # no params.json, an unknown policy or metric list: the caller names the choices
        return None


def _resolve_benign_eps(root: Path, benign_eps):
    """Which emulated-hardware-noise rows count as honest work: "run" reads the experiment's
    `hwnoise_headline` from RUN/params.json (the class its thresholds were chosen on), "all" keeps
    every hwnoise level, None none, a number that level."""
    if benign_eps == "run":
        pfile = root / "params.json"
        if not pfile.is_file():
            return "all"
        try:
            return json.loads(pfile.read_text()).get("hwnoise_headline", "all")
        except json.JSONDecodeError as err:
            raise RunDirError(f"{pfile}: not valid JSON ({err})") from None
    if benign_eps == "all" or benign_eps is None:
        return benign_eps
    if isinstance(benign_eps, str) and benign_eps.lower() == "none":
        return None
    try:
        return float(benign_eps)
    except (TypeError, ValueError):
        raise ValueError(f"benign_eps must be 'run', 'all', None or a number, got {benign_eps!r}") from None
