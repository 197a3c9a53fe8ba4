"""The network simulation: requesters, executors and validators submitting messages to the chain,
block after block, epoch after epoch.

Order of one block (agents decide, the chain applies; `apply_block` is the only state change):

1. executors finish the inferences started `finish_delay_blocks` ago (honest or cheating work);
2. validators decide which of the inferences finished in the previous block to check, with
   Gonka's ShouldValidate on the sampling inputs the chain recorded at finish (traffic basis,
   executor reputation) and their secret seed of the inference's epoch (committed on chain when
   the epoch starts and revealed in each validation, which the chain re-checks), validate them
   (the backend gives the score) and submit the verdict;
3. the vote committees of validations that failed in the previous block re-validate and vote;
4. requesters submit the block's new requests to executors chosen by PoC weight;
5. at the epoch's last block: `EndEpoch` (rewards by weight, reputation), then the next epoch's
   PoC weights (`weights_fn`: capacity weights, or sim.poc's stage with each group's PoC
   strategy when `weights_source="poc"`, its commits and verdicts recorded on chain).

Requests arrive in the first blocks of an epoch (all finish before it ends); payment, votes and
expiry may run into the next epoch. After the last epoch the chain runs until every inference is
settled, so the per-epoch table counts every request of the epoch.
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
from sqlalchemy import case, func, select

from models.seeds import epoch_block_hash
from sim.chain import (ChainParams, CommitSeed, EndEpoch, FinishInference, Mint, RegisterParticipant, RequestParams,
                       SetWeights, StartInference, SubmitValidation, SubmitVote, apply_block, create_chain)
from sim.chain import rules
from sim.chain.apply import request_units
from sim.chain.batched import BatchedChain
from sim.chain.rules import splitmix_draws  # noqa: F401  (re-exported)
from sim.chain import tables as T
from sim.chain.params import NGONKA_PER_GNK
from sim.network.backends import Backend, SurrogateBackend
from sim.network.params import NetworkParams



@dataclass(frozen=True)
class Host:
    id: str
    group: int
    strategy: str
    deviation: str | None
    cheat_rate: float
    seconds_per_unit: float
    collateral_ngonka: int
    gpu_type: str


@dataclass
class EpochWeights:
    """The outcome of an epoch's PoC stage: weights, plus the PoC messages recorded on chain
    before them and one report row per host."""

    weights: dict[str, int]
    messages: list = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)


WeightsFn = Callable[[int, Sequence[Host], int], "dict[str, int] | EpochWeights"]


def capacity_weights(epoch: int, hosts: Sequence[Host], seed: int) -> dict[str, int]:
    """Default PoC outcome: weight proportional to capacity (units per GPU-second, x1000), as an
    honest PoC stage would measure for hosts that all run the full model."""
    return {h.id: max(1, int(round(1000.0 / h.seconds_per_unit * 0.1))) for h in hosts}


def poc_stage_weights(fidelity: str = "surrogate", preset: str = "tiny", nonces: int = 1_000,
                      strategies: dict[str, str] | None = None, poc_params=None,
                      reference_seconds_per_unit: float | None = None) -> WeightsFn:
    """PoC weights from sim.poc's stage (issue 5), run at the start of every epoch.

    A host computes `nonces x reference_seconds_per_unit / seconds_per_unit` nonces (the reference
    is the pricing unit's GPU), behaves as `strategies[host id]` (a sim.poc strategy spec, default
    honest), and gets weight = accepted count x weight_per_nonce (0 when the stage rejects it). The
    commitments and verdicts go on chain (`PocCommitMsg`, `PocValidationMsg`) before the weights;
    the stage's single validator is recorded under the next host in id order (validator of record)."""
    from sim.chain.params import ChainParams

    ref = reference_seconds_per_unit or ChainParams().pricing.unit_seconds

    def weights(epoch: int, hosts: Sequence[Host], seed: int) -> EpochWeights:
        from sim.chain import PocCommitMsg, PocValidationMsg
        from sim.poc.params import PocParams
        from sim.poc.stage import PocParticipant, public_key_for, run_poc_stage

        strat = strategies or {}
        parts = [PocParticipant(h.id, public_key_for(h.id, seed), max(1, int(round(nonces * ref / h.seconds_per_unit))),
                                strat.get(h.id, "honest")) for h in hosts]
        block_hash = epoch_block_hash(seed, epoch)
        res = run_poc_stage(parts, block_hash=block_hash, params=poc_params or PocParams(), fidelity=fidelity,
                            preset=preset, seed=seed + epoch)
        ids = [h.id for h in hosts]
        msgs: list = []
        rows = []
        for k, h in enumerate(hosts):
            c, v = res.commitments[h.id], res.verdicts[h.id]
            msgs.append(PocCommitMsg(id=f"poc:{epoch}:commit:{h.id}", epoch=epoch, participant=h.id,
                                     merkle_root=c.root.hex(), nonce_count=int(c.count)))
            msgs.append(PocValidationMsg(id=f"poc:{epoch}:validation:{h.id}", epoch=epoch,
                                         validator=ids[(k + 1) % len(ids)], participant=h.id, sampled=int(v.sampled),
                                         mismatches=int(v.mismatches), accepted=bool(v.accepted)))
            rows.append(dict(epoch=epoch, host=h.id, poc_strategy=res.strategies[h.id], count=int(c.count),
                             nonces_computed=int(res.nonces_computed[h.id]), sampled=int(v.sampled),
                             mismatches=int(v.mismatches), p_value=float(v.p_value), accepted=bool(v.accepted),
                             reason=v.reason, weight=int(round(res.weights[h.id]))))
        return EpochWeights({pid: int(round(w)) for pid, w in res.weights.items()}, msgs, rows)

    return weights


