"""Nothing lost, nothing run that was not asked, no traceback for a user's mistake: one test per
failure found by trying t2vsim as a new user would (most serious first)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import app
from models.engine import ArtifactError, Generation, generate
from models.request import GenerationRequest
from sim import experiment as ex
from tests.network_fixtures import make_synthetic_run

ROOT = Path(__file__).parents[1]
runner = CliRunner()
REQ = GenerationRequest(prompt="a fox in snow", steps=2)


def digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def gen():
    return generate(REQ, capture=("init", "switch", "final"))


# 1. --out never deletes what t2vsim did not write ------------------------------------------------

def test_1_generate_out_keeps_foreign_files(tmp_path, monkeypatch, gen):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "thesis.tex").write_text("years of work")
    before = digest(tmp_path)
    for out in (".", "d"):
        res = runner.invoke(app, ["generate", "--prompt", "x", "--out", out])
        assert res.exit_code == 1 and res.output.startswith(f"error: out: {out} is not empty"), res.output
    assert digest(tmp_path) == before
    with pytest.raises(ValueError, match="not empty and not t2vsim's own output"):
        gen.save(tmp_path / "d")
    assert digest(tmp_path) == before
    # a directory holding only a generation's own files is replaced, whole, and nothing is left beside it
    gen.save(tmp_path / "g")
    (tmp_path / "g" / "video.mp4").write_bytes(b"old")
    gen.save(tmp_path / "g")
    assert Generation.load(tmp_path / "g").sha256 == gen.sha256
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "g", "notes.txt"]


# 2. no plugin module is imported from a run directory or a baseline ------------------------------

EVIL = """
from pathlib import Path
Path({marker!r}).write_text("imported")
from models.deviations import Deviation
class Cheat(Deviation):
    name, kind, description = "evil", "malign", "runs code at import"
