"""Invariants of chain state, checked after every block in the tests (and on demand by the CLI).

- supply: balances + escrow + collateral = minted - burned (from the ledger) = the chain's recorded
  supply, within int64;
- every account's balance, escrow and collateral equals what its ledger rows add up to, and none is
  negative;
- every settled inference is paid or refunded exactly once: a VALIDATED one has exactly one
  `payment` row and paid = cost, an INVALIDATED or EXPIRED one no payment and refunded = cost;
  an open one (STARTED, FINISHED, VOTING) still holds its whole cost in escrow.
"""

from __future__ import annotations

from sqlalchemy import case, func, select
from sqlalchemy.engine import Engine

from sim.chain import tables as T

_L = T.LedgerEntry.__table__
_P = T.Participant.__table__
_I = T.Inference.__table__


def check_invariants(engine: Engine) -> list[str]:
    """All violations found (an empty list means the chain is consistent)."""
    bad: list[str] = []
    with engine.connect() as c:
        minted = c.execute(select(func.coalesce(func.sum(_L.c.amount_ngonka), 0)).where(_L.c.from_account == T.MINT)).scalar()
        burned = c.execute(select(func.coalesce(func.sum(_L.c.amount_ngonka), 0)).where(_L.c.to_account == T.BURN)).scalar()
        bal, col = c.execute(select(func.coalesce(func.sum(_P.c.balance_ngonka), 0),
                                    func.coalesce(func.sum(_P.c.collateral_ngonka), 0))).one()
        esc = c.execute(select(func.coalesce(func.sum(_I.c.escrow_ngonka), 0))).scalar()
        if int(bal) + int(col) + int(esc) != int(minted) - int(burned):
            bad.append(f"supply: balances {bal} + collateral {col} + escrow {esc} != minted {minted} - burned {burned}")
        supply = c.execute(select(T.ChainMeta.__table__.c.supply_ngonka)).scalar()
        if supply != int(minted) - int(burned) or not 0 <= supply <= 2**63 - 1:
            bad.append(f"supply: recorded {supply} != minted {minted} - burned {burned} (or outside int64)")
        neg = c.execute(select(_P.c.id).where((_P.c.balance_ngonka < 0) | (_P.c.collateral_ngonka < 0))).all()
        if neg:
            bad.append(f"negative balance or collateral: {[r[0] for r in neg][:10]}")
        if c.execute(select(func.count()).where(_I.c.escrow_ngonka < 0)).scalar():
            bad.append("negative escrow")

        # per-account ledger sums
        inflow = dict(c.execute(select(_L.c.to_account, func.sum(_L.c.amount_ngonka)).group_by(_L.c.to_account)).all())
        outflow = dict(c.execute(select(_L.c.from_account, func.sum(_L.c.amount_ngonka)).group_by(_L.c.from_account)).all())
        for pid, balance, collateral in c.execute(select(_P.c.id, _P.c.balance_ngonka, _P.c.collateral_ngonka)):
            if int(inflow.get(pid, 0)) - int(outflow.get(pid, 0)) != balance:
                bad.append(f"ledger: balance of {pid} is {balance}, ledger says {int(inflow.get(pid, 0)) - int(outflow.get(pid, 0))}")
            acct = f"{T.COLLATERAL}:{pid}"
            if int(inflow.get(acct, 0)) - int(outflow.get(acct, 0)) != collateral:
                bad.append(f"ledger: collateral of {pid} is {collateral}, ledger says "
                           f"{int(inflow.get(acct, 0)) - int(outflow.get(acct, 0))}")
        esc_in = func.sum(case((_L.c.to_account == T.ESCROW, _L.c.amount_ngonka), else_=0))
        esc_out = func.sum(case((_L.c.from_account == T.ESCROW, _L.c.amount_ngonka), else_=0))
        pays = func.sum(case((_L.c.kind == "payment", 1), else_=0))
        ledger_by_inf = {r[0]: (int(r[1]), int(r[2]), int(r[3])) for r in c.execute(
            select(_L.c.inference_id, esc_in, esc_out, pays).where(_L.c.inference_id.is_not(None)).group_by(_L.c.inference_id))}
        for r in c.execute(select(_I.c.id, _I.c.status, _I.c.cost_ngonka, _I.c.escrow_ngonka, _I.c.paid_ngonka,
                                  _I.c.refunded_ngonka)).mappings():
            e_in, e_out, n_pay = ledger_by_inf.get(r["id"], (0, 0, 0))
            if e_in - e_out != r["escrow_ngonka"]:
                bad.append(f"ledger: escrow of {r['id']} is {r['escrow_ngonka']}, ledger says {e_in - e_out}")
            if e_in != r["cost_ngonka"]:
                bad.append(f"{r['id']}: escrowed {e_in} != cost {r['cost_ngonka']}")
            st = r["status"]
            if st == "VALIDATED":
                if n_pay != 1 or r["paid_ngonka"] != r["cost_ngonka"] or r["refunded_ngonka"] or r["escrow_ngonka"]:
                    bad.append(f"{r['id']}: VALIDATED but payments={n_pay}, paid={r['paid_ngonka']}, "
                               f"refunded={r['refunded_ngonka']}, escrow={r['escrow_ngonka']}, cost={r['cost_ngonka']}")
            elif st in ("INVALIDATED", "EXPIRED"):
                if n_pay or r["paid_ngonka"] or r["refunded_ngonka"] != r["cost_ngonka"] or r["escrow_ngonka"]:
                    bad.append(f"{r['id']}: {st} but payments={n_pay}, paid={r['paid_ngonka']}, "
                               f"refunded={r['refunded_ngonka']}, escrow={r['escrow_ngonka']}")
            elif st in ("STARTED", "FINISHED", "VOTING"):
                if n_pay or r["escrow_ngonka"] != r["cost_ngonka"]:
                    bad.append(f"{r['id']}: {st} but payments={n_pay}, escrow={r['escrow_ngonka']} != cost")
            else:
                bad.append(f"{r['id']}: unknown status {st!r}")
    return bad


def assert_invariants(engine: Engine) -> None:
    bad = check_invariants(engine)
    if bad:
        raise AssertionError("chain invariants broken:\n  " + "\n  ".join(bad[:20]))