def weights_fn_from(params: NetworkParams) -> WeightsFn:
    """The weights function `params.weights_source` names."""
    if params.weights_source == "capacity":
        return capacity_weights
    strategies = {}
    k = 0
    for g in params.hosts:
        for _ in range(g.count):
            strategies[f"host{k:03d}"] = g.poc_strategy
            k += 1
    return poc_stage_weights(params.poc_fidelity, params.poc_preset, params.poc_nonces, strategies, params.poc,
                             params.chain.pricing.unit_seconds)


@dataclass
class NetworkResult:
    params: NetworkParams
    db_url: str
    epochs: Any  # pandas DataFrame, one row per epoch
    hosts: Any  # pandas DataFrame, one row per host
    seconds: float
    blocks: int
    messages: int
    extra: dict = field(default_factory=dict)


class NetworkSimulation:
    def __init__(self, params: NetworkParams, db_url: str, *, weights_fn: WeightsFn | None = None,
                 backend: Backend | None = None):
        self.p = params
        self.db_url = db_url
        self.weights_fn = weights_fn or weights_fn_from(params)
        if backend is None:
            if params.fidelity == "surrogate":
                backend = params.surrogate_backend()
            else:
                from sim.network.real import RealBackend

                backend = RealBackend(params)
        self.backend = backend
        unit_s = params.chain.pricing.unit_seconds
        for g in params.hosts:
            if g.strategy == "malicious":
                backend.check_deviation(g.deviation)
        self.hosts: list[Host] = []
        for gi, g in enumerate(params.hosts):
            for _ in range(g.count):
                self.hosts.append(Host(id=f"host{len(self.hosts):03d}", group=gi, strategy=g.strategy,
                                       deviation=g.deviation, cheat_rate=g.cheat_rate,
                                       seconds_per_unit=g.seconds_per_unit or unit_s,
                                       collateral_ngonka=int(g.collateral_gnk * NGONKA_PER_GNK), gpu_type=g.gpu_type))
        self.by_id = {h.id: h for h in self.hosts}
        self._code = {h.id: k for k, h in enumerate(self.hosts)}  # host -> index (numpy comparisons on ints)
        self.authority = params.chain.module_authority
        ss = np.random.SeedSequence(params.seed)
        # (spawn(5)'s first four children are spawn(4)'s: adding the order stream changed no other draw)
        self._ss_arrivals, self._ss_exec, self._ss_valid, self._ss_seeds, ss_order = ss.spawn(5)
        self.rng_order = np.random.default_rng(ss_order)
        self.rng_arrivals = np.random.default_rng(self._ss_arrivals)
        self.rng_exec = np.random.default_rng(self._ss_exec)
        self.rng_valid = np.random.default_rng(self._ss_valid)
        self.rng_seeds = np.random.default_rng(self._ss_seeds)
        self._mix_params = [RequestParams(model=params.preset, width=s.width, height=s.height, frames=s.frames,
                                          steps=s.steps, guidance_high=s.guidance_high, guidance_low=s.guidance_low,
                                          shift=s.shift) for s in params.mix]
        shares = np.array([s.share for s in params.mix], float)
        self._mix_p = shares / shares.sum()
        self.compute_seconds: dict[str, float] = {h.id: 0.0 for h in self.hosts}
        self.honest_seconds: dict[str, float] = {h.id: 0.0 for h in self.hosts}
        self.validation_seconds: dict[str, float] = {h.id: 0.0 for h in self.hosts}
        self.n_messages = 0
        self.n_blocks = 0
        self.epoch = 0
        self.invalid_events: list[tuple[int, str]] = []
        self.seeds_by_epoch: dict[int, dict[str, int]] = {}
        self.finish_info: dict[str, tuple[int, int]] = {}
        self.poc_rows: list[dict] = []
        self._counter = 0
        self.chain: BatchedChain | None = None

    # ---- chain helpers ---------------------------------------------------------------------
    def _apply(self, msgs: list) -> Any:
        rep = self.chain.apply_block(msgs) if self.chain is not None else apply_block(self.engine, msgs)
        self.n_messages += len(msgs)
        self.n_blocks += 1
        for pid in rep.new_invalid:
            self.status[pid] = "INVALID"
            self.invalid_events.append((self.epoch, pid))
        for pid in rep.new_inactive:
            self.status[pid] = "INACTIVE"
        if rep.epoch_ended is not None:  # INVALID and INACTIVE participants rejoin
            parts = self._participants()
            self.status = {h.id: parts[h.id]["status"] for h in self.hosts}
        self.finish_info.update(rep.finished)
        return rep

    def _sync(self) -> None:
        """Batched chain writes: flush, so that the database holds every block applied so far."""
        if self.chain is not None:
            self.chain.flush()

    def _participants(self) -> dict[str, dict]:
        self._sync()
        t = T.Participant.__table__
        with self.engine.connect() as c:
            return {r["id"]: dict(r) for r in c.execute(select(t)).mappings()}

    def _meta(self) -> dict:
        self._sync()
        t = T.ChainMeta.__table__
        with self.engine.connect() as c:
            return dict(c.execute(select(t)).mappings().one())

    # ---- setup -------------------------------------------------------------------------------
    def _genesis(self) -> None:
        msgs: list = []
        for r in range(self.p.requesters):
            msgs.append(Mint(id=f"genesis:mint:req{r:03d}", sender=self.authority, to=f"req{r:03d}",
                             amount_ngonka=10**6 * NGONKA_PER_GNK))
        for h in self.hosts:
            msgs.append(Mint(id=f"genesis:mint:{h.id}", sender=self.authority, to=h.id,
                             amount_ngonka=h.collateral_ngonka + 10 * NGONKA_PER_GNK))
            msgs.append(RegisterParticipant(id=f"genesis:reg:{h.id}", participant=h.id, role="host", gpu_type=h.gpu_type,
                                            seconds_per_unit=h.seconds_per_unit, collateral_ngonka=h.collateral_ngonka))
        rep = self._apply(msgs)
        if rep.rejected:
            raise RuntimeError(f"genesis rejected: {rep.rejected}")
        self.start_balance = {pid: p["balance_ngonka"] + p["collateral_ngonka"] for pid, p in self._participants().items()}

    def _start_epoch(self, epoch: int) -> None:
        out = self.weights_fn(epoch, self.hosts, self.p.seed)
        ew = out if isinstance(out, EpochWeights) else EpochWeights(dict(out))
        self.weights = {k: int(v) for k, v in ew.weights.items()}
        unknown = set(self.weights) - set(self.by_id)
        if unknown:
            raise ValueError(f"weights_fn returned unknown participants {sorted(unknown)[:5]}")
        self.poc_rows.extend(ew.rows)
        # secret per-validator seeds of this epoch (Gonka: int64), committed before any request
        seeds = {h.id: int(self.rng_seeds.integers(0, 2**62)) for h in self.hosts}
        self.seeds_by_epoch[epoch] = seeds
        self.seeds = seeds
        commits = [CommitSeed(id=f"seed:{epoch}:{pid}", epoch=epoch, participant=pid,
                              seed_sha256=rules.seed_commitment(seed)) for pid, seed in seeds.items()]
        rep = self._apply([*ew.messages, SetWeights(id=f"weights:{epoch}", sender=self.authority, epoch=epoch,
                                                    weights=self.weights), *commits])
        if rep.rejected:
            raise RuntimeError(f"weights rejected: {rep.rejected}")
        parts = self._participants()
        self.status = {h.id: parts[h.id]["status"] for h in self.hosts}
        self.reputation = {h.id: parts[h.id]["reputation"] for h in self.hosts}
        self.traffic = self._meta()["previous_epoch_requests"]

    # ---- agents --------------------------------------------------------------------------------
    def _requests(self, epoch: int, n: int) -> list:
        if n == 0:
            return []
        active = [h.id for h in self.hosts if self.status[h.id] == "ACTIVE" and self.weights.get(h.id, 0) > 0]
        if not active:
            return []
        w = np.array([self.weights[h] for h in active], float)
        rng = self.rng_arrivals
        execs = rng.choice(len(active), size=n, p=w / w.sum())
        shapes = rng.choice(len(self._mix_params), size=n, p=self._mix_p)
        reqs = rng.integers(0, self.p.requesters, size=n)
        seeds = rng.integers(0, 2**62, size=n)
        msgs = []
        mix = [m.__dict__ for m in self._mix_params]
        for k, (shape, seed, req, ex) in enumerate(zip(shapes.tolist(), seeds.tolist(), reqs.tolist(), execs.tolist())):
            iid = f"e{epoch}-{self._counter + k}"
            rp = _construct(RequestParams, {**mix[shape], "seed": seed, "prompt_sha256": f"prompt{seed % 1000}"})
            msgs.append(_construct(StartInference, dict(id=f"start:{iid}", kind="start_inference", inference_id=iid,
                                                        requester=f"req{req:03d}", executor=active[ex],
                                                        request=rp, max_cost_ngonka=None)))
        self._counter += n
        return msgs

    def _execute(self, started: list, height: int) -> list:
        """Executors do the work of accepted requests and finish them."""
        if not started:
            return []
        ids = [m.inference_id for m in started]
        hosts = [self.by_id[m.executor] for m in started]
        # one uniform per request of a malicious host, in request order (as one draw each would give)
        bad = [k for k, h in enumerate(hosts) if h.strategy == "malicious"]
        u = self.rng_exec.random(len(bad)).tolist() if bad else []
        devs: list[str | None] = [None] * len(started)
        for k, x in zip(bad, u):
            h = hosts[k]
            if x < h.cheat_rate:
                devs[k] = h.deviation
        reqs = [m.request.model_dump() for m in started] if getattr(self.backend, "reads_requests", True) \
            else [None] * len(started)
        ex = self.backend.execute(ids, reqs, devs)
        pricing = self.p.chain.pricing
        out = []
        compute, honest = self.compute_seconds, self.honest_seconds
        for m, h, d, sha, share in zip(started, hosts, devs, ex.video_sha256, ex.compute_share.tolist()):
            units = request_units(pricing, m.request)
            compute[h.id] += units * h.seconds_per_unit * share
            honest[h.id] += units * h.seconds_per_unit
            out.append(_construct(FinishInference, dict(id=f"finish:{m.inference_id}", kind="finish_inference",
                                                        inference_id=m.inference_id, executor=m.executor,
                                                        video_sha256=sha, commitment_root=None, truth_deviation=d)))
        return out

    def _validate(self, finished: list) -> list:
        """Validators sample finished inferences (Gonka's ShouldValidate with their secret seed of the
        inference's epoch) and validate them: vectorised floats, the few pairs within
        rules.FLOAT_MARGIN of the boundary decided in exact decimals (the chain re-checks each)."""
        if not finished:
            return []
        ids = [m.inference_id for m in finished]
        numbers = np.array([int(i.split("-", 1)[1]) for i in ids], dtype=np.uint64)
        epochs = np.array([int(i[1:].split("-", 1)[0]) for i in ids], dtype=np.int64)
        codes = self._codes([m.executor for m in finished])
        info = [self.finish_info[i] for i in ids]
        traffic = np.array([t for t, _ in info], dtype=np.int64)
        reps = np.array([r for _, r in info], dtype=np.int64)
        truth = [m.truth_deviation for m in finished]
        total_w, exec_w = self._powers(codes)
        cp = self.p.chain
        pairs_i: list[int] = []
        pairs_v: list[str] = []
        pairs_seed: list[int] = []
        groups = [(ep, np.nonzero(epochs == ep)[0]) for ep in np.unique(epochs).tolist()]
        for vid, prob in self._probabilities(codes, total_w, exec_w, reps, traffic).items():
            for ep, sel in groups:
                seed = self.seeds_by_epoch[ep][vid]
                sub_ids = ids if len(groups) == 1 else [ids[i] for i in sel]
                if self.p.sampling_hash == "sha256":
                    u = rules.seed_draws(seed, sub_ids)

                    def exact(k, sel=sel, seed=seed, vid=vid):
                        i = sel[k]
                        return rules.should_validate_exact(seed, ids[i], int(traffic[i]), int(reps[i]), int(total_w),
                                                           self.weights[vid], int(exec_w[i]), cp)

                else:
                    u = splitmix_draws(seed, numbers[sel])

                    def exact(k, sel=sel, seed=seed, vid=vid):
                        i = sel[k]
                        return rules.should_validate_exact(seed, ids[i], int(traffic[i]), int(reps[i]), int(total_w),
                                                           self.weights[vid], int(exec_w[i]), cp, "splitmix64")
                hit = rules.decide(u, prob[sel], exact)
                pick = sel[np.nonzero(hit & (codes[sel] != self._code[vid]))[0]]
                pairs_i.extend(pick.tolist())
                pairs_v.extend([vid] * len(pick))
                pairs_seed.extend([seed] * len(pick))
        if not pairs_i:
            return []
        sel_ids = [ids[i] for i in pairs_i]
        scores, passed = self.backend.validate(sel_ids, [truth[i] for i in pairs_i], pairs_v, self.rng_valid)
        self._account_validation(pairs_v, sel_ids)
        return [_construct(SubmitValidation, dict(id=f"val:{iid}:{v}", kind="validation", inference_id=iid, validator=v,
                                                  seed=seed, score=s, passed=ok))
                for iid, v, seed, s, ok in zip(sel_ids, pairs_v, pairs_seed, scores.tolist(), passed.tolist())]

    def _codes(self, execs) -> np.ndarray:
        """Each executor's host index (-1 for an id that is no host)."""
        code = self._code
        return np.array([code.get(e, -1) for e in execs], dtype=np.int64)

    def _powers(self, codes: np.ndarray) -> tuple[float, np.ndarray]:
        """(W, w_e): the ACTIVE participants' power and each executor's (0 unless ACTIVE), executors
        given by host index."""
        total_w = float(sum(self.weights.get(h.id, 0) for h in self.hosts if self.status[h.id] == "ACTIVE"))
        by_host = [float(self.weights.get(h.id, 0) if self.status[h.id] == "ACTIVE" else 0) for h in self.hosts]
        return total_w, np.array(by_host + [0.0])[codes]

    def check_probabilities(self, executors: Sequence[str], reputations: Sequence[int] | None = None,
                            traffic: Sequence[int] | None = None) -> dict[str, np.ndarray]:
        """Gonka's P(validator v checks an inference of executor e), for every active validator
        with weight: min(1, target(reputation, traffic) x w_v / (W - w_e)), W the power of the
        active participants and w_e the executor's (0 once it is INVALID or INACTIVE: it is out of
        W), 0 when W <= w_e. Reputation and traffic basis per inference (as recorded at finish),
        default: the executor's reputation and the traffic at the epoch's start. The executor's own
        entry is 0 (it cannot validate itself)."""
        execs = np.asarray(executors, dtype=object)
        codes = self._codes(execs)
        reps = [self.reputation[e] for e in execs] if reputations is None else reputations
        traf = [self.traffic] * len(execs) if traffic is None else traffic
        return self._probabilities(codes, *self._powers(codes), reps, traf)

    def _probabilities(self, codes: np.ndarray, total_w: float, exec_w: np.ndarray, reps, traffic) -> dict:
        cp: ChainParams = self.p.chain
        target = np.broadcast_to(rules.target_validators(np.asarray(reps), np.asarray(traffic), cp), (len(codes),))
        out = {}
        for k, h in enumerate(self.hosts):
            if self.status[h.id] != "ACTIVE" or self.weights.get(h.id, 0) <= 0:
                continue
            prob = rules.validation_probability(target, self.weights[h.id], total_w, exec_w)
            out[h.id] = np.where(codes == k, 0.0, prob)
        return out

    def _account_validation(self, validators: list[str], inference_ids: list[str]) -> None:
        """GPU seconds of each (validator, inference) check, on the validator's GPU."""
        share = getattr(self.backend, "validator_share", 1.0)
        pricing = self.p.chain.pricing
        req_of, by_id, seconds = self._req_of, self.by_id, self.validation_seconds
        for v, iid in zip(validators, inference_ids):
            r = req_of.get(iid)
            if r is None:
                continue
            seconds[v] += request_units(pricing, r) * by_id[v].seconds_per_unit * share

    def _checks(self, to_validate: list, to_vote: list[str]) -> list:
        """The block's validations and votes in one random order, as transactions from many
        validators reach a block: a host's passes and closed votes interleave, as its outcomes do on
        Gonka, instead of every vote of the block closing after every pass."""
        msgs = self._validate(to_validate) + self._votes(to_vote)
        if len(msgs) > 1:
            msgs = [msgs[i] for i in self.rng_order.permutation(len(msgs))]
        return msgs

    def _votes(self, inference_ids: list[str]) -> list:
        """The committees of newly opened votes re-validate and vote."""
        if not inference_ids:
            return []
        if self.chain is not None:
            rows = [(r["id"], r["committee"], r["truth_deviation"]) for r in map(self.chain.inference, inference_ids)
                    if r is not None]
        else:
            t = T.Inference.__table__
            with self.engine.connect() as c:
                found = {r[0]: r for r in c.execute(select(t.c.id, t.c.committee, t.c.truth_deviation)
                                                    .where(t.c.id.in_(inference_ids))).all()}
            # votes in the order the votes opened, as on the batched path (a vote closes at its last
            # vote, so the order decides which message of a block names a slash)
            rows = [found[i] for i in inference_ids if i in found]
        ids, devs, voters = [], [], []
        for iid, committee, truth in rows:
            for v in filter(None, committee.split(",")):
                if self.status.get(v) == "ACTIVE":
                    ids.append(iid)
                    devs.append(truth)
                    voters.append(v)
        if not ids:
            return []
        scores, passed = self.backend.validate(ids, devs, voters, self.rng_valid)
        self._account_validation(voters, ids)
        return [SubmitVote.model_construct(id=f"vote:{iid}:{v}", kind="vote", inference_id=iid, voter=v,
                                           invalid=not bool(ok)) for iid, v, ok in zip(ids, voters, passed)]

    # ---- the loop ------------------------------------------------------------------------------
    def run(self, progress: Callable[[dict], None] | None = None) -> NetworkResult:
        t0 = time.perf_counter()
        self.engine = create_chain(self.db_url, self.p.chain_params)
        gc_was_enabled = gc.isenabled()
        try:
            if self.p.chain_writes == "batched":
                self.chain = BatchedChain(self.engine, self.p.flush_blocks, writer=chain_writer(self.p, self.engine))
            # The run keeps millions of live rows and messages; the cyclic collector would rescan them
            # over and over (a sixth of a large run's time) for garbage the loop does not make
            # (reference counting frees it). Off for the run (process-wide), back on after it.
            gc.disable()
            return self._run(progress, t0)
        finally:
            try:
                if self.chain is not None:
                    self.chain.close()
            finally:
                self.engine.dispose()
                if gc_was_enabled:
                    gc.enable()

    def _run(self, progress, t0) -> NetworkResult:
        p = self.p
        self._genesis()
        self._req_of: dict[str, Any] = {}
        arrival_blocks = max(1, p.blocks_per_epoch - p.finish_delay_blocks - 1)
        pending_finish: dict[int, list] = {}
        to_validate: list = []
        to_vote: list[str] = []
        self.status = {h.id: "ACTIVE" for h in self.hosts}
        snapshots = []
        height = self._meta()["height"]
        for epoch in range(p.epochs):
            self.epoch = epoch
            self._start_epoch(epoch)
            height += 1
            counts = self.rng_arrivals.multinomial(p.requests_per_epoch, np.full(arrival_blocks, 1 / arrival_blocks))
            for b in range(p.blocks_per_epoch - 1):
                height += 1
                msgs: list = []
                finished = self._execute(pending_finish.pop(height, []), height)
                msgs += finished
                # requests routed on the statuses at the block's start come before the block's
                # votes, which may make an executor INVALID part-way through the block
                new = self._requests(epoch, int(counts[b]) if b < arrival_blocks else 0)
                msgs += new
                msgs += self._checks(to_validate, to_vote)
                if b == p.blocks_per_epoch - 2:
                    msgs.append(EndEpoch(id=f"end:{epoch}", sender=self.authority, epoch=epoch))
                rep = self._apply(msgs)
                accepted = [m for m in new if m.id not in rep.rejected]
                for m in accepted:
                    self._req_of[m.inference_id] = m.request
                pending_finish.setdefault(height + p.finish_delay_blocks, []).extend(accepted)
                to_validate = [m for m in finished if m.id not in rep.rejected]
                to_vote = list(rep.voting_opened)
            snap = self._participants()
            snapshots.append(snap)
            if progress:
                progress({"epoch": epoch, "height": height, "seconds": time.perf_counter() - t0})
        # drain: let every inference finish, be validated, voted on and settled
        cp = p.chain
        drain = cp.validation_window_blocks + cp.vote_timeout_blocks + cp.expiration_blocks + p.finish_delay_blocks + 3
        for _ in range(drain):
            height += 1
            msgs = []
            finished = self._execute(pending_finish.pop(height, []), height)
            msgs += finished + self._checks(to_validate, to_vote)
            rep = self._apply(msgs)
            to_validate = [m for m in finished if m.id not in rep.rejected]
            to_vote = list(rep.voting_opened)
        final = self._participants()  # (flushes a batched chain)
        epochs = self._epoch_table(snapshots)
        hosts = self._host_table(final)
        import pandas as pd

        extra = {"poc": pd.DataFrame(self.poc_rows)} if self.poc_rows else {}
        return NetworkResult(params=p, db_url=self.db_url, epochs=epochs, hosts=hosts,
                             seconds=time.perf_counter() - t0, blocks=self.n_blocks, messages=self.n_messages,
                             extra=extra)

    # ---- reports ---------------------------------------------------------------------------------
    def _epoch_table(self, snapshots: list[dict]) -> Any:
        import pandas as pd

        i = T.Inference.__table__
        v = T.Validation.__table__
        b = T.Block.__table__
        e = T.Epoch.__table__
        cheat = i.c.truth_deviation.is_not(None)
        with self.engine.connect() as c:
            inf = {r["epoch"]: dict(r) for r in c.execute(select(
                i.c.epoch, func.count().label("requests"), func.sum(i.c.units).label("units"),
                func.sum(i.c.cost_ngonka).label("cost_ngonka"),
                func.sum(case((cheat, 1), else_=0)).label("cheats"),
                func.sum(case((cheat & (i.c.status == "INVALIDATED"), 1), else_=0)).label("cheats_caught"),
                func.sum(case((cheat & (i.c.status == "VALIDATED"), 1), else_=0)).label("cheats_missed"),
                func.sum(case((cheat & (i.c.validations > 0), 1), else_=0)).label("cheats_checked"),
                func.sum(case((~cheat & (i.c.status == "INVALIDATED"), 1), else_=0)).label("false_rejections"),
                func.sum(case((~cheat & (i.c.validations > 0), 1), else_=0)).label("honest_checked"),
                func.sum(case((i.c.status == "EXPIRED", 1), else_=0)).label("expired"),
                func.sum(i.c.validations).label("validations"),
            ).group_by(i.c.epoch)).mappings()}
            price = {r[0]: (float(r[1]), float(r[2]), float(r[3])) for r in c.execute(select(
                b.c.epoch, func.avg(b.c.unit_price_ngonka), func.max(b.c.unit_price_ngonka),
                func.avg(b.c.utilisation)).group_by(b.c.epoch))}
            rewards = {r[0]: int(r[1] or 0) for r in c.execute(select(e.c.index, e.c.reward_ngonka))}
        rows = []
        groups = {g: [h.id for h in self.hosts if h.strategy == g] for g in ("honest", "malicious")}
        prev = self.start_balance
        for ep, snap in enumerate(snapshots):
            r = inf.get(ep, {})
            row = dict(epoch=ep, requests=int(r.get("requests") or 0), units=float(r.get("units") or 0.0),
                       mean_unit_price_ngonka=price.get(ep, (0, 0, 0))[0], max_unit_price_ngonka=price.get(ep, (0, 0, 0))[1],
                       mean_utilisation=price.get(ep, (0, 0, 0))[2])
            for k in ("validations", "cheats", "cheats_checked", "cheats_caught", "cheats_missed", "honest_checked",
                      "false_rejections", "expired"):
                row[k] = int(r.get(k) or 0)
            row["reward_ngonka"] = rewards.get(ep, 0)
            poc = [r for r in self.poc_rows if r["epoch"] == ep]
            if poc:
                row["poc_rejected"] = sum(1 for r in poc if not r["accepted"])
            for g, ids in groups.items():
                if ids:
                    gain = [snap[pid]["balance_ngonka"] + snap[pid]["collateral_ngonka"] - prev[pid] for pid in ids]
                    row[f"{g}_mean_gain_gnk"] = float(np.mean(gain)) / NGONKA_PER_GNK
                    row[f"{g}_became_invalid"] = sum(1 for ev, pid in self.invalid_events if ev == ep and pid in ids)
            row["statuses"] = " ".join(f"{s}:{n}" for s, n in sorted(_count(p["status"] for pid, p in snap.items()
                                                                            if pid in self.by_id).items()))
            prev = {pid: snap[pid]["balance_ngonka"] + snap[pid]["collateral_ngonka"] for pid in snap}
            rows.append(row)
        return pd.DataFrame(rows)

    def _host_table(self, final: dict) -> Any:
        import pandas as pd

        led = T.LedgerEntry.__table__
        with self.engine.connect() as c:
            earned = {}
            for to, kind, amount in c.execute(select(led.c.to_account, led.c.kind, func.sum(led.c.amount_ngonka))
                                              .group_by(led.c.to_account, led.c.kind)):
                earned.setdefault(to, {})[kind] = int(amount)
            slashed = {}
            for frm, amount in c.execute(select(led.c.from_account, func.sum(led.c.amount_ngonka))
                                         .where(led.c.kind == "slash").group_by(led.c.from_account)):
                slashed[frm.split(":", 1)[1]] = int(amount)
        rows = []
        for h in self.hosts:
            p = final[h.id]
            e = earned.get(h.id, {})
            rows.append(dict(host=h.id, group=h.group, strategy=h.strategy, deviation=h.deviation or "",
                             poc_strategy=self.p.hosts[h.group].poc_strategy,
                             cheat_rate=h.cheat_rate, status=p["status"], reputation=p["reputation"],
                             weight=p["poc_weight"], checked=p["checked_count"], invalidated=p["invalidated_count"],
                             payments_ngonka=e.get("payment", 0), validator_fees_ngonka=e.get("validator_fee", 0),
                             rewards_ngonka=e.get("reward", 0), slashed_ngonka=slashed.get(h.id, 0),
                             compute_seconds=self.compute_seconds[h.id], honest_seconds=self.honest_seconds[h.id],
                             validation_seconds=self.validation_seconds[h.id],
                             balance_ngonka=p["balance_ngonka"], collateral_ngonka=p["collateral_ngonka"]))
        return pd.DataFrame(rows)


