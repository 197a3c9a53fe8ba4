"""The chain with writes batched over blocks: the same rules as `apply_block`, on an in-memory
working set that is written to the database every `flush_blocks` blocks.

    chain = BatchedChain(engine, flush_blocks=10)
    report = chain.apply_block(messages)      # the same BlockReport apply_block gives
    chain.flush()                             # the database now holds every block applied so far

`apply_block` (sim/chain/apply.py) reads a block's working set from the database, applies the
messages and writes the changes, one transaction per block; it stays the reference. This class
runs the very same handlers and end-of-block rules (`run_block`) on state it keeps between blocks:

- the participants, the chain meta row, the seed commitments and every open inference (STARTED,
  FINISHED, VOTING) with its votes, indexed by start block, finish block and status, so that
  payment, expiry and vote tallies need no query;
- the ids of applied messages (idempotency without a lookup per message).

A flush writes what the blocks since the last flush changed, in one transaction, with the
driver's executemany on precompiled statements (no per-row SQL construction): each inference once
(inserted in its state at the flush, or updated if it was already written), its ledger,
validation and vote rows, the applied messages, blocks and price history. After a flush the
database equals what `apply_block` would have written block by block (up to the order of rows
within a block's phase and the ledger's autoincrement ids), so `check_invariants` holds there and
the per-message path can be compared with this one (tests/test_network_batched.py).

`writer="process"` (sim/chain/writer.py) writes the flushes in a writer process with its own
connection, while this process applies the next blocks: the blocks' flush is handed over as plain
parameter tuples and the next flush (or an explicit `flush()`, which every read of the database
here makes first) waits for it to be written. `close()` stops the writer.

Atomicity is per flush, not per block: a database error in a flush writes none of its blocks, and
an internal error in a block leaves the in-memory state unusable; both raise `ChainApplyError`
and the chain refuses further blocks (the database keeps the last flushed state). With a writer
process, a flush's error is raised by the next flush.
"""

from __future__ import annotations

from collections import deque
from operator import itemgetter
from typing import Any, Iterable, Sequence

from sqlalchemy import select
from sqlalchemy.engine import Engine

from sim.chain import tables as T
from sim.chain.apply import (_INF, _INF_MUTABLE, _PART, _PART_MUTABLE, APPLIED_COLS, LEDGER_COLS, VALIDATION_COLS,
                             BlockReport, ChainApplyError, _by_id, _chunks, _State, params_of, run_block)
from sim.chain.writer import InlineWriter, ProcessWriter, WriterError

WRITERS = {"inline": InlineWriter, "process": ProcessWriter}

OPEN = ("STARTED", "FINISHED", "VOTING")