"""


def test_2_resume_and_regression_import_nothing_from_params_json(tmp_path, monkeypatch):
    from sim import regression as rg

    marker = tmp_path / "imported.txt"
    (tmp_path / "evilpkg").mkdir()
    (tmp_path / "evilpkg" / "__init__.py").write_text("")
    (tmp_path / "evilpkg" / "cheats.py").write_text(EVIL.format(marker=str(marker)))
    monkeypatch.syspath_prepend(str(tmp_path))
    run = tmp_path / "theirs"
    stored = json.loads(ex.ExperimentParams(out=str(run), prompts=2).model_dump_json())
    stored["deviations"] = ["evilpkg.cheats:Cheat"]
    (run / "gens" / "p0000" / "canonical").mkdir(parents=True)
    (run / "gens" / "p0000" / "canonical" / "record.json").write_text("{}")  # finished work
    (run / "params.json").write_text(json.dumps(stored))
    res = runner.invoke(app, ["experiment", "--out", str(run), "--prompts", "2", "--no-progress"])
    assert res.exit_code == 1 and "different parameter set" in res.output and "evilpkg.cheats:Cheat" in res.output
    assert rg.parameter_differences(run, ex.ExperimentParams(prompts=2)) == [
        f"deviations: baseline ['evilpkg.cheats:Cheat'], run {list(ex.ExperimentParams().deviations)!r}"]
    assert not marker.exists() and "evilpkg.cheats" not in sys.modules
    # named on the command line it is refused too, unless allowed explicitly
    res = runner.invoke(app, ["generate", "--prompt", "x", "--deviation", "evilpkg.cheats:Cheat", "--out", str(tmp_path / "g")])
    assert res.exit_code == 1 and "--allow-plugin evilpkg.cheats" in res.output
    assert not marker.exists()
    from models.deviations import allow_plugins, parse_deviation

    with allow_plugins(["evilpkg"]):
        assert parse_deviation("evilpkg.cheats:Cheat").name == "evil"
    assert marker.exists()  # allowed explicitly, it is imported (and its code runs)


# 3 and 11. network run: --config values kept; an earlier run is never overwritten, --db or not ----

def test_3_11_network_run_config_and_no_overwrite(tmp_path, monkeypatch, prefect_harness):
    monkeypatch.chdir(tmp_path)
    make_synthetic_run(tmp_path / "exp", n_prompts=20)
    (tmp_path / "cfg.json").write_text(json.dumps({"run_dir": "exp", "epochs": 1, "requests_per_epoch": 40,
                                                   "blocks_per_epoch": 10, "seed": 7}))
    res = runner.invoke(app, ["network", "run", "--config", "cfg.json", "--seed", "5", "--out", "n"])
    assert res.exit_code == 0, res.output
    p = json.loads((tmp_path / "n" / "params.json").read_text())
    assert (p["epochs"], p["requests_per_epoch"], p["blocks_per_epoch"], p["seed"]) == (1, 40, 10, 5)
    assert sorted(x.name for x in tmp_path.iterdir()) == ["cfg.json", "exp", "n"]  # no temp dir left beside
    before = digest(tmp_path / "n")
    for extra in ([], ["--db", "other.db"]):
        res = runner.invoke(app, ["network", "run", "--config", "cfg.json", "--out", "n", *extra])
        assert res.exit_code == 1 and res.output.startswith("error: out: n is not empty"), res.output
    assert digest(tmp_path / "n") == before and not (tmp_path / "other.db").exists()


# 4. every artifact is hashed; an edited latent file is never reused --------------------------------

def test_4_edited_latents_are_refused_and_regenerated(tmp_path, gen):
    from safetensors.torch import load_file, save_file

    d = gen.save(tmp_path / "g")
    rec = json.loads((d / "record.json").read_text())
    assert set(rec["files"]) == {"video.mp4", "latents.safetensors"}
    tensors = load_file(d / "latents.safetensors")
    tensors["final"] = tensors["final"] * 1.5  # a valid file with other values
    from safetensors import safe_open

    with safe_open(str(d / "latents.safetensors"), "pt") as f:
        meta = f.metadata()
    save_file(tensors, str(d / "latents.safetensors"), metadata=meta)
    with pytest.raises(ArtifactError, match="latents.safetensors: SHA-256 .* does not match"):
        Generation.load(d)
    again = ex.load_or_generate(d, REQ, gen.runtime, None, 0, ("init", "switch", "final"))
    assert (again.latents["final"] == gen.latents["final"]).all()
    assert Generation.load(d).sha256 == gen.sha256  # replaced by a fresh, consistent generation


# 5. bounds, finiteness, whitespace, booleans --------------------------------------------------------

def test_5_unbounded_or_non_finite_values_are_refused():
    from pydantic import ValidationError

    from sim.network import NetworkParams
    from sim.poc import participants_from_mix

    for kw in ({"shift": float("nan")}, {"shift": float("inf")}, {"steps": 100_000}, {"width": 4096, "height": 4096},
               {"prompt": "  \t "}, {"frames": True}):
        with pytest.raises(ValidationError):
            GenerationRequest(**{"prompt": "p", **kw})
    for thr in (float("nan"), float("inf")):
        with pytest.raises(ValidationError, match="finite"):
            NetworkParams(run_dir="r", threshold=thr)
    with pytest.raises(ValueError, match="at most 10,000"):
        participants_from_mix("honest=100000000", 10)
    for kw, needle in (({"capture": ("later",)}, "capture"), ({"aggregations": ("median",)}, "aggregation"),
                       ({"out": ""}, "out")):
        with pytest.raises(ValidationError, match=needle):
            ex.ExperimentParams(**kw)


# 6. user errors end in one line, never a traceback ---------------------------------------------------

def test_6_no_traceback_for_a_users_mistake(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "f").write_text("a file")
    (tmp_path / "bin.json").write_bytes(b"\xff\xfe\x00garbage")
    make_synthetic_run(tmp_path / "exp", n_prompts=20)
    for args in (["generate", "--prompt", "x", "--out", "f"], ["generate", "--prompt", "x", "--out", "f/sub"],
                 ["generate", "--prompt", "x", "--device", "cuda"],
                 ["network", "run", "--run-dir", "exp", "--db", "nowhere/x.db", "--out", "n"],
                 ["network", "run", "--run-dir", "exp", "--db", "mysql://h/db", "--out", "n"],
                 ["experiment", "--config", "bin.json"], ["poc", "power", "--sample-size", "0"],
                 ["generate", "--prompt", "x", "--deviation", "models.deviations:Deviation"]):
        res = runner.invoke(app, args)
        assert res.exit_code == 1 and res.output.startswith("error: ") and len(res.output.splitlines()) == 1, res.output
    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "record.json").write_text("[]")
    (tmp_path / "g" / "video.mp4").write_bytes(b"")
    with pytest.raises(ArtifactError, match="is not a generation record"):
        Generation.load(tmp_path / "g")
    assert sorted(x.name for x in tmp_path.iterdir()) == ["bin.json", "exp", "f", "g"]


def test_6_domain_errors_in_a_subprocess_print_one_line():
    res = subprocess.run([str(ROOT / ".venv/bin/t2vsim"), "poc", "power", "--sample-size", "0"], capture_output=True,
                         text=True, cwd=ROOT) if (ROOT / ".venv/bin/t2vsim").exists() else pytest.skip("no .venv")
    assert res.returncode == 1 and res.stdout == ""
    assert res.stderr.splitlines() == ["error: sample_size: each size must be an integer in 1..100000, got 0"]


# 7. a failed run's params.json does not block the corrected command ---------------------------------

def test_7_a_run_directory_without_work_takes_corrected_parameters(tmp_path):
    first = ex.ExperimentParams(out=str(tmp_path / "r"), prompts=2, seed=1)
    ex.open_run(first)  # as a run that failed before its first generation leaves it
    corrected = first.model_copy(update={"seed": 2})
    ex.open_run(corrected)
    assert json.loads((tmp_path / "r" / "params.json").read_text())["seed"] == 2
    (tmp_path / "r" / "scores").mkdir()
    (tmp_path / "r" / "scores" / "p0000.parquet").write_bytes(b"finished work")
    with pytest.raises(ex.ExperimentError, match="different parameter set"):
        ex.open_run(first)


# 8. kill -9 or SIGTERM of a flow command leaves no Prefect server ----------------------------------

def _children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(d.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_8_the_temporary_server_dies_with_the_command(tmp_path, sig):
    code = textwrap.dedent("""
        import time, sys
        from flows.cli import main
        import flows.poc
        real = flows.poc.poc_stage_flow
        def slow(*a, **k):  # keep the command alive once its server is up
            time.sleep(600)
        flows.poc.poc_stage_flow = slow
        sys.argv = ["t2vsim", "poc", "run", "--mix", "honest=2", "--capacity", "10"]
        main()
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env.update(PREFECT_HOME=str(tmp_path / "prefect"), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env)
    server, deadline = None, time.time() + 240
    while time.time() < deadline and server is None:
        kids = [k for k in _children(proc.pid) if b"uvicorn" in Path(f"/proc/{k}/cmdline").read_bytes()]
        server = kids[0] if kids else None
        time.sleep(0.2)
    assert server is not None, "no temporary server started"
    assert os.getpgid(server) == server != os.getpgid(proc.pid)  # its own process group
    time.sleep(1.0)
    proc.send_signal(sig)
    proc.wait(timeout=30)
    deadline = time.time() + 30
    while time.time() < deadline and _alive(server):
        time.sleep(0.2)
    alive = _alive(server)
    if alive:
        os.kill(server, signal.SIGKILL)
    assert not alive, "the temporary Prefect server outlived the command"


