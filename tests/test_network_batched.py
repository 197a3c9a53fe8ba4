"""The batched chain (sim/chain/batched.py) against the per-block reference (apply_block): the same
messages give the same reports and, after a flush, the same database, on SQLite and PostgreSQL."""

from __future__ import annotations

import pandas as pd
import pytest
from sqlalchemy import text

from sim.chain import (ChainApplyError, FinishInference, SubmitValidation, apply_block, check_invariants,
                       create_chain, drop_chain, make_engine)
from sim.chain.batched import BatchedChain
from sim.network import ExecutorGroup, NetworkParams, run_network
from sim.network import epoch as epoch_mod
from sim.network.epoch import NetworkSimulation
from tests.network_fixtures import make_synthetic_run

TABLES = {"inference": ["id"], "participant": ["id"], "validation": ["id"], "invalidation_vote": ["id"],
          "applied_message": ["id"], "block": ["height"], "price_history": ["block"], "epoch": ["index"],
          "seed_commit": ["epoch", "participant"], "chain_meta": ["id"],
          "ledger": ["block", "msg_id", "kind", "from_account", "to_account", "amount_ngonka"]}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return make_synthetic_run(tmp_path_factory.mktemp("run") / "run")


def _params(run_dir, **kw):
    base = dict(run_dir=str(run_dir), epochs=2, requests_per_epoch=600, blocks_per_epoch=20, seed=11,
                hosts=(ExecutorGroup(count=6), ExecutorGroup(count=3, strategy="malicious", deviation="steps:2",
                                                             cheat_rate=0.7),
                       ExecutorGroup(count=2, strategy="malicious", deviation="fp8", cheat_rate=1.0)))
    base.update(kw)
    return NetworkParams(**base)


def dump(engine) -> dict[str, pd.DataFrame]:
    out = {}
    with engine.connect() as c:
        for table, order in TABLES.items():
            df = pd.read_sql(text(f'select * from "{table}"'), c)
            if table == "ledger":
                df = df.drop(columns="id")  # autoincrement: the order of rows within a block's phase
            out[table] = df.sort_values(order).reset_index(drop=True)
    return out


def assert_same_chain(a, b) -> None:
    da, db = dump(a), dump(b)
    for table in TABLES:
        assert len(da[table]) == len(db[table]), table
        pd.testing.assert_frame_equal(da[table], db[table], check_dtype=False, obj=table)


@pytest.mark.parametrize("hash_,flush,writer", [("sha256", 1, "inline"), ("splitmix64", 7, "inline"),
                                                ("sha256", 1000, "inline"), ("splitmix64", 3, "process")])
def test_batched_network_equals_per_block_reference(run_dir, tmp_path, monkeypatch, hash_, flush, writer):
    res = {}
    for mode in ("per_block", "batched"):
        p = _params(run_dir, sampling_hash=hash_, chain_writes=mode, flush_blocks=flush)
        if mode == "batched":
            monkeypatch.setattr(epoch_mod, "PROCESS_WRITER_MIN_REQUESTS", 0 if writer == "process" else 10**12)
            assert epoch_mod.chain_writer(p, make_engine(f"sqlite:///{tmp_path / 'probe.db'}")) == writer
        res[mode] = run_network(p, f"sqlite:///{tmp_path / f'{mode}.db'}")
    a, b = res["per_block"], res["batched"]
    pd.testing.assert_frame_equal(a.epochs, b.epochs)
    pd.testing.assert_frame_equal(a.hosts, b.hosts)
    assert a.messages == b.messages and a.blocks == b.blocks
    # the run exercised what could differ: votes, invalidations, an INVALID host
    assert a.epochs["cheats_caught"].sum() > 0 and a.epochs["malicious_became_invalid"].sum() > 0
    ea, eb = make_engine(f"sqlite:///{tmp_path / 'per_block.db'}"), make_engine(f"sqlite:///{tmp_path / 'batched.db'}")
    assert check_invariants(ea) == [] and check_invariants(eb) == []
    assert_same_chain(ea, eb)


