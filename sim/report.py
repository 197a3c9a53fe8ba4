"""The experiment's report: one self-contained HTML file (figures embedded as base64 PNGs) and a
markdown twin (figures beside it in `report_files/`), written into the run directory.

Contents: a verdict per malign deviation (does the best policy separate it from every benign one on
held-out prompts, with what bytes and compute, and if not, why), the FAR/FRR table with bootstrap
intervals and the benign noise level, benign noise per benign deviation, ROC curves, score
histograms per deviation, compute and bytes per policy, the FAR/FRR-vs-EPS curve of the emulated
hardware noise, and frame strips (canonical vs each deviation) read back from the stored MP4s.

Figures use matplotlib's object API (`matplotlib.figure.Figure`), never pyplot's global state; the frame
strips, all pixels, are composed with Pillow.
"""

from __future__ import annotations

import base64
import datetime as _dt
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from models.io import write_atomic
from sim.stats import ALL_MALIGN, RATE_COLUMNS, Stats, best_metric_per_policy, compute_stats

TEMPLATE_DIR = Path(__file__).parent / "templates"
FILES_DIR = "report_files"
MAX_HIST_PANELS = 24


class ReportError(ValueError):
    pass


# ---------------------------------------------------------------------------------------------
# Formatting


def fmt_num(x: Any) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    x = float(x)
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if x == 0:
        return "0"
    return f"{x:.3g}"


def fmt_pct(x: Any) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{100 * float(x):.0f}%" if float(x) in (0.0, 1.0) else f"{100 * float(x):.1f}%"


def fmt_ci(v: Any, lo: Any, hi: Any, pct: bool = False) -> str:
    f = fmt_pct if pct else (lambda z: fmt_num(z) if not isinstance(z, float) or math.isnan(z) else f"{z:.3f}")
    s = f(v)
    if s == "n/a":
        return s
    if lo is None or hi is None or (isinstance(lo, float) and math.isnan(lo)) or (isinstance(hi, float) and math.isnan(hi)):
        return s
    return f"{s} [{f(lo)}, {f(hi)}]"


def fmt_rate(rate: Any, k: Any, n: Any, lo: Any, hi: Any, boot: tuple | None = None) -> str:
    """A rate with its count and exact (Clopper-Pearson) 95% bounds, e.g. `0% (0/10) [0%, 30.8%]`,
    and the bootstrap interval over prompts after it when given."""
    try:
        n = int(n)
    except (TypeError, ValueError):
        n = 0
    if not n or rate is None or (isinstance(rate, float) and math.isnan(rate)):
        return "n/a"
    out = f"{fmt_pct(rate)} ({int(k)}/{n}) [{fmt_pct(lo)}, {fmt_pct(hi)}]"
    if boot is not None and not any(b is None or (isinstance(b, float) and math.isnan(b)) for b in boot):
        out += f"; boot [{fmt_pct(boot[0])}, {fmt_pct(boot[1])}]"
    return out


def _rate_of(r, name: str, boot: bool = True) -> str:
    """`fmt_rate` of a stats row's rate `name` (a key of sim.stats.RATE_COLUMNS: its counts, exact
    bounds and, where present, bootstrap bounds)."""
    get = (lambda c: r.get(c)) if hasattr(r, "get") else (lambda c: r[c])
    c = RATE_COLUMNS[name]
    b = (get(c.lo), get(c.hi)) if boot and c.lo is not None and get(c.lo) is not None else None
    return fmt_rate(get(c.rate), get(c.k), get(c.n), get(c.cp_lo), get(c.cp_hi), b)


def fmt_bytes(b: Any) -> str:
    if b is None or (isinstance(b, float) and math.isnan(b)):
        return "n/a"
    b = float(b)
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if b >= size:
            return f"{b / size:.3g} {unit}"
    return f"{b:.0f} B"


def fmt_share(x: Any) -> str:
    s = fmt_num(x)
    return s if s == "n/a" else f"{s}x"


# ---------------------------------------------------------------------------------------------
# Figures


