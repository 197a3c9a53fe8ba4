"""Evidence at scale: measure how far honest runtime changes and cheats move a generation on a GPU,
and which validation rule a protocol could adopt, from those measurements.

Two halves, joined by JSON lines (one per generation) so the GPU side needs no analysis packages
and the analysis reruns on any machine:

- `measure(plan, ...)` runs a plan (blocks of preset x size x prompts x configs) with the engine and
  yields one record per generation: latent rel-L2 against the canonical generation at the expert
  switch, the end and every 4th step; the committed MP4's PSNR / 1-SSIM against the canonical MP4;
  and the local replay of challenged steps (the validator resumes from the executor's state after
  step K, runs step K+1 on its own runtime and compares with the executor's latent after K+1),
  optionally with the validator's own benign estimate at that point (the same step with another
  attention kernel) and a known-cheat direction test (cosine of the executor's residual with the
  residual of the validator's own run of that cheat).
- `load_rows`, `size_table`, `evaluate_rules`, `markdown` turn records into the tables of
  `benchmarks/results/at_scale/` with exact (Clopper-Pearson) 95% bounds on every rate.

No Prefect here; `benchmarks/gpu_at_scale.py` and `benchmarks/at_scale_report.py` are the commands.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import pandas as pd

from sim.stats import clopper_pearson

# Runtime changes a protocol can pin (rule "pinned": batch of one, TF32 off, eager execution) and
# those it cannot (attention kernels: the card and library choose them).
PINNABLE = ("batch", "tf32", "compile", "regional-compile")
# what a rule that lets executors compile pins
PINNABLE_EXCEPT_COMPILE = ("batch", "tf32")
# the columns of `load_rows` holding the latent distance at each captured checkpoint (the profile)
PROFILE_PREFIX = "lat:"


@dataclass(frozen=True)
class Block:
    """One block of a plan: a preset at one size, some prompts, the configs to run on each."""

    preset: str
    width: int
    height: int
    frames: int
    steps: int
    prompts: tuple[int, ...]
    configs: tuple[str, ...]
    challenge: tuple[int, ...] = ()
    selfnorm: bool = False
    cheat_direction: str | None = None
    benign_attention: str = "_native_flash"
    offload: str = "none"
    seed: int = 0
    min_left_s: float = 60.0
    validator_compile: bool | str = False  # the validator's own Runtime.compile (False: eager)
    # cheats designed against the rules (e.g. a weight cheat on one expert only, `int8-wo:low`):
    # never used to fit a rule, and reported apart from the cheats the rules were built against
    adapted: tuple[str, ...] = ()
    prompt_file: str | None = None  # prompts from this file (one a line; ids index it), else the seeded VBench sample

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Block":
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"plan block: unknown keys {unknown}; allowed: {sorted(known)}")
        d = dict(d)
        for key in ("prompts", "configs", "challenge", "adapted"):
            d[key] = tuple(d.get(key, ()))
        if not d["configs"] or d["configs"][0] != "canonical":
            raise ValueError("plan block: configs must start with 'canonical' (the validator's own generation)")
        if d.get("validator_compile", False) not in (False, True, "regional"):
            raise ValueError(f"plan block: validator_compile must be false, true or 'regional', "
                             f"got {d['validator_compile']!r}")
        if set(d["adapted"]) - set(d["configs"][1:]):
            raise ValueError(f"plan block: adapted must name configs of the block, got "
                             f"{sorted(set(d['adapted']) - set(d['configs'][1:]))}")
        if any(k < 0 or k + 1 >= d["steps"] for k in d["challenge"]):
            raise ValueError(f"plan block: challenged steps must be in 0..{d['steps'] - 2}, got {list(d['challenge'])}")
        return cls(**d)


def load_plan(path: str | Path) -> list[Block]:
    return [Block.from_dict(b) for b in json.loads(Path(path).read_text())]


def _step_replay(generate, req, runtime, dev, start, k: int):
    """The latent after step k+1, computed from `start` (the state after step k)."""
    return generate(req, runtime, dev, capture=[f"step:{k + 1}"], resume_from=start,
                    stop_after=k + 1, decode=False).checkpoints[f"step:{k + 1}"].latents


def _cosine(a, b) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    den = float(a.norm() * b.norm())
    return float(a @ b) / den if den > 0 else 0.0


def record_key(rec: dict[str, Any]) -> tuple:
    """What identifies a generation across runs (for resuming a plan)."""
    return (rec["preset"], rec["width"], rec["height"], rec["frames"], rec["steps"], rec["prompt_id"], rec["config"],
            validator_of(rec))


def validator_of(rec: dict[str, Any]) -> str:
    """How the record's validator ran: 'eager' (every record before the field existed) or its compile."""
    v = rec.get("validator_compile", False)
    return "eager" if v is False else ("whole" if v is True else str(v))


