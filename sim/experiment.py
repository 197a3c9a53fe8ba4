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
import random
import shutil
from pathlib import Path
from typing import Any, Callable, Iterable

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_serializer, model_validator

from models.deviations import ADAPTIVE_DEFAULT, BENIGN_DEFAULT, MALIGN_DEFAULT
from models.io import check_out_dir, write_atomic
from models.request import MAX_STEPS, GenerationRequest, Runtime, no_bool
from models import seeds
from sim.layout import slug
from sim.parquet import parquet_bytes

PROMPT_SET = Path(__file__).parent / "data" / "vbench_all_dimension.txt"
DEFAULT_FRAME_METRICS = ("ssim", "psnr", "gmsd", "haarpsi")
# Emulated GPU rounding (hwnoise:EPS), relative noise per transformer block. scripts/calibrate_hwnoise.py
# measured on the tiny preset in bf16 that EPS = 2.7e-3 makes one expert forward pass differ by the
# 5.5e-3 measured between attention kernels on an H100 at A14B scale (docs/facts.md); the headline
# benign class uses 3e-3 and the sweep brackets it.
HWNOISE_CALIBRATED_EPS = 3e-3
DEFAULT_HWNOISE_EPS = (1e-3, 3e-3, 1e-2, 3e-2)
MAX_PROMPTS = 100_000
MAX_BOOTSTRAP = 100_000
# Parameters that do not change any result: a rerun may change them.
NON_RESULT_FIELDS = {"out", "bootstrap", "strips", "overlap"}


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


class RequestOverrides(BaseModel):
    """What an experiment changes in its preset's request defaults: GenerationRequest's fields but
    the model and the prompt (None keeps the preset's value). Checked by GenerationRequest itself
    (`ExperimentParams` does it with the run's preset), saved with only the fields that are set."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    negative_prompt: str | None = None
    width: int | None = None
    height: int | None = None
    frames: int | None = None
    fps: int | None = None
    steps: int | None = None
    guidance_high: float | None = None
    guidance_low: float | None = None
    shift: float | None = None
    seed: int | None = None
    truncate_prompt: bool | None = None

    @model_serializer(mode="wrap")
    def _set_fields_only(self, handler):
        return {k: v for k, v in handler(self).items() if v is not None}

    def fields(self) -> dict[str, Any]:
        """The fields that are set, as GenerationRequest keyword arguments."""
        return self.model_dump()


def request_error(err) -> str:
    """A GenerationRequest's ValidationError as `request: field: message; ...`."""
    detail = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'model'}: {e['msg'].removeprefix('Value error, ')}"
                       for e in err.errors())
    return f"request: {detail}"


