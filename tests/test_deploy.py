"""Deployment: the regression comparison (pure, synthetic summaries), prefect.yaml (entrypoints are
Prefect flows that accept the parameters given), docker/ (compose services, images, volumes and URLs
agree; Dockerfiles copy files that exist), and two slow end-to-end checks: `prefect deploy --all`
against a test server, and regression_flow on a 2-prompt tiny experiment.

No Docker engine runs where these tests run, so the images themselves are not built here."""

from __future__ import annotations

import asyncio
import glob
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from flows.regression import regression_flow
from sim import regression as rg
from sim import experiment as ex

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
DOCKERFILE = DOCKER / "Dockerfile"


# ---------------------------------------------------------------------------------------------
# Synthetic summaries (the shape of RUN/summary.json, sim.stats.Stats.summary)


def vrow(deviation, separation="separated", frr=0.0, policy="checkpoint", metric="rel_l2.max", **kw):
    return {"deviation": deviation, "policy": policy, "metric": metric, "is_best": True, "separation": separation,
            "explanation": f"{deviation} is {separation}", "frr_at_far": frr, "test_far_at_far": 0.0, **kw}


def summary(*rows, n_prompts=8):
    return {"config": {"far_target": 0.01}, "benign_set": ["threads:1"], "deviations": list(rows),
            "n_prompts": n_prompts}


def by_dev(comparison):
    return {r.deviation: r for r in comparison.rows}


def test_identical_summaries_pass():
    s = summary(vrow("steps:6"), vrow("fp8", "not separated", 0.25))
    c = rg.compare_summaries(s, s)
    assert c.passed and not c.failures
    assert {r.status for r in c.rows} == {"ok"}
    assert "PASSED" in c.to_markdown(run="r", baseline="b")


def test_lost_separation_fails_with_the_explanation():
    base = summary(vrow("steps:6"), vrow("seed:+1"))
    cur = summary(vrow("steps:6", "not separated", 0.0), vrow("seed:+1"))
    c = rg.compare_summaries(base, cur)
    assert not c.passed
    r = by_dev(c)["steps:6"]
    assert r.failed and r.status == "lost separation" and "steps:6 is not separated" in r.reason
    assert by_dev(c)["seed:+1"].status == "ok"
    md = c.to_markdown(run="runs/regression/2026-01-02", baseline="runs/regression/baseline")
    assert "FAILED (1 regression(s))" in md and "**lost separation**" in md


def test_undetermined_counts_as_no_longer_separated():
    c = rg.compare_summaries(summary(vrow("fp8")), summary(vrow("fp8", "undetermined", None)))
    assert by_dev(c)["fp8"].failed


@pytest.mark.parametrize("base_frr, cur_frr, tol, fails", [
    (0.0, 0.05, 0.05, False),  # exactly at the tolerance
    (0.0, 0.10, 0.05, True),
    (0.20, 0.30, 0.05, True),  # a not-separated deviation may still regress in FRR
    (0.30, 0.10, 0.0, False),  # a fall is never a regression
    (0.10, 0.10, 0.0, False),
    (None, 0.9, 0.0, False),  # FRR not determined in the baseline: nothing to compare
])
def test_frr_rise_against_tolerance(base_frr, cur_frr, tol, fails):
    base = summary(vrow("cache:0.5", "not separated", base_frr))
    cur = summary(vrow("cache:0.5", "not separated", cur_frr))
    c = rg.compare_summaries(base, cur, frr_tolerance=tol)
    assert c.passed is (not fails)
    if fails:
        assert by_dev(c)["cache:0.5"].status == "FRR rose" and "rose from" in by_dev(c)["cache:0.5"].reason


def test_both_problems_are_named():
    c = rg.compare_summaries(summary(vrow("fp8", frr=0.0)), summary(vrow("fp8", "not separated", 0.5)))
    assert by_dev(c)["fp8"].status == "lost separation + FRR rose"


