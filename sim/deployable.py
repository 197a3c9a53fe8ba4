"""One validator a protocol can deploy, fitted on calibration prompts and judged as a whole.

The per-cheat verdict table of `sim.stats` picks, for each cheat, the policy, metric and threshold
that suit it: an oracle view no validator has. A `ValidatorConfig` is one rule for every claim:
the commit-then-challenge checks of `sim.commitment` (the opened noise equal to the seeded draw;
`challenged` of the committed segments, drawn after the commitment, each replayed and within its
threshold; the decode of the final latent within a threshold of the committed MP4). Its thresholds
are fitted on the calibration prompts only (benign calib FRR <= target, split over the checks); it
is then evaluated on the held-out prompts against every benign and every malign deviation together.

Everything here reads the tidy scores of the `segment` policy (per-segment distances
`METRIC.seg{i}`, `rel_l2.start`, `decode.mad`); no model runs, except that the forged-opening
check reads the executors' stored checkpoints (hashing only).

Rates carry exact Clopper-Pearson bounds over claims (rows of one prompt are correlated, so these
are beside a bootstrap that resamples prompts and refits the thresholds inside each replicate).
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from models import seeds
from sim.stats import benign_mask, choose_threshold, clopper_pearson, zero_effect_deviations

POLICY = "segment"
SEGMENT_METRICS = ("cosine", "rel_l2")
DETECTED_AT = 0.9  # a cheat counts as detected when the rule rejects at least this share of its test claims
# docs/facts.md: a 480p, 81-frame, 40-step video on one H100: 271 s of transformer, 2.07 s of VAE decode
A14B = {"latent_shape": (16, 21, 60, 104), "steps": 40, "transformer_s": 271.0, "vae_s": 2.07}


class DeployError(ValueError):
    pass


@dataclass(frozen=True)
class ValidatorConfig:
    """The deployable rule: reject iff the opened noise differs from the seeded draw, or a challenged
    segment's distance exceeds its threshold, or the decode distance exceeds its threshold."""

    every: int  # steps per committed segment (chain parameter k)
    segments: int  # committed segments n
    challenged: int  # segments opened per validation m
    metric: str  # per-segment distance
    segment_thresholds: tuple[float, ...]  # reject iff distance > threshold (segment i)
    decode_threshold: float  # reject iff mean |pixel difference| > threshold
    noise_threshold: float = 0.0  # the noise is recomputed exactly: any difference rejects
    frr_target: float = 0.01
    fitted_on: str = "calib"
    secret_seed: int = 0  # the validator's secret randomness for challenges

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["segment_thresholds"] = [float(t) for t in self.segment_thresholds]
        return d

    def draw(self, key: str) -> list[int]:
        """The challenged segments of one claim (`key` identifies the inference; in the protocol the
        validator's secret beacon is hashed with the on-chain root)."""
        from sim.commitment import challenge, validator_beacon

        root = seeds.standin_root(key)  # stands in for the claim's root
        return challenge(root, validator_beacon(self.secret_seed, key), self.segments, self.challenged)


@dataclass
class Claims:
    """The claims of one run as arrays: one row per (prompt, deviation) of the segment policy."""

    prompt: np.ndarray
    deviation: np.ndarray
    kind: np.ndarray
    calib: np.ndarray
    eps: np.ndarray
    seg: dict[str, np.ndarray]  # metric -> (claims, segments)
    noise: np.ndarray
    decode: np.ndarray
    executor_share: np.ndarray
    bytes_kept: np.ndarray
    size: np.ndarray

    def take(self, mask: np.ndarray) -> "Claims":
        return Claims(**{k: ({m: v[mask] for m, v in val.items()} if isinstance(val, dict) else val[mask])
                         for k, val in self.__dict__.items()})

    def __len__(self) -> int:
        return int(self.prompt.size)