def done_keys(paths: Iterable[str | Path]) -> set[tuple]:
    """The generations already measured in these JSON-lines files (missing files count as empty)."""
    keys: set[tuple] = set()
    for path in paths:
        path = Path(path)
        if path.exists():
            keys |= {record_key(json.loads(line)) for line in path.read_text().splitlines() if line.strip()}
    return keys


def measure(blocks: Iterable[Block], *, device: str = "cuda", attention: str = "_native_cudnn",
            deadline_s: float = math.inf, log: Callable[[str], None] = print,
            done: set[tuple] = frozenset()) -> Iterator[dict[str, Any]]:
    """Run the plan; yield one record per generation (see the module docstring).

    Generations whose `record_key` is in `done` are not yielded again; a prompt with all its configs
    done is skipped, otherwise its canonical generation is rerun as the reference. A prompt is
    started only when the time the previous prompt took (or `min_left_s` for the first) still fits
    before the deadline, so a run cut short leaves whole prompts; skips are logged."""
    import torch

    from models.deviations import parse_deviation
    from models.request import GenerationRequest, Runtime
    from models.video import decode_mp4

    t_start = time.perf_counter()
    cuda = device.startswith("cuda")
    card = torch.cuda.get_device_name(0) if cuda else "cpu"

    sync = torch.cuda.synchronize if cuda else (lambda: None)

    for block in blocks:
        runtime = Runtime(device=device, attention_backend=attention, offload=block.offload,
                          compile=block.validator_compile)
        other_kernel = runtime.model_copy(update={"attention_backend": block.benign_attention})
        prompts = _block_prompts(block)
        every = {*range(3, block.steps, 4), *block.challenge, *(k + 1 for k in block.challenge)}
        cheat = parse_deviation(block.cheat_direction) if block.selfnorm and block.cheat_direction else None
        per_prompt = block.min_left_s
        vtag = validator_of({"validator_compile": block.validator_compile})
        for pi in block.prompts:
            key = (block.preset, block.width, block.height, block.frames, block.steps, pi)
            pending = [c for c in block.configs if (*key, c, vtag) not in done]
            if not pending:
                continue
            if deadline_s - (time.perf_counter() - t_start) < per_prompt:
                log(f"deadline: skipping {block.preset} p{pi} ({len(pending)} configs, ~{per_prompt:.0f} s)")
                continue
            t_prompt = time.perf_counter()
            req = GenerationRequest(model=block.preset, prompt=prompts[pi], width=block.width, height=block.height,
                                    frames=block.frames, steps=block.steps, seed=pi, truncate_prompt=True)
            canon = None
            for config in block.configs:
                if config != "canonical" and config not in pending:
                    continue
                dev = None if config == "canonical" else parse_deviation(config)
                g, rec = _generation(block, req, runtime, dev, config, every, card, sync)
                frames = decode_mp4(g.mp4)
                if canon is None:
                    canon = (g, frames)
                rec.update(_distances(canon, g, frames))
                rec["local"] = _local_replays(block, g, req, runtime, other_kernel, cheat, sync)
                if config in pending:
                    yield rec
                del g
            canon = None
            per_prompt = time.perf_counter() - t_prompt
            if cuda:
                torch.cuda.empty_cache()