def test_missing_new_and_improved_deviations():
    base = summary(vrow("steps:6"), vrow("fp8", "not separated", 0.5), vrow("no-cfg", "not separated", 0.5))
    cur = summary(vrow("no-cfg", "separated", 0.0), vrow("lowres:32x32"))
    c = rg.compare_summaries(base, cur)
    rows = by_dev(c)
    assert rows["steps:6"].status == "missing" and rows["steps:6"].failed
    assert rows["fp8"].status == "absent" and not rows["fp8"].failed
    assert rows["no-cfg"].status == "improved" and not rows["no-cfg"].failed
    assert rows["lowres:32x32"].status == "new" and not rows["lowres:32x32"].failed
    assert [r.deviation for r in c.failures] == ["steps:6"]


def test_prompt_count_difference_is_noted():
    c = rg.compare_summaries(summary(vrow("fp8"), n_prompts=8), summary(vrow("fp8"), n_prompts=16))
    assert c.passed and any("8 prompts" in n for n in c.notes)


def test_non_best_rows_are_ignored():
    base = summary(vrow("fp8"), vrow("fp8", "not separated", 1.0, policy="segment", is_best=False))
    assert rg.compare_summaries(base, summary(vrow("fp8"))).passed


@pytest.mark.parametrize("bad, needle", [
    ([], "expected a JSON object"),
    ({"deviations": "x"}, "field 'deviations' must be a list"),
    ({"deviations": [3]}, "deviations[0] must be an object"),
    ({"deviations": [{"deviation": "fp8"}]}, "lacks the text field 'separation'"),
    ({"deviations": [vrow("fp8"), vrow("fp8")]}, "appears twice"),
    ({"deviations": [vrow("fp8", frr=1.5)]}, "frr_at_far must be in [0, 1]"),
    ({"deviations": [vrow("fp8", frr="high")]}, "frr_at_far must be a number"),
])
def test_bad_summaries_name_the_field(bad, needle):
    with pytest.raises(rg.RegressionInputError) as err:
        rg.compare_summaries(summary(vrow("fp8")), bad)
    assert needle in str(err.value) and "current summary" in str(err.value)


@pytest.mark.parametrize("tol", [-0.1, 1.5, "0.05", True, float("nan")])
def test_bad_tolerance(tol):
    with pytest.raises(rg.RegressionInputError, match="frr_tolerance"):
        rg.compare_summaries(summary(), summary(), frr_tolerance=tol)


_frr = st.one_of(st.none(), st.floats(0, 1))
_sep = st.sampled_from(["separated", "not separated", "undetermined"])


@settings(max_examples=200, deadline=None)
@given(rows=st.dictionaries(st.sampled_from(["steps:6", "fp8", "seed:+1", "no-cfg"]), st.tuples(_sep, _frr),
                            max_size=4),
       rows2=st.dictionaries(st.sampled_from(["steps:6", "fp8", "seed:+1", "no-cfg"]), st.tuples(_sep, _frr),
                             max_size=4),
       tol=st.floats(0, 1))
def test_failure_rule(rows, rows2, tol):
    """A deviation fails iff the baseline separated it and this run does not (or lacks it), or its
    FRR rose by more than the tolerance; comparing a run with itself never fails."""
    base = summary(*(vrow(d, s, f) for d, (s, f) in rows.items()))
    cur = summary(*(vrow(d, s, f) for d, (s, f) in rows2.items()))
    assert rg.compare_summaries(base, base, frr_tolerance=tol).passed
    c = by_dev(rg.compare_summaries(base, cur, frr_tolerance=tol))
    assert set(c) == set(rows) | set(rows2)
    for d, r in c.items():
        b, k = rows.get(d), rows2.get(d)
        lost = b is not None and b[0] == "separated" and (k is None or k[0] != "separated")
        rose = b is not None and k is not None and None not in (b[1], k[1]) and k[1] - b[1] > tol + 1e-12
        assert r.failed is (lost or rose)