def claims_of(df: pd.DataFrame) -> Claims:
    """Wide per-claim arrays from the tidy scores (segment policy only)."""
    d = df[df["policy"] == POLICY]
    if d.empty:
        raise DeployError(f"the run has no {POLICY!r} policy rows: the deployable rule needs the commit-then-challenge scores")
    wide = d.pivot_table(index=["prompt_id", "deviation"], columns="metric", values="score", aggfunc="first")
    meta = d.drop_duplicates(["prompt_id", "deviation"]).set_index(["prompt_id", "deviation"]).loc[wide.index]
    n = max(int(c[len("cosine.seg"):]) for c in wide.columns if c.startswith("cosine.seg")) + 1
    seg = {m: np.column_stack([wide[f"{m}.seg{i}"].to_numpy(float) for i in range(n)]) for m in SEGMENT_METRICS}
    num = lambda c, default=np.nan: (pd.to_numeric(meta[c], errors="coerce").to_numpy(float)  # noqa: E731
                                     if c in meta else np.full(len(meta), default))
    return Claims(prompt=wide.index.get_level_values(0).to_numpy(), deviation=wide.index.get_level_values(1).astype(str).to_numpy(),
                  kind=meta["kind"].to_numpy(), calib=(meta["split"] == "calib").to_numpy(), eps=num("hwnoise_eps", 0.0),
                  seg=seg, noise=wide["rel_l2.start"].to_numpy(float), decode=wide["decode.mad"].to_numpy(float),
                  executor_share=num("executor_compute_share"), bytes_kept=num("bytes_kept"), size=num("deviation_size"))


def classes(df: pd.DataFrame, c: Claims, benign_eps) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(benign mask, malign mask, zero-effect deviations) over claims: benign = benign deviations with
    some effect plus hwnoise at `benign_eps`; zero-effect ones are in neither class."""
    zero = zero_effect_deviations(df)
    hw = np.char.startswith(c.deviation.astype(str), "hwnoise:")
    benign = (c.kind == "benign") & ~np.isin(c.deviation, zero)
    if benign_eps is None:
        benign &= ~hw
    elif benign_eps != "all":
        benign &= ~hw | np.isclose(c.eps, float(benign_eps), rtol=1e-9, atol=0)
    return benign, c.kind == "malign", zero


# ---------------------------------------------------------------------------------------------
# Fitting and applying


def fit(c: Claims, benign: np.ndarray, malign: np.ndarray, *, every: int, challenged: int,
        frr_target: float = 0.01, secret_seed: int = 0, metrics: Sequence[str] = SEGMENT_METRICS,
        use: np.ndarray | None = None) -> ValidatorConfig:
    """Thresholds on the claims in `use` (default: the calib split): each segment's and the decode's
    threshold at benign FRR <= target / (checks) against the malign claims (the union of checks then
    stays within the target), the metric with the least calib FAR of the whole rule."""
    use = c.calib if use is None else use
    b, m = benign & use, malign & use
    if not b.any() or not m.any():
        raise DeployError("the calibration split needs benign and malign claims")
    n = next(iter(c.seg.values())).shape[1]
    per = frr_target / (n + 1)

    def thr(bs, ms):
        op = choose_threshold(bs, ms, rule="frr", target=per)
        return float(op.threshold) if math.isfinite(op.threshold) else float(np.max(bs[np.isfinite(bs)], initial=0.0))

    dec = thr(c.decode[b], c.decode[m])
    best = None
    for metric in metrics:
        ts = tuple(thr(c.seg[metric][b, i], c.seg[metric][m, i]) for i in range(n))
        cfg = ValidatorConfig(every, n, min(challenged, n), metric, ts, dec, frr_target=frr_target, secret_seed=secret_seed)
        far = 1.0 - expected_reject(cfg, c.take(m)).mean()
        if best is None or far < best[0] - 1e-12:
            best = (far, cfg)
    return best[1]


def segment_flags(cfg: ValidatorConfig, c: Claims) -> np.ndarray:
    """(claims, segments): the segment's replay fails (NaN and inf fail)."""
    s = c.seg[cfg.metric]
    return ~(s <= np.asarray(cfg.segment_thresholds)[None, :])


def always_flags(cfg: ValidatorConfig, c: Claims) -> np.ndarray:
    """Checks made on every validation: the noise and the decode."""
    return ~(c.noise <= cfg.noise_threshold) | ~(c.decode <= cfg.decode_threshold)


def keys_of(c: Claims) -> list[str]:
    return [f"{p}/{d}" for p, d in zip(c.prompt, c.deviation)]