class ExperimentParams(BaseModel):
    """Every setting of one experiment run; saved as RUN/params.json."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    preset: str = Field("tiny", description="model preset of every generation")
    prompts: int | str = Field(20, description="a count (a seeded sample of the bundled VBench set), "
                                               "'vbench' (all 946), or a path to a file with one prompt a line")
    request: RequestOverrides = Field(default_factory=lambda: RequestOverrides(steps=8, truncate_prompt=True),
                                    description="overrides of the preset's request defaults (e.g. steps, width); "
                                                "prompts over the text encoder's limit (tiny: 64 byte tokens) are "
                                                "truncated and each generation records it")
    deviations: tuple[str, ...] = Field(BENIGN_DEFAULT + MALIGN_DEFAULT + ADAPTIVE_DEFAULT,
                                        description="deviation specs or import paths (benign and malign)")
    hwnoise_eps: tuple[float, ...] = Field(DEFAULT_HWNOISE_EPS,
                                           description="emulated-hardware noise levels added as benign hwnoise:EPS")
    hwnoise_headline: float | None = Field(HWNOISE_CALIBRATED_EPS, description="the hwnoise level counted as benign "
                                           "in the headline FAR/FRR table (None: none); the others form the EPS curve")
    metrics: tuple[str, ...] = Field(DEFAULT_FRAME_METRICS, description="frame metrics of the full-replay policy")
    aggregations: tuple[str, ...] = Field(("mean", "worst", "p90"), description="how frame scores are aggregated")
    policies: tuple[str, ...] = Field(("full", "checkpoint", "fingerprint", "segment"), description="validation policies")
    capture: tuple[str, ...] = Field(("init", "switch", "final"), description="checkpoints the checkpoint and "
                                     "fingerprint policies compare (the executor also keeps the committed points)")
    commit_every: int = Field(2, ge=1, le=MAX_STEPS, description="steps per committed segment of the commit-then-challenge "
                                                   "(segment) policy: the executor commits the noise, every k-th "
                                                   "step and the final latent")
    seed: int = Field(0, ge=0, description="run seed: prompt sample, request seeds, split, hardware noise")
    fingerprint_k: int = Field(32, ge=1, le=4096, description="JL fingerprint dimensions (float16 each)")
    calib_fraction: float = Field(0.5, gt=0, lt=1, description="share of prompts used to choose thresholds")
    validator_runtime: Runtime = Field(default_factory=Runtime, description="how the validator (and a default executor) runs")
    weights_dir: str | None = Field(None, description="directory with LPIPS/DISTS weight files, if those metrics are used")
    challenge_segments: int = Field(1, ge=1, le=MAX_STEPS, description="committed segments the deployable "
                                    "validator challenges per validation (its compute budget)")
    bootstrap: int = Field(1000, ge=0, le=MAX_BOOTSTRAP, description="bootstrap resamples for confidence intervals")
    strips: int = Field(3, ge=0, description="prompts shown as frame strips in the report")
    out: str = Field("runs/experiment", description="run directory")
    overlap: bool = Field(True, description="encode and save each generation's MP4 and run the CPU-side part of "
                                            "every policy's scoring (MP4 decode, frame metrics, latent distances, "
                                            "fingerprints) on a background thread while the device runs the next "
                                            "generation (False: one after the other; the results are the same)")
    numerics: str = Field("", description="fingerprint of the preset, scheduler, codec and library versions "
                                          "(filled in; a run directory made under another one is refused)")

    _no_bool = field_validator("prompts", "seed", "fingerprint_k", "calib_fraction", "bootstrap", "strips",
                               "hwnoise_headline", "commit_every", "challenge_segments", mode="before")(no_bool)

    @field_validator("prompts")
    @classmethod
    def _check_prompts(cls, v):
        if isinstance(v, str) and not v.strip():
            raise ValueError("prompts: give a count, 'vbench' or a prompt file, got an empty string")
        if isinstance(v, int) and v > MAX_PROMPTS:
            raise ValueError(f"prompts: a count must be in 2..{MAX_PROMPTS}, got {v}")
        return v

    @field_validator("out")
    @classmethod
    def _check_out(cls, v):
        if not v.strip():
            raise ValueError("out: must be a directory path, got an empty string")
        return v

    @field_validator("aggregations")
    @classmethod
    def _check_aggregations(cls, v):
        from sim.metrics import check_aggregations

        return tuple(check_aggregations(v))

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

    @model_validator(mode="before")
    @classmethod
    def _fill_numerics(cls, data):
        if isinstance(data, dict) and not data.get("numerics"):
            preset = data.get("preset", cls.model_fields["preset"].default)
            if isinstance(preset, str):
                data = {**data, "numerics": numerics_fingerprint(preset)}
        return data

    @field_validator("request", mode="before")
    @classmethod
    def _check_request_fields(cls, v, info: ValidationInfo):
        """Each override checked by GenerationRequest with the run's preset, so that its own
        messages (bounds, booleans, finiteness) are the ones a user sees."""
        from pydantic import ValidationError

        if isinstance(v, RequestOverrides):
            v = v.fields()
        if isinstance(v, dict) and isinstance(info.data.get("preset"), str):
            try:
                GenerationRequest(**{"model": info.data["preset"], **v, "prompt": "p"})
            except ValidationError as err:
                raise ValueError(request_error(err)) from None
        return v

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
            raise ValueError(request_error(err)) from None
        if isinstance(self.prompts, int) and self.prompts < 2:
            raise ValueError(f"prompts: a count must be >= 2 (one calibration and one test prompt), got {self.prompts}")
        from models.engine import check_captures

        if not self.capture:
            raise ValueError("capture: at least one checkpoint is needed; allowed: init, switch, final, step:K")
        check_captures(self.capture, self.base_request("p", 0).steps)
        return self

    def executor_capture(self) -> tuple[str, ...]:
        """What every executor keeps: the compared checkpoints and the committed points."""
        from sim.commitment import capture_names

        steps = self.base_request("p", 0).steps
        return tuple(dict.fromkeys((*self.capture, *capture_names(steps, min(self.commit_every, steps)))))

    def all_deviations(self) -> tuple[str, ...]:
        return tuple(self.deviations) + tuple(f"hwnoise:{e:g}" for e in self.hwnoise_eps)

    def base_request(self, prompt: str, prompt_id: int) -> GenerationRequest:
        fields = {"model": self.preset, **self.request.fields(), "prompt": prompt}
        fields.setdefault("seed", seeds.experiment_request_seed(self.seed, prompt_id))
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
        rng = random.Random(seeds.prompt_sample_key(params.seed))
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
    random.Random(seeds.split_key(params.seed)).shuffle(order)
    n_cal = max(1, min(n - 1, round(n * params.calib_fraction)))
    return "calib" if prompt_id in set(order[:n_cal]) else "test"


def run_seed_of(prompt_id: int, spec: str, params: ExperimentParams) -> int:
    return seeds.hardware_run_seed(params.seed, prompt_id, spec)


# ---------------------------------------------------------------------------------------------
# The run directory


RUN_MARKER = "params.json"


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


def finished_work(run) -> bool:
    """Whether a run directory (a local path or a `RunStore`) holds any complete generation or
    score file (work a rerun reuses)."""
    from sim.storage import RunStore

    if isinstance(run, RunStore):
        if run.is_local:
            return finished_work(run.local())
        return bool(run.fs.glob(run.path("gens/*/*/record.json")) or run.fs.glob(run.path("scores/*.parquet")))
    return any(Path(run).glob("gens/*/*/record.json")) or any(Path(run).glob("scores/*.parquet"))


def stored_result_fields(stored: dict[str, Any]) -> dict[str, Any]:
    """`result_fields` of a stored params.json, compared without validating it (so nothing it names
    is imported); a field the file predates takes its default."""
    defaults = json.loads(ExperimentParams.model_construct().model_dump_json())
    out = {**defaults, **stored}
    for k, f in ExperimentParams.model_fields.items():  # a runtime that predates one of its fields
        if f.annotation is Runtime and isinstance(stored.get(k), dict):
            out[k] = {**json.loads(Runtime().model_dump_json()), **stored[k]}
    return {k: v for k, v in out.items() if k not in NON_RESULT_FIELDS}


def open_run(params: ExperimentParams) -> Path:
    """Create the run directory or check that an existing one was made by the same parameters
    (the numerics fingerprint included); returns the local directory of the run.

    A local `out` follows the output-directory policy (`models.io.check_out_dir`). The stored
    params.json is compared as JSON and never validated, so nothing it names (a plugin
    deviation's module) is imported. A run directory without finished work (a run that failed
    before its first generation) takes the new parameters."""
    from sim.storage import is_url

    if not is_url(params.out):
        check_out_dir(params.out, resumable=RUN_MARKER)
    store = store_of(params)
    if store.exists(RUN_MARKER) and finished_work(store):
        pfile = store.url(RUN_MARKER)
        try:
            old = json.loads(store.read_text(RUN_MARKER))
            if not isinstance(old, dict):
                raise ValueError(f"expected a JSON object, got {type(old).__name__}")
        except (OSError, ValueError) as err:
            raise ExperimentError(f"{pfile}: unreadable parameters ({err}); use another --out") from None
        a, b = stored_result_fields(old), params.result_fields()
        diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        if diff:
            detail = "; ".join(f"{k}: run has {a.get(k)!r}, asked {b.get(k)!r}" for k in diff)
            raise ExperimentError(f"{params.out} was made by a different parameter set, refusing to mix ({detail})")
    store.write_bytes(RUN_MARKER, params.model_dump_json(indent=1))
    store.write_bytes("environment.json", json.dumps({"numerics": params.numerics, "versions": environment()},
                                                     indent=1))
    gens = store.local("gens")
    for stale in gens.glob("*/.*") if gens.exists() else []:
        shutil.rmtree(stale, ignore_errors=True)  # half-written generations of a killed run
    return store.local()


def _expected_record(request: GenerationRequest, runtime: Runtime, spec: str | None) -> dict[str, Any]:
    """What `models.engine.generate` records for these inputs: the effective runtime (a benign
    deviation such as batch:N or threads:1 changes it) and the deviation's own spec (a plugin's
    class name), so such generations are reused on resume too."""
    if spec is None:
        return {"request": request.model_dump(), "deviation": None, "runtime": runtime.model_dump()}
    from models.deviations import parse_deviation

    dev = parse_deviation(spec)
    return {"request": request.model_dump(), "deviation": dev.spec, "runtime": dev.apply_runtime(runtime).model_dump()}


def load_or_generate(directory: Path, request: GenerationRequest, runtime: Runtime, spec: str | None,
                     run_seed: int, capture: Iterable[str], on_saved: Callable[[Path], None] | None = None):
    """The generation stored in `directory` if complete, made from these inputs and with every
    artifact's hash matching its record; else a new one (which replaces the stored one, and is then
    passed to `on_saved`)."""
    from models.engine import generate

    gen = load_stored(directory, request, runtime, spec, run_seed)
    if gen is not None:
        return gen
    gen = generate(request, runtime, spec, capture=tuple(capture), run_seed=run_seed)
    gen.save(directory)
    if on_saved is not None:
        on_saved(directory)
    return gen


def load_stored(directory: Path, request: GenerationRequest, runtime: Runtime, spec: str | None, run_seed: int):
    """The generation stored in `directory` if complete, made from these inputs and with every
    artifact's hash matching its record; else None (partial, stale or edited: to be redone, and
    replaced only when complete)."""
    from models.engine import ArtifactError, Generation

    if directory.exists():
        try:
            rec = json.loads((directory / "record.json").read_text())
            exp = _expected_record(request, runtime, spec)
            if isinstance(rec, dict) and rec.get("run_seed") == run_seed \
                    and all(_normalise(rec.get(k)) == _normalise(v) for k, v in exp.items()):
                return Generation.load(directory)
        except (OSError, ValueError, ArtifactError, KeyError):
            pass  # partial, stale or edited: the caller redoes it, replacing it only when complete
    return None


def save_generation(gen, directory: Path):
    """A background job of the experiment: encode and hash the generation's video
    (`Generation.encoded`, the bytes `generate` would have made) and write its directory
    atomically (`Generation.save`: complete or absent). Returns the encoded generation and the
    seconds of each part."""
    import time

    t0 = time.perf_counter()
    gen = gen.encoded()
    t1 = time.perf_counter()
    gen.save(directory)
    return gen, {"encode": t1 - t0, "save": time.perf_counter() - t1}


def _normalise(x):
    return json.loads(json.dumps(x))


# ---------------------------------------------------------------------------------------------
# One prompt


def kind_of(spec: str) -> str:
    from models.deviations import parse_deviation

    return parse_deviation(spec).kind


def run_prompt(params: ExperimentParams, prompt_id: int, prompt: str, n_prompts: int,
               on_generation: Callable[[str], None] | None = None):
    """Generate and score one prompt; returns its rows (a DataFrame). Skips work already on disk.
    With `params.overlap`, the MP4 encodes and saves and the CPU-side scoring run beside the device
    work (`sim.overlap`, `_PromptScoring`); a generation directory is written by its save job
    (`Generation.save`: complete or absent), the prompt's score files here, after every job."""
    import time

    import pandas as pd

    from sim.overlap import Background

    t0 = time.perf_counter()
    store = store_of(params)
    score_rel = f"scores/p{prompt_id:04d}.parquet"
    done = _stored_scores(store, score_rel)
    if done is not None:
        return done
    scoring = _PromptScoring(params, store, prompt_id, prompt, on_generation)
    with Background(enabled=params.overlap) as background:
        scoring.run(background)
    df = pd.DataFrame(scoring.rows(split_of(prompt_id, n_prompts, params)))
    scoring.timing["wall"] = time.perf_counter() - t0
    store.write_bytes(f"scores/p{prompt_id:04d}.timing.json", json.dumps(scoring.timing))
    store.write_bytes(score_rel, parquet_bytes(df))  # last: the prompt is complete when this exists
    return df