def _scores(malign_gap: float) -> pd.DataFrame:
    """A synthetic scores table: 10 prompts, two benign and two malign deviations, one policy."""
    rng = np.random.default_rng(0)
    rows = []
    for p in range(10):
        split = "calib" if p < 5 else "test"
        for dev, kind, centre in (("threads:1", "benign", 0.0), ("splitk:2", "benign", 0.01),
                                  ("steps:6", "malign", malign_gap), ("seed:+1", "malign", 1.0)):
            rows.append({"prompt_id": p, "split": split, "deviation": dev, "kind": kind, "policy": "checkpoint",
                         "metric": "rel_l2.max", "score": centre + abs(rng.normal(0, 0.002))})
    return pd.DataFrame(rows)


def test_summaries_made_by_sim_stats():
    """The comparison reads what `sim.experiment.analyse` writes (Stats.summary through JSON)."""
    from sim.stats import compute_stats

    def digest(gap):
        s = compute_stats(_scores(gap), n_boot=0, n_boot_auc=0, n_boot_pauc=0).summary()
        return json.loads(json.dumps(s, default=str))

    good, bad = digest(0.5), digest(0.005)  # steps:6 far from benign, then inside benign noise
    assert {r["deviation"]: r["separation"] for r in good["deviations"]}["steps:6"] == "separated"
    c = rg.compare_summaries(good, bad)
    assert [r.deviation for r in c.failures] == ["steps:6"]
    assert by_dev(c)["seed:+1"].status == "ok"
    assert rg.compare_summaries(bad, good).passed  # the reverse is an improvement


# ---------------------------------------------------------------------------------------------
# Run-directory helpers


def test_run_date():
    assert rg.run_date_of("2026-03-01") == "2026-03-01"
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", rg.run_date_of(None))
    with pytest.raises(rg.RegressionInputError, match="run_date"):
        rg.run_date_of("yesterday")


def test_promote_baseline_copies_the_analysis_only(tmp_path):
    run = tmp_path / "2026-03-01"
    (run / "gens" / "p0000").mkdir(parents=True)
    (run / "gens" / "p0000" / "video.mp4").write_bytes(b"x" * 10)
    (run / "report_files").mkdir()
    (run / "report_files" / "roc.png").write_bytes(b"png")
    for name in ("params.json", "summary.json", "thresholds.json", "report.md"):
        (run / name).write_text("{}")
    base = rg.promote_baseline(run, tmp_path / "baseline")
    assert sorted(p.name for p in base.iterdir()) == sorted(
        ["params.json", "summary.json", "thresholds.json", "report.md", "report_files", "baseline.json"])
    assert json.loads((base / "baseline.json").read_text())["source_run"] == str(run)
    assert not list(tmp_path.glob(".baseline.*"))  # no temporary directory left behind
    with pytest.raises(rg.RegressionInputError, match="already exists"):
        rg.promote_baseline(run, base)


def test_read_summary_and_parameter_differences(tmp_path):
    with pytest.raises(rg.RegressionInputError, match="not a finished experiment run"):
        rg.read_summary(tmp_path, "baseline")
    (tmp_path / "summary.json").write_text("{not json")
    with pytest.raises(rg.RegressionInputError, match="cannot read"):
        rg.read_summary(tmp_path, "baseline")
    p = ex.ExperimentParams(prompts=4, out=str(tmp_path / "a"))
    (tmp_path / "params.json").write_text(p.model_dump_json())
    assert rg.parameter_differences(tmp_path, p.model_copy(update={"out": "elsewhere", "bootstrap": 5})) == []
    diff = rg.parameter_differences(tmp_path, ex.ExperimentParams(prompts=6))
    assert diff == ["prompts: baseline 4, run 6"]


# ---------------------------------------------------------------------------------------------
# prefect.yaml


def _prefect_yaml() -> dict:
    return yaml.safe_load((ROOT / "prefect.yaml").read_text())


def _deployments():
    from prefect.cli.deploy._models import PrefectYamlModel

    return PrefectYamlModel.model_validate(_prefect_yaml()).deployments


