"""The demo world: deterministic synthetic clips of moving shapes, each with a prompt.

A clip shows one or two shapes (circle, square, triangle, diamond) of a colour and size, each
moving left, right, up, down or standing still, over a plain, striped or checkered background.
Prompts come from a small grammar ("a small red circle moving left on a striped background";
a second shape joins with "and"). The same (spec, seed) always renders the same clip.

The prompt space is split once, by a fixed rule over (colour, shape, motion) of the first shape:
about a fifth of the combinations are held out of training, while every single attribute value
stays in the training set (so held-out prompts test composition, not unseen words).

Pure numpy; knows nothing about models.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (50, 80, 230),
    "yellow": (235, 215, 40),
    "purple": (150, 60, 200),
    "cyan": (40, 200, 210),
    "orange": (240, 140, 30),
    "white": (240, 240, 240),
}
SHAPES = ("circle", "square", "triangle", "diamond")
MOTIONS = ("left", "right", "up", "down", "still")
SIZES = {"small": 0.16, "large": 0.26}  # half-extent as a fraction of the frame side
BACKGROUNDS = ("plain", "striped", "checkered")
_DIRECTION = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0), "still": (0, 0)}


@dataclass(frozen=True)
class Obj:
    colour: str
    shape: str
    motion: str
    size: str = "small"

    def phrase(self) -> str:
        verb = "standing still" if self.motion == "still" else f"moving {self.motion}"
        return f"a {self.size} {self.colour} {self.shape} {verb}"


@dataclass(frozen=True)
class ClipSpec:
    objects: tuple[Obj, ...]
    background: str = "plain"

    @property
    def prompt(self) -> str:
        return " and ".join(o.phrase() for o in self.objects) + f" on a {self.background} background"

    @property
    def main(self) -> Obj:
        return self.objects[0]


def held_out(obj: Obj) -> bool:
    """The fixed split: True for (colour, shape, motion) combinations kept out of training."""
    c = list(COLOURS).index(obj.colour)
    s = SHAPES.index(obj.shape)
    m = MOTIONS.index(obj.motion)
    return (c + 2 * s + 3 * m) % 5 == 0


def all_objects() -> list[Obj]:
    return [Obj(c, s, m, z) for c, s, m, z in itertools.product(COLOURS, SHAPES, MOTIONS, SIZES)]


def sample_spec(rng: np.random.Generator, split: str = "train", two_objects_p: float = 0.0) -> ClipSpec:
    """A random clip spec whose first object lies in ``split`` ('train' or 'heldout')."""
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', not {split!r}")
    pool = [o for o in all_objects() if held_out(o) == (split == "heldout")]
    objs = [pool[rng.integers(len(pool))]]
    if rng.random() < two_objects_p:
        second = [o for o in all_objects() if o.colour != objs[0].colour and o.shape != objs[0].shape]
        objs.append(second[rng.integers(len(second))])
    return ClipSpec(tuple(objs), BACKGROUNDS[rng.integers(len(BACKGROUNDS))])


def vocabulary() -> list[str]:
    """Every word the prompt grammar can produce (sorted)."""
    words = {"a", "and", "on", "background", "moving", "standing", "still"}
    words |= set(COLOURS) | set(SHAPES) | set(MOTIONS) | set(SIZES) | set(BACKGROUNDS)
    return sorted(words)


def parse_prompt(prompt: str) -> ClipSpec:
    """The inverse of ClipSpec.prompt (for prompts of this grammar); ValueError otherwise."""
    text = prompt.strip().lower()
    if " on a " not in text or not text.endswith(" background"):
        raise ValueError(f"not a demo-world prompt: {prompt!r}")
    body, _, bg = text.rpartition(" on a ")
    bg = bg[: -len(" background")]
    objs = []
    for part in body.split(" and "):
        words = part.split()
        if len(words) < 5 or words[0] != "a":
            raise ValueError(f"not a demo-world prompt: {prompt!r}")
        size, colour, shape = words[1:4]
        rest = " ".join(words[4:])
        motion = "still" if rest == "standing still" else rest.removeprefix("moving ")
        if size not in SIZES or colour not in COLOURS or shape not in SHAPES or motion not in MOTIONS:
            raise ValueError(f"not a demo-world prompt: {prompt!r}")
        objs.append(Obj(colour, shape, motion, size))
    if bg not in BACKGROUNDS:
        raise ValueError(f"unknown background {bg!r} in {prompt!r}")
    return ClipSpec(tuple(objs), bg)


def _shape_mask(shape: str, yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, r: float) -> np.ndarray:
    dy, dx = yy - cy, xx - cx
    if shape == "circle":
        return dy * dy + dx * dx <= r * r
    if shape == "square":
        return (np.abs(dy) <= r * 0.85) & (np.abs(dx) <= r * 0.85)
    if shape == "diamond":
        return np.abs(dy) + np.abs(dx) <= r
    if shape == "triangle":  # apex up
        return (dy <= r * 0.8) & (dy >= -r) & (np.abs(dx) <= (dy + r) * 0.6)
    raise ValueError(f"unknown shape {shape!r}")


def _background(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    base = np.array([40, 40, 48], dtype=np.float32) + rng.integers(-8, 9, 3)
    img = np.broadcast_to(base, (size, size, 3)).copy()
    period = int(rng.integers(4, 7))
    phase = int(rng.integers(0, period * 2))
    yy, xx = np.mgrid[0:size, 0:size]
    if kind == "striped":
        band = ((xx + phase) // period) % 2 == 0
        img[band] += 45
    elif kind == "checkered":
        band = (((xx + phase) // period) + ((yy + phase) // period)) % 2 == 0
        img[band] += 45
    elif kind != "plain":
        raise ValueError(f"unknown background {kind!r}")
    return img


def render(spec: ClipSpec, seed: int, frames: int = 8, size: int = 32) -> np.ndarray:
    """The clip as (frames, size, size, 3) uint8. Deterministic in (spec, seed, frames, size)."""
    rng = np.random.default_rng([seed, frames, size])
    bg = _background(spec.background, size, rng)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    clip = np.repeat(bg[None], frames, axis=0)
    for obj in spec.objects:
        r = SIZES[obj.size] * size
        dy, dx = _DIRECTION[obj.motion]
        # the whole path stays inside the frame: travel 60-90 % of the free span
        lo, hi = r, size - r
        travel = rng.uniform(0.6, 0.9) * (hi - lo)
        speed = travel / max(1, frames - 1)  # pixels per frame
        cy0 = rng.uniform(lo, hi) if dy == 0 else (rng.uniform(lo, hi - travel) if dy > 0 else rng.uniform(lo + travel, hi))
        cx0 = rng.uniform(lo, hi) if dx == 0 else (rng.uniform(lo, hi - travel) if dx > 0 else rng.uniform(lo + travel, hi))
        colour = np.array(COLOURS[obj.colour], dtype=np.float32)
        for f in range(frames):
            m = _shape_mask(obj.shape, yy, xx, cy0 + dy * speed * f, cx0 + dx * speed * f, r)
            clip[f][m] = colour
    return np.clip(clip, 0, 255).astype(np.uint8)
