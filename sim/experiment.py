"""The validation experiment (after the proposal's comment and DiFR): for each prompt, one canonical
generation (the validator's view) and one per deviation (the executor's view), every executor
claim scored by every policy against the validator. No Prefect here: `flows/experiment.py` wires
these functions into a flow, and the functions run and test on their own.

Run directory (resumable; each generation is keyed by its inputs):

    RUN/params.json                    the ExperimentParams; a rerun with other parameters is refused
    RUN/gens/p0007/canonical/          video.mp4, record.json, latents.safetensors
    RUN/gens/p0007/steps_6/            one per deviation
    RUN/scores/p0007.parquet           that prompt's score rows (written last, atomically)
    RUN/scores.parquet                 all rows; thresholds.json, summary.json, report.html/.md

A generation directory appears only complete (written to a temporary directory, then renamed); a
prompt is complete when its score file exists. `out` may also be an fsspec URL (`s3://bucket/run`):
the files then go through `sim.storage.RunStore` (see there), with the same completeness rules. A rerun after a crash skips complete prompts, reuses
complete generations whose record matches the expected inputs, and redoes the rest, so it ends with
the same table as an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from models.deviations import BENIGN_DEFAULT, MALIGN_DEFAULT
from models.request import GenerationRequest, Runtime

PROMPT_SET = Path(__file__).parent / "data" / "vbench_all_dimension.txt"
DEFAULT_FRAME_METRICS = ("ssim", "psnr", "gmsd", "haarpsi")
# Emulated GPU rounding (hwnoise:EPS), relative noise per transformer block. scripts/calibrate_hwnoise.py
# measured on the tiny preset in bf16 that EPS = 2.7e-3 makes one expert forward pass differ by the
# 5.5e-3 measured between attention kernels on an H100 at A14B scale (facts.md); the headline
# benign class uses 3e-3 and the sweep brackets it.
HWNOISE_CALIBRATED_EPS = 3e-3
DEFAULT_HWNOISE_EPS = (1e-3, 3e-3, 1e-2, 3e-2)
# Parameters that do not change any result: a rerun may change them.
NON_RESULT_FIELDS = {"out", "bootstrap", "strips"}


class ExperimentError(ValueError):
    pass


def numerics_fingerprint(preset: str) -> str:
    """What else decides the numbers besides the parameters: the preset's configuration, the
    scheduler, the codec settings and the torch/diffusers/x264-carrying PyAV versions."""
    import dataclasses
    from importlib.metadata import version

    from models.presets import SCHEDULER_CONFIG, preset_spec
    from models.video import CODEC_SETTINGS

    try:
        spec = dataclasses.asdict(preset_spec(preset))
    except ValueError:
        spec = {"preset": preset}
    blob = json.dumps({"preset": spec, "scheduler": SCHEDULER_CONFIG, "codec": CODEC_SETTINGS,
                       "versions": {p: version(p) for p in ("torch", "diffusers", "av")}}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class ExperimentParams(BaseModel):
    """Every setting of one experiment run; saved as RUN/params.json."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    preset: str = Field("tiny", description="model preset of every generation")
    prompts: int | str = Field(20, description="a count (a seeded sample of the bundled VBench set), "
                                               "'vbench' (all 946), or a path to a file with one prompt a line")
    request: dict[str, Any] = Field(default_factory=lambda: {"steps": 8, "truncate_prompt": True},
                                    description="overrides of the preset's request defaults (e.g. steps, width); "
                                                "prompts over the text encoder's limit (tiny: 64 byte tokens) are "
                                                "truncated and each generation records it")
    deviations: tuple[str, ...] = Field(BENIGN_DEFAULT + MALIGN_DEFAULT,
                                        description="deviation specs or import paths (benign and malign)")
    hwnoise_eps: tuple[float, ...] = Field(DEFAULT_HWNOISE_EPS,
                                           description="emulated-hardware noise levels added as benign hwnoise:EPS")
    hwnoise_headline: float | None = Field(HWNOISE_CALIBRATED_EPS, description="the hwnoise level counted as benign "
                                           "in the headline FAR/FRR table (None: none); the others form the EPS curve")
    metrics: tuple[str, ...] = Field(DEFAULT_FRAME_METRICS, description="frame metrics of the full-replay policy")
    aggregations: tuple[str, ...] = Field(("mean", "worst", "p90"), description="how frame scores are aggregated")
    policies: tuple[str, ...] = Field(("full", "checkpoint", "fingerprint", "segment"), description="validation policies")
    capture: tuple[str, ...] = Field(("init", "switch", "final"), description="checkpoints an executor keeps")
    seed: int = Field(0, ge=0, description="run seed: prompt sample, request seeds, split, hardware noise")
    fingerprint_k: int = Field(32, ge=1, le=4096, description="JL fingerprint dimensions (float16 each)")
    calib_fraction: float = Field(0.5, gt=0, lt=1, description="share of prompts used to choose thresholds")
    validator_runtime: Runtime = Field(default_factory=Runtime, description="how the validator (and a default executor) runs")
    weights_dir: str | None = Field(None, description="directory with LPIPS/DISTS weight files, if those metrics are used")
    bootstrap: int = Field(1000, ge=0, description="bootstrap resamples for confidence intervals")
    strips: int = Field(3, ge=0, description="prompts shown as frame strips in the report")
    out: str = Field("runs/experiment", description="run directory")
    numerics: str = Field("", description="fingerprint of the preset, scheduler, codec and library versions "
                                          "(filled in; a run directory made under another one is refused)")

    @field_validator("deviations")
    @classmethod
    def _check_deviations(cls, v):
        from models.deviations import parse_deviation

        for spec in v:
            try:
                parse_deviation(spec)
            except ValueError as err:
                raise ValueError(f"deviations: {err}") from None
        if len(set(v)) != len(v):
            raise ValueError("deviations: duplicated entries")
        return tuple(v)

    @field_validator("hwnoise_eps")
    @classmethod
    def _check_eps(cls, v):
        for e in v:
            if not 0 < e <= 1:
                raise ValueError(f"hwnoise_eps: each level must be in (0, 1], got {e}")
        return tuple(v)

    @model_validator(mode="after")
    def _fill_numerics(self):
        if not self.numerics:
            object.__setattr__(self, "numerics", numerics_fingerprint(self.preset))
        return self

    @model_validator(mode="after")
    def _check_headline(self):
        if self.hwnoise_headline is not None and self.hwnoise_headline not in self.hwnoise_eps:
            raise ValueError(f"hwnoise_headline: {self.hwnoise_headline} is not one of hwnoise_eps {list(self.hwnoise_eps)}")
        return self

    @field_validator("metrics")
    @classmethod
    def _check_metrics(cls, v):
        from sim.metrics import check_metrics

        try:
            return tuple(check_metrics(v))
        except ValueError as err:
            raise ValueError(str(err)) from None

    @field_validator("policies")
    @classmethod
    def _check_policies(cls, v):
        from sim.policies import check_policies

        return check_policies(v)

    @model_validator(mode="after")
    def _check_request(self):
        from pydantic import ValidationError

        try:
            self.base_request("p", 0)
        except ValidationError as err:
            detail = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'model'}: {e['msg'].removeprefix('Value error, ')}"
                               for e in err.errors())
            raise ValueError(f"request: {detail}") from None
        if isinstance(self.prompts, int) and self.prompts < 2:
            raise ValueError(f"prompts: a count must be >= 2 (one calibration and one test prompt), got {self.prompts}")
        return self

    def all_deviations(self) -> tuple[str, ...]:
        return tuple(self.deviations) + tuple(f"hwnoise:{e:g}" for e in self.hwnoise_eps)

    def base_request(self, prompt: str, prompt_id: int) -> GenerationRequest:
        fields = {"model": self.preset, **self.request, "prompt": prompt}
        fields.setdefault("seed", self.seed * 1_000_003 + prompt_id)
        return GenerationRequest(**fields)

    def result_fields(self) -> dict[str, Any]:
        return {k: v for k, v in json.loads(self.model_dump_json()).items() if k not in NON_RESULT_FIELDS}