def test_prefect_yaml_deployments_are_flows_with_valid_parameters():
    from prefect.flows import Flow, load_flow_from_entrypoint

    from sim.network import NetworkParams

    deps = _deployments()
    names = set()
    for d in deps:
        flow = load_flow_from_entrypoint(d.entrypoint)
        assert isinstance(flow, Flow), d.entrypoint
        names.add(f"{flow.name}/{d.name}")
        assert d.work_pool.name == "t2vsim"
        sets = [d.parameters] + [s.parameters for s in (d.schedules or [])]
        for params in sets:
            assert params, f"{d.name}: parameters are carried in the file"
            unknown = set(params) - set(flow.parameters.properties)
            assert not unknown, f"{flow.name}/{d.name}: unknown parameters {unknown}"
            flow.validate_parameters(params)
            if flow.name == "network-epochs":
                NetworkParams.model_validate(params["params"])
    assert names == {"validation-regression/nightly", "validation-experiment/tiny-cpu",
                     "validation-experiment/small-gpu", "network-epochs/sqlite", "network-epochs/postgres",
                     "poc-stage/surrogate"}


def test_parameter_check_catches_a_bad_value():
    """The check above can fail: a misspelt nested field is refused by the flow's parameter model."""
    from prefect.exceptions import ParameterTypeError
    from prefect.flows import load_flow_from_entrypoint

    nightly = next(d for d in _deployments() if d.name == "nightly")
    flow = load_flow_from_entrypoint(nightly.entrypoint)
    bad = json.loads(json.dumps(nightly.parameters))
    bad["params"]["promts"] = 8
    with pytest.raises(ParameterTypeError, match="promts"):
        flow.validate_parameters(bad)


def test_nightly_regression_schedule():
    nightly = next(d for d in _deployments() if d.name == "nightly")
    assert nightly.entrypoint == "flows/regression.py:regression_flow"
    (sched,) = nightly.schedules
    assert sched.cron == "0 2 * * *" and sched.timezone == "UTC"
    from cronsim import CronSim  # Prefect's own cron parser dependency

    CronSim(sched.cron, __import__("datetime").datetime(2026, 1, 1))
    assert sched.parameters["params"]["preset"] == "tiny"
    assert sched.parameters["baseline"].startswith(sched.parameters["runs_root"])


# ---------------------------------------------------------------------------------------------
# docker/


def _compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def _env(service: dict) -> dict:
    env = service.get("environment") or {}
    return env if isinstance(env, dict) else dict(e.split("=", 1) for e in env)


def _expand(value: str) -> str:
    """Compose's ${VAR:-default} with every variable unset."""
    return re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", value)


def _dockerfile_stages() -> dict[str, list[str]]:
    stages, cur = {}, None
    for line in DOCKERFILE.read_text().splitlines():
        m = re.match(r"FROM\s+\S+(?:\s+AS\s+(\S+))?", line, re.I)
        if m:
            cur = m.group(1) or f"stage{len(stages)}"
            stages[cur] = []
        elif cur and line.strip() and not line.lstrip().startswith("#"):
            stages[cur].append(line)
    return stages


def test_compose_services_images_and_volumes_agree():
    c = _compose()
    services = c["services"]
    assert {"postgres", "prefect-server", "worker-gpu", "worker-cpu", "deploy"} <= set(services)
    stages = _dockerfile_stages()
    images = {}
    for name, svc in services.items():
        for dep in (svc.get("depends_on") or {}):
            assert dep in services, f"{name} depends on unknown service {dep}"
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0]
            if src.startswith("."):
                assert (DOCKER / src).exists(), f"{name}: bind source {src} missing"
            else:
                assert src in (c.get("volumes") or {}), f"{name}: volume {src} not declared"
        if "build" in svc:
            b = svc["build"]
            assert (DOCKER / b["context"] / b["dockerfile"]).resolve() == DOCKERFILE
            assert b["target"] in stages, f"{name}: target {b['target']} not in the Dockerfile"
            images.setdefault(svc["image"], set()).add(b["target"])
    assert all(len(t) == 1 for t in images.values()), f"one image tag built from two targets: {images}"
    gpu = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]


