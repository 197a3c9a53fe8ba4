"""Gonka's calculations, ported: the cases of Gonka's own Go tests (gonka-ai/gonka,
inference-chain/x/inference/...; each test names its Go file and test), the float fast path
against the exact decimals, and the rules on the chain (authority, sampled validators, downtime,
confirmation PoC, per-message rejection) on SQLite and PostgreSQL."""

from __future__ import annotations

from decimal import Decimal

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from sqlalchemy import select

from sim.chain import (ChainParams, CommitSeed, ConfirmationPoc, EndEpoch, FinishInference, Mint, PocCommitMsg,
                       RegisterParticipant, RequestParams, SetWeights, StartInference, SubmitValidation, apply_block,
                       assert_invariants, create_chain, parse_message)
from sim.chain import rules
from sim.chain import tables as T
from sim.pricing import PriceRule, grace_price, next_unit_price
from tests.test_chain import AUTH, SEED, _pg_clean, _row, chain_url  # noqa: F401  (fixture)

# calculations/reputation_test.go constants
FIXED_ID = "inferenceId"
NINETY, FIFTY, TEN = 5798067479865859744, 6669939700021626378, 2925341513999858939


def _params(**kw) -> ChainParams:
    return ChainParams(**{"full_validation_traffic_cutoff": 10_000, "min_validation_traffic_cutoff": 100,
                          "min_validation_halfway": 0.05, "epochs_to_max_reputation": 30, **kw})


# ---------------------------------------------------------------------------------------------
# calculations/should_validate_test.go


@pytest.mark.parametrize("seed,identifier,expected", [
    (12345, "inference-1", "0.5498462437774096"), (67890, "inference-2", "0.1626630352875919"),
    (0, "inference-3", "0.8815494969577052"), (-12345, "inference-4", "0.0456115115524204"),
    (999999999, "very-long-inference-identifier-string-just-to-be-sure", "0.9774181254878734")])
def test_deterministic_float(seed, identifier, expected):
    """TestDeterministicFloat: the exact strings Gonka's decimal prints."""
    assert rules.go_string(rules.deterministic_float(seed, identifier)) == expected


# name, seed, traffic, reputation, total, validator, executor, result, probability, min avg, max avg
SHOULD_VALIDATE = [
    ("rep 0, full validator power", FIFTY, 10_000, 0, 100, 50, 10, True, 0.5555555555555556, 0.1, 1.0),
    ("rep 1, low validator power", FIFTY, 10_000, 100, 200, 30, 20, False, 0.016666671, 0.1, 1.0),
    ("executor higher power, mid rep", TEN, 10_000, 50, 300, 100, 50, True, 0.22000001, 0.1, 1.0),
    ("rep at max, equal powers", FIFTY, 10_000, 100, 150, 50, 50, False, 0.05, 0.1, 1.0),
    ("max rep, equal powers, small range", FIFTY, 10_000, 100, 100, 50, 50, False, 0.5, 0.5, 1.0),
    ("min rep, equal powers, small range", NINETY, 10_000, 0, 150, 50, 50, False, 0.5, 0.5, 1.0),
    ("only one non-executor, bad rep", NINETY, 10_000, 0, 100, 50, 50, True, 1.0, 0.5, 1.0),
    ("only one non-executor, perfect rep", NINETY, 10_000, 100, 100, 50, 50, False, 0.5, 0.5, 1.0),
    ("never more than 1.0", NINETY, 10_000, 0, 100, 50, 50, True, 1.0, 0.5, 100.0),
    ("minimum traffic, perfect rep", FIFTY, 100, 100, 100, 50, 10, True, 0.5555555555555556, 0.1, 1.0),
    ("middle traffic, perfect rep", FIFTY, 5_000, 100, 150, 50, 50, False, 0.025, 0.01, 1.0),
]


