"""The run directory on an object store: s3:// against a local S3-compatible server (moto's server
mode, started here), with the same table as a local run, resume after lost or corrupted objects,
and the numerics guard."""

import io
import json
import socket
from pathlib import Path

import pandas as pd
import pytest

from sim import experiment as ex
from sim.storage import RunStore

pytestmark = pytest.mark.slow

DEVS = ("threads:1", "fp8")
BUCKET = "t2vsim-test"


def params_at(out):
    return ex.ExperimentParams(prompts=2, out=str(out), deviations=DEVS, hwnoise_eps=(3e-3,), bootstrap=20,
                               strips=1, policies=("full", "checkpoint", "segment"))


def run_all(params):
    ex.open_run(params)
    prompts = ex.load_prompts(params)
    for i, p in enumerate(prompts):
        ex.run_prompt(params, i, p, len(prompts))
    return prompts


def store_table(store, n):
    frames = [pd.read_parquet(io.BytesIO(store.read_bytes(f"scores/p{i:04d}.parquet"))) for i in range(n)]
    return pd.concat(frames, ignore_index=True)


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server on a free loopback port, fsspec pointed at it, one bucket."""
    import fsspec.config
    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    import logging

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    mp = pytest.MonkeyPatch()
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                 "T2VSIM_CACHE": str(tmp_path_factory.mktemp("cache"))}.items():
        mp.setenv(k, v)
    mp.setitem(fsspec.config.conf, "s3", {"endpoint_url": f"http://127.0.0.1:{port}"})
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    s3fs.S3FileSystem().mkdir(BUCKET)
    yield f"s3://{BUCKET}"
    mp.undo()
    server.stop()


def test_store_round_trip_and_atomic_generation_dirs(s3, tmp_path):
    store = RunStore(f"{s3}/unit")
    assert not store.is_local and store.name == "unit"
    store.write_bytes("a/b.json", b'{"x": 1}')
    assert store.exists("a/b.json") and json.loads(store.read_text("a/b.json")) == {"x": 1}
    d = tmp_path / "gen"
    d.mkdir()
    (d / "video.mp4").write_bytes(b"v1")
    (d / "record.json").write_text("{}")
    store.publish_dir("gens/g", d)
    assert store.list("gens/g") == ["record.json", "video.mp4"]
    assert (store.fetch_dir("gens/g") / "video.mp4").read_bytes() == b"v1"
    store.remove("gens/g/record.json")  # a directory without its record is not complete: not fetched
    assert not store.fetch_dir("gens/g").exists()
    local = RunStore(tmp_path / "local")
    assert local.is_local and local.fetch_dir("gens/g") == tmp_path / "local" / "gens" / "g"


def test_an_s3_run_equals_a_local_run_and_resumes(s3, tmp_path, monkeypatch):
    local = params_at(tmp_path / "run")
    run_all(local)
    remote = params_at(f"{s3}/run")
    prompts = run_all(remote)
    store = RunStore(remote.out)
    pd.testing.assert_frame_equal(store_table(store, 2), pd.concat(
        [pd.read_parquet(Path(local.out) / "scores" / f"p{i:04d}.parquet") for i in range(2)], ignore_index=True))
    summary = ex.analyse(remote, 2)
    for name in ("scores.parquet", "summary.json", "thresholds.json", "report.html", "report.md", "timing.json",
                 "environment.json", "gens/p0000/canonical/latents.safetensors"):
        assert store.exists(name), name
    assert summary["report"] == f"{remote.out}/report.html"
    assert store.list("report_files"), "the report's figures were not uploaded"

    # lose prompt 1's score file and corrupt one of its videos (its record stays): exactly that
    # generation is redone, from the store (the local cache is not trusted either)
    before = store_table(store, 2)
    store.remove("scores/p0001.parquet")
    store.write_bytes("gens/p0001/fp8/video.mp4", b"truncated")
    import models.engine

    calls = []
    real = models.engine.generate

    def counting(*args, **kwargs):
        if len(args) == 3:  # an executor or canonical generation (replays pass no deviation)
            calls.append(args[2])
        return real(*args, **kwargs)

    monkeypatch.setattr(models.engine, "generate", counting)
    ex.open_run(remote)
    ex.run_prompt(remote, 1, prompts[1], 2)
    assert calls == ["fp8"]  # threads:1 (a runtime deviation) is reused too
    pd.testing.assert_frame_equal(store_table(store, 2), before)
    # the same on the local run: a lost score file redoes the scoring, no generation
    calls.clear()
    (Path(local.out) / "scores" / "p0001.parquet").unlink()
    ex.run_prompt(local, 1, prompts[1], 2)
    assert calls == []


def test_the_numerics_guard_holds_on_s3(s3):
    """Parameters made under other library versions are refused once the run on the store holds
    finished work; before that (a run that failed before its first generation) the new ones are
    taken, as on a local run."""
    params = params_at(f"{s3}/guard")
    ex.open_run(params)
    store = RunStore(params.out)

    def tamper():
        data = json.loads(store.read_text("params.json"))
        data["numerics"] = "0" * 16  # as if made under other library versions
        store.write_bytes("params.json", json.dumps(data))

    tamper()
    ex.open_run(params)
    assert json.loads(store.read_text("params.json"))["numerics"] == params.numerics
    ex.run_prompt(params, 0, ex.load_prompts(params)[0], 2)
    tamper()
    with pytest.raises(ex.ExperimentError, match="numerics"):
        ex.open_run(params)


def test_a_bad_storage_url_names_the_field():
    with pytest.raises(ex.ExperimentError, match="out: cannot open"):
        ex.open_run(params_at("nosuchproto://bucket/run"))