# ---------------------------------------------------------------------------------------------
# Prompts and splits


def load_prompts(params: ExperimentParams) -> list[str]:
    src = params.prompts
    if isinstance(src, int) or (isinstance(src, str) and src.isdigit()):
        n = int(src)
        allp = _read_prompt_file(PROMPT_SET)
        if n > len(allp):
            raise ExperimentError(f"prompts: {n} asked for but the bundled set has {len(allp)}")
        rng = random.Random(params.seed)
        return rng.sample(allp, n)
    if src == "vbench":
        return _read_prompt_file(PROMPT_SET)
    return _read_prompt_file(Path(src))


def _read_prompt_file(path: Path) -> list[str]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ExperimentError(f"prompts: cannot read prompt file {path}: {err}") from None
    prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if len(prompts) < 2:
        raise ExperimentError(f"prompts: {path} holds {len(prompts)} prompt(s); at least 2 are needed")
    return prompts


def split_of(prompt_id: int, n: int, params: ExperimentParams) -> str:
    """Calibration/test split by a seeded permutation of prompt ids (thresholds never see 'test')."""
    order = list(range(n))
    random.Random(f"split/{params.seed}").shuffle(order)
    n_cal = max(1, min(n - 1, round(n * params.calib_fraction)))
    return "calib" if prompt_id in set(order[:n_cal]) else "test"