@pytest.mark.parametrize("case", SHOULD_VALIDATE, ids=[c[0] for c in SHOULD_VALIDATE])
def test_should_validate(case):
    """TestShouldValidate: probability within 1% (Gonka's tolerance) and the same decision, in
    the exact path and in the float path."""
    _, seed, traffic, rep, total, vpow, epow, result, prob, lo, hi = case
    p = _params(min_validation_average=lo, max_validation_average=hi)
    exact = rules.probability_exact(rules.target_validators_exact(rep, traffic, p), vpow, total, epow)
    assert float(exact) == pytest.approx(prob, rel=0.01)
    assert rules.should_validate_exact(seed, FIXED_ID, traffic, rep, total, vpow, epow, p) is result
    assert rules.should_validate(seed, FIXED_ID, traffic, rep, total, vpow, epow, p) is result


def test_should_validate_division_by_zero_guard():
    """TestShouldValidate_DivisionByZeroGuard: total power <= executor power never validates."""
    p = _params(min_validation_average=0.1)
    for total, vpow, epow in ((100, 50, 100), (50, 25, 100)):
        assert not rules.should_validate_exact(0, FIXED_ID, 10_000, 0, total, vpow, epow, p)
        assert not rules.should_validate(0, FIXED_ID, 10_000, 0, total, vpow, epow, p)
    assert rules.validation_probability(1.0, 25, 50, 100) == 0.0


def test_deterministic_float_consistency():
    """TestDeterministicFloatConsistency."""
    a = rules.deterministic_float(FIFTY, FIXED_ID)
    assert a == rules.deterministic_float(FIFTY, FIXED_ID)
    assert a != rules.deterministic_float(TEN, FIXED_ID) and a != rules.deterministic_float(FIFTY, "otherId")


# ---------------------------------------------------------------------------------------------
# calculations/min_validation_average_test.go


@pytest.mark.parametrize("count,full,low,expected", [
    (10_000, 10_000, 100, "0.01"), (100, 10_000, 100, "1"), (5_000, 10_000, 100, "0.05"),
    (7_500, 10_000, 100, "0.03"), (6_250, 10_000, 100, "0.04"), (2_550, 10_000, 100, "0.525"),
    (3_775, 10_000, 100, "0.2875"), (255, 1000, 10, "0.525")])
def test_minimum_validation_average(count, full, low, expected):
    """TestMinimumValidationAverage: exact decimal equality."""
    p = _params(full_validation_traffic_cutoff=full, min_validation_traffic_cutoff=low)
    assert rules.min_validation_average_exact(count, p) == Decimal(expected)


def test_minimum_validation_average_edges():
    """Below the low cutoff the minimum is MaxValidationAverage (not 1.0), and half the full cutoff
    at or below the low cutoff needs no special case (no division by zero, monotone)."""
    assert rules.min_validation_average_exact(10, _params(max_validation_average=2.5)) == Decimal("2.5")
    odd = _params(full_validation_traffic_cutoff=150, min_validation_traffic_cutoff=100)  # halfway 75 < 100
    values = [rules.min_validation_average_exact(n, odd) for n in range(0, 200, 5)]
    assert values[0] == 1 and values[-1] == Decimal("0.01") and all(a >= b for a, b in zip(values, values[1:]))
    assert rules.min_validation_average_exact(75, odd) == Decimal("0.05")


# ---------------------------------------------------------------------------------------------
# calculations/reputation_test.go (Gonka now returns percent: 0.95 -> 95)


@pytest.mark.parametrize("epochs,to_max,misses,expected", [
    (0, 30, [], 0), (15, 30, [], 50), (30, 30, [], 100), (10, 30, [], 33), (20, 30, [], 66),
    (10, 10, [0.5], 95), (10, 10, [0.25, 0.5, 0.5, 0.5, 0.75, 0.5], 70), (10, 10, [0.1], 100)])
def test_calculate_reputation(epochs, to_max, misses, expected):
    """TestCalculateReputation (MissPercentageCutoff 0.1, penalty 1.0)."""
    p = _params(epochs_to_max_reputation=to_max, miss_percentage_cutoff=0.1)
    assert rules.reputation(epochs, p, [rules.dec(m) for m in misses]) == expected


