"""Scoring beside the device (`sim.overlap`): the same results as one after the other, errors that
surface as raised, bounded queues, and a run that resumes after a failure in the background."""

import json
import struct
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from sim import experiment as ex
from sim.overlap import Background
from tests.experiment_helpers import experiment_params, run_all

DEVS = ("threads:1", "steps:6", "seed:+1")


def params_of(out, **kw):
    return experiment_params(out, kw.pop("deviations", DEVS), prompts=kw.pop("prompts", 2),
                             bootstrap=kw.pop("bootstrap", 20), **kw)


def scores(out):
    df = pd.read_parquet(Path(out) / "scores.parquet")
    return df[[c for c in df.columns if c != "run_id"]]


# Measured times, which differ from run to run: the devices' seconds in each record and what is
# derived from them (the deployable validator's decode share).
TIMED_KEYS = {"seconds", "validator_decode_share", "validator_share"}


def untimed(x):
    if isinstance(x, dict):
        return {k: untimed(v) for k, v in x.items() if k not in TIMED_KEYS}
    return [untimed(v) for v in x] if isinstance(x, list) else x


def _file(p: Path):
    """A generation file as compared: the MP4's bytes; the latent file's header (as JSON: the
    writer orders its metadata differently from run to run) and tensor bytes; the record but its
    timings (and so the latent file's hash)."""
    raw = p.read_bytes()
    if p.name == "latents.safetensors":
        n = struct.unpack("<Q", raw[:8])[0]
        return json.loads(raw[8:8 + n]), raw[8 + n:]
    if p.name == "record.json":
        rec = untimed(json.loads(raw))
        rec["files"].pop("latents.safetensors")
        return rec
    return raw


def generation_files(out):
    gens = Path(out) / "gens"
    files = {str(p.relative_to(gens)): _file(p) for p in sorted(gens.glob("*/*/*"))}
    assert {Path(k).name for k in files} == {"video.mp4", "latents.safetensors", "record.json"}
    return files