def _figure(w: float, h: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), dpi=100, layout="constrained")


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _colors(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def roc_figure(stats: Stats, best: dict[str, str]) -> bytes:
    policies = list(best)
    n = max(1, len(policies))
    cols = min(n, 2)
    rows = -(-n // cols)
    fig = _figure(6.2 * cols, 4.6 * rows)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    devs = sorted({k[2] for k in stats.roc if k[2] != ALL_MALIGN})
    colors = dict(zip(devs, _colors(len(devs))))
    for ax, policy in zip(axes, policies):
        metric = best[policy]
        for dev in devs + [ALL_MALIGN]:
            curve = stats.roc.get((policy, metric, dev))
            if curve is None:
                continue
            fpr, tpr = curve
            if dev == ALL_MALIGN:
                ax.plot(fpr, tpr, color="black", lw=2.4, label=ALL_MALIGN)
            else:
                ax.plot(fpr, tpr, color=colors[dev], lw=1.2, label=dev)
        ax.plot([0, 1], [0, 1], color="#bbb", ls=":", lw=1)
        ax.axvline(stats.config.max_fpr, color="#c33", ls="--", lw=0.8)
        ax.set_xlabel("FRR (benign rejected)")
        ax.set_ylabel("1 - FAR (malign rejected)")
        ax.set_title(f"{policy} · {metric}", fontsize=10)
        ax.set_xlim(-0.01, 1.01)
        ax.set_ylim(-0.01, 1.01)
        ax.legend(fontsize=7, loc="lower right")
    for ax in axes[len(policies):]:
        ax.set_visible(False)
    return _png(fig)


def _hist_bins(values: np.ndarray, nbins: int = 30) -> tuple[np.ndarray, bool, float]:
    """Bins over finite values: log-spaced when all are >= 0 and they span > 2 decades."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return np.linspace(0, 1, nbins + 1), False, 0.0
    pos = finite[finite > 0]
    if finite.min() >= 0 and pos.size and pos.max() / pos.min() > 100:
        floor = pos.min() / 3.0
        return np.geomspace(floor, pos.max() * 1.05, nbins + 1), True, floor
    lo, hi = float(finite.min()), float(finite.max())
    if hi == lo:
        lo, hi = lo - 0.5 * (abs(lo) or 1), hi + 0.5 * (abs(hi) or 1)
    return np.linspace(lo, hi, nbins + 1), False, 0.0


def hist_figure(df: pd.DataFrame, best: dict[str, str], thresholds: dict[str, float | None], benign_set: list[str]) -> bytes:
    """Score histograms per deviation, one panel per policy (its best metric): each row is one
    deviation's histogram (green benign, red malign), the benign class pooled in grey at the top,
    the calib threshold dashed."""
    policies = list(best)
    dev_all = df["deviation"].astype(str).to_numpy()
    kind_all = df["kind"].to_numpy()
    score_all = df["score"].to_numpy(float)
    first_kind = dict(zip(dev_all[::-1], kind_all[::-1]))  # each deviation's first row wins
    devs_all = sorted(first_kind, key=lambda d: (first_kind[d] != "benign", d))[:MAX_HIST_PANELS]
    policy_all, metric_all = df["policy"].to_numpy(), df["metric"].to_numpy()
    fig = _figure(3.6 * max(1, len(policies)) + 1.6, 0.34 * (len(devs_all) + 1) + 1.2)
    axes = np.atleast_1d(fig.subplots(1, max(1, len(policies)), squeeze=False, sharey=True)).ravel()
    for ax, policy in zip(axes, policies):
        metric = best[policy]
        sel = (policy_all == policy) & (metric_all == metric)
        g_score, g_dev, g_kind = score_all[sel], dev_all[sel], kind_all[sel]
        bins, logx, floor = _hist_bins(g_score)

        def prep(v):
            v = v[np.isfinite(v)]
            return np.where(v <= 0, floor, v) if logx else v

        labels = []
        rows = [("benign class", g_score[np.isin(g_dev, list(benign_set))], "#999")]
        for dev in devs_all:
            m = g_dev == dev
            kind = g_kind[m][0] if m.any() else "benign"
            rows.append((dev, g_score[m], "#2a7" if kind == "benign" else "#d33"))
        for i, (label, vals, color) in enumerate(rows):
            y = len(rows) - 1 - i
            counts, _ = np.histogram(prep(vals), bins=bins)
            if counts.max() > 0:
                ax.stairs(y + 0.85 * counts / counts.max(), bins, baseline=y, fill=True, color=color, alpha=0.8)
            n_inf = int(np.isinf(vals).sum())
            labels.append((y, label + (" (emulation)" if label.startswith("hwnoise") else "") + (f" [{n_inf} inf]" if n_inf else "")))
        thr = thresholds.get(policy)
        if thr is not None and np.isfinite(thr):
            ax.axvline(max(thr, floor) if logx else thr, color="black", ls="--", lw=0.9)
        if logx:
            ax.set_xscale("log")
            from matplotlib.ticker import NullLocator

            ax.xaxis.set_minor_locator(NullLocator())
        ax.set_yticks([y for y, _ in labels], [lab for _, lab in labels], fontsize=7)
        ax.set_ylim(-0.2, len(rows))
        ax.tick_params(axis="x", labelsize=7)
        ax.set_title(f"{policy} · {metric}", fontsize=9)
        ax.set_xlabel("score (distance)" + ("; log scale, zeros at the left edge" if logx else ""), fontsize=7)
    return _png(fig)


def cost_figure(cost: pd.DataFrame) -> bytes | None:
    c = cost.dropna(subset=["bytes", "compute"])
    if c.empty:
        return None
    fig = _figure(6, 3.6)
    ax = fig.subplots()
    ax.scatter(c["bytes"].clip(lower=1), c["compute"], s=60, color="#35a")
    for _, r in c.iterrows():
        label = f"{r['policy']}" + (f"\nFRR {fmt_pct(r['frr'])}" if not pd.isna(r["frr"]) else "")
        ax.annotate(label, (max(r["bytes"], 1), r["compute"]), fontsize=8, xytext=(5, 4), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("bytes the executor keeps per video")
    ax.set_ylabel("validator compute / executor's")
    ax.set_title("verification budget per policy (FRR at FAR<=1% vs all malign)", fontsize=9)
    return _png(fig)


def eps_figure(eps: pd.DataFrame, best: dict[str, str], cfg) -> bytes | None:
    if eps.empty:
        return None
    e = eps[eps["deviation"] == ALL_MALIGN]
    fig = _figure(13, 3.8)
    ax1, ax2, ax3 = fig.subplots(1, 3)
    colors = dict(zip(best, _colors(len(best))))
    for policy, metric in best.items():
        r = e[(e["policy"] == policy) & (e["metric"] == metric)].sort_values("eps")
        if r.empty:
            continue
        kw = dict(color=colors[policy], marker="o", label=f"{policy} · {metric}")
        ax1.plot(r["eps"], r["far_at_frr"], **kw)
        ax2.plot(r["eps"], r["frr_at_far"], **kw)
        ax3.plot(r["eps"], r["benign_median"], **kw)
        ax3.axhline(r["malign_median"].iloc[0], color=colors[policy], ls=":", lw=1)
    ax1.set_title(f"FAR at FRR<={cfg.frr_target:.0%} (test) vs all malign", fontsize=9)
    ax2.set_title(f"FRR at FAR<={cfg.far_target:.0%} (test) vs all malign", fontsize=9)
    ax3.set_title("benign noise (median score); dotted: malign median", fontsize=9)
    for ax in (ax1, ax2, ax3):
        ax.set_xscale("log")
        ax.set_xlabel("emulated hardware noise EPS (emulation)")
    ax1.set_ylim(-0.03, 1.03)
    ax2.set_ylim(-0.03, 1.03)
    pos = e["benign_median"][e["benign_median"] > 0]
    if len(pos) and (e["malign_median"] > 0).all():
        ax3.set_yscale("log")
    ax1.legend(fontsize=7)
    return _png(fig)


def _slug(spec: str) -> str:
    from sim.layout import slug

    return slug(spec)


def strip_figure(run_dir: Path, prompt_id: int, deviations: list[str], n_frames: int = 3) -> tuple[bytes | None, list[str]]:
    """One mosaic: columns = canonical, then each deviation; rows = first, middle and last frame.

    Drawn with Pillow rather than matplotlib (the image is all pixels and a few labels): frames
    enlarged without interpolation to at least 80 px, column labels below at 50 degrees, row labels
    on the left, in matplotlib's DejaVu Sans."""
    from sim.video_io import decode_mp4

    from concurrent.futures import ThreadPoolExecutor

    def decode(path):
        try:
            return decode_mp4(path)
        except (OSError, ValueError) as err:
            return err

    base = run_dir / "gens" / f"p{prompt_id:04d}"
    videos = [("canonical", "canonical (validator)")] + [(_slug(d), d) for d in deviations]
    with ThreadPoolExecutor(2) as pool:  # PyAV decodes without holding the GIL
        decoded = list(pool.map(decode, [base / name / "video.mp4" for name, _ in videos]))
    rows, missing = [], []
    for (_, label), frames in zip(videos, decoded):
        if isinstance(frames, Exception):
            missing.append(f"{label} ({type(frames).__name__})")
            continue
        idx = sorted({0, frames.shape[0] // 2, frames.shape[0] - 1})[:n_frames]
        rows.append((label, [frames[i] for i in idx], idx))
    if not rows:
        return None, missing
    h = max(im.shape[0] for _, ims, _ in rows for im in ims)
    w = max(im.shape[1] for _, ims, _ in rows for im in ims)
    n_fr = max(len(ims) for _, ims, _ in rows)
    pad = max(2, h // 16)
    # Columns: canonical, then each deviation; rows: first, middle, last frame.
    mosaic = np.full((n_fr * (h + pad), len(rows) * (w + pad), 3), 255, np.uint8)
    for j, (_, ims, _) in enumerate(rows):
        for i, im in enumerate(ims):  # smaller frames (e.g. a low-resolution cheat) sit top-left, unscaled
            mosaic[i * (h + pad):i * (h + pad) + im.shape[0], j * (w + pad):j * (w + pad) + im.shape[1]] = im
    scale = max(1.0, 80 / h)
    return _mosaic_png(mosaic, scale, [(j * (w + pad) + w / 2, r[0]) for j, r in enumerate(rows)],
                       [(i * (h + pad) + h / 2, f"frame {k}") for i, k in enumerate(rows[0][2])]), missing


def _font(size_px: int):
    from PIL import ImageFont

    try:
        import matplotlib

        return ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"), size_px)
    except (OSError, ImportError):  # pragma: no cover - matplotlib ships the font
        return ImageFont.load_default()


def _mosaic_png(mosaic: np.ndarray, scale: float, col_labels: list[tuple[float, str]],
                row_labels: list[tuple[float, str]], angle: float = 50.0) -> bytes:
    """`mosaic` enlarged by `scale` (nearest neighbour) with labels: columns' below, rotated by `angle`
    and ending under their x (mosaic pixels), rows' on the left, centred on their y."""
    from PIL import Image, ImageDraw

    font = _font(10)  # 7 pt at 100 dpi
    img = Image.fromarray(mosaic).resize((round(mosaic.shape[1] * scale), round(mosaic.shape[0] * scale)), Image.NEAREST)
    measure = ImageDraw.Draw(Image.new("L", (1, 1)))
    left = 12 + max((measure.textlength(t, font=font) for _, t in row_labels), default=0)
    rad = math.radians(angle)
    depth = max((measure.textlength(t, font=font) * math.sin(rad) for _, t in col_labels), default=0) + 20
    top, right = 10, 10
    canvas = Image.new("RGB", (int(left + img.width + right), int(top + img.height + depth)), "white")
    canvas.paste(img, (int(left), top))
    draw = ImageDraw.Draw(canvas)
    for y, text in row_labels:
        draw.text((left - 6, top + y * scale), text, font=font, fill="black", anchor="rm")
    for x, text in col_labels:
        length = int(measure.textlength(text, font=font)) + 4
        side = 2 * length + 8
        label = Image.new("L", (side, side), 0)  # text ending at the centre, then rotated about it
        ImageDraw.Draw(label).text((side // 2, side // 2), text, font=font, fill=255, anchor="rm")
        label = label.rotate(angle, resample=Image.BICUBIC, center=(side // 2, side // 2))
        canvas.paste(Image.new("RGB", label.size, "black"),
                     (int(left + x * scale - side // 2), int(top + img.height + 6 - side // 2)), label)
    buf = io.BytesIO()
    canvas.save(buf, format="png")
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------
# Assembly


def _b64(png: bytes | None) -> str | None:
    return base64.b64encode(png).decode("ascii") if png else None


def _css(sep: str) -> str:
    return {"separated": "sep", "not separated": "notsep"}.get(sep, "und")


def _verdict_rows(v: pd.DataFrame, best_only: bool) -> list[dict]:
    rows = []
    src = v[v["is_best"]] if best_only else v
    for _, r in src.iterrows():
        rows.append({
            "deviation": r["deviation"], "policy": r["policy"], "metric": r["metric"], "is_best": bool(r["is_best"]),
            "separation": r["separation"], "css": _css(r["separation"]), "explanation": r["explanation"],
            "frr": _rate_of(r, "frr_at_far"),
            "far": _rate_of(r, "test_far_at_far", boot=False),
            "far_at_frr": _rate_of(r, "far_at_frr"),
            "auc": fmt_num(r["auc"]), "pauc": fmt_num(r["pauc"]),
            "benign_median": fmt_num(r["benign_median"]), "malign_median": fmt_num(r["malign_median"]),
            "bytes": fmt_bytes(r["bytes_kept"]), "compute": fmt_share(r["validator_compute_share"]),
        })
    return rows


def _table_row(r: pd.Series) -> dict:
    return {
        "policy": r["policy"], "metric": r["metric"], "deviation": r["deviation"],
        "auc": fmt_ci(r["auc"], r["auc_lo"], r["auc_hi"]), "pauc": fmt_ci(r["pauc"], r["pauc_lo"], r["pauc_hi"]),
        "frr": _rate_of(r, "frr_at_far"),
        "far": _rate_of(r, "far_at_frr"),
        "noise": f"{fmt_num(r['benign_median'])} / {fmt_num(r['benign_p99'])}",
        "malign_median": fmt_num(r["malign_median"]), "threshold": fmt_num(r["threshold_at_far"]),
        "n": f"{r['n_benign_test']} / {r['n_malign_test']}", "reason": r.get("reason", "") or "",
    }


def deployable_blocks(dep) -> list[dict]:
    """The deployable validator's tables (title, text, header, rows of cells), rendered alike in HTML and
    markdown: the whole rule, each deviation under it, detection against the challenged segments,
    stability, severity per family, cheats that know the rule."""
    if dep is None:
        return []
    blocks = [_rule_block(dep), _per_deviation_block(dep)]
    for block in (_vs_segments_block(dep), _stability_block(dep), _severity_block(dep)):
        if block is not None:
            blocks.append(block)
    blocks.append(_adaptive_block(dep))
    return blocks


def _rule_block(dep) -> dict:
    cfg, t = dep.config, dep.table
    a = t["a14b"]
    boot = lambda key: t[key]  # noqa: E731
    return {
        "title": "Deployable validator: one rule for every claim (held-out prompts)",
        "text": (f"Commit-then-challenge, fitted on the calibration prompts only (benign calibration FRR <= "
                 f"{cfg.frr_target:.0%}, split over the checks): the opened noise must equal the seeded draw; "
                 f"{cfg.challenged} of the {cfg.segments} committed segments ({cfg.every} steps each), drawn from the "
                 f"validator's secret seed after the commitment, each replayed from its opened start within its "
                 f"threshold on `{cfg.metric}` ({', '.join(fmt_num(x) for x in cfg.segment_thresholds)}); the decode "
                 f"of the final latent within {fmt_num(cfg.decode_threshold)} (mean |pixel difference|, 0-255) of the "
                 f"committed MP4. Evaluated once on every held-out claim, all benign against all malign deviations "
                 f"together. Rates: count, exact 95% Clopper-Pearson bounds, then a 95% bootstrap over prompts with "
                 f"the thresholds refitted inside each replicate. Benign: {', '.join(t['benign'])}; zero-effect "
                 f"deviations (bit-identical to the canonical run here), not in the benign class: "
                 f"{', '.join(dep.zero_effect) or 'none'}."),
        "header": ["FRR (honest rejected)", "FAR (cheats accepted)", "FAR expected over challenges",
            "validator compute (segments + decode)", "bytes on chain", "bytes kept per video",
            "at A14B: kept / opened per validation"],
        "rows": [[fmt_rate(t["frr"]["rate"], t["frr"]["k"], t["frr"]["n"], t["frr"]["cp_lo"], t["frr"]["cp_hi"], boot("frr_boot")),
                  fmt_rate(t["far"]["rate"], t["far"]["k"], t["far"]["n"], t["far"]["cp_lo"], t["far"]["cp_hi"], boot("far_boot")),
                  fmt_pct(t["expected_far_over_challenges"]),
                  f"{fmt_num(t['validator_share'])}x ({fmt_num(t['validator_segment_share'])} + {fmt_num(t['validator_decode_share'])})",
                  f"{t['chain_bytes']} B ({t['chain_bytes_with_video_hash']} B with the MP4 hash)",
                  fmt_bytes(t["kept_bytes"]),
                  f"{fmt_bytes(a['kept_bytes'])} / {fmt_bytes(a['opened_bytes'])} ({a['segments']} segments of "
                  f"{a['every']} of 40 steps; compute {fmt_num(a['validator_share'])}x)"]]}


def _per_deviation_block(dep) -> dict:
    pd_rows = [[f"`{r['deviation']}`", r["class"], fmt_rate(r["reject_rate"], r["rejected"], r["n"], r["cp_lo"], r["cp_hi"]),
                fmt_pct(r["expected_reject"]), fmt_pct(r["reject_all_segments"]), fmt_num(r["saving"]), fmt_num(r["size"])]
               for r in dep.per_deviation.to_dict("records")]
    return {"title": "The one rule, per deviation (held-out claims)",
            "text": "Share of each deviation's claims the deployed rule rejects (for benign ones: its FRR), "
            "expected over the challenge draw, and with every segment challenged.",
            "header": ["deviation", "class", "rejected", "expected over challenges", "all segments challenged",
             "compute saved", "final-latent change"], "rows": pd_rows}


def _vs_segments_block(dep) -> dict | None:
    cfg = dep.config
    v = dep.vs_segments
    if not len(v):
        return None
    ms = sorted(set(v["m"]))
    rows = []
    for dev, g in v.groupby("deviation", sort=True):
        g = g.set_index("m")
        rows.append([f"`{dev}`", str(int(g["cheated_segments"].iloc[0]))] +
                    [f"{fmt_pct(g.loc[m, 'measured'])} / {fmt_pct(g.loc[m, 'derived'])}" for m in ms])
    return {"title": "Detection per validation against segments challenged (measured / derived)",
            "text": ("Measured: 200 challenge draws per held-out claim on its actual per-segment outcomes; "
                     "derived: 1 - (1 - P(noise or decode check)) x (1 - hypergeometric P(a cheated segment is "
                     "drawn) x per-segment detection), from the number of segments the cheat touches by design "
                     f"(`reuse:STEPS` cheats only there: the cheat that hopes its segment is not challenged). "
                     f"Compute: m/{cfg.segments} of the transformer work plus the decode."),
            "header": ["malign deviation", "cheated segments"] + [f"m = {m}" for m in ms], "rows": rows}


def _stability_block(dep) -> dict | None:
    st = dep.stability
    if not len(st):
        return None
    rows = [[str(r["hwnoise_eps"]), str(r["split_seed"]), r["metric"],
             fmt_rate(r["frr"], r["frr_k"], r["frr_n"], 0.0 if r["frr_k"] == 0 else math.nan, r["frr_cp_hi"]),
             fmt_rate(r["far"], r["far_k"], r["far_n"], r["far_cp_lo"], r["far_cp_hi"]), r["missed"] or "-"]
            for r in st.to_dict("records")]
    return {"title": "Stability: the rule refitted on 5 other splits and with each hwnoise level as benign",
            "text": "Each row refits the thresholds on that split's calibration prompts and evaluates on its "
            "test prompts; hwnoise is an emulation. Missed: detected on fewer than 90% of test claims.",
            "header": ["benign hwnoise EPS", "split seed", "metric", "FRR", "FAR", "cheats missed"], "rows": rows}


def _severity_block(dep) -> dict | None:
    sv = dep.severity
    if not len(sv):
        return None
    rows = [[r["family"], f"`{r['deviation']}`", fmt_num(r["size"]), fmt_num(r["saving"]),
             fmt_rate(r["reject_rate"], r["rejected"], r["n"], r["cp_lo"], r["cp_hi"]), fmt_pct(r["reject_all_segments"]),
             "**mildest detected**" if r["mildest_detected"] else ("detected" if r["detected"] else "not detected")]
            for r in sv.to_dict("records")]
    return {"title": "Severity per family (mildest first) under the one rule",
            "text": "Detected: rejected on at least 90% of the held-out claims by the deployed rule (calibration "
            "FRR <= 1%). Compute saved: 1 - the executor's measured compute share (nominal for "
            "quantised weights).",
            "header": ["family", "deviation", "final-latent change", "compute saved", "rejected",
             "all segments challenged", "verdict"], "rows": rows}


def _adaptive_block(dep) -> dict:
    cfg = dep.config
    ad = dep.adaptive
    rows = []
    fo = ad.get("forged_openings")
    if fo:
        rows.append(["forge an opening (the honest latent or solver state instead of the committed one)",
                     fmt_rate(fo["rejected"] / fo["tried"] if fo["tried"] else math.nan, fo["rejected"], fo["tried"], fo["cp_lo"], fo["cp_hi"]),
                     "; ".join(fo["reasons"]) or "-"])
    lu = ad.get("largest_undetected_saving")
    rows.append(["largest compute saving the rule does not detect",
                 f"`{lu['deviation']}`: saves {fmt_num(lu['saving'])}, rejected {fmt_pct(lu['reject_rate'])}" if lu else "none",
                 "what the economics use (sim/network/economics.py)"])
    for f in ad.get("fraction_of_requests", []):
        if f["m"] == cfg.challenged:
            rows.append([f"cheat on {f['cheat_rate']:.0%} of requests with `{f['deviation']}` (the least detected cheat)",
                         fmt_pct(f["p_detect_per_validation"]), f"derived: r x measured P(detect), m = {f['m']}"])
    return {"title": "Cheats that know the rule", "text": "Also in the tables above: `reuse:STEPS` (cheat on one "
            "segment only) and `mp4-from:SPEC` (an honest trajectory delivered with another run's video).",
            "header": ["cheat", "detected per validation", "how"], "rows": rows}


def build_context(run_dir: Path, df: pd.DataFrame, params: dict, stats: Stats, deployment=None) -> tuple[dict, dict[str, bytes]]:
    """The template's variables and the PNG figures (name -> bytes)."""
    cfg = stats.config
    table = stats.table
    best = best_metric_per_policy(table)
    pngs: dict[str, bytes] = {}
    split = df.drop_duplicates("prompt_id").set_index("prompt_id")["split"]
    malign_set = sorted(df.loc[df["kind"] == "malign", "deviation"].astype(str).unique())
    far_tables, all_rows = _far_tables(table, best)
    noise_rows = _noise_rows(stats.benign_noise, best)
    pngs["roc"] = roc_figure(stats, best)
    pngs["hist"] = hist_figure(df, best, _thresholds(table, best), stats.benign_set)
    cost_rows, cost_recs = _cost_rows(df, table, best)
    cost_png = cost_figure(pd.DataFrame(cost_recs))
    if cost_png:
        pngs["cost"] = cost_png
    eps_png = eps_figure(stats.eps_curve, best, cfg)
    eps_rows = []
    if eps_png:
        pngs["eps"] = eps_png
        eps_rows = _eps_rows(stats.eps_curve, best)
    strips = _strips(Path(run_dir), df, params, list(stats.benign_set), malign_set, pngs)
    ctx = {
        "run_id": str(df["run_id"].iloc[0]) if "run_id" in df and len(df) else Path(run_dir).name,
        "preset": str(df["preset"].iloc[0]) if "preset" in df and len(df) else str(params.get("preset", "?")),
        "n_prompts": int(df["prompt_id"].nunique()), "n_calib": int((split == "calib").sum()),
        "n_test": int((split == "test").sum()), "n_rows": len(df),
        "written": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "ci_pct": f"{100 * cfg.ci_level:.0f}", "max_fpr_pct": f"{cfg.max_fpr:.0%}",
        "far_pct": f"{cfg.far_target:.0%}", "frr_pct": f"{cfg.frr_target:.0%}",
        "benign_set": list(stats.benign_set), "malign_set": malign_set,
        "verdicts": _verdict_rows(stats.verdicts, True) if len(stats.verdicts) else [],
        "verdicts_all": _verdict_rows(stats.verdicts, False) if len(stats.verdicts) else [],
        "far_tables": far_tables, "all_rows": all_rows,
        "noise_policies": list(best), "noise_rows": noise_rows,
        "cost_rows": cost_rows, "eps_rows": eps_rows, "eps_policies": list(best),
        "strips": strips, "deploy_blocks": deployable_blocks(deployment), "zero_effect": list(stats.zero_effect),
        "img": {k: _b64(pngs.get(k)) for k in ("roc", "hist", "cost", "eps")},
        "params_json": json.dumps(params, indent=2, default=str, sort_keys=True),
        "stats_json": json.dumps(stats.summary()["config"], indent=2, default=str),
    }
    return ctx, pngs


def _best_row(table: pd.DataFrame, policy: str, metric: str | None) -> pd.DataFrame:
    """The all-malign comparison of one policy under one metric (0 or 1 rows)."""
    return table[(table["policy"] == policy) & (table["metric"] == metric) & (table["deviation"] == ALL_MALIGN)]


def _far_tables(table: pd.DataFrame, best: dict) -> tuple[list[dict], list[dict]]:
    far_tables = []
    for policy, metric in best.items():
        t = table[(table["policy"] == policy) & (table["metric"] == metric)]
        t = pd.concat([t[t["deviation"] == ALL_MALIGN], t[t["deviation"] != ALL_MALIGN]])
        far_tables.append({"policy": policy, "metric": metric, "rows": [_table_row(r) for _, r in t.iterrows()]})
    return far_tables, [_table_row(r) for _, r in table[table["deviation"] == ALL_MALIGN].iterrows()]


def _noise_rows(bn: pd.DataFrame, best: dict) -> list[dict]:
    noise_rows = []
    for dev in sorted(bn["deviation"].astype(str).unique()) if len(bn) else []:
        cells = []
        for policy in best:
            r = bn[(bn["deviation"] == dev) & (bn["policy"] == policy) & (bn["metric"] == best[policy])]
            cells.append(f"{fmt_num(r['median'].iloc[0])} / {fmt_num(r['p99'].iloc[0])}" if len(r) else "n/a")
        noise_rows.append({"deviation": dev, "emulation": dev.startswith("hwnoise"), "cells": cells})
    return noise_rows


def _thresholds(table: pd.DataFrame, best: dict) -> dict[str, float | None]:
    thresholds = {}
    for policy, metric in best.items():
        r = _best_row(table, policy, metric)
        thresholds[policy] = float(r["threshold_at_far"].iloc[0]) if len(r) else None
    return thresholds


def _cost_rows(df: pd.DataFrame, table: pd.DataFrame, best: dict) -> tuple[list[dict], list[dict]]:
    """Per policy: median bytes kept and validator compute of the benign rows, with its FRR and FAR
    (formatted for the template, and as numbers for the figure)."""
    cost_rows, cost_recs = [], []
    for policy in sorted(df["policy"].unique()):
        g = df[(df["policy"] == policy) & (df["kind"] == "benign")]
        b = pd.to_numeric(g.get("bytes_kept"), errors="coerce").dropna() if "bytes_kept" in g else pd.Series(dtype=float)
        c = pd.to_numeric(g.get("validator_compute_share"), errors="coerce").dropna() if "validator_compute_share" in g else pd.Series(dtype=float)
        metric = best.get(policy)
        r = _best_row(table, policy, metric)
        rec = {"policy": policy, "bytes": float(b.median()) if len(b) else math.nan,
               "compute": float(c.median()) if len(c) else math.nan, "metric": metric or "n/a",
               "frr": float(r["frr_at_far"].iloc[0]) if len(r) else math.nan,
               "far": float(r["far_at_frr"].iloc[0]) if len(r) else math.nan}
        cost_recs.append(rec)
        cost_rows.append({**rec, "bytes": fmt_bytes(rec["bytes"]), "compute": fmt_share(rec["compute"]),
                          "frr": _rate_of(r.iloc[0], "frr_at_far") if len(r) else "n/a",
                          "far": _rate_of(r.iloc[0], "far_at_frr") if len(r) else "n/a"})
    return cost_rows, cost_recs


def _eps_rows(eps_curve: pd.DataFrame, best: dict) -> list[dict]:
    rows = []
    e = eps_curve[eps_curve["deviation"] == ALL_MALIGN]
    for eps in sorted(e["eps"].unique()):
        cells = []
        for policy in best:
            r = e[(e["eps"] == eps) & (e["policy"] == policy) & (e["metric"] == best[policy])]
            cells.append(" / ".join([_rate_of(r.iloc[0], "far_at_frr", boot=False),
                                     _rate_of(r.iloc[0], "frr_at_far", boot=False),
                                     fmt_num(r["benign_median"].iloc[0])]) if len(r) else "n/a")
        rows.append({"eps": fmt_num(eps), "cells": cells})
    return rows


def _strips(run_dir: Path, df: pd.DataFrame, params: dict, benign_set: list[str], malign_set: list[str],
            pngs: dict[str, bytes]) -> list[dict]:
    """Frame strips of the first test prompts (their PNGs added to `pngs`)."""
    strips = []
    n_strips = int(params.get("strips", 3)) if isinstance(params, dict) else 3
    prompts = df.drop_duplicates("prompt_id").sort_values("prompt_id")
    order = pd.concat([prompts[prompts["split"] == "test"], prompts[prompts["split"] != "test"]])
    devs = benign_set + [d for d in malign_set if d not in benign_set]
    for _, pr in order.head(n_strips).iterrows():
        pid = int(pr["prompt_id"])
        png, missing = strip_figure(run_dir, pid, devs)
        key = f"frames_p{pid:04d}"
        if png:
            pngs[key] = png
        strips.append({"prompt_id": pid, "prompt": str(pr.get("prompt", "")), "png": _b64(png), "file": f"{key}.png",
                       "missing": ", ".join(missing)})
    return strips


def render_markdown(ctx: dict) -> str:
    L = [f"# Validation experiment {ctx['run_id']}", "",
         f"Preset `{ctx['preset']}`, {ctx['n_prompts']} prompts ({ctx['n_calib']} calibration, {ctx['n_test']} held-out "
         f"test), {ctx['n_rows']} score rows. Malign = positive class; FRR = benign rejected, FAR = malign accepted; "
         f"thresholds chosen on calibration prompts, rates measured on test prompts; intervals are "
         f"{ctx['ci_pct']}% bootstrap intervals over prompts. `hwnoise:EPS` is an emulation of hardware noise.", "",
         "Benign class: " + ", ".join(f"`{d}`" + (" (emulation)" if d.startswith("hwnoise") else "") for d in ctx["benign_set"]), "",
         "Zero-effect deviations (bit-identical to the canonical run on this hardware; reported apart, not in the "
         "benign class): " + (", ".join(f"`{d}`" for d in ctx["zero_effect"]) or "none") + ".", ""]
    for b in ctx["deploy_blocks"]:
        L += [f"## {b['title']}", "", b["text"], "", "| " + " | ".join(b["header"]) + " |", "|---" * len(b["header"]) + "|"]
        L += ["| " + " | ".join(str(c) for c in row) + " |" for row in b["rows"]]
        L.append("")
    L += ["## Oracle view: verdict per malign deviation", "",
          "Each cheat gets the policy, metric and threshold that suit it best (chosen on calibration prompts): a view "
          "no single deployed validator has. Rates: count, exact 95% bounds, then the bootstrap over prompts.", "",
         f"| malign deviation | verdict | best policy / metric | test FRR at FAR<={ctx['far_pct']} | test FAR there | benign noise (median) | malign median | bytes kept | validator compute | why |",
         "|---|---|---|---|---|---|---|---|---|---|"]
    for v in ctx["verdicts"]:
        L.append(f"| `{v['deviation']}` | {v['separation']} | {v['policy']} / `{v['metric']}` | {v['frr']} | {v['far']} | "
                 f"{v['benign_median']} | {v['malign_median']} | {v['bytes']} | {v['compute']} | {v['explanation']} |")
    L += ["", "## Oracle view: FAR/FRR table (each policy's best metric, chosen on calibration)", ""]
    for p in ctx["far_tables"]:
        L += [f"### {p['policy']} · `{p['metric']}`", "",
              f"| vs | AUC | pAUC | test FRR at FAR<={ctx['far_pct']} | test FAR at FRR<={ctx['frr_pct']} | benign noise median / p99 | malign median | n test (benign / malign) | note |",
              "|---|---|---|---|---|---|---|---|---|"]
        for r in p["rows"]:
            L.append(f"| `{r['deviation']}` | {r['auc']} | {r['pauc']} | {r['frr']} | {r['far']} | {r['noise']} | {r['malign_median']} | {r['n']} | {r['reason']} |")
        L.append("")
    L += ["## Benign noise per benign deviation (median / p99 score)", "",
          "| benign deviation | " + " | ".join(ctx["noise_policies"]) + " |", "|---" * (len(ctx["noise_policies"]) + 1) + "|"]
    for r in ctx["noise_rows"]:
        L.append(f"| `{r['deviation']}`{' (emulation)' if r['emulation'] else ''} | " + " | ".join(r["cells"]) + " |")
    L += ["", "## Compute and bytes per policy", "",
          f"| policy | bytes kept | validator compute | best metric | test FRR at FAR<={ctx['far_pct']} vs all malign | test FAR at FRR<={ctx['frr_pct']} vs all malign |",
          "|---|---|---|---|---|---|"]
    for r in ctx["cost_rows"]:
        L.append(f"| {r['policy']} | {r['bytes']} | {r['compute']} | `{r['metric']}` | {r['frr']} | {r['far']} |")
    if ctx["eps_rows"]:
        L += ["", "## FAR/FRR against emulated hardware noise EPS (emulation)", "",
              "Per policy: FAR at FRR<=1% / FRR at FAR<=1% / benign median, benign = that EPS's hwnoise rows only.", "",
              "| EPS | " + " | ".join(ctx["eps_policies"]) + " |", "|---" * (len(ctx["eps_policies"]) + 1) + "|"]
        for r in ctx["eps_rows"]:
            L.append(f"| {r['eps']} | " + " | ".join(r["cells"]) + " |")
        L += ["", f"![EPS curve]({FILES_DIR}/eps.png)"]
    L += ["", "## Figures", "", f"![ROC curves]({FILES_DIR}/roc.png)", ""]
    L.append(f"![score histograms per deviation]({FILES_DIR}/hist.png)")
    if "cost" in ctx["img"] and ctx["img"]["cost"]:
        L.append(f"![cost]({FILES_DIR}/cost.png)")
    for s in ctx["strips"]:
        if s["png"]:
            L.append(f"![frames prompt {s['prompt_id']}]({FILES_DIR}/{s['file']})")
    return "\n".join(L) + "\n"


def _inline_markdown(text: Any):
    """HTML of a table cell written for markdown: escaped, `code` and **bold** kept."""
    import re

    from markupsafe import Markup, escape

    html = str(escape(str(text)))
    html = re.sub(r"`([^`]+)`", r"<code>\1</code>", html)
    return Markup(re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", html))


def write_report(run_dir: str | Path, scores_df: pd.DataFrame, params: dict, stats: Stats | None = None,
                 deployment=None) -> tuple[Path, Path]:
    """Write RUN/report.html (self-contained) and RUN/report.md (+ RUN/report_files/*.png); return both paths."""
    import jinja2

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ReportError(f"run_dir {run_dir} is not a directory")
    if scores_df is None or len(scores_df) == 0:
        raise ReportError("scores_df is empty: nothing to report")
    params = dict(params or {})
    if stats is None:
        n_boot = params.get("bootstrap")
        stats = compute_stats(scores_df, **({"n_boot": int(n_boot)} if isinstance(n_boot, int) else {}))
    ctx, pngs = build_context(run_dir, scores_df, params, stats, deployment)
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATE_DIR), autoescape=jinja2.select_autoescape(["html", "j2"]),
                             undefined=jinja2.StrictUndefined)
    env.filters["md"] = _inline_markdown
    html = env.get_template("report.html.j2").render(**ctx)
    for name, png in pngs.items():
        write_atomic(run_dir / FILES_DIR / f"{name}.png", png)
    html_path, md_path = run_dir / "report.html", run_dir / "report.md"
    write_atomic(md_path, render_markdown(ctx).encode("utf-8"))
    write_atomic(html_path, html.encode("utf-8"))
    return html_path, md_path