def test_compose_urls_point_at_services():
    c = _compose()
    s = c["services"]
    pg = _env(s["postgres"])
    user, password, db = pg["POSTGRES_USER"], _expand(pg["POSTGRES_PASSWORD"]), pg["POSTGRES_DB"]
    server_port = s["prefect-server"]["command"][s["prefect-server"]["command"].index("--port") + 1]
    from sqlalchemy.engine import make_url

    u = make_url(_expand(_env(s["prefect-server"])["PREFECT_API_DATABASE_CONNECTION_URL"]))
    assert (u.host, u.username, u.password, u.database) == ("postgres", user, password, db)
    for name in ("worker-gpu", "worker-cpu", "deploy"):
        api = _env(s[name])["PREFECT_API_URL"]
        assert api == f"http://prefect-server:{server_port}/api", name
    # the chain URL of the network-epochs/postgres deployment names this server and a database init.sql makes
    chain = make_url(next(d for d in _deployments() if d.name == "postgres").parameters["db_url"])
    assert (chain.host, chain.username, chain.password) == ("postgres", user, password)
    assert chain.get_backend_name() == "postgresql" and chain.get_driver_name() == "psycopg"
    assert re.search(rf"CREATE DATABASE {chain.database}\b", (DOCKER / "postgres" / "init.sql").read_text())


def test_workers_poll_every_queue_and_mount_runs_where_paths_resolve():
    text = DOCKERFILE.read_text()
    stages = _dockerfile_stages()
    polled = set()
    for target in ("gpu", "cpu"):
        body = "\n".join(stages[target])
        cmd = json.loads(re.search(r"^CMD (\[.*\])$", body, re.M).group(1))
        assert cmd[cmd.index("--pool") + 1] == "t2vsim"
        polled |= {cmd[i + 1] for i, a in enumerate(cmd) if a == "--work-queue"}
        workdir = re.search(r"^WORKDIR (\S+)$", body, re.M).group(1)
        assert workdir == "/opt/t2vsim"
    assert {d.work_pool.work_queue_name for d in _deployments()} <= polled
    runs_mount = next(v for v in _compose()["services"]["worker-cpu"]["volumes"] if v.startswith("runs:"))
    assert runs_mount.split(":")[1] == "/opt/t2vsim/runs"
    for d in _deployments():  # relative run paths land on the runs volume
        for key, value in _flatten(d.parameters):
            if key in ("out", "runs_root", "baseline", "run_dir"):
                assert value.startswith("runs/"), (d.name, key, value)
    assert "torch" not in (ROOT / "requirements.lock").read_text().split()  # torch comes from the index
    assert text.count("download.pytorch.org/whl/cu130") == 1 and text.count("download.pytorch.org/whl/cpu") == 1