def reject(cfg: ValidatorConfig, c: Claims, draws: Sequence[Sequence[int]] | None = None) -> np.ndarray:
    """The verdict of one validation per claim (its challenge drawn with the validator's secret seed)."""
    seg = segment_flags(cfg, c)
    draws = draws if draws is not None else [cfg.draw(k) for k in keys_of(c)]
    hit = np.array([bool(seg[i, list(d)].any()) if len(d) else False for i, d in enumerate(draws)], bool)
    return always_flags(cfg, c) | hit


def expected_reject(cfg: ValidatorConfig, c: Claims, m: int | None = None) -> np.ndarray:
    """P(reject) per claim over the uniform draw of `m` (default: cfg.challenged) segments, exact:
    1 - C(n - b, m) / C(n, m) for b failing segments (hypergeometric), 1 where an always-made check fails."""
    m = cfg.challenged if m is None else m
    n = cfg.segments
    b = segment_flags(cfg, c).sum(axis=1)
    p_miss = np.array([math.comb(n - int(k), m) / math.comb(n, m) for k in b])
    return np.where(always_flags(cfg, c), 1.0, 1.0 - p_miss)


def rate_row(flags: np.ndarray, level: float = 0.95) -> dict[str, Any]:
    k, n = int(np.sum(flags)), int(np.size(flags))
    lo, hi = clopper_pearson(k, n, level)
    return {"k": k, "n": n, "rate": k / n if n else math.nan, "cp_lo": lo, "cp_hi": hi}


# ---------------------------------------------------------------------------------------------
# Cost


def decode_share(run_dir: Path | None) -> float:
    """VAE seconds over generation seconds of the canonical generations (median), from their records."""
    if run_dir is None:
        return math.nan
    shares = []
    for rec in sorted(Path(run_dir).glob("gens/*/canonical/record.json")):
        try:
            sec = json.loads(rec.read_text())["cost"]["seconds"]
        except (OSError, ValueError, KeyError):
            continue
        total = sum(float(v) for v in sec.values())
        if total > 0:
            shares.append(float(sec.get("vae", 0.0)) / total)
    return float(np.median(shares)) if shares else math.nan


def a14b_bytes(every: int, challenged: int, steps: int = A14B["steps"], solver_latents: int = 3) -> dict[str, float]:
    """Bytes at A14B scale (latent 16x21x60x104, float32): what the executor keeps (every committed
    checkpoint: the noise, then each point's latent and UniPC solver state, `solver_latents` latents:
    two model outputs of order 2 and the last sample) and what one validation opens (per challenged
    segment its start with solver state and its end latent, and the final latent; the noise is
    recomputed by the validator, only its proof is sent), plus the Merkle paths."""
    from sim.commitment import CommitSchedule, HASH_BYTES, STEP_BYTES

    sch = CommitSchedule(steps, every)
    latent = 4 * math.prod(A14B["latent_shape"])
    kept = latent + (len(sch.points) - 1) * latent * (1 + solver_latents)
    depth = max(1, math.ceil(math.log2(len(sch.points))))
    m = min(challenged, sch.segments)
    opened = m * latent * (1 + solver_latents) + m * latent + latent + (2 * m + 2) * (depth * HASH_BYTES + STEP_BYTES)
    share = m * every / steps + A14B["vae_s"] / (A14B["transformer_s"] + A14B["vae_s"])
    return {"every": every, "segments": sch.segments, "latent_bytes": latent, "kept_bytes": kept,
            "opened_bytes": opened, "validator_share": share}


# ---------------------------------------------------------------------------------------------
# The whole evaluation


@dataclass
class Deployment:
    config: ValidatorConfig
    table: dict[str, Any]  # the whole rule on test: FRR, FAR, compute, bytes
    per_deviation: pd.DataFrame  # the one rule's rejection rate per deviation (test)
    vs_segments: pd.DataFrame  # detection per validation against m, measured and derived
    stability: pd.DataFrame  # FRR/FAR over split seeds and hwnoise levels
    severity: pd.DataFrame  # per family and severity: detection and saving
    adaptive: dict[str, Any] = field(default_factory=dict)
    zero_effect: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        def recs(t):
            return json.loads(t.to_json(orient="records")) if len(t) else []
        return {"config": self.config.to_dict(), "table": self.table, "per_deviation": recs(self.per_deviation),
                "vs_segments": recs(self.vs_segments), "stability": recs(self.stability),
                "severity": recs(self.severity), "adaptive": self.adaptive, "zero_effect": self.zero_effect}


