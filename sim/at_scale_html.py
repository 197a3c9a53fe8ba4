"""The evidence-at-scale measurements as one HTML page in the style of the experiment report: the
plain answer per rule (FRR and FAR with exact bounds), where each config's claims fall against
the rules' thresholds (one strip plot per statistic and preset/size), and the size table.

`benchmarks/at_scale_report.py` writes it beside the markdown; the analysis is `sim.at_scale`.
No Prefect here."""

from __future__ import annotations

import base64
import datetime as _dt
import io
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sim.at_scale import GUARDED, PROFILE, RULES, is_calibration_prompt, rate_str, rule_statistic, size_table

SCORE_RULES = {r.name for r in RULES if r.statistic in (PROFILE, GUARDED)}  # scores, not distances: linear axis
TEMPLATE = Path(__file__).resolve().parent / "templates" / "at_scale.html.j2"
CLASS_COLOURS = {"benign": "#2b7bba", "malign": "#c0392b", "zero-effect": "#999999"}
ADAPTED_COLOUR = "#e67e22"  # cheats designed against the rules (plan key `adapted`)
# the statistics drawn (each that of the first rule named), each with the rules whose thresholds are drawn on it
PLOTS = (("Final latent rel-L2 (full replay)", "final latent rel-L2",
          ("full-final", "full-final-pinned", "full-final-pinned-compile-ok")),
         ("Worst one-step replay error over the challenged steps K", "one-step replay rel-L2",
          ("local-1step", "local-1step-pinned", "local-1step-pinned-compile-ok")),
         ("Profile score: a logistic regression on the distance at every captured step", "profile score (logit)",
          ("profile-pinned-compile-ok",)),
         ("Guarded profile: floored profile score or log final distance, less its honest calibration maximum",
          "guarded score (> 0: rejected)", ("guarded-profile-pinned-compile-ok",)))


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def _statistic(g: pd.DataFrame, rule_name: str) -> pd.Series:
    """The statistic of the named rule per row of one group, as `evaluate_rules` computes it."""
    rule = next(r for r in RULES if r.name == rule_name)
    s = rule_statistic(rule, g, g["prompt_id"].map(is_calibration_prompt))
    return pd.Series(math.nan, index=g.index) if s is None else s


def strip_plot(g: pd.DataFrame, rule_name: str, label: str, thresholds: dict[str, float]) -> str | None:
    """Each config's claims under the statistic of rule `rule_name` (calibration prompts hollow,
    held-out filled) and the rules' thresholds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = _statistic(g, rule_name)
    keep = s.notna() & np.isfinite(s) & g["class"].ne("canonical")
    if not keep.any():
        return None
    sub, vals = g[keep], s[keep]
    order = sorted(sub["config"].unique(), key=lambda c: (sub.loc[sub["config"] == c, "class"].iloc[0] != "benign",
                                                          float(vals[sub["config"] == c].median())))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.75 * len(order) + 2), 3.8))
    for i, c in enumerate(order):
        m = sub["config"] == c
        colour = CLASS_COLOURS.get(sub.loc[m, "class"].iloc[0], "#333")
        if "adapted" in sub and bool(sub.loc[m, "adapted"].iloc[0]):
            colour = ADAPTED_COLOUR
        x = i + np.linspace(-0.2, 0.2, int(m.sum())) if m.sum() > 1 else np.array([float(i)])
        held = ~sub.loc[m, "prompt_id"].map(is_calibration_prompt).to_numpy(bool)
        ax.scatter(x[held], vals[m].to_numpy()[held], s=16, color=colour)
        ax.scatter(x[~held], vals[m].to_numpy()[~held], s=16, facecolors="none", edgecolors=colour)
    for (name, thr), style in zip(thresholds.items(), ("--", "-", ":")):
        ax.axhline(thr, color="#444", linestyle=style, linewidth=1, label=f"{name} threshold")
    if rule_name not in SCORE_RULES and (vals > 0).all():
        ax.set_yscale("log")
    ax.set_xticks(range(len(order)), order, rotation=35, ha="right", fontsize=8)
    ax.set_ylabel(label, fontsize=8)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    out = _png(fig)
    plt.close(fig)
    return out


def groups(df: pd.DataFrame, rules: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per preset and size: its rules with their rates as text, its plots and its size table."""
    out = []
    for (preset, size), g in df.groupby(["preset", "size"], sort=False):
        rs = [dict(r, frr_text=rate_str(*r["frr"]), far_text=rate_str(*r["far"]),
                   accepted=", ".join(f"{f} {k}/{n}" for f, (k, n) in r["far_per_family"].items() if k) or "none",
                   adapted_text=rate_str(*r.get("far_adapted", (0, 0))) + "".join(
                       f"; {c} {k}/{n}" for c, (k, n) in sorted(r.get("far_adapted_per_config", {}).items())))
              for r in rules if r["preset"] == preset and r["size"] == size]
        thr = {r["rule"]: r["threshold"] for r in rs}
        plots = [(heading, img) for heading, label, names in PLOTS
                 if (img := strip_plot(g, names[0], label, {n: thr[n] for n in names if n in thr})) is not None]
        sizes = size_table(g).drop(columns=["preset", "size"]).map(_cell)
        out.append(dict(preset=preset, size=size, rules=rs, plots=plots, n=len(g),
                        adapted=any(r.get("far_adapted", (0, 0))[1] for r in rs),
                        cards=sorted(g["card"].dropna().unique()),
                        sizes=sizes.to_html(index=False, classes="sizes", border=0)))
    return out


def _cell(v) -> str:
    """A size-table cell: 'median [min, max]' over prompts, a plain value, or empty."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, tuple):
        med, lo, hi = v
        return f"{med:.4g}" if lo == hi else f"{med:.4g} [{lo:.4g}, {hi:.4g}]"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def html(df: pd.DataFrame, rules: list[dict[str, Any]], meta: dict[str, Any] | None = None) -> str:
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATE.parent)), autoescape=True)
    return env.get_template(TEMPLATE.name).render(
        groups=groups(df, rules), meta=meta or {}, generations=len(df),
        written=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
