"""Prompt following on the `shapes` preset, read off the frames by simple image analysis.

No learnt model is involved: the templated prompt names a colour, a shape and a motion
(`models.shapes_data`), and each is read off a video as follows.

- **Foreground**: object colours are saturated, backgrounds grey, so a pixel is foreground when its
  RGB spread (max - min) exceeds `SATURATION` (the largest connected component of each frame).
- **Colour**: the median chromaticity (r, g, b) / (r + g + b) of all foreground pixels, nearest of
  the data set's colours.
- **Shape**: per frame, the intersection-over-union of the foreground with each shape rendered at
  its centroid and area over a sweep of angles; the best shape by vote over frames.
- **Motion**: the centroid trajectory (least-squares line over the frames) and the area ratio of
  the last to the first frames: a displacement of at least `MOVE` of the side gives left/right/up/
  down, else the area ratio gives growing/shrinking, else still (= rotating: a rotation keeps the
  centroid and the area). A horizontal displacement with the background texture shifting the same
  way (summed frame-to-frame shifts of the background's column profile) is a camera pan, named by
  the camera's direction (content moving right = the camera pans left).

Accuracy per attribute comes with exact Clopper-Pearson 95% bounds and two chance levels: uniform
guessing (1/K) and the *shuffled* chance, the accuracy of the same read-offs scored against the
other prompts of the set: what a generator that ignored its prompt but drew the same videos would
score.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from models import shapes_data

SATURATION = 60  # RGB spread (0-255) above which a pixel is foreground
MOVE = 0.12  # centroid displacement, fraction of the side, that counts as translation
GROW = 1.5  # area ratio that counts as growing (1/GROW: shrinking)
MIN_AREA = 6  # foreground pixels a frame needs to be read
QUALITY_FILES = ("quality.json", "quality.md")  # what `flows.shapes.quality_flow` writes into its directory
ATTRIBUTES = ("colour", "shape", "motion")
ANGLES = {"circle": (0.0,), "square": tuple(np.linspace(0, 90, 9, endpoint=False)),
          "triangle": tuple(np.linspace(0, 120, 12, endpoint=False))}
AREA_FACTOR = {"circle": math.pi * 0.85**2, "square": 2.0, "triangle": 3 * math.sqrt(3) / 4}


def foreground(frame: np.ndarray) -> np.ndarray:
    """Boolean mask of the largest saturated connected component of one uint8 frame."""
    from scipy import ndimage

    rgb = frame.astype(np.int16)
    mask = (rgb.max(axis=-1) - rgb.min(axis=-1)) > SATURATION
    labels, n = ndimage.label(mask)
    if n <= 1:
        return mask
    sizes = ndimage.sum(mask, labels, index=range(1, n + 1))
    return labels == (int(np.argmax(sizes)) + 1)


def _colour(frames: np.ndarray, masks: np.ndarray) -> str | None:
    px = frames[masks].astype(np.float64)
    if len(px) < MIN_AREA:
        return None
    chroma = np.median(px / np.maximum(px.sum(axis=1, keepdims=True), 1.0), axis=0)
    names = list(shapes_data.COLOURS)
    refs = np.array([np.asarray(shapes_data.COLOURS[c], float) / sum(shapes_data.COLOURS[c]) for c in names])
    return names[int(np.argmin(((refs - chroma) ** 2).sum(axis=1)))]


def _shape_scores(mask: np.ndarray) -> dict[str, float]:
    side = mask.shape[0]
    ys, xs = np.nonzero(mask)
    cx, cy = (xs.mean() + 0.5) / side, (ys.mean() + 0.5) / side
    area = mask.sum() / side**2
    out = {}
    for shape in shapes_data.SHAPES:
        size = math.sqrt(area / AREA_FACTOR[shape])
        best = 0.0
        for angle in ANGLES[shape]:
            t = shapes_data.shape_mask(shape, cx, cy, size, angle, side, supersample=2) > 0.5
            best = max(best, float((t & mask).sum() / max(1, (t | mask).sum())))
        out[shape] = best
    return out


def _background_shift(frames: np.ndarray, masks: np.ndarray) -> float:
    """Total horizontal shift (pixels, + = right) of the background over the clip: the sum of the
    frame-to-frame shifts in -3..3 that best match the background pixels (object excluded)."""
    from scipy import ndimage

    total = 0.0
    prev = prev_keep = None
    for f, m in zip(frames, masks):
        grey = f.astype(np.float64).mean(axis=-1)
        keep = ~ndimage.binary_dilation(m, iterations=2)
        keep[:, :4] = keep[:, -4:] = False
        if prev is not None and grey[keep].std() > 4.0:
            errs = {}
            for s in range(-3, 4):
                both = np.roll(prev_keep, s, axis=1) & keep
                if both.sum() > 0:
                    errs[s] = float(np.mean((np.roll(prev, s, axis=1)[both] - grey[both]) ** 2))
            if errs:
                total += min(errs, key=errs.get)
        prev, prev_keep = grey, keep
    return total


def read_video(frames: np.ndarray) -> dict[str, Any]:
    """Colour, shape and motion of one video (uint8, (T, H, W, 3)), plus what they were read from."""
    frames = np.asarray(frames)
    side = frames.shape[1]
    masks = np.stack([foreground(f) for f in frames])
    areas = masks.sum(axis=(1, 2))
    seen = areas >= MIN_AREA
    out: dict[str, Any] = {"colour": _colour(frames, masks), "shape": None, "motion": None,
                           "frames_seen": int(seen.sum()), "mean_area": float(areas.mean())}
    if seen.sum() < 2:
        return out
    votes: dict[str, float] = {}
    for k in np.nonzero(seen)[0]:
        sc = _shape_scores(masks[k])
        best = max(sc, key=sc.get)
        votes[best] = votes.get(best, 0) + 1
    out["shape"] = max(sorted(votes), key=votes.get)
    idx = np.nonzero(seen)[0].astype(float)
    cents = np.array([[np.nonzero(masks[int(k)])[1].mean(), np.nonzero(masks[int(k)])[0].mean()] for k in idx])
    slope = np.polyfit(idx, cents, 1)[0] if len(idx) >= 2 else np.zeros(2)
    dx, dy = slope * (len(frames) - 1)
    a = areas[seen].astype(float)
    ratio = float(a[-2:].mean() / max(1.0, a[:2].mean()))
    out.update(dx=float(dx / side), dy=float(dy / side), area_ratio=ratio)
    if max(abs(dx), abs(dy)) >= MOVE * side:
        if abs(dx) >= abs(dy):
            bg = _background_shift(frames, masks)
            out["bg_shift"] = float(bg / side)
            panned = np.sign(bg) == np.sign(dx) and abs(bg) >= 0.5 * abs(dx)
            if panned:
                out["motion"] = "pan-left" if dx > 0 else "pan-right"
            else:
                out["motion"] = "right" if dx > 0 else "left"
        else:
            out["motion"] = "down" if dy > 0 else "up"
    elif ratio >= GROW:
        out["motion"] = "grow"
    elif ratio <= 1 / GROW:
        out["motion"] = "shrink"
    else:
        out["motion"] = "rotate"
    return out


def score_video(prompt: str, frames: np.ndarray) -> dict[str, Any]:
    """Read-offs of one video against its templated prompt: `<attr>_ok` per attribute and `all_ok`."""
    want = shapes_data.parse_prompt(prompt)
    if want is None:
        raise ValueError(f"prompt: not a templated shapes prompt: {prompt!r}")
    got = read_video(frames)
    row = {"prompt": prompt, **{f"want_{a}": want[a] for a in ATTRIBUTES}, **{f"got_{a}": got[a] for a in ATTRIBUTES}}
    for a in ATTRIBUTES:
        row[f"{a}_ok"] = got[a] == want[a]
    row["all_ok"] = all(row[f"{a}_ok"] for a in ATTRIBUTES)
    row.update({k: v for k, v in got.items() if k not in ATTRIBUTES})
    return row


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    from scipy.stats import binomtest

    if n == 0:
        return (float("nan"), float("nan"))
    ci = binomtest(k, n).proportion_ci(confidence_level=level, method="exact")
    return (float(ci.low), float(ci.high))


def uniform_chance(attribute: str) -> float:
    k = {"colour": len(shapes_data.COLOURS), "shape": len(shapes_data.SHAPES), "motion": len(shapes_data.MOTIONS)}
    if attribute == "all":
        return 1.0 / math.prod(k.values())
    return 1.0 / k[attribute]


def shuffled_chance(rows: Sequence[dict[str, Any]], attribute: str) -> float:
    """Accuracy of each video's read-off against every other prompt's wanted value (i != j)."""
    n = len(rows)
    if n < 2:
        return float("nan")
    attrs = ATTRIBUTES if attribute == "all" else (attribute,)
    hits = 0
    for i in range(n):
        for j in range(n):
            if i != j:
                hits += all(rows[i][f"got_{a}"] == rows[j][f"want_{a}"] for a in attrs)
    return hits / (n * (n - 1))


def accuracy(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per attribute (and all three together): accuracy, its 95% exact interval and both chances."""
    out = {}
    n = len(rows)
    for a in (*ATTRIBUTES, "all"):
        k = sum(bool(r[f"{a}_ok"]) for r in rows)
        lo, hi = clopper_pearson(k, n)
        out[a] = {"k": k, "n": n, "accuracy": k / n if n else float("nan"), "ci_low": lo, "ci_high": hi,
                  "chance_uniform": uniform_chance(a), "chance_shuffled": shuffled_chance(rows, a)}
    return out