def _stored_scores(store, score_rel: str):
    """The prompt's finished score rows, or None (a file truncated by a kill is removed: redo)."""
    import io

    import pandas as pd

    if store.exists(score_rel):
        try:
            return pd.read_parquet(io.BytesIO(store.read_bytes(score_rel)))
        except Exception:
            store.remove(score_rel)
    return None


class _PromptScoring:
    """One prompt's generations (the canonical one, then one per deviation) and every policy's
    score of every claim, with the time spent on each: wall seconds per stage, the device seconds
    of the generations run here (`Cost.seconds`: text encoder, experts, VAE), and how long the
    prompt waited for its background jobs.

    The work goes to a `sim.overlap.Background` (run at once when it is disabled): each new
    generation's MP4 encode and save (`save_generation`), and per claim the CPU-side part of every
    policy's score (`ValidationPolicy.prepare`). The device parts (generations, the validator's
    replays) stay on this thread. With the background enabled a claim is scored one generation
    late, so its encode runs beside the next generation; disabled, the order is the serial one
    (generate, encode and save, score) and the full policy scores all claims after the last one."""

    def __init__(self, params: ExperimentParams, store, prompt_id: int, prompt: str,
                 on_generation: Callable[[str], None] | None):
        self.params, self.store, self.prompt_id, self.prompt = params, store, prompt_id, prompt
        self.on_generation = on_generation
        self.request = params.base_request(prompt, prompt_id)
        self.grel = f"gens/p{prompt_id:04d}"
        self.capture = params.executor_capture()
        self.timing = {"generation": 0.0, "validator_replay": 0.0, "scoring": 0.0, "encode": 0.0, "save": 0.0,
                       "generation_device": 0.0, "validator_replay_device": 0.0, "scoring_waited": 0.0}

    def generation(self, name: str, spec: str | None, rseed: int, background):
        """`(generation, saved)`: the stored generation `name` when it is complete and current, else
        a new one off the device, its frames not yet encoded; `saved` is the future of the encoded
        and saved one (`save_generation` queued on `background`; done when it was stored)."""
        import time
        from concurrent.futures import Future

        from models.engine import generate

        directory = self.store.fetch_dir(f"{self.grel}/{name}")
        t0 = time.perf_counter()
        gen = load_stored(directory, self.request, self.params.validator_runtime, spec, rseed)
        if gen is None:  # run here: its device time counts, its encode and save are a job
            gen = generate(self.request, self.params.validator_runtime, spec, capture=tuple(self.capture),
                           run_seed=rseed, encode=False)
            self.timing["generation"] += time.perf_counter() - t0
            self.timing["generation_device"] += device_seconds(gen)
            saved = background.submit(save_generation, gen, directory)
        else:
            self.timing["generation"] += time.perf_counter() - t0
            saved = Future()
            saved.set_result((gen, {}))
        if self.on_generation:
            self.on_generation(spec if spec is not None else name)
        return gen, saved

    def landed(self, name: str, saved, background):
        """The encoded generation of `saved` (waiting for its job), published to the store when it
        was made here."""
        gen, seconds = background.result(saved)
        for k, v in seconds.items():
            self.timing[k] += v
        if seconds:
            self.store.publish_dir(f"{self.grel}/{name}", self.store.local(f"{self.grel}/{name}"))
        return gen

    def timed(self, score, *args):
        import time

        t0, r0, d0 = time.perf_counter(), self.ctx.replay_seconds, self.ctx.device_seconds
        out = score(*args)
        self.timing["validator_replay"] += self.ctx.replay_seconds - r0
        self.timing["validator_replay_device"] += self.ctx.device_seconds - d0
        self.timing["scoring"] += time.perf_counter() - t0 - (self.ctx.replay_seconds - r0)
        return out

    def start(self, background):
        """The canonical generation (its save queued), the validator's context, the policies."""
        from sim.policies import ValidationContext, get_policy

        p = self.params
        canonical, self.canonical_saved = self.generation("canonical", None, 0, background)
        self.ctx = ValidationContext(runtime=p.validator_runtime, fingerprint_k=p.fingerprint_k,
                                     fingerprint_seed=p.seed, metrics=p.metrics, aggregations=p.aggregations,
                                     weights_dir=p.weights_dir, capture=p.capture, commit_every=p.commit_every)
        self.policies = [get_policy(name) for name in p.policies]
        self.specs = p.all_deviations()
        self.executor = []  # per deviation: (executor compute share, deviation size)
        self.claims: list = []
        self.pending: dict[int, Any] = {}  # deviation index -> future of its policies' results
        self.results: dict[tuple[int, int], Any] = {}  # (deviation index, policy index) -> PolicyResult
        return canonical

    def validator(self, background) -> None:
        """The validator's own (canonical) generation in its context, once it is encoded and saved."""
        if self.request.key() not in self.ctx.replays:
            self.ctx.replays[self.request.key()] = self.landed("canonical", self.canonical_saved, background)

    def run(self, background) -> None:
        """Every generation, then every claim scored (see the class)."""
        canonical = self.start(background)
        lag = 1 if background.enabled else 0
        waiting = []  # (deviation index, future of its saved generation), in order
        for i, spec in enumerate(self.specs):
            gen, saved = self.generation(slug(spec), spec, run_seed_of(self.prompt_id, spec, self.params), background)
            self.executor.append((float(gen.cost.compute_share), _final_rel_l2(canonical, gen)))
            del gen
            waiting.append((i, saved))
            while len(waiting) > lag:
                self.score_claim(*waiting.pop(0), background)
        while waiting:
            self.score_claim(*waiting.pop(0), background)
        self.collect(background)

    def score_claim(self, i: int, saved, background) -> None:
        """Claim `i` once its generation is saved: each policy's device part now, the CPU-side parts
        as one job (the full policy's with the others when the background is enabled)."""
        from sim.policies import Claim

        self.validator(background)
        name = slug(self.specs[i])
        gen = self.landed(name, saved, background)
        claim = Claim(request=self.request, sha256=gen.sha256, directory=self.store.local(f"{self.grel}/{name}"))
        self.claims.append(claim)
        parts = {j: self.timed(policy.prepare, claim, self.ctx) for j, policy in enumerate(self.policies)
                 if background.enabled or not policy.batched}
        self.pending[i] = background.submit(lambda: {j: part() for j, part in parts.items()})

    def collect(self, background) -> None:
        """Every claim's results; without the background, the batched policies score all claims now."""
        self.validator(background)
        for i, fut in self.pending.items():
            for j, res in background.result(fut).items():
                self.results[(i, j)] = res
        for j, policy in enumerate(self.policies):
            if policy.batched and not background.enabled:  # no regeneration per claim: all claims at once
                for i, res in enumerate(self.timed(policy.score_many, self.claims, self.ctx)):
                    self.results[(i, j)] = res
        self.timing["scoring"] += background.seconds - self.timing["encode"] - self.timing["save"]
        self.timing["scoring_waited"] += background.waited

    def rows(self, split: str) -> list[dict[str, Any]]:
        rows = []
        for i, spec in enumerate(self.specs):
            eps = float(spec.split(":", 1)[1]) if spec.startswith("hwnoise:") else 0.0
            share, size = self.executor[i]
            kind = kind_of(spec)
            for j, policy in enumerate(self.policies):
                res = self.results[(i, j)]
                for metric, score in res.scores.items():
                    rows.append({
                        "run_id": self.store.name, "preset": self.params.preset, "prompt_id": self.prompt_id,
                        "prompt": self.prompt, "split": split, "deviation": spec, "kind": kind,
                        "policy": policy.name, "metric": metric, "score": float(score),
                        "executor_compute_share": share,
                        "validator_compute_share": float(res.validator_compute_share),
                        "bytes_kept": int(res.bytes_kept), "hwnoise_eps": eps, "deviation_size": size,
                    })
        return rows


