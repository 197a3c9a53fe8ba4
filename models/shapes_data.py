"""A procedural text-to-video data set made in code: coloured shapes moving over backgrounds.

Every clip is drawn from a `Scene` (colour, shape, motion, background, plus continuous nuisance
values: start position, size, angle, speed) and comes with a templated prompt naming what is shown
and how it moves, e.g. "a red circle moving left on a striped background". Scenes are drawn from a
seed (`scene_for(seed)`), so the data set is reproducible and generated on the fly; nothing is
stored. Frames are rendered 4x supersampled and box-filtered (anti-aliased), as float32 in [0, 1].

The vocabulary is small on purpose (a model trained for minutes on a CPU must be able to learn it):
4 colours, 3 shapes, 9 motions (translation in 4 directions, rotation, growing, shrinking, a camera
pan left or right: object and background move together, opposite to the pan), 4 backgrounds (2
plain, 2 textured). Pans are drawn only over the textured backgrounds, where they can be seen.
Object colours are saturated and backgrounds grey, so a frame's foreground is its saturated pixels
(what `sim/shapes_quality.py` reads off generated videos).
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass

import numpy as np

from models.seeds import shapes_prompts_key, shapes_scene_key

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (50, 80, 235),
    "yellow": (235, 210, 40),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
MOTIONS: dict[str, str] = {  # motion -> prompt phrase
    "left": "moving left",
    "right": "moving right",
    "up": "moving up",
    "down": "moving down",
    "rotate": "rotating",
    "grow": "growing",
    "shrink": "shrinking",
    "pan-left": "as the camera pans left",
    "pan-right": "as the camera pans right",
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {  # name -> (dark, light) grey levels and texture flag
    "black": (12, 12, 0),
    "grey": (80, 80, 0),
    "striped": (20, 75, 1),
    "checkered": (20, 75, 2),
}
TEXTURED = ("striped", "checkered")
PAN_MOTIONS = ("pan-left", "pan-right")
TEXTURE_PERIOD = 8  # pixels (stripe width and checker cell: half of it)
SUPERSAMPLE = 4


@dataclass(frozen=True)
class Scene:
    colour: str
    shape: str
    motion: str
    background: str
    cx: float  # start centre, fraction of the frame width/height
    cy: float
    size: float  # circumradius, fraction of the frame side
    angle: float  # start angle, degrees
    travel: float  # displacement over the clip (fraction of the side), scale factor, or degrees

    @property
    def prompt(self) -> str:
        return prompt_of(self.colour, self.shape, self.motion, self.background)

    def to_dict(self) -> dict:
        return asdict(self)


def prompt_of(colour: str, shape: str, motion: str, background: str) -> str:
    return f"a {colour} {shape} {MOTIONS[motion]} on a {background} background"


def parse_prompt(prompt: str) -> dict[str, str] | None:
    """The colour, shape, motion and background a templated prompt names (None if not templated)."""
    for c in COLOURS:
        for s in SHAPES:
            head = f"a {c} {s} "
            if not prompt.startswith(head):
                continue
            rest = prompt[len(head):]
            for m, phrase in MOTIONS.items():
                for b in BACKGROUNDS:
                    if rest == f"{phrase} on a {b} background":
                        return {"colour": c, "shape": s, "motion": m, "background": b}
    return None


def all_attributes() -> list[tuple[str, str, str, str]]:
    """Every (colour, shape, motion, background) the data set draws (pans only over textures)."""
    out = []
    for c in COLOURS:
        for s in SHAPES:
            for m in MOTIONS:
                for b in BACKGROUNDS:
                    if m in PAN_MOTIONS and b not in TEXTURED:
                        continue
                    out.append((c, s, m, b))
    return out


def scene_for(seed: int) -> Scene:
    """The scene of one seed: attributes uniform over `all_attributes()`, nuisances uniform."""
    rng = random.Random(shapes_scene_key(seed))
    c, s, m, b = rng.choice(all_attributes())
    return scene_with(c, s, m, b, rng)


def scene_with(colour: str, shape: str, motion: str, background: str, rng: random.Random) -> Scene:
    size = rng.uniform(0.17, 0.24)
    angle = rng.uniform(0.0, 360.0)
    travel = 0.0
    cx = cy = 0.5
    if motion in ("left", "right", "up", "down", "pan-left", "pan-right"):
        travel = rng.uniform(0.3, 0.45)
        along = 0.5 + travel / 2 * (1 if motion in ("left", "up", "pan-right") else -1)
        across = rng.uniform(0.3, 0.7)
        cx, cy = (along, across) if motion in ("left", "right", "pan-left", "pan-right") else (across, along)
    else:
        cx, cy = rng.uniform(0.35, 0.65), rng.uniform(0.35, 0.65)
        if motion == "rotate":
            travel = rng.uniform(40.0, 60.0)  # degrees over the clip
        elif motion == "grow":
            size = rng.uniform(0.12, 0.15)
            travel = rng.uniform(1.9, 2.2)  # size factor over the clip
        else:  # shrink
            size = rng.uniform(0.24, 0.3)
            travel = 1.0 / rng.uniform(1.9, 2.2)
    return Scene(colour, shape, motion, background, cx, cy, size, angle, travel)


def object_at(scene: Scene, k: int, frames: int) -> tuple[float, float, float, float, float]:
    """(cx, cy, size, angle, background shift) at frame k; positions in fractions of the side."""
    u = k / max(1, frames - 1)
    cx, cy, size, angle, shift = scene.cx, scene.cy, scene.size, scene.angle, 0.0
    m, d = scene.motion, scene.travel * u
    if m in ("left", "pan-right"):
        cx -= d
    elif m in ("right", "pan-left"):
        cx += d
    elif m == "up":
        cy -= d
    elif m == "down":
        cy += d
    elif m == "rotate":
        angle += d
    elif m in ("grow", "shrink"):
        size *= scene.travel**u
    if m == "pan-left":
        shift = d
    elif m == "pan-right":
        shift = -d
    return cx, cy, size, angle, shift


def shape_mask(shape: str, cx: float, cy: float, size: float, angle: float, side: int,
               supersample: int = SUPERSAMPLE) -> np.ndarray:
    """Coverage in [0, 1] of one shape on a side x side grid (centre, circumradius as fractions)."""
    n = side * supersample
    coords = (np.arange(n, dtype=np.float32) + 0.5) / n
    x = coords[None, :] - cx
    y = coords[:, None] - cy
    a = np.deg2rad(angle)
    xr = x * np.cos(a) + y * np.sin(a)
    yr = -x * np.sin(a) + y * np.cos(a)
    if shape == "circle":
        inside = xr**2 + yr**2 <= (size * 0.85) ** 2  # circles a little smaller: similar areas
    elif shape == "square":
        half = size / np.sqrt(2.0)
        inside = (np.abs(xr) <= half) & (np.abs(yr) <= half)
    elif shape == "triangle":
        inside = np.ones_like(xr, dtype=bool)
        for k in range(3):  # equilateral: three half-planes at distance size/2 from the centre
            t = a + np.pi / 2 + k * 2 * np.pi / 3
            inside &= (x * np.cos(t) + y * np.sin(t)) <= size / 2
    else:
        raise ValueError(f"shape must be one of {', '.join(SHAPES)}, got {shape!r}")
    cover = inside.astype(np.float32)
    return cover.reshape(side, supersample, side, supersample).mean(axis=(1, 3))


def background_frame(background: str, shift: float, side: int) -> np.ndarray:
    """Grey levels in [0, 1] of a background shifted by `shift` (fraction of the side)."""
    dark, light, texture = BACKGROUNDS[background]
    n = side * SUPERSAMPLE
    period = float(TEXTURE_PERIOD)
    xs = (np.arange(n, dtype=np.float32) + 0.5) / SUPERSAMPLE - shift * side
    ys = (np.arange(n, dtype=np.float32) + 0.5) / SUPERSAMPLE
    if texture == 0:
        level = np.full((n, n), dark, np.float32)
    elif texture == 1:  # vertical stripes: a horizontal pan moves them
        on = (np.floor(xs / (period / 2)) % 2)[None, :].repeat(n, 0)
        level = np.where(on > 0, light, dark).astype(np.float32)
    else:
        on = (np.floor(xs / (period / 2))[None, :] + np.floor(ys / (period / 2))[:, None]) % 2
        level = np.where(on > 0, light, dark).astype(np.float32)
    level = level.reshape(side, SUPERSAMPLE, side, SUPERSAMPLE).mean(axis=(1, 3))
    return level / 255.0


def render(scene: Scene, frames: int = 9, side: int = 32) -> np.ndarray:
    """The clip of a scene: float32 (frames, side, side, 3) in [0, 1]."""
    colour = np.asarray(COLOURS[scene.colour], np.float32) / 255.0
    out = np.empty((frames, side, side, 3), np.float32)
    for k in range(frames):
        cx, cy, size, angle, shift = object_at(scene, k, frames)
        bg = background_frame(scene.background, shift, side)[..., None]
        cover = shape_mask(scene.shape, cx, cy, size, angle, side)[..., None]
        out[k] = bg * (1 - cover) + colour * cover
    return out


def batch(seeds, frames: int = 9, side: int = 32):
    """Clips and prompts of some seeds: ((B, 3, frames, side, side) float32 in [-1, 1], prompts)."""
    scenes = [scene_for(int(s)) for s in seeds]
    clips = np.stack([render(sc, frames, side) for sc in scenes]).transpose(0, 4, 1, 2, 3)
    return clips * 2.0 - 1.0, [sc.prompt for sc in scenes]


def templated_prompts(n: int, seed: int = 0) -> list[str]:
    """n distinct templated prompts, a seeded sample (for experiments on the `shapes` preset)."""
    combos = all_attributes()
    rng = random.Random(shapes_prompts_key(seed))
    if n > len(combos):
        raise ValueError(f"prompts: at most {len(combos)} distinct templated prompts, got {n}")
    return [prompt_of(*c) for c in rng.sample(combos, n)]