def _flatten(d, prefix=""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _flatten(v, k)
        else:
            yield k, v


def test_dockerfile_copies_files_that_exist_and_pins_match_the_makefile():
    ignored = [ln.strip() for ln in (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
               if ln.strip() and not ln.startswith("#")]
    for line in DOCKERFILE.read_text().splitlines():
        if not line.startswith("COPY ") or "--from=" in line:
            continue
        sources = line.split()[1:-1]
        for src in sources:
            matches = glob.glob(str(ROOT / src))
            if "[" not in src:  # a plain path must exist; a glob may match nothing (optional file)
                assert matches, f"COPY source {src} does not exist"
            assert src.split("/")[0] not in ignored, f"COPY {src} but .dockerignore excludes it"
    install = (DOCKER / "install.sh").read_text()
    make = (ROOT / "Makefile").read_text()
    for pkg in ("torch", "torchvision"):
        pinned = re.search(rf"{pkg}==([\d.]+)", make).group(1)
        assert f"{pkg.upper()}_VERSION={pinned}" in install
    assert "-c \"$ROOT/requirements.lock\"" in install
    subprocess.run(["bash", "-n", str(DOCKER / "install.sh")], check=True)
    for m in re.finditer(r"\$\{(\w+)\}", "\n".join(ln for ln in DOCKERFILE.read_text().splitlines()
                                                    if ln.startswith("FROM"))):
        assert re.search(rf"^ARG {m.group(1)}=", DOCKERFILE.read_text(), re.M), f"ARG {m.group(1)} undefined"


# ---------------------------------------------------------------------------------------------
# End to end (slow)


@pytest.mark.slow
def test_prefect_deploy_registers_every_deployment(prefect_harness):
    """`prefect deploy --all` (the real CLI) against the test server; schedules keep their parameters."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.settings import PREFECT_API_URL

    async def setup_and_read(after: bool):
        async with get_client() as client:
            if not after:
                pools = {p.name for p in await client.read_work_pools()}
                if "t2vsim" not in pools:
                    await client.create_work_pool(WorkPoolCreate(name="t2vsim", type="process"))
                return None
            return await client.read_deployments()

    asyncio.run(setup_and_read(False))
    env = dict(os.environ, PREFECT_API_URL=PREFECT_API_URL.value())
    prefect = str(Path(sys.executable).with_name("prefect"))
    r = subprocess.run([prefect, "--no-prompt", "deploy", "--all"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    deps = {d.name: d for d in asyncio.run(setup_and_read(True))}
    assert {"nightly", "tiny-cpu", "small-gpu", "sqlite", "postgres", "surrogate"} <= set(deps)
    nightly = deps["nightly"]
    assert nightly.work_pool_name == "t2vsim" and nightly.work_queue_name == "cpu"
    assert deps["small-gpu"].work_queue_name == "gpu"
    (sched,) = nightly.schedules
    assert sched.schedule.cron == "0 2 * * *" and sched.parameters["params"]["preset"] == "tiny"
    assert nightly.pull_steps == [{"prefect.deployments.steps.set_working_directory": {"directory": str(ROOT)}}]


def _tiny_params() -> ex.ExperimentParams:
    return ex.ExperimentParams(preset="tiny", prompts=2, request={"steps": 4},
                               deviations=("threads:1", "steps:2", "seed:+1"), hwnoise_eps=(3e-3,),
                               policies=("checkpoint", "fingerprint"), bootstrap=20, strips=0)


async def _artifact_markdown(key: str) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async with get_client() as client:
        arts = await client.read_latest_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
    return arts[0].data


@pytest.mark.slow
def test_regression_flow_end_to_end(prefect_harness, tmp_path):
    params = _tiny_params()
    root, base = tmp_path / "regression", tmp_path / "regression" / "baseline"
    kw = dict(params=params, runs_root=str(root), baseline=str(base), run_date="2026-03-01")

    # 1. no baseline yet: the run becomes it (analysis files only)
    first = regression_flow(**kw)
    assert first["status"] == "baseline" and Path(first["baseline"]) == base
    assert (base / "summary.json").exists() and (base / "params.json").exists() and not (base / "gens").exists()
    run = root / "2026-03-01"
    assert json.loads((run / "params.json").read_text())["out"] == str(run)
    assert "BASELINE" in asyncio.run(_artifact_markdown("regression-comparison"))

    # 2. against itself (the run directory resumes): no regression
    second = regression_flow(**kw)
    assert second["status"] == "passed" and second["comparison"]["passed"]
    devs = {r["deviation"] for r in second["comparison"]["rows"]}
    assert devs == {"steps:2", "seed:+1"}
    assert "PASSED" in asyncio.run(_artifact_markdown("regression-comparison"))

    # 3. a baseline that separated a deviation this run lacks: the flow run fails, with the artifact
    s = json.loads((base / "summary.json").read_text())
    s["deviations"].append(vrow("guidance:3.5"))
    (base / "summary.json").write_text(json.dumps(s))
    state = regression_flow(**kw, return_state=True)
    assert state.is_failed()
    with pytest.raises(rg.RegressionDetected, match="guidance:3.5"):
        state.result()
    md = asyncio.run(_artifact_markdown("regression-comparison"))
    assert "FAILED (1 regression(s))" in md and "guidance:3.5" in md

    # 4. a baseline made with other parameters is refused before any generation
    with pytest.raises(rg.RegressionInputError, match="other parameters"):
        regression_flow(**{**kw, "params": params.model_copy(update={"seed": 1}),
                              "run_date": "2026-03-02"})
    assert not (root / "2026-03-02").exists()