def slug(spec: str | None) -> str:
    if spec is None:
        return "canonical"
    return "".join(c if c.isalnum() or c in "-+" else "_" for c in spec)


def run_seed_of(prompt_id: int, spec: str, params: ExperimentParams) -> int:
    h = hashlib.sha256(f"hardware/{params.seed}/{prompt_id}/{spec}".encode()).digest()
    return int.from_bytes(h[:8], "little") & (2**63 - 1)


# ---------------------------------------------------------------------------------------------
# The run directory


def store_of(params: ExperimentParams):
    """The run directory of `params.out` (a local path or an fsspec URL)."""
    from sim.storage import RunStore, StorageError

    try:
        return RunStore(params.out)
    except StorageError as err:
        raise ExperimentError(str(err)) from None


def environment() -> dict[str, Any]:
    """The library versions behind `numerics` (RUN/environment.json, read by the regression flow)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for p in ("torch", "diffusers", "av", "transformers", "numpy", "piq"):
        try:
            out[p] = version(p)
        except PackageNotFoundError:  # pragma: no cover - all are dependencies
            out[p] = None
    return out


def open_run(params: ExperimentParams) -> Path:
    """Create the run directory or check that an existing one was made by the same parameters
    (the numerics fingerprint included); returns the local directory of the run."""
    store = store_of(params)
    if store.exists("params.json"):
        pfile = store.url("params.json")
        try:
            old = ExperimentParams.model_validate_json(store.read_text("params.json"))
        except Exception as err:
            raise ExperimentError(f"{pfile}: unreadable parameters ({err}); use another --out") from None
        a, b = old.result_fields(), params.result_fields()
        diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        if diff:
            detail = "; ".join(f"{k}: run has {a.get(k)!r}, asked {b.get(k)!r}" for k in diff)
            raise ExperimentError(f"{params.out} was made by a different parameter set, refusing to mix ({detail})")
    store.write_bytes("params.json", params.model_dump_json(indent=1))
    store.write_bytes("environment.json", json.dumps({"numerics": params.numerics, "versions": environment()},
                                                     indent=1))
    gens = store.local("gens")
    for stale in gens.glob("*/.*") if gens.exists() else []:
        shutil.rmtree(stale, ignore_errors=True)  # half-written generations of a killed run
    return store.local()


def _atomic_write(path: Path, text: str | bytes) -> None:
    from sim.storage import atomic_write

    atomic_write(path, text)


def _expected_record(request: GenerationRequest, runtime: Runtime, spec: str | None) -> dict[str, Any]:
    """What the record of that generation holds: the runtime as the deviation changed it (a
    `threads:1` generation records one thread), so such generations are reused on resume too."""
    from models.deviations import parse_deviation

    effective = parse_deviation(spec).apply_runtime(runtime) if spec else runtime
    return {"request": request.model_dump(), "deviation": spec, "runtime": effective.model_dump()}


def load_or_generate(directory: Path, request: GenerationRequest, runtime: Runtime, spec: str | None,
                     run_seed: int, capture: Iterable[str], on_saved: Callable[[Path], None] | None = None):
    """The generation stored in `directory` if complete and made from these inputs, else a new one
    (saved there, then passed to `on_saved`)."""
    from models.engine import ArtifactError, Generation, generate

    if directory.exists():
        try:
            rec = json.loads((directory / "record.json").read_text())
            exp = _expected_record(request, runtime, spec)
            if all(_normalise(rec.get(k)) == _normalise(v) for k, v in exp.items()) and rec.get("run_seed") == run_seed:
                return Generation.load(directory)
        except (OSError, ValueError, ArtifactError, KeyError):
            pass
        shutil.rmtree(directory, ignore_errors=True)  # partial or stale: redo
    gen = generate(request, runtime, spec, capture=tuple(capture), run_seed=run_seed)
    gen.save(directory)
    if on_saved is not None:
        on_saved(directory)
    return gen


def _normalise(x):
    return json.loads(json.dumps(x))


# ---------------------------------------------------------------------------------------------
# One prompt


def kind_of(spec: str) -> str:
    from models.deviations import parse_deviation

    return parse_deviation(spec).kind


def run_prompt(params: ExperimentParams, prompt_id: int, prompt: str, n_prompts: int,
               on_generation: Callable[[str], None] | None = None):
    """Generate and score one prompt; returns its rows (a DataFrame). Skips work already on disk."""
    import io

    import pandas as pd

    from sim.policies import Claim, ValidationContext, get_policy

    store = store_of(params)
    score_rel = f"scores/p{prompt_id:04d}.parquet"
    if store.exists(score_rel):
        try:
            return pd.read_parquet(io.BytesIO(store.read_bytes(score_rel)))
        except Exception:
            store.remove(score_rel)  # truncated by a kill: redo
    import time

    request = params.base_request(prompt, prompt_id)
    grel = f"gens/p{prompt_id:04d}"
    rt = params.validator_runtime

    def load_or_generate_at(name: str, spec: str | None, rseed: int):
        rel = f"{grel}/{name}"
        return load_or_generate(store.fetch_dir(rel), request, rt, spec, rseed, params.capture,
                                on_saved=lambda d: store.publish_dir(rel, d))

    timing = {"generation": 0.0, "validator_replay": 0.0, "scoring": 0.0}
    t0 = time.perf_counter()
    canonical = load_or_generate_at("canonical", None, 0)
    timing["generation"] += time.perf_counter() - t0
    if on_generation:
        on_generation("canonical")
    ctx = ValidationContext(runtime=rt, fingerprint_k=params.fingerprint_k, fingerprint_seed=params.seed,
                            metrics=params.metrics, aggregations=params.aggregations, weights_dir=params.weights_dir)
    ctx.replays[request.key()] = canonical
    policies = [get_policy(p) for p in params.policies]
    split = split_of(prompt_id, n_prompts, params)

    def timed(score, *args):
        t0, r0 = time.perf_counter(), ctx.replay_seconds
        out = score(*args)
        timing["validator_replay"] += ctx.replay_seconds - r0
        timing["scoring"] += time.perf_counter() - t0 - (ctx.replay_seconds - r0)
        return out

    specs = params.all_deviations()
    claims, executor = [], []  # per deviation: the claim, and (executor compute share, deviation size)
    results: dict[tuple[int, int], Any] = {}  # (deviation index, policy index) -> PolicyResult
    for i, spec in enumerate(specs):
        rseed = run_seed_of(prompt_id, spec, params)
        t0 = time.perf_counter()
        gen = load_or_generate_at(slug(spec), spec, rseed)
        timing["generation"] += time.perf_counter() - t0
        if on_generation:
            on_generation(spec)
        claims.append(Claim(request=request, sha256=gen.sha256, directory=store.local(f"{grel}/{slug(spec)}")))
        executor.append((float(gen.cost.compute_share), _final_rel_l2(canonical, gen)))
        for j, policy in enumerate(policies):
            if not policy.batched:  # these regenerate per claim: scored as each generation lands
                results[(i, j)] = timed(policy.score, claims[i], ctx)
    for j, policy in enumerate(policies):
        if policy.batched:  # no regeneration per claim: all of the prompt's claims at once
            for i, res in enumerate(timed(policy.score_many, claims, ctx)):
                results[(i, j)] = res
    rows = []
    for i, spec in enumerate(specs):
        eps = float(spec.split(":", 1)[1]) if spec.startswith("hwnoise:") else 0.0
        share, size = executor[i]
        kind = kind_of(spec)
        for j, policy in enumerate(policies):
            res = results[(i, j)]
            for metric, score in res.scores.items():
                rows.append({
                    "run_id": store.name, "preset": params.preset, "prompt_id": prompt_id, "prompt": prompt,
                    "split": split, "deviation": spec, "kind": kind, "policy": policy.name,
                    "metric": metric, "score": float(score),
                    "executor_compute_share": share,
                    "validator_compute_share": float(res.validator_compute_share),
                    "bytes_kept": int(res.bytes_kept), "hwnoise_eps": eps, "deviation_size": size,
                })
    df = pd.DataFrame(rows)
    store.write_bytes(f"scores/p{prompt_id:04d}.timing.json", json.dumps(timing))
    store.write_bytes(score_rel, _parquet_bytes(df))  # last: the prompt is complete when this exists
    return df


def _parquet_bytes(df) -> bytes:
    import io

    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    return buf.getvalue()


def _final_rel_l2(canonical, gen) -> float:
    from sim.metrics import rel_l2

    a, b = canonical.latents.get("final"), gen.latents.get("final")
    return float(rel_l2(a, b)) if a is not None and b is not None else math.nan


def collect_scores(params: ExperimentParams, n_prompts: int):
    import io

    import pandas as pd

    store = store_of(params)
    frames = [pd.read_parquet(io.BytesIO(store.read_bytes(f"scores/p{i:04d}.parquet"))) for i in range(n_prompts)]
    df = pd.concat(frames, ignore_index=True)
    data = _parquet_bytes(df)
    store.write_bytes("scores.parquet", data)
    if not store.is_local:
        _atomic_write(store.local("scores.parquet"), data)
    return df


def benign_noise_table(df) -> list[dict[str, Any]]:
    """Each deviation's size: the median relative L2 of its final latent against the canonical one."""
    g = df.drop_duplicates(["prompt_id", "deviation"]).groupby(["deviation", "kind"])["deviation_size"]
    out = g.agg(["median", "max"]).reset_index()
    return [{"deviation": r.deviation, "kind": r.kind, "median_rel_l2_final": float(r.median),
             "max_rel_l2_final": float(r.max)} for r in out.itertuples()]