def hidden_files(out):
    return sorted(str(p) for p in Path(out).rglob(".*"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("overlap")
    serial, overlapped = params_of(base / "serial", overlap=False), params_of(base / "overlapped")
    return serial, run_all(serial), overlapped, run_all(overlapped)


# ---------------------------------------------------------------------------------------------
# The queue


def test_jobs_run_in_order_and_return_their_values():
    for enabled in (True, False):
        with Background(enabled=enabled, depth=2) as bg:
            futs = [bg.submit(lambda i=i: i * i) for i in range(6)]
            assert [bg.result(f) for f in futs] == [i * i for i in range(6)]
        assert bg.seconds >= 0


def test_the_queue_holds_at_most_depth_jobs():
    running, most, gate = [0], [0], threading.Event()
    lock = threading.Lock()

    def job():
        gate.wait(5)
        with lock:
            running[0] -= 1

    bg = Background(depth=2)
    for _ in range(2):
        with lock:
            running[0] += 1
        bg.submit(job)
    t = threading.Timer(0.3, gate.set)
    t.start()
    t0 = time.perf_counter()
    bg.submit(job)  # waits until a slot is free
    assert time.perf_counter() - t0 >= 0.25 and bg.waited >= 0.25
    bg.close()


def test_an_error_surfaces_as_raised_and_drops_the_queued_jobs():
    ran = []

    def fail():
        raise ValueError("metric 'ssim' cannot score 8x8 frames")

    bg = Background(depth=4)
    bg.submit(fail)
    time.sleep(0.2)
    with pytest.raises(ValueError, match="cannot score 8x8 frames"):
        bg.submit(lambda: ran.append(1))
    bg.close()
    bg2 = Background(depth=4)
    bg2.submit(time.sleep, 0.2)
    bg2.submit(fail)
    bg2.submit(lambda: ran.append(2))
    with pytest.raises(ValueError, match="cannot score 8x8 frames"):
        bg2.close()
    assert ran == [] and not Background(enabled=False).enabled
    with pytest.raises(ValueError, match="depth"):
        Background(depth=0)


# ---------------------------------------------------------------------------------------------
# The experiment


@pytest.mark.slow
def test_overlapped_run_equals_serial_run(runs):
    serial, s_sum, overlapped, o_sum = runs
    pd.testing.assert_frame_equal(scores(serial.out), scores(overlapped.out), check_exact=True)
    assert generation_files(serial.out) == generation_files(overlapped.out)  # MP4, latents, records: same bytes
    for name in ("thresholds.json", "summary.json", "validator.json"):
        a, b = (untimed(json.loads((Path(p.out) / name).read_text())) for p in (serial, overlapped))
        assert a == b, name
    assert s_sum["verdicts"] == o_sum["verdicts"]
    assert hidden_files(serial.out) == hidden_files(overlapped.out) == []


@pytest.mark.slow
def test_timing_reports_wall_and_device_per_stage(runs):
    serial, _, overlapped, _ = runs
    for p in (serial, overlapped):
        t = json.loads((Path(p.out) / "timing.json").read_text())
        assert all(isinstance(v, float) for v in t.values())  # flat: every value a number of seconds or a ratio
        for stage in ("generation", "validator_replay"):
            assert 0 < t[f"{stage}_device"] < t[stage]
            assert t[f"{stage}_wall_over_device"] == pytest.approx(t[stage] / t[f"{stage}_device"])
        gen = t["generation"] + t["validator_replay"]
        assert t["wall"] >= gen and t["wall_over_generation"] == pytest.approx(t["wall"] / gen)
        assert t["wall_over_device"] == pytest.approx(
            t["wall"] / (t["generation_device"] + t["validator_replay_device"]))
    assert json.loads((Path(serial.out) / "timing.json").read_text())["scoring_waited"] == 0.0


def _failing_score_frames(monkeypatch, after: int):
    import sim.metrics

    real, calls = sim.metrics.score_frames, [0]

    def score_frames(*a, **k):
        calls[0] += 1
        if calls[0] > after:
            raise sim.metrics.MetricError("metric 'ssim' cannot score these frames (injected)")
        return real(*a, **k)

    monkeypatch.setattr(sim.metrics, "score_frames", score_frames)


@pytest.mark.slow
@pytest.mark.parametrize("overlap", [True, False])
def test_a_background_failure_surfaces_and_the_run_resumes(runs, tmp_path, monkeypatch, overlap):
    from sim.metrics import MetricError

    serial = runs[0]
    params = params_of(tmp_path / "run", overlap=overlap)
    ex.open_run(params)
    prompts = ex.load_prompts(params)
    _failing_score_frames(monkeypatch, after=1)
    with pytest.raises(MetricError, match=r"^metric 'ssim' cannot score these frames \(injected\)$"):
        ex.run_prompt(params, 0, prompts[0], len(prompts))
    assert not (tmp_path / "run" / "scores" / "p0000.parquet").exists()
    assert hidden_files(params.out) == []  # no half-written file
    gens = list((tmp_path / "run" / "gens" / "p0000").iterdir())
    assert gens and all(sorted(p.name for p in d.iterdir()) == ["latents.safetensors", "record.json", "video.mp4"]
                        for d in gens)  # the generations made before the error are complete
    monkeypatch.undo()
    run_all(params_of(tmp_path / "run", overlap=not overlap))  # resumed, the other way round
    pd.testing.assert_frame_equal(scores(serial.out), scores(params.out), check_exact=True)
    assert generation_files(serial.out) == generation_files(params.out)


# ---------------------------------------------------------------------------------------------
# What runs beside the generation: the replaying policies' CPU-side parts, the MP4 encode and save


def _claims(out, prompt_id=0):
    from models.engine import Generation
    from sim.policies import Claim

    params = params_of(out)
    request = params.base_request(ex.load_prompts(params)[prompt_id], prompt_id)
    gens = Path(out) / "gens" / f"p{prompt_id:04d}"
    claims = [Claim(request, json.loads((gens / ex.slug(d) / "record.json").read_text())["sha256"], gens / ex.slug(d))
              for d in ("threads:1", "seed:+1")]
    return request, Generation.load(gens / "canonical"), claims


@pytest.mark.slow
def test_a_prepared_score_run_on_another_thread_equals_the_score(runs, tmp_path):
    """`prepare` runs the device part at once and hands back the rest, which gives `score`'s result
    float for float on another thread, and touches neither the replay timers nor the regenerations."""
    import shutil
    from concurrent.futures import ThreadPoolExecutor

    from sim.policies import Claim, ValidationContext, get_policy

    request, canonical, claims = _claims(runs[0].out)
    tampered = tmp_path / "tampered"  # the committed MP4 no longer matches: the decode check fails
    shutil.copytree(claims[0].directory, tampered)
    (tampered / "video.mp4").write_bytes((tampered / "video.mp4").read_bytes()[:-7] + b"tamper!")
    claims.append(Claim(request, claims[0].sha256, tampered))
    for name in ("full", "checkpoint", "fingerprint", "segment"):
        policy = get_policy(name)
        one, two = ValidationContext(), ValidationContext()
        one.replays[request.key()] = two.replays[request.key()] = canonical
        expected = [policy.score(c, one) for c in claims]
        parts = [policy.prepare(c, two) for c in claims]
        timers = (two.replay_seconds, two.device_seconds)
        with ThreadPoolExecutor(1) as pool:
            got = [pool.submit(part).result() for part in parts]
        assert (two.replay_seconds, two.device_seconds) == timers, name  # the device work was done in prepare
        assert [list(r.scores.items()) for r in got] == [list(r.scores.items()) for r in expected], name
        assert [(r.reason, r.validator_compute_share, r.bytes_kept) for r in got] == \
            [(r.reason, r.validator_compute_share, r.bytes_kept) for r in expected], name
        assert (one.replay_seconds > 0) == (two.replay_seconds > 0) == (name in ("checkpoint", "segment")), name
    assert got[2].scores["decode.mad"] == float("inf") and got[0].scores["decode.mad"] < 1.0


def _watch_threads(monkeypatch, seen, slow=0.0):
    """Record on which thread each MP4 encode and each latent distance runs, and whether this thread
    was inside `generate` meanwhile; the encode is slowed by `slow` seconds."""
    import models.artifacts
    import models.engine
    import sim.metrics

    inside = threading.local()
    main = threading.current_thread()

    def where():
        return "main" if threading.current_thread() is main else "background", getattr(inside, "gen", False)

    def wrap(fn, label, pause=0.0):
        def wrapped(*a, **k):
            seen.append((label, *where()))
            time.sleep(pause)
            return fn(*a, **k)
        return wrapped

    real_generate = models.engine.generate

    def generate(*a, **k):
        inside.gen = True
        try:
            return real_generate(*a, **k)
        finally:
            inside.gen = False

    monkeypatch.setattr(models.engine, "generate", generate)
    monkeypatch.setattr(models.artifacts, "encode_mp4", wrap(models.artifacts.encode_mp4, "encode", slow))
    monkeypatch.setattr(sim.metrics, "score_latents", wrap(sim.metrics.score_latents, "latents"))


@pytest.mark.slow
@pytest.mark.parametrize("overlap", [True, False])
def test_encodes_and_distances_run_beside_the_generations(tmp_path, monkeypatch, overlap):
    """Overlapped, every MP4 encode and latent distance runs on the background thread; serial, on
    this one, never inside a generation. Either way the encodes have their own timing entry and the
    generation time excludes them."""
    params = params_of(tmp_path / "run", deviations=("threads:1",), overlap=overlap)
    ex.open_run(params)
    prompts = ex.load_prompts(params)
    seen, slow = [], 0.4
    _watch_threads(monkeypatch, seen, slow)
    ex.run_prompt(params, 0, prompts[0], len(prompts))
    encodes = [s for s in seen if s[0] == "encode"]
    assert len(encodes) == 3  # the canonical generation and the two claims (threads:1, hwnoise)
    assert {s[1] for s in seen} == {"background" if overlap else "main"}
    assert not any(in_generation for _, thread, in_generation in seen if thread == "main")
    t = json.loads((tmp_path / "run" / "scores" / "p0000.timing.json").read_text())
    assert t["encode"] >= 3 * slow and t["save"] > 0
    assert t["wall"] >= t["generation"] + t["validator_replay"] + (0 if overlap else t["encode"])
    assert t["scoring"] > 0 and (t["scoring_waited"] > 0) == overlap  # serial: nothing to wait for


@pytest.mark.slow
@pytest.mark.parametrize("overlap", [True, False])
def test_a_failed_save_surfaces_as_raised_and_leaves_no_partial_generation(tmp_path, monkeypatch, overlap):
    """An error while a generation is written (here the latent file, half written when the disk
    fills) surfaces from `run_prompt` as raised; that generation is absent, the earlier one
    complete, and nothing half-written remains."""
    import safetensors.torch

    params = params_of(tmp_path / "run", deviations=("threads:1",), overlap=overlap)
    ex.open_run(params)
    prompts = ex.load_prompts(params)
    real, calls = safetensors.torch.save_file, [0]

    def save_file(tensors, filename, metadata=None):
        calls[0] += 1
        if calls[0] == 2:
            Path(filename).write_bytes(b"half a latent file")
            raise OSError(28, "No space left on device (injected)")
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", save_file)
    with pytest.raises(OSError, match=r"No space left on device \(injected\)") as err:
        ex.run_prompt(params, 0, prompts[0], len(prompts))
    assert err.value.errno == 28
    gens = tmp_path / "run" / "gens" / "p0000"
    assert sorted(p.name for p in gens.iterdir()) == ["canonical"]
    assert sorted(p.name for p in (gens / "canonical").iterdir()) == ["latents.safetensors", "record.json",
                                                                        "video.mp4"]
    assert hidden_files(params.out) == [] and not (tmp_path / "run" / "scores" / "p0000.parquet").exists()