def _construct(cls, fields: dict):
    """`cls.model_construct(**fields)` for a message whose every field is given (no defaults to fill),
    without its per-call overhead: the agents build millions of messages from checked parts."""
    m = cls.__new__(cls)
    _setattr(m, "__dict__", fields)
    _setattr(m, "__pydantic_fields_set__", set(fields))
    _setattr(m, "__pydantic_extra__", None)
    _setattr(m, "__pydantic_private__", None)
    return m


_setattr = object.__setattr__


def _count(items) -> dict:
    out: dict = {}
    for x in items:
        out[x] = out.get(x, 0) + 1
    return out


# Below this many requests a writer process (about a second to start) saves less than it costs.
PROCESS_WRITER_MIN_REQUESTS = 100_000


def chain_writer(params: NetworkParams, engine) -> str:
    """How a batched chain writes its flushes: in a writer process beside the simulation (large runs
    on a database another process can open), else inline."""
    url = engine.url
    in_memory = url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:")
    big = params.requests_per_epoch * params.epochs >= PROCESS_WRITER_MIN_REQUESTS
    return "process" if big and not in_memory else "inline"


def run_network(params: NetworkParams, db_url: str, *, weights_fn: WeightsFn | None = None,
                backend: Backend | None = None, progress=None) -> NetworkResult:
    """Run a whole simulation on a fresh chain at `db_url` and return its tables."""
    return NetworkSimulation(params, db_url, weights_fn=weights_fn, backend=backend).run(progress)