def _block_prompts(block: Block) -> list[str]:
    """The prompts a block's ids index: its prompt file, or the seeded sample of the VBench set."""
    from sim.experiment import ExperimentParams, load_prompts

    prompts = load_prompts(ExperimentParams(prompts=block.prompt_file or max(2, max(block.prompts) + 1),
                                            seed=block.seed))
    if max(block.prompts) >= len(prompts):
        raise ValueError(f"plan block: prompt id {max(block.prompts)} but {block.prompt_file} holds {len(prompts)}")
    return prompts


def _generation(block: Block, req, runtime, dev, config: str, every: set[int], card: str,
                sync: Callable[[], None]):
    """One generation of a block's prompt under `config`, and its record: time, peak memory, MP4."""
    import torch

    from models.engine import generate

    cuda = runtime.device.startswith("cuda")
    last = (dev.apply_request(req).steps if dev else block.steps) - 1
    capture = ["switch", "final", *(f"step:{k}" for k in sorted(every) if k < last)]
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    sync()
    t0 = time.perf_counter()
    g = generate(req, runtime, dev, capture=capture, run_seed=req.seed)
    sync()
    rec: dict[str, Any] = {
        "preset": block.preset, "width": req.width, "height": req.height, "frames": req.frames,
        "steps": block.steps, "prompt_id": req.seed, "config": config,
        "kind": "canonical" if dev is None else dev.kind, "gen_s": round(time.perf_counter() - t0, 2),
        "peak_gb": round(torch.cuda.max_memory_allocated() / 1e9, 1) if cuda else None,
        "mp4_bytes": len(g.mp4), "sha256": g.sha256, "compute_share": g.cost.compute_share, "card": card,
    }
    if runtime.compile:
        rec["validator_compile"] = runtime.compile
    if config in block.adapted:
        rec["adapted"] = True
    return g, rec


def _distances(canon, g, frames) -> dict[str, Any]:
    """Latent rel-L2 at every shared checkpoint, and the video's PSNR and 1-SSIM, against the
    canonical generation `canon` (its Generation and frames)."""
    from sim.metrics import per_frame_distances, rel_l2

    cg, cframes = canon
    rec: dict[str, Any] = {"latent_rel_l2": {
        name: rel_l2(cg.checkpoints[name].latents.numpy(), ck.latents.numpy())
        for name, ck in g.checkpoints.items()
        if name in cg.checkpoints and cg.checkpoints[name].latents.shape == ck.latents.shape
    }}
    if frames.shape == cframes.shape:
        d = per_frame_distances(cframes, frames, ("psnr", "ssim"), threads=8)
        rec["video_psnr_db"] = float(min(-d["psnr"].mean(), 100.0))
        rec["video_1mssim"] = float(d["ssim"].mean())
    return rec


def _local_replays(block: Block, g, req, runtime, other_kernel, cheat, sync: Callable[[], None]) -> list[dict]:
    """Per challenged step k: a canonical validator replays step k from the executor's state and
    compares with the executor's step k+1 (and, self-normalised, with another kernel and the cheat)."""
    from models.engine import Checkpoint, generate
    from sim.metrics import rel_l2

    local = []
    for k in block.challenge:
        a, b = g.checkpoints.get(f"step:{k}"), g.checkpoints.get(f"step:{k + 1}")
        if a is None or b is None:  # the executor has no such step (fewer steps than claimed)
            local.append({"k": k, "missing": True})
            continue
        start = Checkpoint(step=k, latents=a.latents, solver=a.solver)
        t1 = time.perf_counter()
        val = _step_replay(generate, req, runtime, None, start, k)
        sync()
        item = {"k": k, "local_err": rel_l2(val.numpy(), b.latents.numpy()),
                "replay_s": round(time.perf_counter() - t1, 2)}
        if block.selfnorm:
            alt = _step_replay(generate, req, other_kernel, None, start, k)
            item["local_benign"] = rel_l2(val.numpy(), alt.numpy())
            if cheat is not None:
                ch = _step_replay(generate, req, runtime, cheat, start, k)
                item["cheat_cos"] = _cosine(b.latents - val, ch - val)
                item["cheat_err"] = rel_l2(val.numpy(), ch.numpy())
        local.append(item)
    return local