def resplit(prompts: np.ndarray, seed: int, calib_fraction: float = 0.5) -> np.ndarray:
    """A seeded calib/test split of prompt ids (seed 0 is not the run's own split: a fresh permutation)."""
    import random

    ids = sorted(set(int(p) for p in prompts))
    order = ids[:]
    random.Random(seeds.resplit_key(seed)).shuffle(order)
    n_cal = max(1, min(len(ids) - 1, round(len(ids) * calib_fraction)))
    cal = set(order[:n_cal])
    return np.array([int(p) in cal for p in prompts], bool)


def cheated_segments(spec: str, every: int, segments: int, high_steps: int | None = None) -> int:
    """By design, how many committed segments a deviation cheats on: `reuse:STEPS` only those holding
    the listed steps, `mp4-from`/`seed` none (caught, if at all, by the decode or the noise check), a
    weight cheat on one expert (`int8-wo:low`) those holding that expert's steps (the first
    `high_steps` steps are the high-noise expert's; unknown: all), deviations joined with `+` the
    union of their malign parts', every other one all of them."""
    from models.deviations import COMBINE, DEVIATIONS

    parts = COMBINE.split(spec)
    if len(parts) > 1:  # the malign parts (a name not registered here counts as malign)
        parts = [p for p in parts if getattr(DEVIATIONS.get(p.partition(":")[0]), "kind", "malign") == "malign"]
    return len(set().union(*(_cheated_set(p, every, segments, high_steps) for p in parts)))


