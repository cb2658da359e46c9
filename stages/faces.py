"""Procedural anime-style face portraits: the pipeline's built-in image set.

Why this exists: the pipeline must run end to end with no data on disk, and
what it trains (a VAE and a gray->color colorizer) is only interesting when
the images vary in ways that matter for color.  So every face is drawn from
independent, uniformly drawn labelled factors (hair color, eye color, skin,
background, ...) plus continuous jitter, which makes concept vectors ("mean
latent of blonde faces minus the rest") meaningful and makes >= 20,000
distinct images available.

The look follows anime portrait crops: a big head filling the frame, large
bright eyes with highlights, shaded hair with a fringe over the forehead and
locks framing the face.  Shapes are bold on purpose: the faces are used at
30x30, where only large shapes and colors survive.

Direction convention: "left" means the face is turned towards the image's
left edge (the viewer's left): nose, mouth and chin move left, the left eye
is foreshortened, and more hair shows on the right.  "right" is the mirror.

Determinism: everything comes from ``np.random.default_rng([index, _SEED])``;
the same index gives the same bytes on any machine with the same NumPy and
Pillow versions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

FACE_SIZE = 96
_SS = 4  # supersampling factor: draw at 384x384, shrink for antialiasing
_S = FACE_SIZE * _SS
_SEED = 0x5EEDFACE

_HAIR = {
    "black": (42, 40, 52), "brown": (125, 75, 42), "blonde": (244, 210, 110),
    "red": (205, 48, 40), "pink": (248, 140, 185), "blue": (55, 100, 215),
    "silver": (200, 205, 218), "green": (65, 165, 80), "purple": (135, 75, 190),
    "orange": (245, 135, 35),
}
_EYES = {
    "blue": (45, 115, 230), "green": (35, 165, 75), "red": (210, 35, 50),
    "brown": (135, 80, 40), "purple": (150, 70, 210), "gold": (235, 170, 25),
}
_SKIN = {
    "fair": (255, 238, 228), "light": (250, 218, 190),
    "tan": (222, 172, 128), "dark": (145, 98, 68),
}
_BACKGROUND = {
    "white": (245, 245, 245), "cream": (250, 236, 205), "pink": (250, 205, 218),
    "sky": (170, 210, 245), "mint": (185, 235, 200), "lavender": (212, 196, 240),
    "gray": (140, 140, 148), "navy": (35, 45, 90),
}

FACTORS: dict[str, tuple[str, ...]] = {
    "hair": tuple(_HAIR),
    "hair_length": ("short", "medium", "long"),
    "fringe": ("straight", "parted", "swept", "spiky"),
    "eyes": tuple(_EYES),
    "skin": tuple(_SKIN),
    "direction": ("left", "front", "right"),
    "mouth": ("smile", "open", "neutral", "o"),
    "background": tuple(_BACKGROUND),
}

_YAW = {"left": -1.0, "front": 0.0, "right": 1.0}


def _rng(index: int) -> np.random.Generator:
    if index < 0:
        raise ValueError(f"face index must be >= 0, got {index}")
    return np.random.default_rng([int(index), _SEED])


def _draw_factors(rng: np.random.Generator) -> dict[str, str]:
    # Uniform and independent per factor, so factor-conditional means are clean.
    return {name: values[int(rng.integers(len(values)))] for name, values in FACTORS.items()}


def face_factors(index: int) -> dict[str, str]:
    """Labels of face ``index`` without drawing it (cheap; used to build label tables)."""
    return _draw_factors(_rng(index))


def _shade(rgb, k: float) -> tuple[int, int, int]:
    """k < 0 darkens towards black, k > 0 lightens towards white."""
    if k < 0:
        return tuple(min(255, max(0, round(c * (1 + k)))) for c in rgb)
    return tuple(min(255, max(0, round(c + (255 - c) * k))) for c in rgb)


def _jitter_color(rng: np.random.Generator, rgb, brightness: float, channel: float):
    c = np.asarray(rgb, dtype=float) * rng.uniform(1 - brightness, 1 + brightness)
    c += rng.uniform(-channel, channel, 3)
    return tuple(int(v) for v in np.clip(np.rint(c), 0, 255))


@dataclass(frozen=True)
class _Head:
    """Head pose: one cylinder model serves all three directions.

    A feature at angle ``theta`` around the head's vertical axis projects to
    ``x = cx + r*sin(theta + yaw)``; yaw < 0 turns the face to the image's left.
    """

    cx: float
    cy: float
    R: float  # cranium radius (pixels on the supersampled canvas)
    yaw: float

    def x(self, theta: float, r: float | None = None) -> float:
        a = min(max(theta + self.yaw, -math.pi / 2), math.pi / 2)
        return self.cx + (self.R if r is None else r) * math.sin(a)

    def squash(self, theta: float) -> float:
        """Horizontal foreshortening of a feature at ``theta``."""
        return max(0.4, math.cos(theta + self.yaw) / math.cos(theta))

    def y(self, v: float) -> float:
        return self.cy + v * self.R


def _face_outline(h: _Head) -> list[tuple[float, float]]:
    """Cranium top, then cheeks narrowing to a chin that slides with the yaw."""
    W, sy = 0.9 * h.R, math.sin(h.yaw)
    top = [(h.cx + h.R * math.cos(a), h.cy + h.R * math.sin(a))
           for a in np.linspace(math.pi, 2 * math.pi, 16)]
    sides = []
    for s in (1, -1):
        vs = np.linspace(0, 1, 8) if s == 1 else np.linspace(1, 0, 8)
        for v in vs:
            rho = W * (1 - 0.8 * v ** 1.8)
            sides.append((h.cx + s * rho + sy * W * 0.85 * v ** 1.5, h.y(0.3 + 0.75 * v)))
        if s == 1:
            sides.append((h.cx + sy * W * 0.9, h.y(1.1)))
    return top + [(h.cx + h.R, h.cy)] + sides + [(h.cx - h.R, h.cy)]


def _fringe_edge(h: _Head, style: str, rng: np.random.Generator) -> list[tuple[float, float]]:
    """Lower edge of the fringe, left to right: alternating valleys and strand tips.

    Styles differ only in the baseline height, strand count, tip length and slant.
    """
    if style == "straight":
        n, tip, base, slant = int(rng.integers(8, 12)), 0.13, (lambda t: -0.2), (lambda t: 0.0)
    elif style == "parted":
        p = rng.uniform(-0.35, 0.35)
        n, tip = int(rng.integers(6, 9)), 0.28
        base = lambda t: -0.68 + 0.72 * min(1.0, abs(t - p) / 0.9) ** 0.8  # noqa: E731
        slant = lambda t: 0.09 * math.copysign(1.0, t - p)  # noqa: E731
    elif style == "swept":
        d = rng.choice((-1.0, 1.0))
        n, tip = int(rng.integers(5, 8)), 0.3
        base = lambda t: -0.55 + 0.4 * (d * t + 1) / 2  # noqa: E731
        slant = lambda t: 0.14 * d  # noqa: E731
    else:  # spiky
        n, tip, base = int(rng.integers(5, 8)), 0.45, (lambda t: -0.5)
        slant = lambda t: rng.uniform(-0.05, 0.05)  # noqa: E731
    # The fringe always spans the visible forehead; only its pattern turns with the head.
    pts, r, turn = [], 1.04 * h.R, h.yaw / 1.45
    for k in range(n + 1):
        t = -1 + 2 * k / n
        pts.append((h.cx + r * math.sin(1.45 * t), h.y(base(t - turn))))
        if k < n:
            tt = t + 1 / n + slant(t - turn)
            depth = tip * rng.uniform(0.75, 1.2)
            pts.append((h.cx + r * math.sin(1.45 * tt), h.y(base(tt - turn) + depth)))
    return pts


def _tips(x0, x1, y_top, y_tip, n, rng) -> list[tuple[float, float]]:
    """Zigzag from (x0, y_top) to (x1, y_top) with ``n`` pointed strand tips hanging to ~y_tip."""
    pts = []
    for k in range(n):
        a, b = x0 + (x1 - x0) * k / n, x0 + (x1 - x0) * (k + 1) / n
        pts += [(a, y_top), ((a + b) / 2, y_top + (y_tip - y_top) * rng.uniform(0.8, 1.1))]
    return pts + [(x1, y_top)]


def _side_lock(h: _Head, s: int, length: str, rng) -> list[tuple[float, float]]:
    """A lock of hair beside the face on side ``s`` (-1 left, +1 right), ending in strand tips."""
    # Locks sit at the side of the head: they follow only part of the turn.
    R, x_out = h.R, h.cx + s * 1.02 * h.R
    x_in = h.cx + h.R * math.sin(s * 1.08 + 0.4 * h.yaw)
    if length == "long":
        y_end, y_tip, spread, n = _S * 1.05, _S * 1.12, 0.25 * R, 3
    else:
        y_end = h.y(0.45 if length == "short" else 0.9)
        y_tip, spread, n = y_end + 0.35 * R, -0.2 * abs(x_out - x_in), 2
    top = h.y(-0.2)
    x_in_end, x_out_end = x_in - s * 0.1 * R + s * spread, x_out + s * spread
    return ([(x_in, top), (x_out, top), (x_out + s * 0.08 * R, (top + y_end) / 2)]
            + _tips(x_out_end, x_in_end, y_end, y_tip, n, rng)
            + [(x_in - s * 0.08 * R, (top + y_end) / 2)])


def _back_hair(h: _Head, length: str, rng) -> list[tuple[float, float]]:
    """Hair behind the head; the mass shifts away from the direction faced."""
    cx, R = h.cx - math.sin(h.yaw) * 0.35 * h.R, 1.14 * h.R
    top = [(cx + R * math.cos(a), h.cy + R * math.sin(a))
           for a in np.linspace(math.pi, 2 * math.pi, 16)]
    if length == "short":
        return top + _tips(cx + R, cx - R, h.y(0.3), h.y(0.7), 4, rng)
    bottom, spread = (h.y(0.95), 1.2) if length == "medium" else (_S * 1.05, 1.45)
    return top + [(cx + R, h.y(0.3))] + _tips(cx + spread * h.R, cx - spread * h.R, bottom,
                                              bottom + 0.3 * h.R, 5, rng) + [(cx - R, h.y(0.3))]


def _eye(draw: ImageDraw.ImageDraw, ex, ey, ew, eh, look, iris_rgb, line_rgb):
    """Anime eye: white, iris darker at the top, pupil, highlights, heavy upper lash."""
    draw.ellipse((ex - ew, ey - 0.9 * eh, ex + ew, ey + eh), fill=(255, 255, 255))
    ix, iy, iw, ih = ex + look * 0.2 * ew, ey + 0.05 * eh, 0.66 * ew, 0.86 * eh
    draw.ellipse((ix - iw, iy - ih, ix + iw, iy + ih), fill=_shade(iris_rgb, -0.55))
    draw.ellipse((ix - 0.85 * iw, iy - 0.3 * ih, ix + 0.85 * iw, iy + 0.95 * ih), fill=iris_rgb)
    draw.ellipse((ix - 0.6 * iw, iy + 0.35 * ih, ix + 0.6 * iw, iy + 0.9 * ih),
                 fill=_shade(iris_rgb, 0.45))
    draw.ellipse((ix - 0.38 * iw, iy - 0.5 * ih, ix + 0.38 * iw, iy + 0.25 * ih),
                 fill=_shade(iris_rgb, -0.8))
    hx, hy, hr = ix - 0.35 * iw, iy - 0.38 * ih, 0.34 * iw
    draw.ellipse((hx - hr, hy - hr, hx + hr, hy + hr), fill=(255, 255, 255))
    hx, hy, hr = ix + 0.35 * iw, iy + 0.45 * ih, 0.15 * iw
    draw.ellipse((hx - hr, hy - hr, hx + hr, hy + hr), fill=(255, 255, 255))
    lash = max(3, int(0.28 * eh))
    draw.arc((ex - 1.08 * ew, ey - 0.98 * eh, ex + 1.08 * ew, ey + 1.1 * eh), 190, 350,
             fill=line_rgb, width=lash)
    draw.line((ex - 0.5 * ew, ey + 1.02 * eh, ex + 0.5 * ew, ey + 1.02 * eh),
              fill=_shade(line_rgb, 0.3), width=max(2, lash // 3))


def _mouth(draw: ImageDraw.ImageDraw, kind: str, mx, my, R, skin_line):
    w, red = 0.16 * R, (150, 45, 60)
    if kind == "smile":
        draw.arc((mx - w, my - 0.7 * w, mx + w, my + 0.5 * w), 20, 160, fill=skin_line, width=7)
    elif kind == "open":
        draw.chord((mx - w, my - 0.5 * w, mx + w, my + 0.9 * w), 0, 180, fill=red)
        draw.ellipse((mx - 0.55 * w, my + 0.2 * w, mx + 0.55 * w, my + 0.75 * w),
                     fill=(235, 120, 130))
    elif kind == "neutral":
        draw.line((mx - 0.6 * w, my, mx + 0.6 * w, my), fill=skin_line, width=7)
    else:  # small 'o'
        r = 0.4 * w
        draw.ellipse((mx - r, my - 1.2 * r, mx + r, my + 1.2 * r), fill=red)


def _background(rgb, rng: np.random.Generator) -> Image.Image:
    """Plain, or a gentle vertical gradient (darker or lighter towards the bottom)."""
    g = rng.uniform(-0.12, 0.12) if rng.uniform() < 0.6 else 0.0
    ramp = 1 + g * np.linspace(-1, 1, _S)[:, None, None]
    column = np.clip(np.asarray(rgb, float)[None, None, :] * ramp, 0, 255).astype(np.uint8)
    return Image.fromarray(column).resize((_S, _S), Image.NEAREST)


def _features(draw, h: _Head, f: dict[str, str], rng, skin, iris, hair_dark) -> None:
    """Blush, eyebrows, eyes, nose and mouth, all placed through the head's yaw."""
    u, skin_line = rng.uniform, _shade(skin, -0.5)
    eye_theta, ey = u(0.44, 0.54), h.y(u(0.3, 0.38))
    ew0, eh = h.R * u(0.25, 0.3), h.R * u(0.24, 0.3)
    if u() < 0.5:
        blush = _shade(tuple((a + b) // 2 for a, b in zip(skin, (250, 120, 140))), 0.1)
        for s in (-1, 1):
            bx, by, br = h.x(s * (eye_theta + 0.08), 0.9 * h.R), ey + 1.25 * eh, 0.13 * h.R
            draw.ellipse((bx - br, by - 0.5 * br, bx + br, by + 0.5 * br), fill=blush)
    for s in (-1, 1):
        ex, ew = h.x(s * eye_theta, 0.9 * h.R), ew0 * h.squash(s * eye_theta)
        draw.arc((ex - ew, ey - 2.3 * eh, ex + ew, ey - 0.9 * eh), 210, 330, fill=hair_dark, width=4)
        _eye(draw, ex, ey, ew, eh, math.sin(h.yaw), iris, (40, 25, 30))
    nose_x = h.x(0.0, 0.95 * h.R)
    draw.line((nose_x, h.y(0.68), nose_x - 0.03 * h.R * (1 + 2 * math.sin(h.yaw)), h.y(0.73)),
              fill=skin_line, width=4)
    _mouth(draw, f["mouth"], h.x(0.0, 0.85 * h.R), h.y(u(0.87, 0.93)), h.R, skin_line)


def _shaded_hair(img: Image.Image, h: _Head, poly, edge, hair) -> None:
    """Fill the cap+fringe polygon with strand lines and a jagged highlight band."""
    rows = min(_S, int(max(y for _, y in poly)) + 2)  # the layer is only as tall as the hair
    mask = Image.new("L", (_S, rows), 0)
    ImageDraw.Draw(mask).polygon(poly, fill=255)
    layer = Image.new("RGB", (_S, rows), hair)
    ld = ImageDraw.Draw(layer)
    hc, yc = h.x(0.0, 0.4 * h.R), h.y(-0.05)
    band = [(hc + 0.84 * h.R * math.cos(a), yc + 0.84 * h.R * math.sin(a))
            for a in np.linspace(-2.6, -0.54, 10)]
    for k, a in enumerate(np.linspace(-0.54, -2.6, 15)):
        rr = h.R * (0.7 if k % 2 else 0.6)
        band.append((hc + rr * math.cos(a), yc + rr * math.sin(a)))
    ld.polygon(band, fill=_shade(hair, 0.5))
    crown = (h.x(0.0, 0.3 * h.R), h.y(-1.1))
    for tip in edge[1::2]:
        ld.line((crown, tip), fill=_shade(hair, -0.25), width=5)
    img.paste(layer, (0, 0), mask)


def generate_face(index: int) -> tuple[np.ndarray, dict[str, str]]:
    """(96, 96, 3) uint8 RGB image and its factors; the same index always gives the same image, on any machine."""
    rng = _rng(index)
    f = _draw_factors(rng)
    u = rng.uniform
    yaw = _YAW[f["direction"]] * u(0.45, 0.6) + u(-0.04, 0.04)
    h = _Head(cx=_S * u(0.46, 0.54), cy=_S * u(0.4, 0.46), R=_S * u(0.37, 0.42), yaw=yaw)
    hair = _jitter_color(rng, _HAIR[f["hair"]], 0.1, 14)
    skin = _jitter_color(rng, _SKIN[f["skin"]], 0.04, 5)
    iris = _jitter_color(rng, _EYES[f["eyes"]], 0.1, 12)
    cloth = tuple(int(v) for v in rng.integers(30, 230, 3))
    hair_dark = _shade(hair, -0.5)
    skin_shadow = tuple(int(c * k) for c, k in zip(skin, (0.92, 0.8, 0.8)))
    lw = _SS  # outline width: one output pixel

    img = _background(_jitter_color(rng, _BACKGROUND[f["background"]], 0.05, 8), rng)
    draw = ImageDraw.Draw(img)
    draw.polygon(_back_hair(h, f["hair_length"], rng), fill=_shade(hair, -0.2),
                 outline=hair_dark, width=lw)
    nx = h.x(0.0, 0.25 * h.R)  # neck and shoulders turn a little with the head
    draw.ellipse((nx - 1.7 * h.R, h.y(1.28), nx + 1.7 * h.R, h.y(3.0)), fill=cloth,
                 outline=_shade(cloth, -0.4), width=lw)
    draw.rectangle((nx - 0.2 * h.R, h.y(0.6), nx + 0.2 * h.R, h.y(1.35)), fill=skin_shadow)
    draw.polygon([(nx - 0.2 * h.R, h.y(1.3)), (nx + 0.2 * h.R, h.y(1.3)), (nx, h.y(1.6))],
                 fill=skin_shadow)
    draw.polygon(_face_outline(h), fill=skin, outline=_shade(skin, -0.5), width=lw)

    # Cap over the cranium, then the fringe edge back across; its shadow falls on the face.
    edge = _fringe_edge(h, f["fringe"], rng)
    r = 1.07 * h.R
    cap = [(h.cx + r * math.cos(a), h.cy + r * math.sin(a)) for a in np.linspace(0, -math.pi, 20)]
    hair_poly = [(h.cx - r, h.y(0.1))] + edge + [(h.cx + r, h.y(0.1))] + cap
    lo, hi = h.cx - 0.92 * h.R, h.cx + 0.92 * h.R  # keep the shadow inside the face
    draw.polygon([(min(max(x, lo), hi), y + 0.07 * h.R) for x, y in hair_poly], fill=skin_shadow)

    _features(draw, h, f, rng, skin, iris, hair_dark)
    for s in (-1, 1):
        draw.polygon(_side_lock(h, s, f["hair_length"], rng), fill=hair, outline=hair_dark, width=lw)
    _shaded_hair(img, h, hair_poly, edge, hair)
    draw.line(hair_poly + hair_poly[:1], fill=hair_dark, width=lw, joint="curve")

    small = img.reduce(_SS)  # box filter: each output pixel averages a 4x4 block
    return np.asarray(small, dtype=np.uint8).copy(), f