# ---------------------------------------------------------------------------------------------
# Analysis


def rate_str(k: int, n: int) -> str:
    """'k/n = r% [lo%, hi%]' with exact 95% bounds."""
    if n == 0:
        return "0/0"
    lo, hi = clopper_pearson(k, n)
    return f"{k}/{n} = {100 * k / n:.0f}% [{100 * lo:.0f}%, {100 * hi:.0f}%]"


def _family(config: str) -> str:
    return config.split(":", 1)[0]


def load_rows(paths: Iterable[str | Path]) -> pd.DataFrame:
    """One tidy row per generation. `class` is canonical, benign, malign, or zero-effect (a
    non-canonical config whose latents equal the canonical ones everywhere: reported apart)."""
    rows = []
    for path in paths:
        for line in Path(path).read_text().splitlines():
            if not line.strip():
                continue
            r = json.loads(line)
            lat = r.get("latent_rel_l2", {})
            row = {k: r[k] for k in ("preset", "width", "height", "frames", "steps", "prompt_id", "config", "kind",
                                     "gen_s", "card")}
            row["size"] = f"{r['width']}x{r['height']}x{r['frames']}"
            if validator_of(r) != "eager":  # another validator runtime: its own group, never pooled
                row["size"] += f", validator compile {validator_of(r)}"
            row["switch"], row["final"] = lat.get("switch", math.nan), lat.get("final", math.nan)
            row.update({f"{PROFILE_PREFIX}{name}": v for name, v in lat.items()})
            row["video_psnr_db"] = r.get("video_psnr_db", math.nan)
            row["video_1mssim"] = r.get("video_1mssim", math.nan)
            row["class"] = r["kind"]
            row["adapted"] = bool(r.get("adapted", False))
            row["_zero"] = bool(lat) and max(lat.values()) == 0.0
            ratios, coss = [], []
            for item in r.get("local", []):
                k = item["k"]
                err = math.inf if item.get("missing") else item["local_err"]
                row[f"local_{k}"] = err
                if "local_benign" in item and item["local_benign"] > 0:
                    ratios.append(err / item["local_benign"])
                if "cheat_cos" in item:
                    coss.append(item["cheat_cos"])
            row["local_max"] = max((row[c] for c in row if c.startswith("local_") and c != "local_max"), default=math.nan)
            row["local_ratio"] = float(np.mean(ratios)) if ratios else (math.inf if any(
                i.get("missing") for i in r.get("local", [])) else math.nan)
            row["cheat_cos"] = max(coss) if coss else math.nan
            row["n_challenged"] = len(r.get("local", []))
            rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    # a benign config that left every prompt's latents bit-identical here is no benign difference
    zero = df.groupby(["preset", "size", "config"])["_zero"].transform("all")
    df.loc[df["class"].eq("benign") & zero, "class"] = "zero-effect"
    return df.drop(columns="_zero")


