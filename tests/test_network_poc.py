"""Epoch weights from a PoC stage (sim.poc) with a PoC strategy per executor group, through
`run_network`, the Prefect flow and `t2vsim network run` (typer's CliRunner, small sizes).

Surrogate PoC fidelity: leaf distances drawn from the bundled PoC measurement (docs/poc.md);
inference validation from the synthetic run of tests/network_fixtures.py."""

from __future__ import annotations

import pandas as pd
import pytest
import typer
from pydantic import ValidationError
from sqlalchemy import select
from typer.testing import CliRunner

from sim.chain import check_invariants, open_chain
from sim.chain import tables as T
from sim.network import ExecutorGroup, NetworkParams, run_network
from tests.network_fixtures import make_synthetic_run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return make_synthetic_run(tmp_path_factory.mktemp("synthetic-poc") / "run")


def _params(run_dir, poc_strategy: str, **kw) -> NetworkParams:
    base = dict(run_dir=str(run_dir), epochs=2, requests_per_epoch=200, blocks_per_epoch=10, weights_source="poc",
                hosts=(ExecutorGroup(count=3), ExecutorGroup(count=1, strategy="malicious", deviation="steps:2",
                                                             cheat_rate=1.0, poc_strategy=poc_strategy)))
    base.update(kw)
    return NetworkParams(**base)


def test_poc_cheater_gets_no_weight_no_work_and_no_reward(run_dir, tmp_path):
    url = f"sqlite:///{tmp_path / 'c.db'}"
    res = run_network(_params(run_dir, "inflate:2"), url)
    poc = res.extra["poc"]
    assert len(poc) == 2 * 4  # one row per host and epoch
    cheat = poc[poc.poc_strategy == "inflate:2"]
    honest = poc[poc.poc_strategy == "honest"]
    assert (~cheat.accepted).all() and (cheat.weight == 0).all() and (cheat["count"] == 2000).all()
    assert honest.accepted.all() and (honest.weight == 1000).all()  # poc_nonces at the reference speed
    assert list(res.epochs.poc_rejected) == [1, 1]
    assert res.epochs.cheats.sum() == 0  # rejected at PoC: it is sent no requests at all
    mal = res.hosts[res.hosts.strategy == "malicious"].iloc[0]
    assert mal.poc_strategy == "inflate:2" and mal.rewards_ngonka == 0 and mal.payments_ngonka == 0
    eng = open_chain(url)
    assert check_invariants(eng) == []
    with eng.connect() as c:
        commits = c.execute(select(T.PocCommit.__table__)).mappings().all()
        verdicts = c.execute(select(T.PocValidation.__table__)).mappings().all()
    eng.dispose()
    assert len(commits) == 8 and len(verdicts) == 8
    assert {(v["participant"], v["accepted"]) for v in verdicts if v["epoch"] == 0} == {
        ("host000", True), ("host001", True), ("host002", True), ("host003", False)}
    assert all(v["validator"] != v["participant"] for v in verdicts)


def test_small_fabrication_passes_and_earns_more_weight(run_dir, tmp_path):
    # 5% made-up leaves stays under the allowed 10% mismatch rate: the binomial test cannot see it
    res = run_network(_params(run_dir, "fabricate:0.05", epochs=1), f"sqlite:///{tmp_path / 'c.db'}")
    poc = res.extra["poc"].set_index("host")
    assert poc.loc["host003", "accepted"]
    assert poc.loc["host003", "weight"] > poc.loc["host000", "weight"]
    assert res.epochs.cheats.sum() > 0  # and it keeps its inference work (and cheats on it)


def test_faster_host_computes_more_nonces(run_dir, tmp_path):
    p = _params(run_dir, "honest", epochs=1, requests_per_epoch=20,
                hosts=(ExecutorGroup(count=2), ExecutorGroup(count=1, seconds_per_unit=0.0525)))
    poc = run_network(p, f"sqlite:///{tmp_path / 'c.db'}").extra["poc"].set_index("host")
    ratio = poc.loc["host002", "weight"] / poc.loc["host000", "weight"]
    assert ratio == pytest.approx(p.chain.pricing.unit_seconds / 0.0525, rel=0.01)


def test_poc_parameters_are_checked(run_dir):
    with pytest.raises(ValidationError, match="(?s)poc_strategy.*unknown strategy 'bogus'.*allowed"):
        ExecutorGroup(count=1, poc_strategy="bogus")
    with pytest.raises(ValidationError, match="needs weights_source='poc'"):
        _params(run_dir, "fp8", weights_source="capacity")
    with pytest.raises(ValidationError, match="copy needs a host id"):
        _params(run_dir, "copy:host999")
    with pytest.raises(ValidationError, match="poc_nonces"):
        _params(run_dir, "honest", poc_nonces=0)
    with pytest.raises(ValidationError, match="weights_source"):
        _params(run_dir, "honest", weights_source="stake")


def _app() -> typer.Typer:
    from flows.cli_network import register

    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """test root"""

    register(app)
    return app


@pytest.mark.slow
def test_cli_run_with_poc_weights(run_dir, tmp_path, prefect_harness):
    out = tmp_path / "o"
    r = CliRunner().invoke(_app(), [
        "network", "run", "--run-dir", str(run_dir), "--epochs", "1", "--requests", "60", "--blocks", "8",
        "--honest", "3", "--malicious", "1", "--deviation", "steps:2", "--cheat-rate", "1", "--poc-strategy", "fp8",
        "--poc-cheaters", "1", "--poc-cheat", "fabricate:0.05", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "PoC stage per epoch and strategy" in r.output
    poc = pd.read_parquet(out / "poc.parquet").set_index("host")
    assert list(poc.poc_strategy) == ["honest", "honest", "fabricate:0.05", "fp8"]
    assert not poc.loc["host003", "accepted"] and poc.loc["host002", "accepted"]
    assert pd.read_parquet(out / "epochs.parquet").poc_rejected.tolist() == [1]


def test_cli_rejects_bad_poc_options(run_dir, tmp_path):
    app = _app()
    r = CliRunner().invoke(app, ["network", "run", "--run-dir", str(run_dir), "--poc-strategy", "bogus",
                                 "--out", str(tmp_path / "a")])
    assert r.exit_code == 1 and "unknown strategy 'bogus'" in r.output
    r = CliRunner().invoke(app, ["network", "run", "--run-dir", str(run_dir), "--honest", "2", "--poc-cheaters", "3",
                                 "--out", str(tmp_path / "b")])
    assert r.exit_code == 1 and "poc_cheaters (3) must be <= honest (2)" in r.output
    r = CliRunner().invoke(app, ["network", "run", "--run-dir", str(run_dir), "--weights", "stake",
                                 "--out", str(tmp_path / "c")])
    assert r.exit_code == 1 and "weights_source" in r.output
    assert not (tmp_path / "a").exists()