class _Recording(NetworkSimulation):
    """Records every block's messages and report (the reference run)."""

    def _apply(self, msgs):
        rep = super()._apply(msgs)
        self.log.append((list(msgs), rep))
        return rep


def _recorded(run_dir, tmp_path):
    p = _params(run_dir, chain_writes="per_block", epochs=1, requests_per_epoch=300)
    sim = _Recording(p, f"sqlite:///{tmp_path / 'ref.db'}")
    sim.log = []
    sim.run()
    return sim.log


def _replay(engine, log, chain, inject):
    """Replay the recorded blocks, with bad messages injected into some: the reports must match."""
    reports = []
    for k, (msgs, _) in enumerate(log):
        msgs = msgs + inject(k, msgs)
        reports.append(chain.apply_block(msgs) if chain is not None else apply_block(engine, msgs))
    return reports


def _inject(k, msgs):
    if k < 3:
        return []
    fins = [m for m in msgs if isinstance(m, FinishInference)]
    vals = [m for m in msgs if isinstance(m, SubmitValidation)]
    bad = []
    if fins:  # a finish replayed (duplicate id: skipped), and one from the wrong executor (rejected)
        f = fins[0]
        bad.append(f)
        bad.append(f.model_copy(update={"id": f"bad-exec:{k}", "executor": "host000" if f.executor != "host000"
                                        else "host001"}))
    if vals:  # a validation whose seed is not the validator's (rejected), and one for an unknown inference
        v = vals[0]
        bad.append(v.model_copy(update={"id": f"bad-seed:{k}", "seed": v.seed + 1}))
        bad.append(v.model_copy(update={"id": f"bad-inf:{k}", "inference_id": "nope-1"}))
    return bad


@pytest.mark.parametrize("writer", ["inline", "process"])
def test_replayed_blocks_give_the_same_reports_and_rejections(run_dir, tmp_path, writer):
    log = _recorded(run_dir, tmp_path)
    params = _params(run_dir).chain_params
    ea = create_chain(f"sqlite:///{tmp_path / 'a.db'}", params)
    eb = create_chain(f"sqlite:///{tmp_path / 'b.db'}", params)
    ra = _replay(ea, log, None, _inject)
    chain = BatchedChain(eb, flush_blocks=4, writer=writer)
    rb = _replay(eb, log, chain, _inject)
    chain.flush()
    chain.close()
    assert sum(len(r.rejected) for r in ra) > 10 and sum(r.duplicates for r in ra) > 3
    for x, y in zip(ra, rb):
        assert x.rejected == y.rejected and x.duplicates == y.duplicates
        assert (x.accepted, x.paid, x.expired, x.revalidated, sorted(x.invalidated), x.new_invalid, x.finished,
                x.next_unit_price_ngonka, x.voting_opened, x.slashed_ngonka) == \
               (y.accepted, y.paid, y.expired, y.revalidated, sorted(y.invalidated), y.new_invalid, y.finished,
                y.next_unit_price_ngonka, y.voting_opened, y.slashed_ngonka)
    assert check_invariants(eb) == []
    assert_same_chain(ea, eb)


def test_batched_chain_resumes_a_chain_written_by_the_reference(run_dir, tmp_path):
    """Blocks 0..N by apply_block, then a BatchedChain opened on that database (open inferences,
    votes, seeds and idempotency read back from it) continues: the same end state."""
    log = _recorded(run_dir, tmp_path)
    params = _params(run_dir).chain_params
    ea = create_chain(f"sqlite:///{tmp_path / 'a.db'}", params)
    eb = create_chain(f"sqlite:///{tmp_path / 'b.db'}", params)
    half = len(log) // 2
    for msgs, _ in log:
        apply_block(ea, msgs)
    for msgs, _ in log[:half]:
        apply_block(eb, msgs)
    chain = BatchedChain(eb, flush_blocks=3)
    assert chain.rows, "the switch happens while inferences are open"
    for msgs, _ in log[half:]:
        chain.apply_block(msgs)
    # a block already on chain, replayed on both: every message a duplicate (idempotency read from the database)
    again = log[half - 1][0]
    ra, rb = apply_block(ea, again), chain.apply_block(again)
    assert rb.duplicates == ra.duplicates == len({m.id for m in again}) and rb.accepted == 0
    chain.flush()
    assert check_invariants(eb) == []
    assert_same_chain(ea, eb)