def test_epoch_miss_rate_and_preserve():
    assert rules.epoch_miss_rate(0, 5) == 0 and rules.epoch_miss_rate(3, 1) == Decimal("0.3333333333333333")
    assert rules.preserve(10, 0.0) == 0 and rules.preserve(5, 0.5) == 3 and rules.preserve(7, 1.5) == 7


# ---------------------------------------------------------------------------------------------
# keeper/sprt_test.go (TestPrecomputeSPRTValues) and calculations/status_test.go


def test_sprt_log_increments_are_gonkas():
    assert rules.sprt_log_increments_e12(0.05, 0.3) == (1_791_759_469_228, -305_381_649_551)
    assert rules.sprt_log_increments_e12(0.1, 0.4) == (1_386_294_361_120, -405_465_108_108)
    assert rules.sprt_log_increments_e12(0.0, 0.2) is None and rules.sprt_log_increments_e12(0.1, 1.0) is None


def _participant(**kw) -> dict:
    base = dict(status="ACTIVE", consecutive_invalid=0, inference_count=0, missed_requests=0, validated_epoch=0,
                invalidated_epoch=0, invalid_llr_e12=0, inactive_llr_e12=0, confirmation_poc_ratio=None)
    return {**base, **kw}


ZERO_STATS = dict(inference_count=0, missed_requests=0, validated_epoch=0, invalidated_epoch=0)
STATUS_PARAMS = dict(sprt_p0=0.05, sprt_p1=0.1, sprt_llr_threshold=4.0, downtime_good_percentage=0.1,
                     downtime_bad_percentage=0.2, downtime_h_threshold=4.0, quick_failure_threshold=0.000001)


@pytest.mark.parametrize("part,status,reason", [
    (dict(consecutive_invalid=20), "INVALID", rules.CONSECUTIVE_FAILURES),
    (dict(validated_epoch=7, invalidated_epoch=7), "INVALID", rules.STATISTICAL_INVALIDATIONS),
    (dict(validated_epoch=95, invalidated_epoch=5), "ACTIVE", rules.NO_REASON),
    (dict(inference_count=50, missed_requests=60), "INACTIVE", rules.DOWNTIME),
    (dict(status="INVALID"), "INVALID", rules.ALREADY_SET),
], ids=["consecutive", "statistical", "normal", "downtime", "already-set"])
def test_compute_status(part, status, reason):
    """TestComputeStatus and TestDowntimeTriggersInactive (RunAll scope, zero old statistics)."""
    assert rules.compute_status(_participant(**part), ZERO_STATS, ChainParams(**STATUS_PARAMS)) == (status, reason)


@pytest.mark.parametrize("good,bad", [(0, 0.2), (1, 0.2), (-0.1, 0.2), (0.1, 0), (0.1, 1), (0.1, 1.1)])
def test_downtime_params_out_of_range_return_algorithm_error(good, bad):
    """TestDowntimeParamsOutOfRangeReturnAlgorithmError (the rule takes any value; ChainParams
    itself admits 0..1, where 0 and 1 give the same algorithm_error)."""
    p = ChainParams(**STATUS_PARAMS).model_copy(update=dict(downtime_good_percentage=good,
                                                            downtime_bad_percentage=bad))
    assert rules.compute_status(_participant(), ZERO_STATS, p) == ("ACTIVE", rules.ALGORITHM_ERROR)


def test_probability_of_consecutive_failures():
    """TestProbabilityOfConsecutiveFailures_PanicOnBadRate, and Gonka's default cutoff."""
    assert rules.probability_of_consecutive_failures(1.5, 1) == 0
    assert rules.probability_of_consecutive_failures(-0.5, 1) == 0
    assert rules.probability_of_consecutive_failures(0.05, 5) == Decimal("3.125E-7")
    assert rules.consecutive_cutoff(0.05, 1e-6) == 5 and rules.consecutive_cutoff(1.0, 1e-6) is None