def finite(x: float) -> float | None:
    return None if (x is None or (isinstance(x, float) and (math.isnan(x) or math.isinf(x)))) else x


# ---------------------------------------------------------------------------------------------
# Analysis


def analyse(params: ExperimentParams, n_prompts: int) -> dict[str, Any]:
    """Statistics, thresholds and the report of a finished run; returns a digest for the flow."""
    import gc

    # The objects alive now (models, Prefect, the run's records) outlive this stage: keep the cyclic
    # collector from re-scanning them each time the statistics and figures trigger a full collection.
    gc.freeze()
    try:
        return _analyse(params, n_prompts)
    finally:
        gc.unfreeze()


def _analyse(params: ExperimentParams, n_prompts: int) -> dict[str, Any]:
    import time

    t0 = time.perf_counter()
    from sim.report import write_report
    from sim.stats import choose_thresholds, compute_stats

    store = store_of(params)
    run = store.local()  # the report is drawn here (the run itself, or this machine's cache of it)
    df = collect_scores(params, n_prompts)
    benign_eps = params.hwnoise_headline if params.hwnoise_headline is not None else None
    stats = compute_stats(df, n_boot=params.bootstrap, seed=params.seed, benign_eps=benign_eps)
    thresholds = choose_thresholds(df, benign_eps=benign_eps)
    store.write_bytes("thresholds.json", json.dumps(thresholds, indent=1))
    summary = stats.summary()
    summary["deviation_sizes"] = benign_noise_table(df)
    summary["n_prompts"] = n_prompts
    store.write_bytes("summary.json", json.dumps(summary, indent=1, default=str))
    if not store.is_local:
        _fetch_strip_videos(store, df, params)
    html, md = write_report(run, df, json.loads(params.model_dump_json()), stats=stats)
    for rel in ("report.html", "report.md", "report_files"):
        store.publish_tree(rel)
    timing = stage_seconds(params, n_prompts)
    timing["statistics_and_report"] = time.perf_counter() - t0
    store.write_bytes("timing.json", json.dumps(timing, indent=1))
    verdicts = verdict_rows(stats)
    return {"report": store.url("report.html"), "markdown": Path(md).read_text(), "verdicts": verdicts,
            "n_rows": int(len(df)), "run": store.url(), "timing": timing}