def test_batched_chain_bad_inputs_and_stop_after_an_error(run_dir, tmp_path):
    eng = create_chain(f"sqlite:///{tmp_path / 'c.db'}", _params(run_dir).chain_params)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="flush_blocks"):
            BatchedChain(eng, flush_blocks=bad)
    with pytest.raises(Exception, match="flush_blocks"):
        _params(run_dir, flush_blocks=0)
    chain = BatchedChain(eng, flush_blocks=2)
    chain.apply_block([])

    class Unknown:
        id = "x"
        kind = "unknown"

    with pytest.raises(ChainApplyError, match="unknown message type"):
        chain.apply_block([Unknown()])
    with pytest.raises(ChainApplyError, match="stopped"):
        chain.apply_block([])
    # the database keeps the last flushed state (one block was applied and not flushed: none written)
    with eng.connect() as c:
        assert c.execute(text("select height from chain_meta")).scalar() == 0


def test_batched_equals_reference_on_postgresql(run_dir, tmp_path, pg_url, monkeypatch):
    ends = []
    for mode, min_requests in (("per_block", 0), ("batched", 10**12), ("batched", 0)):  # inline, then a writer process
        monkeypatch.setattr(epoch_mod, "PROCESS_WRITER_MIN_REQUESTS", min_requests)
        eng = make_engine(pg_url)
        drop_chain(eng)
        eng.dispose()
        res = run_network(_params(run_dir, chain_writes=mode, flush_blocks=5, requests_per_epoch=300), pg_url)
        eng = make_engine(pg_url)
        assert check_invariants(eng) == []
        ends.append((res, dump(eng)))
        drop_chain(eng)
        eng.dispose()
    (a, da), *others = ends
    for b, db in others:
        pd.testing.assert_frame_equal(a.epochs, b.epochs)
        pd.testing.assert_frame_equal(a.hosts, b.hosts)
        for table in TABLES:
            pd.testing.assert_frame_equal(da[table], db[table], check_dtype=False, obj=table)


def test_writer_process_error_stops_the_chain(run_dir, tmp_path):
    """A flush the writer process cannot write stops the chain at the next flush; the database keeps
    the flushes written before it, and an in-memory database cannot have a writer process."""
    log = _recorded(run_dir, tmp_path)
    eng = create_chain(f"sqlite:///{tmp_path / 'w.db'}", _params(run_dir).chain_params)
    with pytest.raises(ValueError, match="writer"):
        BatchedChain(eng, writer="thread")
    with pytest.raises(ValueError, match="in-memory"):
        BatchedChain(create_chain("sqlite://", _params(run_dir).chain_params), writer="process")
    chain = BatchedChain(eng, flush_blocks=2, writer="process")
    for msgs, _ in log[:2]:
        chain.apply_block(msgs)
    chain.flush()
    with eng.begin() as c:  # the next flush's inserts into the ledger fail in the writer process
        c.execute(text("drop table ledger"))
    for msgs, _ in log[2:4]:
        chain.apply_block(msgs)  # the flush after block 4 is sent, not waited for
    with pytest.raises(ChainApplyError, match="flush failed.*ledger"):
        chain.flush()
    with pytest.raises(ChainApplyError, match="stopped"):
        chain.apply_block([])
    chain.close()
    with eng.connect() as c:
        assert c.execute(text("select height from chain_meta")).scalar() == 2