def test_confirmation_poc_status():
    p = ChainParams(confirmation_poc_alpha_threshold=0.5)
    assert rules.compute_status(_participant(confirmation_poc_ratio="0.4"), ZERO_STATS, p,
                                rules.SCOPE_CONFIRMATION_POC) == ("INACTIVE", rules.FAILED_CONFIRMATION_POC)
    assert rules.compute_status(_participant(confirmation_poc_ratio="0.5"), ZERO_STATS, p)[0] == "ACTIVE"
    # alpha 0 (Gonka's default) disables the check
    assert rules.compute_status(_participant(confirmation_poc_ratio="0"), ZERO_STATS, ChainParams())[0] == "ACTIVE"


# ---------------------------------------------------------------------------------------------
# keeper/dynamic_pricing_test.go


@pytest.mark.parametrize("u,price,e,floor,expected", [
    (0.50, 100, 0.05, 1, 100), (0.20, 100, 0.05, 1, 99), (0.80, 100, 0.05, 1, 101), (0.00, 10, 0.05, 5, 9),
    (0.00, 6, 0.10, 5, 5), (1.00, 100, 0.05, 1, 102)])
def test_calculate_model_dynamic_price(u, price, e, floor, expected):
    """TestCalculateModelDynamicPrice: integer prices, truncated."""
    assert next_unit_price(price, u, PriceRule(sensitivity=e, min_unit_price_ngonka=floor)) == expected


@pytest.mark.parametrize("u,changes", [(0.40, False), (0.399, True), (0.401, False), (0.60, False), (0.599, False),
                                       (0.61, True)])
def test_stability_zone_boundaries(u, changes):
    """TestStabilityZoneBoundaries (price 10,000)."""
    assert (next_unit_price(10_000, u, PriceRule()) != 10_000) is changes


def test_price_limits_follow_the_band():
    """The per-block caps are 1 - low x e and 1 + (1 - high) x e, not fixed 0.98 / 1.02."""
    r = PriceRule(target_low=0.2, target_high=0.9, sensitivity=0.5)
    assert r.limits() == (Decimal("0.9"), Decimal("1.05"))
    assert next_unit_price(1000, 0.0, r) == 900 and next_unit_price(1000, 5.0, r) == 1050
    assert grace_price(3, PriceRule(grace_period_end_epoch=90)) == 0
    assert grace_price(90, PriceRule(grace_period_end_epoch=90)) == 100 and grace_price(91, PriceRule()) is None


# ---------------------------------------------------------------------------------------------
# The float fast path against the exact decimals


@settings(max_examples=300, deadline=None)
@given(seed=st.integers(-2**63, 2**63 - 1), n=st.integers(0, 10**9), traffic=st.integers(0, 30_000),
       rep=st.integers(0, 100), weights=st.lists(st.integers(0, 10**6), min_size=3, max_size=3),
       draw=st.sampled_from(["sha256", "splitmix64"]))
def test_float_path_agrees_with_exact(seed, n, traffic, rep, weights, draw):
    total = sum(weights)
    p = ChainParams(sampling_draw=draw)
    iid = f"e0-{n}"
    assert rules.should_validate(seed, iid, traffic, rep, total, weights[1], weights[2], p) == \
        rules.should_validate_exact(seed, iid, traffic, rep, total, weights[1], weights[2], p)


def test_float_path_decides_near_the_boundary_exactly():
    """Pairs within FLOAT_MARGIN of the boundary go to the exact decimals (`rules.decide`)."""
    u = np.array([0.3, 0.5 - 1e-12, 0.9])
    prob = np.array([0.5, 0.5, 0.5])
    calls = []
    out = rules.decide(u, prob, lambda k: calls.append(k) or False)
    assert calls == [1] and out.tolist() == [True, False, False]


# ---------------------------------------------------------------------------------------------
# On the chain (SQLite and PostgreSQL)


def _chain(url, **kw):
    return create_chain(url, ChainParams(**{"validation_window_blocks": 2, "vote_timeout_blocks": 2, **kw}))