class _CachedState(_State):
    """A block's state backed by the chain's in-memory working set instead of the database."""

    def __init__(self, chain: "BatchedChain", height: int):
        self.chain = chain
        super().__init__(None, chain.meta, chain.params, height)
        self.seeds = chain.seeds

    # ---- reads from memory ---------------------------------------------------------------------
    def _load_parts(self) -> dict[str, dict]:
        return self.chain.parts

    def seen_ids(self, ids: list[str]) -> set[str]:
        return self.chain.seen_ids(ids)

    def prepare(self, messages: Sequence[Any]) -> None:
        # every seed commitment is in memory: only the inferences
        self.load_inferences([i for i in (getattr(m, "inference_id", None) for m in messages) if i is not None])

    def load_inferences(self, ids: Iterable[str]) -> None:
        c = self.chain
        for i in ids:
            if i in self.infs or i in self.missing:
                continue
            row = c.rows.get(i)
            if row is None and i in c.settled_ids:
                row = c.load_settled(i)
            if row is None:
                self.missing.add(i)
            else:
                self.infs[i] = row

    def query_inferences(self, where) -> list[dict]:  # pragma: no cover - every query has a method below
        raise ChainApplyError("internal: the batched chain answers inference queries from its indices")

    def voting(self) -> list[dict]:
        c = self.chain
        rows = [c.rows[i] for i in sorted(c.voting)]
        seen = set(c.voting)
        rows += [i for i in self.infs.values() if i["status"] == "VOTING" and i["id"] not in seen]
        rows.sort(key=_by_id)
        for r in rows:
            self.infs.setdefault(r["id"], r)
        return rows

    def due_for_payment(self, due: int) -> list[dict]:
        c = self.chain
        out: list[dict] = []
        for b in sorted(k for k in c.by_finish if k <= due):
            for i in c.by_finish.pop(b):
                row = c.rows.get(i)  # None: settled
                if row is None:
                    continue
                if row["status"] == "FINISHED":
                    out.append(row)
                elif row["status"] == "VOTING":
                    c.after_vote.add(i)  # paid once its vote returns it to FINISHED
        for i in sorted(c.after_vote):
            row = c.rows.get(i)
            if row is not None and row["status"] == "FINISHED":
                out.append(row)
            if row is None or row["status"] != "VOTING":
                c.after_vote.discard(i)
        seen = {r["id"] for r in out}
        out += [i for i in self.infs.values() if i["status"] == "FINISHED" and i["finish_block"] <= due
                and i["id"] not in seen and i["id"] not in c.rows]
        out.sort(key=_by_id)
        for r in out:
            self.infs.setdefault(r["id"], r)
        return out

    def due_for_expiry(self, due: int) -> list[dict]:
        c = self.chain
        out = []
        for b in sorted(k for k in c.by_start if k <= due):
            for i in c.by_start.pop(b):
                row = c.rows.get(i)
                if row is not None and row["status"] == "STARTED":
                    out.append(row)
        out.sort(key=_by_id)
        for r in out:
            self.infs.setdefault(r["id"], r)
        return out

    def votes_of(self, inference_id: str) -> list[dict]:
        c = self.chain
        if inference_id not in c.votes:
            c.votes[inference_id] = c.load_votes(inference_id)
        return c.votes[inference_id]

    def load_seeds(self, epochs: Iterable[int]) -> None:
        pass  # every commitment is in memory

    def seed_of(self, epoch: int, pid: str):
        return self.chain.seeds.get((epoch, pid))

    def recent_units(self, window: int) -> list[float]:
        return [u for h, u in self.chain.recent if h > self.height - window]

    def epoch_ended(self, epoch: int, requests: int, reward_ngonka: int) -> None:
        self.chain.pending_epochs.append((epoch, self.height, requests, reward_ngonka))


