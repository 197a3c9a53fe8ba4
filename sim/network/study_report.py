"""The study's map: one self-contained HTML file (figures embedded as base64 PNGs, matplotlib's
object API as in sim/report.py), a tidy points.parquet and summary.json, written into the study's
output directory.

For each cheat, one heatmap per threshold over (sampling rate x slash fraction): a cell's colour
says which views find that the cheat pays there (the closed form with the measured rates, the
conservative closed form with the cheat's FAR at its upper bound, the simulated epochs), its text
the simulated gain over an honest host (GNK per epoch). On the same axes, the honest executor's
false-slash risk (P(INVALID) per epoch; conservative closed form, with the FRR at its upper bound,
and simulated). Then the cheapest safe parameter set and the closed form's agreement with the
simulation per point.
"""

from __future__ import annotations

import base64
import datetime as _dt
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from sim.network.study import Evidence, StudyError, StudyParams, cheapest_safe, load_points, table

TEMPLATE = Path(__file__).resolve().parents[1] / "templates" / "study.html.j2"
# verdict categories of a cell: (label, colour)
CATEGORIES = (("pays in no view", "#e8f3ea"), ("pays only conservatively (FAR at its upper bound)", "#fde7b0"),
              ("pays in the closed form, not simulated", "#f4a261"), ("pays simulated, not in the closed form", "#c77dff"),
              ("pays in the closed form and simulated", "#d62828"))


def category(closed: bool, conservative: bool, sim: bool) -> int:
    if closed and sim:
        return 4
    if sim:
        return 3
    if closed:
        return 2
    if conservative:
        return 1
    return 0


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def _axes_values(tab):
    rates = sorted(tab["rate_multiplier"].unique())
    slashes = sorted(tab["slash_fraction"].unique())
    labels = list(dict.fromkeys(tab.sort_values("threshold")["threshold_label"]))
    return rates, slashes, labels


def cheat_map(tab, cheat: str) -> str:
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure

    sub = tab[tab["cheat"] == cheat]
    rates, slashes, labels = _axes_values(tab)
    fig = Figure(figsize=(2.6 * len(labels) + 0.6, 2.4 + 0.25 * len(slashes)))
    axes = fig.subplots(1, len(labels), squeeze=False)[0]
    cmap = ListedColormap([c for _, c in CATEGORIES])
    for ax, lab in zip(axes, labels):
        grid = np.full((len(slashes), len(rates)), np.nan)
        text = [["" for _ in rates] for _ in slashes]
        part = sub[sub["threshold_label"] == lab]
        for r in part.itertuples():
            i, j = slashes.index(r.slash_fraction), rates.index(r.rate_multiplier)
            grid[i, j] = category(r.closed_pays, r.conservative_pays, r.sim_pays)
            text[i][j] = f"{r.sim_gain_gnk:.2g}"
        ax.imshow(grid, cmap=cmap, vmin=-0.5, vmax=len(CATEGORIES) - 0.5, origin="lower", aspect="auto")
        for i in range(len(slashes)):
            for j in range(len(rates)):
                ax.text(j, i, text[i][j], ha="center", va="center", fontsize=6.5)
        thr = part["threshold"].iloc[0] if len(part) else float("nan")
        fail = part["fail_rate"].iloc[0] if len(part) else float("nan")
        ax.set_title(f"threshold {lab} ({thr:.3g})\nfail rate {fail:.2f}", fontsize=8)
        ax.set_xticks(range(len(rates)), [f"{x:g}" for x in rates], fontsize=7)
        ax.set_yticks(range(len(slashes)), [f"{x:g}" for x in slashes], fontsize=7)
        ax.set_xlabel("sampling rate (x Gonka)", fontsize=7)
    axes[0].set_ylabel("slash fraction", fontsize=7)
    fig.suptitle(f"{cheat}: where it pays (cell text: simulated gain over honest, GNK/epoch)", fontsize=9, y=1.08)
    return _png(fig)


def honest_map(tab) -> str:
    from matplotlib.figure import Figure

    rates, slashes, labels = _axes_values(tab)
    h = tab.drop_duplicates("index")
    fig = Figure(figsize=(2.6 * len(labels) + 1.2, 2.4 + 0.25 * len(slashes)))
    axes = fig.subplots(1, len(labels), squeeze=False)[0]
    im = None
    for ax, lab in zip(axes, labels):
        grid = np.full((len(slashes), len(rates)), np.nan)
        text = [["" for _ in rates] for _ in slashes]
        for r in h[h["threshold_label"] == lab].itertuples():
            i, j = slashes.index(r.slash_fraction), rates.index(r.rate_multiplier)
            grid[i, j] = r.honest_conservative_p_invalid
            text[i][j] = f"{100 * r.honest_sim_p_invalid:.0f}%"
        im = ax.imshow(grid, cmap="Greys", vmin=0, vmax=1, origin="lower", aspect="auto")
        for i in range(len(slashes)):
            for j in range(len(rates)):
                v = grid[i, j]
                ax.text(j, i, text[i][j], ha="center", va="center", fontsize=6.5,
                        color="white" if np.isfinite(v) and v > 0.5 else "black")
        ax.set_title(f"threshold {lab}", fontsize=8)
        ax.set_xticks(range(len(rates)), [f"{x:g}" for x in rates], fontsize=7)
        ax.set_yticks(range(len(slashes)), [f"{x:g}" for x in slashes], fontsize=7)
        ax.set_xlabel("sampling rate (x Gonka)", fontsize=7)
    axes[0].set_ylabel("slash fraction", fontsize=7)
    if im is not None:
        fig.colorbar(im, ax=list(axes), shrink=0.8, label="P(INVALID)/epoch, conservative closed form")
    fig.suptitle("honest executor: false-slash risk (shade: conservative closed form; text: simulated)", fontsize=9, y=1.05)
    return _png(fig)