def size_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per preset, size and config: prompts measured, and median [min, max] over prompts."""
    cols = ["switch", "final", "video_psnr_db", "video_1mssim", "local_ratio", "cheat_cos", "gen_s"]
    cols += sorted((c for c in df.columns if c.startswith("local_") and c[6:].isdigit()), key=lambda c: int(c[6:]))
    out = []
    for (preset, size, config), g in df.groupby(["preset", "size", "config"], sort=False):
        row = {"preset": preset, "size": size, "config": config, "class": g["class"].iloc[0], "n": len(g)}
        for c in cols:
            v = g[c].dropna().to_numpy() if c in g else np.array([])
            row[c] = (float(np.median(v)), float(v.min()), float(v.max())) if v.size else None
        out.append(row)
    return pd.DataFrame(out)


PROFILE = "profile"  # the statistic of a rule scored from the whole distance profile (`profile_scores`)
# the profile with every distance floored at the honest calibration minimum, joined with the final
# latent: a claim is rejected when either lies beyond its own calibrated threshold (`guarded_scores`)
GUARDED = "profile+final"


@dataclass(frozen=True)
class Rule:
    """A deployable validation rule: one statistic (larger = further from honest), the benign
    classes the protocol must tolerate, and the validator's compute as a share of one generation."""

    name: str
    statistic: str
    pinned: bool
    compute: str
    description: str
    pins: tuple[str, ...] = PINNABLE  # the config families a pinned rule need not tolerate


RULES = (
    Rule("full-final", "final", False, "1", "full replay, final latent rel-L2; runtime not pinned"),
    Rule("full-final-pinned", "final", True, "1", "full replay, final latent rel-L2; batch 1, TF32 off and eager execution pinned"),
    Rule("full-video-pinned", "video_1mssim", True, "1", "full replay, 1-SSIM of the committed MP4; pinned (batch 1, TF32 off, eager)"),
    Rule("local-1step", "local_max", False, "|K|/N", "one replayed step at each challenged K, worst rel-L2; not pinned"),
    Rule("local-1step-pinned", "local_max", True, "|K|/N", "one replayed step at each challenged K, worst rel-L2; pinned (batch 1, TF32 off, eager)"),
    Rule("local-ratio-pinned", "local_ratio", True, "2|K|/N",
         "each challenged step replayed with two kernels; mean of executor error / own kernel spread; pinned"),
    Rule("full-final-pinned-compile-ok", "final", True, "1",
         "full replay, final latent rel-L2; batch 1 and TF32 off pinned, compiled executors tolerated",
         PINNABLE_EXCEPT_COMPILE),
    Rule("local-1step-pinned-compile-ok", "local_max", True, "|K|/N",
         "one replayed step at each challenged K, worst rel-L2; batch 1 and TF32 off pinned, compile tolerated",
         PINNABLE_EXCEPT_COMPILE),
    Rule("profile-pinned-compile-ok", PROFILE, True, "1",
         "full replay, the latent distance at every captured step as one profile, scored by a logistic "
         "regression fitted on calibration prompts against the measured cheats; compile tolerated",
         PINNABLE_EXCEPT_COMPILE),
    Rule("guarded-profile-pinned-compile-ok", GUARDED, True, "1",
         "the profile rule with each distance floored at its honest calibration minimum (no claim looks more "
         "honest than honest work), and rejected as well when its final latent exceeds the largest honest "
         "calibration value; compile tolerated", PINNABLE_EXCEPT_COMPILE),
)


def _benign_for(rule: Rule, df: pd.DataFrame) -> pd.Series:
    fam = df["config"].map(_family)
    benign = df["class"].eq("benign")
    return benign & ~fam.isin(rule.pins) if rule.pinned else benign