class BatchedChain:
    """See the module docstring. `engine` must hold a chain no one else writes while this object
    is in use."""

    def __init__(self, engine: Engine, flush_blocks: int = 10, writer: str = "inline"):
        if not isinstance(flush_blocks, int) or isinstance(flush_blocks, bool) or flush_blocks < 1:
            raise ValueError(f"flush_blocks must be an integer >= 1, got {flush_blocks!r}")
        if writer not in WRITERS:
            raise ValueError(f"writer must be one of {', '.join(WRITERS)}, got {writer!r}")
        self.engine, self.flush_blocks = engine, flush_blocks
        self.broken: str | None = None
        with engine.connect() as c:
            meta_t = T.ChainMeta.__table__
            self.meta = dict(c.execute(select(meta_t).where(meta_t.c.id == 1)).mappings().one())
            self.params = params_of(self.meta)
            self.parts = {r["id"]: dict(r) for r in c.execute(select(_PART)).mappings()}
            self.rows = {r["id"]: dict(r) for r in c.execute(select(_INF).where(_INF.c.status.in_(OPEN))).mappings()}
            self.settled_ids = {r[0] for r in c.execute(select(_INF.c.id).where(_INF.c.status.not_in(OPEN)))}
            self.fresh = not c.execute(select(T.AppliedMessage.__table__.c.id).limit(1)).first()
            st = T.SeedCommit.__table__
            self.seeds = {(int(e), p): (sha, int(b)) for e, p, sha, b in c.execute(
                select(st.c.epoch, st.c.participant, st.c.seed_sha256, st.c.block))}
            window = self.params.window_blocks
            bt = T.Block.__table__
            self.recent = deque(((int(h), float(u)) for h, u in c.execute(
                select(bt.c.height, bt.c.units).where(bt.c.height > self.meta["height"] - window))), maxlen=window)
        self.votes: dict[str, list[dict]] = {}
        self.voting: set[str] = set()
        self.by_start: dict[int, list[str]] = {}
        self.by_finish: dict[int, list[str]] = {}
        self.after_vote: set[str] = set()
        for r in self.rows.values():
            self._index(r)
        self.applied_ids: set[str] = set()
        self._reset_pending()
        self.blocks_since_flush = 0
        self.writer = WRITERS[writer](engine)

    def _reset_pending(self) -> None:
        self.new_infs: dict[str, dict] = {}
        self.dirty_infs: dict[str, dict] = {}
        self.new_parts: set[str] = set()
        self.dirty_parts: set[str] = set()
        self.pending: dict[str, list] = {k: [] for k in ("validation", "invalidation_vote", "poc_commit",
                                                          "poc_validation", "seed_commit", "confirmation_poc",
                                                          "ledger", "applied_message", "block", "price_history")}
        self.pending_epochs: list[tuple[int, int, int, int]] = []

    def _index(self, r: dict) -> None:
        st = r["status"]
        if st == "STARTED":
            self.by_start.setdefault(r["start_block"], []).append(r["id"])
        elif st in ("FINISHED", "VOTING"):
            self.by_finish.setdefault(r["finish_block"], []).append(r["id"])
            if st == "VOTING":
                self.voting.add(r["id"])

    # ---- reads the cache cannot answer -------------------------------------------------------
    def seen_ids(self, ids: list[str]) -> set[str]:
        seen = {i for i in ids if i in self.applied_ids}
        if not self.fresh:
            rest = [i for i in set(ids) if i not in seen]
            applied_t = T.AppliedMessage.__table__
            with self.engine.connect() as c:
                for chunk in _chunks(rest):
                    seen.update(r[0] for r in c.execute(select(applied_t.c.id).where(applied_t.c.id.in_(chunk))))
        return seen

    def load_settled(self, iid: str) -> dict | None:
        """A settled inference a message names (it is refused, but the rules read its row)."""
        if iid in self.new_infs or iid in self.dirty_infs:
            return self.new_infs.get(iid) or self.dirty_infs[iid]
        self.flush()
        with self.engine.connect() as c:
            r = c.execute(select(_INF).where(_INF.c.id == iid)).mappings().first()
        return dict(r) if r else None

    def load_votes(self, iid: str) -> list[dict]:
        if self.fresh:
            return []
        t = T.InvalidationVote.__table__
        self.flush()
        with self.engine.connect() as c:
            return [dict(r) for r in c.execute(select(t).where(t.c.inference_id == iid)).mappings()]

    def inference(self, iid: str) -> dict | None:
        """The current row of an open (or not yet flushed) inference, else None."""
        return self.rows.get(iid) or self.new_infs.get(iid)

    # ---- blocks ----------------------------------------------------------------------------------
    def apply_block(self, messages: Sequence[Any]) -> BlockReport:
        if self.broken:
            raise ChainApplyError(f"the batched chain stopped after an error ({self.broken}); the database holds "
                                  "the last flushed block")
        state = _CachedState(self, self.meta["height"] + 1)
        try:
            applied = run_block(state, messages)
            self._commit(state, applied)
        except Exception as err:
            self.broken = f"{type(err).__name__}: {err}"
            if isinstance(err, ChainApplyError):
                raise
            raise ChainApplyError(f"block not applied (nothing since the last flush written): {self.broken}") from err
        self.blocks_since_flush += 1
        if self.blocks_since_flush >= self.flush_blocks:
            self.flush(wait=False)
        return state.report

    def _commit(self, state: _CachedState, applied: list[dict]) -> None:
        """Fold a block's changes into the working set and the pending writes."""
        h, meta = state.height, self.meta
        self.new_parts.update(state.parts_new)
        self.dirty_parts.update(p for p in state.parts_dirty if p not in self.new_parts)
        for iid in sorted(state.infs_new):
            row = state.infs[iid]
            self.new_infs[iid] = row
            if row["status"] in OPEN:
                self.rows[iid] = row
                self._index(row)
            else:
                self.settled_ids.add(iid)
        for iid in state.infs_dirty - state.infs_new:
            row = state.infs[iid]
            if iid not in self.new_infs:
                self.dirty_infs[iid] = row
            st = row["status"]
            if st in OPEN:
                self.rows[iid] = row
                if st == "VOTING":
                    self.voting.add(iid)
                else:
                    self.voting.discard(iid)
                if row["finish_block"] == h:  # finished in this block (a finish happens once)
                    self.by_finish.setdefault(h, []).append(iid)
            else:
                self.voting.discard(iid)
                self.after_vote.discard(iid)
                self.votes.pop(iid, None)
                self.rows.pop(iid, None)
                self.settled_ids.add(iid)
        for key, rows in (("validation", state.validations), ("invalidation_vote", state.votes),
                          ("poc_commit", state.poc_commits), ("poc_validation", state.poc_validations),
                          ("seed_commit", state.seed_commits), ("confirmation_poc", state.confirmations),
                          ("ledger", state.ledger), ("applied_message", applied)):
            self.pending[key].extend(rows)
        self.applied_ids.update(r[0] for r in applied)
        rep = state.report
        self.pending["block"].append(dict(height=h, epoch=rep.epoch, unit_price_ngonka=meta["unit_price_ngonka"],
                                          next_unit_price_ngonka=rep.next_unit_price_ngonka,
                                          utilisation=rep.utilisation, units=state.block_units,
                                          capacity_units=state.capacity, messages=len(applied),
                                          rejected=len(rep.rejected)))
        self.pending["price_history"].append(dict(block=h, unit_price_ngonka=rep.next_unit_price_ngonka,
                                                  utilisation=rep.utilisation))
        self.recent.append((h, float(state.block_units)))
        meta.update(height=h, unit_price_ngonka=rep.next_unit_price_ngonka)

    def flush(self, wait: bool = True) -> None:
        """Write every change since the last flush, in one transaction; with `wait` (the default)
        return once the database holds every block applied so far (a writer process may still be
        writing when `wait` is false: the next flush waits for it)."""
        if self.broken:
            raise ChainApplyError(f"the batched chain stopped after an error ({self.broken})")
        self.blocks_since_flush = 0
        try:
            if self.new_infs or self.dirty_infs or any(self.pending.values()) or self.new_parts or \
                    self.dirty_parts or self.pending_epochs:
                ops = _ops(self, _placeholder(self.engine.dialect))
                self._reset_pending()
                self.writer.submit(ops)
            if wait:
                self.writer.wait()
        except WriterError as err:
            self.broken = str(err)
            raise ChainApplyError(f"flush failed (none of its blocks written): {self.broken}") from err

    def close(self) -> None:
        """Stop the writer (after the flush in flight); unflushed blocks are not written."""
        try:
            self.writer.close()
        except WriterError as err:
            self.broken = self.broken or str(err)
            raise ChainApplyError(f"flush failed (none of its blocks written): {self.broken}") from err