def _setup(eng, hosts=("h1", "h2", "h3", "h4"), seeds=None):
    msgs = [Mint(id="mint:req", sender=AUTH, to="req", amount_ngonka=10**15)]
    for h in hosts:
        msgs += [Mint(id=f"mint:{h}", sender=AUTH, to=h, amount_ngonka=10**12),
                 RegisterParticipant(id=f"reg:{h}", participant=h, role="host", seconds_per_unit=0.1,
                                     collateral_ngonka=10**11)]
    msgs.append(SetWeights(id="w0", sender=AUTH, epoch=0, weights={h: 10 for h in hosts}))
    msgs += [CommitSeed(id=f"seed:{h}", epoch=0, participant=h,
                        seed_sha256=rules.seed_commitment((seeds or {}).get(h, SEED))) for h in hosts]
    rep = apply_block(eng, msgs)
    assert not rep.rejected, rep.rejected


def _run_inference(eng, n, executor="h1"):
    apply_block(eng, [StartInference(id=f"start:{n}", inference_id=f"inf{n}", requester="req", executor=executor,
                                     request=RequestParams(width=480, height=480, frames=5, steps=4))])
    return apply_block(eng, [FinishInference(id=f"fin:{n}", inference_id=f"inf{n}", executor=executor,
                                             video_sha256="v")])


def test_authority_messages_need_the_module_authority(chain_url):
    eng = _chain(chain_url)
    _setup(eng)
    rep = apply_block(eng, [Mint(id="m1", sender="h1", to="h1", amount_ngonka=1),
                            SetWeights(id="w1", sender="req", epoch=0, weights={"h1": 1000}),
                            EndEpoch(id="e1", sender="@mint", epoch=0),
                            ConfirmationPoc(id="c1", sender="h2", epoch=0, participant="h1", ratio=0.0),
                            Mint(id="m2", sender=AUTH, to="h1", amount_ngonka=1)])
    assert set(rep.rejected) == {"m1", "w1", "e1", "c1"} and rep.accepted == 1
    assert all("only the module authority '@gov'" in r for r in rep.rejected.values())
    assert _row(eng, T.Participant, "h2")["poc_weight"] == 10
    assert_invariants(eng)


def test_only_sampled_validators_validate_and_open_votes(chain_url):
    """A validator whose seed did not sample the inference (or that reveals another seed) is
    rejected: it cannot open a vote and is not paid."""
    p = ChainParams()
    # find seeds: h2's samples inf1, h3's does not (4 equal hosts, traffic 1: P = 1 x 10/30)
    sampled = next(s for s in range(1000) if rules.should_validate_exact(s, "inf1", 1, 0, 40, 10, 10, p))
    unsampled = next(s for s in range(1000) if not rules.should_validate_exact(s, "inf1", 1, 0, 40, 10, 10, p))
    eng = _chain(chain_url)
    _setup(eng, seeds={"h2": sampled, "h3": unsampled, "h4": sampled})
    rep = _run_inference(eng, 1)
    assert rep.finished["inf1"] == (1, 0)
    rep = apply_block(eng, [
        SubmitValidation(id="v3", inference_id="inf1", validator="h3", seed=unsampled, score=9.0, passed=False),
        SubmitValidation(id="v4", inference_id="inf1", validator="h4", seed=unsampled, score=0.0, passed=True),
        SubmitValidation(id="v2", inference_id="inf1", validator="h2", seed=sampled, score=0.0, passed=True)])
    assert "not sampled" in rep.rejected["v3"] and "does not match" in rep.rejected["v4"]
    assert rep.accepted == 1 and not rep.voting_opened
    for _ in range(3):
        apply_block(eng, [])
    inf = _row(eng, T.Inference, "inf1")
    assert inf["status"] == "VALIDATED" and inf["validators"] == "h2"
    led = T.LedgerEntry.__table__
    with eng.connect() as c:
        fees = c.execute(select(led.c.to_account).where(led.c.kind == "validator_fee")).scalars().all()
    assert fees == ["h2"]
    assert_invariants(eng)