def device_seconds(gen) -> float:
    """The device time a generation spent (`Cost.seconds`: text encoder, experts, VAE, each
    synchronised with the device)."""
    return float(sum(gen.cost.seconds.values()))


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
    data = parquet_bytes(df)
    store.write_bytes("scores.parquet", data)
    if not store.is_local:
        write_atomic(store.local("scores.parquet"), data)
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
    if not store.is_local:
        _fetch_strip_videos(store, df, params)
    deployment = None
    if "segment" in params.policies:
        from models.plan import expert_steps
        from sim.deployable import evaluate

        if not store.is_local:
            _fetch_commitment_files(store, df, params)
        high_steps = expert_steps(params.base_request(str(df["prompt"].iloc[0]), 0))["high"]
        deployment = evaluate(df, every=params.commit_every, challenged=params.challenge_segments,
                              benign_eps=benign_eps, secret_seed=params.seed, n_boot=min(200, params.bootstrap),
                              hwnoise_levels=params.hwnoise_eps, run_dir=run, calib_fraction=params.calib_fraction,
                              high_steps=high_steps)
        summary["deployable"] = deployment.summary()
        store.write_bytes("validator.json", json.dumps(deployment.summary(), indent=1, default=str))
    store.write_bytes("summary.json", json.dumps(summary, indent=1, default=str))
    html, md = write_report(run, df, json.loads(params.model_dump_json()), stats=stats, deployment=deployment)
    for rel in ("report.html", "report.md", "report_files"):
        store.publish_tree(rel)
    timing = stage_seconds(params, n_prompts)
    timing["statistics_and_report"] = time.perf_counter() - t0
    timing.update(stage_ratios(timing))
    store.write_bytes("timing.json", json.dumps(timing, indent=1))
    verdicts = verdict_rows(stats)
    return {"report": store.url("report.html"), "markdown": Path(md).read_text(), "verdicts": verdicts,
            "deployable": deployable_rows(deployment) if deployment is not None else [],
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
                write_atomic(store.local(rel), store.read_bytes(rel))


def _fetch_commitment_files(store, df, params: ExperimentParams) -> None:
    """Bring what `sim.deployable.evaluate` reads from the generations into the local cache: the
    canonical records (decode share) and the stored checkpoints (forged openings)."""
    for pid in sorted(set(int(p) for p in df["prompt_id"])):
        rels = [f"gens/p{pid:04d}/canonical/record.json"]
        rels += [f"gens/p{pid:04d}/{name}/latents.safetensors"
                 for name in ["canonical"] + [slug(d) for d in params.all_deviations()]]
        for rel in rels:
            if store.exists(rel):
                write_atomic(store.local(rel), store.read_bytes(rel))


def stage_seconds(params: ExperimentParams, n_prompts: int) -> dict[str, float]:
    """Seconds per stage summed over prompts (as last computed; a resumed prompt keeps its own): wall
    seconds of each stage (`generation` without its MP4 `encode` and file writes, `save`, which are
    entries of their own), the device seconds of the generations, the time the generating thread
    waited for the background jobs (`scoring_waited`), and each prompt's wall time (`wall`)."""
    total = {"generation": 0.0, "validator_replay": 0.0, "scoring": 0.0}
    store = store_of(params)
    for i in range(n_prompts):
        rel = f"scores/p{i:04d}.timing.json"
        if store.exists(rel):
            for k, v in json.loads(store.read_text(rel)).items():
                total[k] = total.get(k, 0.0) + v
    return total


def stage_ratios(t: dict[str, float]) -> dict[str, float]:
    """The ratios of `stage_seconds` (each only when its denominator is not zero): per stage, wall
    over device seconds (`generation_wall_over_device`, `validator_replay_wall_over_device`); for
    the prompts, their wall time (generation to score file) over their generations' (executor and
    validator, wall inside the generating calls; the MP4 encodes and the file writes are not in it:
    `wall_over_generation`) and over those generations' device time (`wall_over_device`). With the
    encodes and the scoring overlapped, `wall_over_generation` near 1 means the device never waited
    for the CPU-side work."""
    g, r = (t.get(k, 0.0) for k in ("generation", "validator_replay"))
    gd, rd = (t.get(k, 0.0) for k in ("generation_device", "validator_replay_device"))
    pairs = {"generation_wall_over_device": (g, gd), "validator_replay_wall_over_device": (r, rd),
             "wall_over_generation": (t.get("wall", 0.0), g + r), "wall_over_device": (t.get("wall", 0.0), gd + rd)}
    return {k: a / b for k, (a, b) in pairs.items() if b > 0}


def deployable_rows(dep) -> list[dict[str, Any]]:
    """The deployable rule as a whole on held-out prompts (for the CLI and the flow's artifact)."""
    t = dep.table
    return [{"rule": f"{dep.config.challenged} of {dep.config.segments} segments, {dep.config.metric}",
             "FRR": _fmt_count(t["frr"]), "FAR": _fmt_count(t["far"]),
             "validator compute": f"{t['validator_share']:.3g}x", "bytes on chain": str(t["chain_bytes"]),
             "bytes kept": _fmt(t["kept_bytes"], "d")}]


def _fmt_count(r: dict) -> str:
    """A rate with its count and exact 95% bounds: 0% (0/10) [0%, 31%]."""
    if not r.get("n"):
        return "n/a"
    return f"{100 * r['rate']:.3g}% ({r['k']}/{r['n']}) [{100 * r['cp_lo']:.2g}%, {100 * r['cp_hi']:.3g}%]"


def verdict_rows(stats) -> list[dict[str, Any]]:
    """Best policy per malign deviation (chosen on calib), with its held-out operating point (oracle
    view: each cheat gets the policy that suits it)."""
    v = stats.verdicts
    if v is None or len(v) == 0:
        return []
    best = v[v["is_best"]]
    rows = []
    for r in best.to_dict("records"):
        rows.append({
            "deviation": r["deviation"], "policy": r["policy"], "metric": r["metric"],
            "separated": r["separation"],
            "FRR@FAR<=1%": _fmt_count({"rate": r["frr_at_far"], "k": r["frr_at_far_k"], "n": r["frr_at_far_n"],
                                        "cp_lo": r["frr_at_far_cp_lo"], "cp_hi": r["frr_at_far_cp_hi"]}),
            "FAR@FRR<=1%": _fmt_count({"rate": r["far_at_frr"], "k": r["far_at_frr_k"], "n": r["far_at_frr_n"],
                                        "cp_lo": r["far_at_frr_cp_lo"], "cp_hi": r["far_at_frr_cp_hi"]}),
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