def profile_scores(g: pd.DataFrame, benign_fit: pd.Series, malign_fit: pd.Series, floor: bool = False) -> pd.Series:
    """Per row, how cheat-like its whole distance profile is: the log latent distance at every
    checkpoint all fitted rows share (the switch and final included), standardised and scored by a
    logistic regression fitted on `benign_fit` against `malign_fit` rows only (the calibration
    prompts). Rows lacking a feature score NaN (no claim of the rule). It learns the measured
    cheats' profiles: a cheat that shapes its error like an honest one is not covered. With `floor`,
    each log distance is raised to its smallest value among the honest fitted rows, so a claim
    closer to the validator than any honest one (a cheat bit-identical until the expert switch) is
    scored as that honest one, not extrapolated past it."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    fit = benign_fit | malign_fit
    # the checkpoints nearly every fitted row has (a cheat with fewer steps lacks the late ones)
    cols = [c for c in g.columns if c.startswith(PROFILE_PREFIX) and g.loc[fit, c].notna().mean() >= 0.9]
    out = pd.Series(math.nan, index=g.index)
    x = np.log(g[cols].astype(float).clip(lower=1e-12))
    fit = fit & x.notna().all(axis=1)
    if not cols or (benign_fit & fit).sum() < 2 or (malign_fit & fit).sum() < 2:
        return out
    if floor:
        x = x.clip(lower=x[benign_fit & fit].min(), axis=1)
    model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=5000))
    model.fit(x[fit].to_numpy(), malign_fit[fit].to_numpy())
    ok = x.notna().all(axis=1) & g["class"].isin(("benign", "malign"))
    out[ok] = model.decision_function(x[ok].to_numpy())
    return out


def _adapted(g: pd.DataFrame) -> pd.Series:
    """Rows of cheats designed against the rules (plan key `adapted`)."""
    return g["adapted"].astype(bool) if "adapted" in g else pd.Series(False, index=g.index)


def is_calibration_prompt(pid: int) -> bool:
    """The calibration split of the at-scale prompts: even ids (odd ids are held out)."""
    return pid % 2 == 0


def rule_statistic(rule: Rule, g: pd.DataFrame, calib: pd.Series) -> pd.Series | None:
    """The rule's statistic per row of one preset/size group (None: not measured there); the
    profile is fitted on the `calib` rows only."""
    if rule.statistic == PROFILE:
        return profile_scores(g, _benign_for(rule, g) & calib, g["class"].eq("malign") & calib & ~_adapted(g))
    if rule.statistic == GUARDED:
        return guarded_scores(g, _benign_for(rule, g) & calib, g["class"].eq("malign") & calib & ~_adapted(g))
    return g.get(rule.statistic)


def guarded_scores(g: pd.DataFrame, benign_fit: pd.Series, malign_fit: pd.Series) -> pd.Series:
    """Per row, the larger of the floored profile score and the log final latent distance, each
    less its largest honest calibration value: > 0 means beyond either threshold (the rule's own
    threshold, the largest honest calibration statistic, is then 0)."""
    prof = profile_scores(g, benign_fit, malign_fit, floor=True)
    final = np.log(g["final"].astype(float).clip(lower=1e-12))
    if prof.isna().all() or not (benign_fit & prof.notna()).any():
        return prof
    honest = benign_fit & prof.notna() & final.notna()
    return np.maximum(prof - prof[honest].max(), final - final[honest].max()).where(prof.notna())


def evaluate_rules(df: pd.DataFrame, rules: Iterable[Rule] = RULES,
                   is_calibration: Callable[[int], bool] = is_calibration_prompt) -> list[dict[str, Any]]:
    """Per rule and preset/size group: the threshold is the largest benign statistic on calibration
    prompts (accept at or below it); FRR over held-out benign claims and FAR over held-out malign
    claims (pooled and per family), each with exact 95% bounds. Cheats marked `adapted` (designed
    against the rules) are left out of FAR and of every fit, and counted apart, per config
    (`far_adapted`, `far_adapted_per_config`)."""
    out = []
    for (preset, size), g in df.groupby(["preset", "size"], sort=False):
        calib = g["prompt_id"].map(is_calibration)
        for rule in rules:
            benign = _benign_for(rule, g)
            s = rule_statistic(rule, g, calib)
            if s is None or s.isna().all():
                continue
            cal_b = s[benign & calib].dropna()
            if cal_b.empty:
                continue
            thr = float(cal_b.max())
            # NaN: the statistic was not measured for that claim (a plan without it), so it is no
            # claim of this rule; a committed latent that is missing is +inf and always rejected
            tb = s[benign & ~calib].dropna()
            malign, adapted = g["class"].eq("malign") & ~calib, _adapted(g)
            far, per_family = _accepted(g, s[malign & ~adapted].dropna(), thr, _family)
            far_adapted, per_config = _accepted(g, s[malign & adapted].dropna(), thr, str)
            out.append({"preset": preset, "size": size, "rule": rule.name, "statistic": rule.statistic,
                        "pinned": rule.pinned, "compute": rule.compute, "threshold": thr,
                        "calibration_benign": len(cal_b),
                        "frr": (int((tb > thr).sum()), len(tb)), "far": far, "far_per_family": per_family,
                        "far_adapted": far_adapted, "far_adapted_per_config": per_config,
                        "benign_configs": sorted(g.loc[benign, "config"].unique()),
                        "description": rule.description})
    return out


def _accepted(g: pd.DataFrame, s: pd.Series, thr: float, group: Callable[[str], str]):
    """Claims of `s` accepted at `thr`: (accepted, claims) pooled and per `group(config)`."""
    per = {}
    for key, gm in g.loc[s.index].groupby(g.loc[s.index, "config"].map(group)):
        per[key] = (int((s[gm.index] <= thr).sum()), len(gm))
    return (int((s <= thr).sum()), len(s)), per


def separation(df: pd.DataFrame, rules: Iterable[Rule] = RULES) -> list[dict[str, Any]]:
    """Descriptive, over all prompts (no split): per rule and group, the largest benign statistic and
    each cheat family's smallest, and their ratio (> 1: that family lies wholly above the benign ones)."""
    out = []
    for (preset, size), g in df.groupby(["preset", "size"], sort=False):
        for rule in rules:
            if rule.statistic not in g or g[rule.statistic].isna().all():
                continue
            s = g[rule.statistic]
            benign = s[_benign_for(rule, g)].dropna()
            if benign.empty:
                continue
            worst = float(benign.max())
            fams = {}
            key = g["config"].where(_adapted(g), g["config"].map(_family))  # adapted cheats: their own column
            for fam, gm in g[g["class"].eq("malign")].groupby(key):
                sm = s[gm.index].dropna()
                if sm.empty:
                    continue
                fams[fam] = float(sm.min()) / worst if worst > 0 else math.inf
            out.append({"preset": preset, "size": size, "rule": rule.name, "benign_max": worst,
                        "benign_claims": len(benign), "ratio_per_family": fams})
    return out