def evaluate(prompts: Iterable[str], deviations: Sequence[str | None] = (None,), preset: str = "shapes",
             seed: int = 0, request: dict[str, Any] | None = None, runtime=None,
             progress=None) -> dict[str, Any]:
    """Generate every prompt honestly and under each deviation and score prompt following.

    Returns {"rows": [...], "accuracy": {deviation: accuracy(...)}, "seconds": {deviation: mean s}}.
    `None` in `deviations` is the honest run. Request seed of prompt i: seed + i.
    """
    import time

    from models.engine import generate
    from models.request import GenerationRequest, Runtime

    runtime = runtime or Runtime()
    prompts = list(prompts)
    rows, secs = [], {}
    for dev in deviations:
        name = dev or "honest"
        secs[name] = []
        for i, p in enumerate(prompts):
            req = GenerationRequest(model=preset, prompt=p, seed=seed + i, **{"truncate_prompt": True, **(request or {})})
            t0 = time.perf_counter()
            gen = generate(req, runtime, deviation=dev, capture=())
            secs[name].append(time.perf_counter() - t0)
            rows.append({"deviation": name, "seed": seed + i, **score_video(p, gen.frames)})
            if progress:
                progress(name, i)
    acc = {d: accuracy([r for r in rows if r["deviation"] == d]) for d in secs}
    return {"rows": rows, "accuracy": acc, "seconds": {d: float(np.mean(v)) for d, v in secs.items()}}