def test_seed_committed_after_the_inference_started_is_refused(chain_url):
    eng = _chain(chain_url, validation_rate_multiplier=3.0)
    _setup(eng, hosts=("h1", "h2", "h3"))
    apply_block(eng, [StartInference(id="s", inference_id="late", requester="req", executor="h1",
                                     request=RequestParams(width=480, height=480, frames=5, steps=4))])
    apply_block(eng, [FinishInference(id="f", inference_id="late", executor="h1", video_sha256="v")])
    rep = apply_block(eng, [CommitSeed(id="again", epoch=0, participant="h2", seed_sha256=rules.seed_commitment(1))])
    assert "already committed" in rep.rejected["again"]


def test_downtime_makes_inactive_slashes_and_rejoins(chain_url):
    """Missed (expired) inferences drive the downtime SPRT to INACTIVE (reason downtime), which
    slashes 10% of the collateral, resets the completed epochs and takes the host out of the power;
    the epoch's end resets the statistics and the host rejoins."""
    eng = _chain(chain_url, expiration_blocks=1)
    _setup(eng)
    before = _row(eng, T.Participant, "h1")["collateral_ngonka"]
    statuses = []
    for n in range(8):
        apply_block(eng, [StartInference(id=f"s{n}", inference_id=f"i{n}", requester="req", executor="h1",
                                         request=RequestParams(width=480, height=480, frames=5, steps=4))])
        rep = apply_block(eng, [])  # never finished: expires
        statuses.append(_row(eng, T.Participant, "h1")["status"])
        if rep.new_inactive:
            assert rep.new_inactive == ["h1"] and rep.status_reasons == {"h1": rules.DOWNTIME}
    # ln(0.2/0.1) = 0.693147180560 per miss: the 6th reaches H = 4
    assert statuses.index("INACTIVE") == 5
    h1 = _row(eng, T.Participant, "h1")
    assert h1["status_reason"] == "downtime" and h1["collateral_ngonka"] == before - before // 10
    assert h1["inactive_llr_e12"] == 6 * 693_147_180_560
    rep = apply_block(eng, [StartInference(id="s-x", inference_id="x", requester="req", executor="h1",
                                           request=RequestParams())])
    assert "INACTIVE" in rep.rejected["s-x"]
    apply_block(eng, [EndEpoch(id="end0", sender=AUTH, epoch=0)])
    h1 = _row(eng, T.Participant, "h1")
    assert h1["status"] == "ACTIVE" and h1["inactive_llr_e12"] == 0 and h1["missed_requests"] == 0
    assert_invariants(eng)


def test_confirmation_poc_failure_makes_inactive(chain_url):
    eng = _chain(chain_url, confirmation_poc_alpha_threshold=0.5, confirmation_poc_slash_fraction=0.5)
    _setup(eng)
    rep = apply_block(eng, [ConfirmationPoc(id="c1", sender=AUTH, epoch=0, participant="h1", ratio=0.4),
                            ConfirmationPoc(id="c2", sender=AUTH, epoch=0, participant="h2", ratio=0.9)])
    assert rep.new_inactive == ["h1"] and rep.status_reasons["h1"] == rules.FAILED_CONFIRMATION_POC
    assert _row(eng, T.Participant, "h1")["collateral_ngonka"] == 5 * 10**10
    assert _row(eng, T.Participant, "h2")["status"] == "ACTIVE"
    assert_invariants(eng)


def test_statistics_reset_each_epoch(chain_url):
    """Gonka's SPRT statistics are per epoch: the invalidation LLR starts at 0 every epoch."""
    eng = _chain(chain_url, validation_rate_multiplier=3.0)
    _setup(eng)
    _run_inference(eng, 1)
    apply_block(eng, [SubmitValidation(id="v", inference_id="inf1", validator="h2", seed=SEED, score=0.0,
                                       passed=True)])
    for _ in range(3):
        apply_block(eng, [])
    h1 = _row(eng, T.Participant, "h1")
    assert h1["validated_epoch"] == 1 and h1["invalid_llr_e12"] == rules.sprt_log_increments_e12(0.05, 0.2)[1]
    assert h1["inference_count"] == 1
    apply_block(eng, [EndEpoch(id="end0", sender=AUTH, epoch=0)])
    h1 = _row(eng, T.Participant, "h1")
    assert (h1["validated_epoch"], h1["invalid_llr_e12"], h1["inference_count"]) == (0, 0, 0)
    assert h1["checked_count"] == 1 and h1["epochs_completed"] == 1 and h1["reputation"] == 3