def _fmt(v, digits=4) -> str:
    if v is None:
        return ""
    med, lo, hi = v
    if not math.isfinite(med):
        return "missing" if med == math.inf else ""
    f = (lambda x: f"{x:.1f}") if abs(med) >= 10 else (lambda x: f"{x:.{digits}g}")
    return f(med) if lo == hi else f"{f(med)} [{f(lo)}, {f(hi)}]"


PRESET_NOTES = {
    "a14b-random": "`a14b-random`: the A14B architecture, random weights",
    "small": "`small`: ~30 M parameters per expert, random weights",
    "tiny": "`tiny`: diffusers' 2-layer test sizes, random weights",
    "shapes": "`shapes`: TRAINED on the project's templated shape videos (models/weights/shapes), ~1 M parameters per expert",
}


def markdown(df: pd.DataFrame, rules: list[dict[str, Any]], meta: dict[str, Any] | None = None) -> str:
    """The size table and the rule table as markdown."""
    st = size_table(df)
    ks = sorted((c for c in st.columns if c.startswith("local_") and c[6:].isdigit()), key=lambda c: int(c[6:]))
    lines = []
    cards = ", ".join(sorted(df["card"].unique()))
    models = "; ".join(PRESET_NOTES.get(p, f"`{p}`") for p in df["preset"].unique())
    attention = ", ".join(f"`{a}`" for a in (meta or {}).get("validator_attention", ["_native_cudnn"]))
    lines.append(f"Card: {cards}. {models}; bf16, validator runtime {attention} attention, batch 1, TF32 off, both "
                 "experts resident. `hwnoise` rows are an EMULATION; every other row is a real runtime change or a "
                 "real cheat (`fp8` rounds weights only: an emulation of FP8 weights; `fp8-scaled` is FP8 as "
                 "deployed; `:high` / `:low` cheat on that expert only). Cells: median [min, max] over prompts.")
    lines.append("")
    for (preset, size), g in st.groupby(["preset", "size"], sort=False):
        lines.append(f"### {preset}, {size} (W x H x frames), {int(df[df['preset'].eq(preset)]['steps'].iloc[0])} steps")
        lines.append("")
        head = ["config", "class", "prompts", "latent rel-L2 at switch", "final latent rel-L2", "video PSNR (dB)",
                "video 1-SSIM", *(f"1-step replay err, K={c[6:]}" for c in ks), "err / own kernel spread",
                "fp8-scaled cosine", "s / generation"]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "---|" * len(head))
        for _, r in g.iterrows():
            cells = [r["config"], r["class"], str(r["n"]), _fmt(r["switch"]), _fmt(r["final"]),
                     _fmt(r["video_psnr_db"]), _fmt(r["video_1mssim"]), *(_fmt(r[c]) for c in ks),
                     _fmt(r["local_ratio"], 3), _fmt(r["cheat_cos"], 2), _fmt(r["gen_s"], 3)]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines.append("### Rules (threshold = largest benign statistic on calibration prompts, even prompt ids; "
                 "rates on held-out prompts, exact 95% bounds)")
    lines.append("")
    adapted = any(r.get("far_adapted", (0, 0))[1] for r in rules)
    lines.append("| preset, size | rule | validator compute | benign tolerated | threshold | FRR | FAR (all cheats) | "
                 "cheats accepted (held-out) |" + (" FAR, cheats that know the rules (never fitted on) |" if adapted else ""))
    lines.append("|---|---|---|---|---|---|---|---|" + ("---|" if adapted else ""))
    for r in rules:
        acc = ", ".join(f"{f} {a}/{n}" for f, (a, n) in sorted(r["far_per_family"].items()) if a) or "none"
        row = (f"| {r['preset']}, {r['size']} | {r['rule']} | {r['compute']} | {', '.join(r['benign_configs'])} | "
               f"{r['threshold']:.4g} | {rate_str(*r['frr'])} | {rate_str(*r['far'])} | {acc} |")
        if adapted:
            per = ", ".join(f"{c} {a}/{n}" for c, (a, n) in sorted(r.get("far_adapted_per_config", {}).items()))
            row += f" {rate_str(*r['far_adapted'])}" + (f" ({per})" if per else "") + " |"
        lines.append(row)
    lines.append("")
    sep = separation(df)
    fams = sorted({f for r in sep for f in r["ratio_per_family"]})
    lines.append("### Separation, all prompts (descriptive, no split): smallest cheat statistic / largest benign one "
                 "(> 1: every claim of that cheat lies above every benign claim)")
    lines.append("")
    lines.append("| preset, size | rule | benign claims | " + " | ".join(fams) + " |")
    lines.append("|---|---|---|" + "---|" * len(fams))
    for r in sep:
        cells = [f"{r['ratio_per_family'][f]:.2f}" if f in r["ratio_per_family"] else "" for f in fams]
        lines.append(f"| {r['preset']}, {r['size']} | {r['rule']} | {r['benign_claims']} | " + " | ".join(cells) + " |")
    lines.append("")
    if meta and set(meta) - {"validator_attention"}:
        lines.append(f"Measured with `benchmarks/gpu_at_scale.py`; {json.dumps(meta)}")
    return "\n".join(lines) + "\n"