# 9. resume reuses finished runtime-changing and plugin deviations ----------------------------------

def test_9_resume_reuses_batch_threads_attention_and_plugin_deviations(tmp_path, monkeypatch):
    from models.deviations import allow_plugins
    from models.request import Runtime

    specs = ("batch:2", "threads:1", "attention:_native_math", "tests.test_deviations:DoubleSeed")
    rt = Runtime()
    with allow_plugins(["tests"]):
        made = {s: ex.load_or_generate(tmp_path / ex.slug(s), REQ, rt, s, 3, ("final",)) for s in specs}

        def refuse(*a, **k):
            raise AssertionError("regenerated a finished generation")

        monkeypatch.setattr("models.engine.generate", refuse)
        for s in specs:
            again = ex.load_or_generate(tmp_path / ex.slug(s), REQ, rt, s, 3, ("final",))
            assert again.sha256 == made[s].sha256


# 10. tables printed to a pipe keep their full width, or come as JSON ---------------------------------

def test_10_tables_are_not_cut_in_a_pipe():
    from models.deviations import deviation_table

    rows = deviation_table()
    res = runner.invoke(app, ["deviations"])  # CliRunner's output is not a terminal, like a pipe
    assert res.exit_code == 0 and "…" not in res.output
    for row in rows:
        assert row["description"] in res.output
    res = runner.invoke(app, ["--json", "deviations"])
    table = json.loads(res.output.splitlines()[0])
    assert [r["kind"] for r in table["rows"]] == [r["kind"] for r in rows]
    assert [r["description"] for r in table["rows"]] == [r["description"] for r in rows]


def test_10_economics_headers_whole(tmp_path):
    make_synthetic_run(tmp_path / "exp", n_prompts=20)
    res = runner.invoke(app, ["network", "economics", "--run-dir", str(tmp_path / "exp")])
    assert res.exit_code == 0, res.output
    assert "gain vs honest ngonka" in res.output and "p invalid epoch" in res.output and "…" not in res.output