def _placeholder(dialect) -> str:
    return "?" if dialect.paramstyle == "qmark" else "%s"


def _insert_many(ops: list, ph: str, table: str, cols: Sequence[str], rows: Sequence[dict]) -> None:
    if not rows:
        return
    sql = f'INSERT INTO {table} ({", ".join(_q(c) for c in cols)}) VALUES ({", ".join([ph] * len(cols))})'
    ops.append((sql, list(map(itemgetter(*cols), rows)) if len(cols) > 1 else [(r[cols[0]],) for r in rows]))


def _insert_tuples(ops: list, ph: str, table: str, cols: Sequence[str], rows: list[tuple]) -> None:
    if rows:
        ops.append((f'INSERT INTO {table} ({", ".join(_q(c) for c in cols)}) VALUES ({", ".join([ph] * len(cols))})',
                    rows))


def _update_many(ops: list, ph: str, table: str, cols: Sequence[str], key: str, rows: Sequence[dict]) -> None:
    if not rows:
        return
    sql = f'UPDATE {table} SET {", ".join(f"{_q(c)} = {ph}" for c in cols)} WHERE {_q(key)} = {ph}'
    ops.append((sql, list(map(itemgetter(*cols, key), rows))))


def _q(name: str) -> str:
    return f'"{name}"'