def _fetch_strip_videos(store, df, params: ExperimentParams) -> None:
    """Bring the videos the report's frame strips show into the local cache (held-out prompts
    first, as `sim.report` picks them)."""
    prompts = df.drop_duplicates("prompt_id").sort_values("prompt_id")
    order = list(prompts[prompts["split"] == "test"]["prompt_id"]) + list(prompts[prompts["split"] != "test"]["prompt_id"])
    for pid in order[:params.strips]:
        for name in ["canonical"] + [slug(d) for d in params.all_deviations()]:
            rel = f"gens/p{int(pid):04d}/{name}/video.mp4"
            if store.exists(rel):
                _atomic_write(store.local(rel), store.read_bytes(rel))


def stage_seconds(params: ExperimentParams, n_prompts: int) -> dict[str, float]:
    """Wall seconds per stage summed over prompts (as last computed; a resumed prompt keeps its own)."""
    total = {"generation": 0.0, "validator_replay": 0.0, "scoring": 0.0}
    store = store_of(params)
    for i in range(n_prompts):
        rel = f"scores/p{i:04d}.timing.json"
        if store.exists(rel):
            for k, v in json.loads(store.read_text(rel)).items():
                total[k] = total.get(k, 0.0) + v
    return total


def verdict_rows(stats) -> list[dict[str, Any]]:
    """Best policy per malign deviation (chosen on calib), with its held-out operating point."""
    v = stats.verdicts
    if v is None or len(v) == 0:
        return []
    best = v[v["is_best"]]
    rows = []
    for r in best.to_dict("records"):
        rows.append({
            "deviation": r["deviation"], "policy": r["policy"], "metric": r["metric"],
            "separated": r["separation"],
            "FRR@FAR<=1%": _fmt_ci(r["frr_at_far"], r["frr_at_far_lo"], r["frr_at_far_hi"]),
            "FAR@FRR<=1%": _fmt_ci(r["far_at_frr"], r["far_at_frr_lo"], r["far_at_frr_hi"]),
            "benign median": _fmt(r["benign_median"]), "malign median": _fmt(r["malign_median"]),
            "validator compute": _fmt(r["validator_compute_share"]), "bytes kept": _fmt(r["bytes_kept"], "d"),
        })
    return rows


def _fmt(x, kind="g") -> str:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return str(x)
    if math.isnan(x):
        return "n/a"
    return f"{int(x):d}" if kind == "d" and math.isfinite(x) else f"{x:.3g}"


def _fmt_ci(v, lo, hi) -> str:
    return f"{_fmt(v)} [{_fmt(lo)}, {_fmt(hi)}]"