def markdown_table(acc: dict[str, dict[str, dict[str, float]]], seconds: dict[str, float] | None = None) -> str:
    """Accuracy per deviation and attribute (with intervals), chance levels in the first row."""
    head = "| run | n | colour | shape | motion | all three | s / video |\n|---|---|---|---|---|---|---|\n"
    first = next(iter(acc.values()))
    lines = ["| chance: uniform / shuffled (honest) | | " + " | ".join(
        f"{first[a]['chance_uniform']:.0%} / {first[a]['chance_shuffled']:.0%}" for a in (*ATTRIBUTES, "all")) + " | |"]
    for dev, a in acc.items():
        cells = [f"{a[x]['accuracy']:.0%} [{a[x]['ci_low']:.0%}, {a[x]['ci_high']:.0%}]" for x in (*ATTRIBUTES, "all")]
        sec = f"{seconds[dev]:.2f}" if seconds and dev in seconds else ""
        lines.append(f"| {dev} | {a['colour']['n']} | " + " | ".join(cells) + f" | {sec} |")
    return head + "\n".join(lines) + "\n"


def score_run(run: str | Path) -> dict[str, Any]:
    """Prompt following of every video an experiment run committed (RUN/gens/pNNNN/DEVIATION/):
    the claimed (templated) prompt of each record against its decoded MP4."""
    import json

    from sim.video_io import decode_mp4

    run = Path(run)
    rows = []
    for rec_path in sorted(run.glob("gens/p*/*/record.json")):
        rec = json.loads(rec_path.read_text())
        prompt = rec["request"]["prompt"]
        if shapes_data.parse_prompt(prompt) is None:
            continue
        frames = decode_mp4(rec_path.parent / "video.mp4")
        name = rec.get("deviation") or "honest"
        rows.append({"deviation": name, "prompt_dir": rec_path.parent.parent.name, **score_video(prompt, frames)})
    devs = list(dict.fromkeys(r["deviation"] for r in sorted(rows, key=lambda r: r["deviation"] != "honest")))
    return {"rows": rows, "accuracy": {d: accuracy([r for r in rows if r["deviation"] == d]) for d in devs}}