_COLS = {name: [c.name for c in T.SQLModel.metadata.tables[name].columns] for name in
         ("inference", "participant", "validation", "invalidation_vote", "poc_commit", "poc_validation", "seed_commit",
          "confirmation_poc", "applied_message", "block", "price_history")}


def _ops(chain: BatchedChain, ph: str) -> list:
    """The flush's writes as (sql, parameter tuples), in the order the database receives them."""
    ops: list = []
    parts = chain.parts
    _insert_many(ops, ph, "participant", _COLS["participant"], [parts[p] for p in sorted(chain.new_parts)])
    _update_many(ops, ph, "participant", list(_PART_MUTABLE), "id",
                 [parts[p] for p in sorted(chain.dirty_parts - chain.new_parts)])
    _insert_many(ops, ph, "inference", _COLS["inference"], list(chain.new_infs.values()))
    _update_many(ops, ph, "inference", list(_INF_MUTABLE), "id", list(chain.dirty_infs.values()))
    _insert_tuples(ops, ph, "validation", VALIDATION_COLS, chain.pending["validation"])
    for table in ("invalidation_vote", "poc_commit", "poc_validation", "seed_commit", "confirmation_poc"):
        _insert_many(ops, ph, table, _COLS[table], chain.pending[table])
    _insert_tuples(ops, ph, "ledger", LEDGER_COLS, chain.pending["ledger"])
    _insert_tuples(ops, ph, "applied_message", APPLIED_COLS, chain.pending["applied_message"])
    for table in ("block", "price_history"):
        _insert_many(ops, ph, table, _COLS[table], chain.pending[table])
    for epoch, height, requests, reward in chain.pending_epochs:
        ops.append((f'UPDATE epoch SET end_block = {ph}, requests = {ph}, reward_ngonka = {ph}, settled = {ph} '
                    f'WHERE "index" = {ph}', [(height, requests, reward, True, epoch)]))
        ops.append((f'INSERT INTO epoch ("index", start_block, requests, reward_ngonka, settled) '
                    f'VALUES ({ph}, {ph}, {ph}, {ph}, {ph})', [(epoch + 1, height + 1, 0, 0, False)]))
    m = chain.meta
    ops.append((f"UPDATE chain_meta SET height = {ph}, epoch = {ph}, epoch_start_block = {ph}, "
                f"unit_price_ngonka = {ph}, previous_epoch_requests = {ph}, epoch_requests = {ph}, "
                f"epoch_finished = {ph}, supply_ngonka = {ph} WHERE id = 1",
                [(m["height"], m["epoch"], m["epoch_start_block"], m["unit_price_ngonka"],
                  m["previous_epoch_requests"], m["epoch_requests"], m["epoch_finished"], m["supply_ngonka"])]))
    return ops