def test_a_passing_validation_counts_when_it_arrives(chain_url):
    """Gonka's MsgValidation: a pass resets the consecutive count and counts for the SPRT in its own
    block, not when the validation window closes (payment still waits for the window)."""
    eng = _chain(chain_url, validation_rate_multiplier=3.0, validation_window_blocks=10)
    _setup(eng)
    _run_inference(eng, 1)
    apply_block(eng, [SubmitValidation(id="v", inference_id="inf1", validator="h2", seed=SEED, score=0.0,
                                       passed=True)])
    h1, inf = _row(eng, T.Participant, "h1"), _row(eng, T.Inference, "inf1")
    assert inf["status"] == "FINISHED" and inf["paid_ngonka"] == 0
    assert (h1["validated_epoch"], h1["checked_count"], h1["consecutive_invalid"]) == (1, 1, 0)
    assert h1["invalid_llr_e12"] == rules.sprt_log_increments_e12(0.05, 0.2)[1]
    for _ in range(10):
        apply_block(eng, [])
    h1, inf = _row(eng, T.Participant, "h1"), _row(eng, T.Inference, "inf1")
    assert inf["status"] == "VALIDATED" and (h1["validated_epoch"], h1["checked_count"]) == (1, 1)
    assert_invariants(eng)


def test_one_bad_message_never_aborts_its_block(chain_url):
    """Amounts beyond int64 (in total supply), a weight at int64, and the schema's refusals: the
    valid messages of the block apply, with the same result on SQLite and PostgreSQL."""
    eng = _chain(chain_url)
    _setup(eng)
    big = 2**63 - 1
    _run_inference(eng, 1)
    nan_validation = SubmitValidation.model_construct(id="nan", kind="validation", inference_id="inf1", validator="h2",
                                                      seed=SEED, score=float("nan"), passed=True)
    rep = apply_block(eng, [Mint(id="huge", sender=AUTH, to="h1", amount_ngonka=big),
                            SetWeights(id="wbig", sender=AUTH, epoch=0, weights={"h1": big, "h2": 1}),
                            PocCommitMsg(id="poc", epoch=0, participant="h3", merkle_root="r", nonce_count=2**40),
                            nan_validation,
                            StartInference(id="ok", inference_id="ok", requester="req", executor="h2",
                                           request=RequestParams(width=480, height=480, frames=5, steps=4))])
    assert "int64" in rep.rejected["huge"] and "NaN" in rep.rejected["nan"] and rep.accepted == 3
    assert _row(eng, T.Participant, "h1")["poc_weight"] == big
    assert _row(eng, T.PocCommit, "poc")["nonce_count"] == 2**40  # above int32: BIGINT on both databases
    assert_invariants(eng)


@pytest.mark.parametrize("bad,field", [
    (dict(kind="validation", id="x", inference_id="i", validator="v", seed=1, score=float("nan"), passed=True),
     "score"),
    (dict(kind="mint", id="x", sender=AUTH, to="a", amount_ngonka=2**63), "amount_ngonka"),
    (dict(kind="poc_commit", id="x", epoch=0, participant="p", merkle_root="r", nonce_count=2**64), "nonce_count"),
    (dict(kind="end_epoch", id="x", sender=AUTH, epoch=2**31), "epoch"),
    (dict(kind="start_inference", id="x", inference_id="i", requester="r", executor="e",
          request=dict(width=10**6)), "width"),
    (dict(kind="register", id="x", participant="@gov", role="host"), "participant"),
    (dict(kind="commit_seed", id="x", epoch=0, participant="p", seed_sha256="zz"), "seed_sha256"),
    (dict(kind="finish_inference", id="x\x00", inference_id="i", executor="e", video_sha256="v"), "id"),
])
def test_schema_bounds_name_the_field(bad, field):
    with pytest.raises(ValidationError) as err:
        parse_message(bad)
    assert field in str(err.value)