def _cheated_set(spec: str, every: int, segments: int, high_steps: int | None) -> set[int]:
    from models.deviations import DEVIATIONS, WeightCheat

    head, _, arg = spec.partition(":")
    if head == "reuse":
        return {(int(s) // every) for s in arg.split(",") if s.strip()} & set(range(segments))
    if head in ("mp4-from", "seed"):
        return set()
    cls = DEVIATIONS.get(head)
    if isinstance(cls, type) and issubclass(cls, WeightCheat) and arg in ("high", "low") and high_steps is not None:
        steps = range(high_steps) if arg == "high" else range(high_steps, every * segments)
        return {s // every for s in steps} & set(range(segments))
    return set(range(segments))


FAMILIES = {"steps": "steps N", "guidance-scale": "guidance x F", "guidance": "guidance G", "quant": "weights, bits",
            "cache": "first-block cache threshold", "lowres": "resolution WxH", "one-expert-last": "one expert, last K steps",
            "reuse": "reused steps"}


def evaluate(df: pd.DataFrame, *, every: int, challenged: int = 1, benign_eps=None, frr_target: float = 0.01,
             secret_seed: int = 0, n_boot: int = 200, split_seeds: Sequence[int] = range(5),
             hwnoise_levels: Sequence[float] = (), run_dir: Path | None = None, level: float = 0.95,
             calib_fraction: float = 0.5, high_steps: int | None = None) -> Deployment:
    c = claims_of(df)
    benign, malign, zero = classes(df, c, benign_eps)
    cfg = fit(c, benign, malign, every=every, challenged=challenged, frr_target=frr_target, secret_seed=secret_seed)
    test = ~c.calib
    verdict = reject(cfg, c)
    frr, far = rate_row(verdict[benign & test], level), rate_row(~verdict[malign & test], level)
    e_far = 1.0 - expected_reject(cfg, c.take(malign & test)).mean()
    boot = _bootstrap(c, benign, malign, cfg, n_boot, secret_seed)
    dshare = decode_share(run_dir)
    seg_share = cfg.challenged * every / max(1, every * cfg.segments)
    kept = float(np.nanmedian(c.bytes_kept[benign])) if benign.any() else math.nan
    from sim.commitment import COMMITMENT_CHAIN_BYTES

    table = {"frr": frr, "far": far, "expected_far_over_challenges": float(e_far),
             "frr_boot": boot["frr"], "far_boot": boot["far"],
             "n_test_prompts": int(np.unique(c.prompt[test]).size),
             "validator_segment_share": seg_share, "validator_decode_share": dshare,
             "validator_share": seg_share + (dshare if math.isfinite(dshare) else 0.0),
             "chain_bytes": COMMITMENT_CHAIN_BYTES, "chain_bytes_with_video_hash": COMMITMENT_CHAIN_BYTES + 32,
             "kept_bytes": kept, "a14b": a14b_bytes(max(1, round(A14B["steps"] / cfg.segments)), cfg.challenged),
             "benign": sorted(set(c.deviation[benign])), "malign": sorted(set(c.deviation[malign]))}
    per_dev = _per_deviation(c, cfg, verdict, test, benign, malign, level)
    vs_m = _vs_segments(c, cfg, test & malign, every, high_steps)
    stab = _stability(df, c, cfg, split_seeds, hwnoise_levels, benign_eps, calib_fraction, level)
    sev = _severity(per_dev)
    adaptive = _adaptive(c, cfg, test & malign, vs_m, per_dev, run_dir)
    return Deployment(cfg, table, per_dev, vs_m, stab, sev, adaptive, zero)


def _bootstrap(c: Claims, benign, malign, cfg: ValidatorConfig, n_boot: int, seed: int) -> dict[str, tuple[float, float]]:
    """Percentile intervals of test FRR and FAR resampling prompts, the thresholds refitted on each
    replicate's calibration prompts (so the interval includes the fitting's own variability)."""
    if n_boot <= 0:
        return {"frr": (math.nan, math.nan), "far": (math.nan, math.nan)}
    rng = np.random.default_rng(seeds.bootstrap_seed_sequence(seed))
    draws = [cfg.draw(k) for k in keys_of(c)]
    cal_p, test_p = np.unique(c.prompt[c.calib]), np.unique(c.prompt[~c.calib])
    rows_of = {p: np.flatnonzero(c.prompt == p) for p in np.unique(c.prompt)}
    out = {"frr": [], "far": []}
    for _ in range(n_boot):
        cp, tp = rng.choice(cal_p, cal_p.size), rng.choice(test_p, test_p.size)
        ci = np.concatenate([rows_of[p] for p in cp])
        ti = np.concatenate([rows_of[p] for p in tp])
        sub = c.take(np.r_[ci, ti])
        use = np.r_[np.ones(ci.size, bool), np.zeros(ti.size, bool)]
        b, m = benign[np.r_[ci, ti]], malign[np.r_[ci, ti]]
        try:
            f = fit(sub, b, m, every=cfg.every, challenged=cfg.challenged, frr_target=cfg.frr_target,
                    secret_seed=cfg.secret_seed, metrics=(cfg.metric,), use=use)
        except DeployError:
            continue
        v = reject(f, sub, [draws[i] for i in np.r_[ci, ti]])
        bt, mt = b & ~use, m & ~use
        if bt.any():
            out["frr"].append(v[bt].mean())
        if mt.any():
            out["far"].append(1 - v[mt].mean())
    return {k: tuple(float(x) for x in np.quantile(v, [0.025, 0.975])) if v else (math.nan, math.nan) for k, v in out.items()}


def _per_deviation(c, cfg, verdict, test, benign, malign, level) -> pd.DataFrame:
    rows = []
    for dev in sorted(set(c.deviation)):
        sel = (c.deviation == dev) & test
        if not sel.any():
            continue
        cls = "benign" if benign[sel].any() else "malign" if malign[sel].any() else "zero-effect or other EPS"
        r = rate_row(verdict[sel], level)
        rows.append({"deviation": dev, "class": cls, "rejected": r["k"], "n": r["n"], "reject_rate": r["rate"],
                     "cp_lo": r["cp_lo"], "cp_hi": r["cp_hi"],
                     "expected_reject": float(expected_reject(cfg, c.take(sel)).mean()),
                     "reject_all_segments": float(expected_reject(cfg, c.take(sel), cfg.segments).mean()),
                     "executor_share": float(np.nanmedian(c.executor_share[sel])),
                     "saving": float(1 - np.nanmedian(c.executor_share[sel])),
                     "size": float(np.nanmedian(c.size[sel]))})
    return pd.DataFrame(rows)


def _vs_segments(c: Claims, cfg: ValidatorConfig, sel: np.ndarray, every: int,
                 high_steps: int | None = None) -> pd.DataFrame:
    """Per malign deviation and m = 1..n: detection per validation measured (Monte Carlo over 200
    challenge draws per claim, each from a fresh validator seed, on the claims' actual per-segment
    outcomes) and derived (hypergeometric, from the deviation's cheated-segment count by design and its
    mean per-segment detection, segments taken as independent)."""
    from sim.commitment import detection_probability

    rows = []
    n = cfg.segments
    rng = np.random.default_rng(seeds.detection_seed_sequence(cfg.secret_seed))
    for dev in sorted(set(c.deviation[sel])):
        d = c.take(sel & (c.deviation == dev))
        seg = segment_flags(cfg, d)
        always = always_flags(cfg, d)
        bad = cheated_segments(dev, every, n, high_steps)
        # mean detection of the segments the cheat touches (the `bad` most often failing ones)
        per_seg = float(np.sort(seg.mean(axis=0))[::-1][:bad].mean()) if bad else 0.0
        p_always = float(always.mean())
        for m in range(1, n + 1):
            hits = []
            for i in range(len(d)):
                picks = np.argsort(rng.random((200, n)), axis=1)[:, :m]
                hits.append(always[i] | seg[i][picks].any(axis=1))
            measured = float(np.mean(hits))
            derived = 1 - (1 - p_always) * (1 - detection_probability(bad, n, m, per_seg))
            rows.append({"deviation": dev, "m": m, "measured": measured, "derived": derived,
                         "cheated_segments": bad, "per_segment": per_seg, "n_claims": len(d),
                         "validator_segment_share": m / n})
    return pd.DataFrame(rows)


def _stability(df, c, cfg, seeds, eps_levels, benign_eps, calib_fraction, level) -> pd.DataFrame:
    """The whole rule refitted on other calib/test splits (seeded) and with each hwnoise level as the
    benign hardware noise: test FRR and FAR with exact bounds, and the cheats it misses."""
    rows = []
    levels = [benign_eps] + [e for e in eps_levels if e != benign_eps]
    for eps in levels:
        b, m, _ = classes(df, c, eps)
        for s in seeds:
            cal = resplit(c.prompt, s, calib_fraction)
            c2 = Claims(**{**c.__dict__, "calib": cal})
            try:
                f = fit(c2, b, m, every=cfg.every, challenged=cfg.challenged, frr_target=cfg.frr_target,
                        secret_seed=cfg.secret_seed)
            except DeployError:
                continue
            v = reject(f, c2)
            t = ~cal
            fr, fa = rate_row(v[b & t], level), rate_row(~v[m & t], level)
            missed = sorted(dv for dv in set(c.deviation[m & t]) if v[m & t & (c.deviation == dv)].mean() < DETECTED_AT)
            rows.append({"hwnoise_eps": "none" if eps is None else eps, "split_seed": s, "metric": f.metric,
                         "frr_k": fr["k"], "frr_n": fr["n"], "frr": fr["rate"], "frr_cp_hi": fr["cp_hi"],
                         "far_k": fa["k"], "far_n": fa["n"], "far": fa["rate"], "far_cp_lo": fa["cp_lo"], "far_cp_hi": fa["cp_hi"],
                         "missed": ", ".join(missed)})
    return pd.DataFrame(rows)


def _family(dev: str) -> str | None:
    head = dev.partition(":")[0]
    return head if head in FAMILIES else None


def _severity(per_dev: pd.DataFrame) -> pd.DataFrame:
    """Per family with at least one severity in the run: each severity's detection by the one rule,
    ordered mildest first (smallest final-latent change), and which is the mildest detected."""
    if per_dev.empty:
        return pd.DataFrame()
    m = per_dev[per_dev["class"] == "malign"].copy()
    m["family"] = m["deviation"].map(_family)
    m = m.dropna(subset=["family"]).sort_values(["family", "size"])
    if m.empty:
        return pd.DataFrame()
    m["detected"] = m["reject_rate"] >= DETECTED_AT
    first = m[m["detected"]].groupby("family").head(1)
    m["mildest_detected"] = m.index.isin(first.index)
    return m[["family", "deviation", "size", "saving", "rejected", "n", "reject_rate", "cp_lo", "cp_hi",
              "reject_all_segments", "detected", "mildest_detected"]].reset_index(drop=True)


def _adaptive(c: Claims, cfg: ValidatorConfig, sel, vs_m: pd.DataFrame, per_dev: pd.DataFrame, run_dir) -> dict[str, Any]:
    """Cheats that know the rule: the hardest for the rule (least detected), cheating on a fraction r
    of requests (derived: detection per validation r x P), forged openings (measured on the stored
    checkpoints), and the largest compute saving the rule does not detect."""
    out: dict[str, Any] = {}
    mal = per_dev[per_dev["class"] == "malign"]
    if len(mal):
        und = mal[mal["reject_rate"] < DETECTED_AT]
        row = und.sort_values("saving", ascending=False).head(1)
        out["largest_undetected_saving"] = (
            {"deviation": row["deviation"].iloc[0], "saving": float(row["saving"].iloc[0]),
             "reject_rate": float(row["reject_rate"].iloc[0])} if len(row) else None)
        hard = mal.sort_values(["reject_rate", "saving"], ascending=[True, False]).iloc[0]
        out["fraction_of_requests"] = [
            {"deviation": str(hard["deviation"]), "cheat_rate": r, "m": m,
             "p_detect_per_validation": r * float(vs_m[(vs_m.deviation == hard["deviation"]) & (vs_m.m == m)]["measured"].iloc[0])}
            for r in (0.1, 0.5, 1.0) for m in sorted(set(vs_m["m"]))] if len(vs_m) else []
    if run_dir is not None:
        out["forged_openings"] = forged_openings(Path(run_dir), c.take(sel), cfg)
    return out


def forged_openings(run_dir: Path, c: Claims, cfg: ValidatorConfig, limit: int = 40) -> dict[str, Any]:
    """Measured: each malign claim's executor, challenged on a segment, opens instead the canonical
    (honest) latent at its end, or its own latent with another solver state; every such opening must
    fail its Merkle proof. Reads the stored checkpoints (no model runs)."""
    from models.engine import ArtifactError, load_checkpoints
    from sim.commitment import CommitSchedule, Executor, Opening, verify_openings
    from sim.layout import slug

    tried = rejected = 0
    reasons: set[str] = set()
    for p, dev in itertools.islice(zip(c.prompt, c.deviation), limit):
        base = run_dir / "gens" / f"p{int(p):04d}"
        try:
            mine, honest = load_checkpoints(base / slug(dev) / "latents.safetensors"), load_checkpoints(base / "canonical" / "latents.safetensors")
        except ArtifactError:
            continue
        steps = max(ck.step for ck in honest.values()) + 1
        sch = CommitSchedule(steps, cfg.every)
        try:
            ex = Executor(mine, sch)
        except Exception:
            continue  # a claim without the committed points is rejected before any opening
        i = cfg.draw(f"{p}/{dev}")[0] if cfg.challenged else 0
        end = ex.open([i + 1])[0]
        name = sch.names[i + 1]
        import torch

        forged = []
        if not torch.equal(honest[name].latents, end.latents):  # an opening other than the committed one
            forged.append(Opening(end.index, end.step, honest[name].latents, end.solver, end.proof))
        if honest[name].solver is not None and end.solver is not None and not torch.equal(
                honest[name].solver["last_sample"], end.solver["last_sample"]):
            forged.append(Opening(end.index, end.step, end.latents, honest[name].solver, end.proof))
        for o in forged:
            tried += 1
            why = verify_openings(ex.commitment, sch, [o], [o.index])
            if why:
                rejected += 1
                reasons.add(why.split(":")[-1].strip())
    lo, hi = clopper_pearson(rejected, tried) if tried else (math.nan, math.nan)
    return {"tried": tried, "rejected": rejected, "cp_lo": lo, "cp_hi": hi, "reasons": sorted(reasons)}