def agreement_plot(tab) -> str:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 4.2))
    ax = fig.subplots()
    for cheat, g in tab.groupby("cheat"):
        ax.scatter(g["closed_gain_gnk"], g["sim_gain_gnk"], s=12, label=cheat, alpha=0.7)
    lim = float(np.nanmax(np.abs(tab[["closed_gain_gnk", "sim_gain_gnk"]].to_numpy()))) if len(tab) else 1.0
    lim = lim if lim > 0 else 1.0
    ax.plot([-lim, lim], [-lim, lim], color="#888", lw=0.8)
    ax.set_xscale("symlog", linthresh=1e-3)
    ax.set_yscale("symlog", linthresh=1e-3)
    ax.set_xlabel("closed-form gain over honest (GNK/epoch)")
    ax.set_ylabel("simulated gain over honest (GNK/epoch)")
    ax.legend(fontsize=7)
    ax.set_title("closed form vs simulation, one dot per point and cheat", fontsize=9)
    return _png(fig)


def per_cheat(tab) -> list[dict]:
    rows = []
    for cheat, g in tab.groupby("cheat"):
        diff = (g["sim_gain_gnk"] - g["closed_gain_gnk"]).abs()
        scale = g[["sim_gain_gnk", "closed_gain_gnk"]].abs().max(axis=1)
        rows.append(dict(cheat=cheat, points=int(len(g)), closed_pays=int(g["closed_pays"].sum()),
                         conservative_pays=int(g["conservative_pays"].sum()), sim_pays=int(g["sim_pays"].sum()),
                         agree=float((g["closed_pays"] == g["sim_pays"]).mean()),
                         median_abs_gain_diff_gnk=float(diff.median()), max_abs_gain_diff_gnk=float(diff.max()),
                         median_rel_gain_diff=float((diff / scale.where(scale > 0)).median(skipna=True))
                         if (scale > 0).any() else 0.0,
                         median_abs_p_invalid_diff=float((g["sim_p_invalid"] - g["closed_p_invalid"]).abs().median())))
    return rows


def write_report(out_dir: str | Path, run_info: dict[str, Any] | None = None) -> dict:
    """Write OUT/report.html, OUT/points.parquet and OUT/summary.json from the finished points."""
    import jinja2

    from models.io import write_atomic, write_json_atomic

    out = Path(out_dir)
    if not (out / "study.json").is_file():
        raise StudyError(f"out: {out} is not a study directory (no study.json)")
    meta = json.loads((out / "study.json").read_text())
    p = StudyParams.model_validate(meta["params"])
    ev = Evidence.model_validate(json.loads((out / "evidence.json").read_text()))
    recs = load_points(out)
    if not recs:
        raise StudyError(f"out: {out} holds no finished point yet; run the study first")
    tab = table(recs, ev.cheats)
    buf = io.BytesIO()
    tab.to_parquet(buf, index=False)
    write_atomic(out / "points.parquet", buf.getvalue())
    best = cheapest_safe(tab, p.false_slash_target)
    n_points = len({r["point"]["index"] for r in recs})
    cheats = per_cheat(tab)
    sim_seconds = [r["seconds"] for r in recs]
    summary = dict(key=meta["key"], points=n_points, cheats=cheats, cheapest_safe=best,
                   false_slash_target=p.false_slash_target, run=run_info or {},
                   seconds_per_point_median=float(np.median(sim_seconds)),
                   evidence=dict(source=ev.source, policy=ev.policy, metric=ev.metric, note=ev.note))
    write_json_atomic(out / "summary.json", summary)
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATE.parent)), autoescape=True)
    evid_rows = []
    for lab, thr in ev.thresholds.items():
        for d in ev.cheats:
            r = ev.fail[lab][d]
            evid_rows.append(dict(threshold_label=lab, threshold=thr, cheat=d, fail=r, far=1 - r.rate,
                                  far_hi=1 - r.lo, frr=ev.frr[lab], share=ev.compute_share[d]))
    html = env.get_template(TEMPLATE.name).render(
        p=p, ev=ev, best=best, cheats=cheats, summary=summary, categories=CATEGORIES,
        maps=[(c, cheat_map(tab, c)) for c in ev.cheats], honest=honest_map(tab), agreement=agreement_plot(tab),
        evid_rows=evid_rows, written=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        missing=len(grid_size(p, ev)) - n_points)
    write_atomic(out / "report.html", html)
    return summary


def grid_size(p: StudyParams, ev: Evidence) -> list:
    from sim.network.study import grid

    return grid(p, ev)
