"""Digits rendered from fonts: a labelled synthetic source domain (Syn Numbers -> real digits).

Each image comes from its own generator seeded by (seed, index), so image i never depends on
any other image, on access order, or on the process that renders it. The fonts are the
TrueType files matplotlib ships (DejaVu, STIX, Computer Modern), a fixed set wherever the
package is installed; fonts whose digit code points do not map to digit glyphs are left out.
"""
from __future__ import annotations

import hashlib
import importlib.util
import random
from functools import lru_cache
from pathlib import Path

import numpy as np

from calibration.hashing import sha256_file
from pipeline.config import DataSpec
from pipeline.data.imageset import (DataError, ImageSet, Splits, derive_seed, split_fingerprint,
                                    stratified_split)
from pipeline.hashing import sha256_json

RENDER_VERSION = 1           # bump when the renderer's output changes
SIZE = 32                    # output side
CANVAS = 3 * SIZE            # drawn larger, then reduced: anti-aliased edges
GLYPH_PX = 96                # font size glyph masks are drawn at
CLASSES = [str(d) for d in range(10)]
_DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_PROBE = 50                  # images rendered into the fingerprint, to catch renderer drift


def font_dir() -> Path:
    """matplotlib's bundled TrueType folder, found without importing matplotlib."""
    spec = importlib.util.find_spec("matplotlib")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("synthetic-digits renders with matplotlib's bundled fonts, and matplotlib "
                        "is not installed: pip install matplotlib")
    return Path(list(spec.submodule_search_locations)[0]) / "mpl-data" / "fonts" / "ttf"


@lru_cache(maxsize=1)
def digit_fonts() -> tuple[str, ...]:
    """Paths of the bundled fonts whose '0'..'9' map to glyphs named zero..nine.

    Checking glyph names (not just presence in the character map) drops fonts that map the
    digit code points to other shapes: symbol fonts (cmsy10, cmex10) and LastResort.
    """
    from fontTools.ttLib import TTFont
    found = []
    for path in sorted(font_dir().glob("*.ttf")):
        with TTFont(str(path), lazy=True) as font:
            cmap = font.getBestCmap() or {}
        names = [cmap.get(ord(str(d)), "") for d in range(10)]
        if all(n.startswith(word) for n, word in zip(names, _DIGIT_NAMES)):
            found.append(str(path))
    if not found:
        raise DataError(f"no font with digit glyphs in {font_dir()} (matplotlib's fonts); "
                        "reinstall matplotlib")
    return tuple(found)


@lru_cache(maxsize=64)
def _font(path: str):
    from PIL import ImageFont
    return ImageFont.truetype(path, GLYPH_PX)


@lru_cache(maxsize=4096)
def _glyph(path: str, digit: int, stroke: int) -> np.ndarray:
    """Tightly cropped coverage mask (float32 0..1) of one digit in one font and stroke width."""
    from PIL import Image, ImageDraw
    font, text = _font(path), str(digit)
    left, top, right, bottom = font.getbbox(text, stroke_width=stroke)
    img = Image.new("L", (right - left + 4, bottom - top + 4), 0)
    ImageDraw.Draw(img).text((2 - left, 2 - top), text, fill=255, font=font,
                             stroke_width=stroke, stroke_fill=255)
    return np.asarray(img, dtype=np.float32) / 255.0


def _luma(rgb) -> float:
    return 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]


def _colours(rng: random.Random) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ink, background and second background colour; both backgrounds 90+ luma levels from the ink."""
    gray = rng.random() < 0.3
    def pick():
        if gray:
            v = rng.randrange(256)
            return (v, v, v)
        return tuple(rng.randrange(256) for _ in range(3))
    while True:
        ink, bg, bg2 = pick(), pick(), pick()
        d1, d2 = _luma(bg) - _luma(ink), _luma(bg2) - _luma(ink)
        # Both backgrounds on the same side of the ink: a gradient never crosses the ink's luma.
        if min(abs(d1), abs(d2)) >= 90 and d1 * d2 > 0:
            return (np.asarray(ink, np.float32), np.asarray(bg, np.float32),
                    np.asarray(bg2, np.float32))


def _background(rng: random.Random, noise: np.random.Generator, bg, bg2) -> np.ndarray:
    """CANVAS x CANVAS x 3 float background: solid, linear gradient, or smooth noise."""
    kind = rng.choice(("solid", "gradient", "noise"))
    out = np.broadcast_to(bg, (CANVAS, CANVAS, 3)).astype(np.float32)
    if kind == "gradient":
        angle = rng.uniform(0, 2 * np.pi)
        yy, xx = np.mgrid[0:CANVAS, 0:CANVAS].astype(np.float32) / (CANVAS - 1) - 0.5
        t = np.clip(xx * np.cos(angle) + yy * np.sin(angle) + 0.5, 0, 1)[..., None]
        out = bg * (1 - t) + bg2 * t
    elif kind == "noise":
        from PIL import Image
        cells = rng.choice((3, 4, 6, 8))
        coarse = noise.normal(0.0, 1.0, (cells, cells)).astype(np.float32)
        lo, hi = coarse.min(), coarse.max()
        coarse = ((coarse - lo) / max(hi - lo, 1e-6) * 255).astype(np.uint8)
        smooth = np.asarray(Image.fromarray(coarse).resize((CANVAS, CANVAS), Image.Resampling.BICUBIC),
                            np.float32)[..., None] / 255.0
        out = bg * (1 - smooth * 0.6) + bg2 * (smooth * 0.6)
    return out


def _place(mask: np.ndarray, glyph: np.ndarray, matrix: np.ndarray, centre: tuple[float, float]) -> None:
    """Max-composite `glyph` into `mask` under the affine `matrix` (glyph space -> canvas)."""
    from PIL import Image
    inv = np.linalg.inv(matrix)
    gh, gw = glyph.shape
    cx, cy = centre
    ox = gw / 2 - inv[0, 0] * cx - inv[0, 1] * cy
    oy = gh / 2 - inv[1, 0] * cx - inv[1, 1] * cy
    data = (inv[0, 0], inv[0, 1], ox, inv[1, 0], inv[1, 1], oy)
    src = Image.fromarray(glyph)
    warped = src.transform((CANVAS, CANVAS), Image.Transform.AFFINE, data, Image.Resampling.BILINEAR)
    np.maximum(mask, np.asarray(warped, np.float32), out=mask)


def render_digit(seed: int, index: int):
    """The `index`-th synthetic image of `seed`: a 32x32 RGB PIL image of digit `index % 10`."""
    from PIL import Image, ImageFilter
    rng = random.Random(derive_seed("synthetic-digits", RENDER_VERSION, seed, index))
    noise = np.random.default_rng(rng.getrandbits(64))
    digit, fonts = index % 10, digit_fonts()
    font = rng.choice(fonts)
    stroke = rng.choice((0, 0, 0, 2, 4, 6))
    ink, bg, bg2 = _colours(rng)
    canvas = _background(rng, noise, bg, bg2)

    glyph = _glyph(font, digit, stroke)
    scale = CANVAS * rng.uniform(0.5, 0.85) / glyph.shape[0]
    angle = np.deg2rad(rng.uniform(-20, 20))
    shear = rng.uniform(-0.3, 0.3)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    matrix = rot @ np.array([[1.0, shear], [0.0, 1.0]]) @ np.diag([scale * rng.uniform(0.8, 1.2), scale])
    centre = np.array([CANVAS / 2 + rng.uniform(-0.08, 0.08) * CANVAS,
                       CANVAS / 2 + rng.uniform(-0.08, 0.08) * CANVAS])
    mask = np.zeros((CANVAS, CANVAS), np.float32)
    _place(mask, glyph, matrix, tuple(centre))
    # Neighbouring digits cut by the frame, as in house numbers and Syn Numbers.
    for side in (-1, 1):
        if rng.random() < 0.15:
            other = _glyph(font, rng.randrange(10), stroke)
            gap = (glyph.shape[1] + other.shape[1]) / 2 + rng.uniform(0.05, 0.25) * glyph.shape[1]
            shift = matrix @ np.array([side * gap, (glyph.shape[0] - other.shape[0]) / 2])
            _place(mask, other, matrix, tuple(centre + shift))

    alpha = mask[..., None]
    pixels = canvas * (1 - alpha) + ink * alpha
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    blur = rng.choice((0.0, 0.0, rng.uniform(0.3, 1.5)))
    if blur:
        image = image.filter(ImageFilter.GaussianBlur(blur * CANVAS / SIZE))
    image = image.resize((SIZE, SIZE), Image.Resampling.BOX)
    sigma = rng.choice((0.0, rng.uniform(2, 10)))
    if sigma:
        grain = noise.normal(0.0, sigma, (SIZE, SIZE, 3))
        image = Image.fromarray(np.clip(np.asarray(image, np.float32) + grain, 0, 255).astype(np.uint8))
    return image


class SyntheticImages:
    """Renders (and keeps) the images of one split; picklable for data-loader workers."""

    def __init__(self, seed: int, indices: list[int]):
        self.seed, self.indices = seed, indices
        self._cache: dict[int, object] = {}   # 32x32 RGB: 3 KB each

    def __call__(self, i: int):
        if i not in self._cache:
            self._cache[i] = render_digit(self.seed, self.indices[i])
        return self._cache[i].copy()


def renderer_fingerprint(seed: int) -> dict:
    """What defines the pixels: renderer version, font files, and a probe of rendered images."""
    fonts = [[Path(p).name, sha256_file(p)] for p in digit_fonts()]
    probe = hashlib.sha256()
    for i in range(_PROBE):
        probe.update(render_digit(seed, i).tobytes())
    return {"version": RENDER_VERSION, "seed": seed, "fonts": fonts, "probe": probe.hexdigest()}


def load_synthetic_splits(spec: DataSpec, seed: int) -> Splits:
    """`spec.synthetic_size` rendered digits, balanced over "0".."9", split by val_fraction."""
    size = spec.synthetic_size
    targets = [i % 10 for i in range(size)]
    content = renderer_fingerprint(seed)
    train_pos, val_pos = stratified_split(targets, spec.val_fraction)

    def make(split: str, pos: list[int]) -> ImageSet:
        ids = [f"synthetic-digits:{split}:{i}:seed{seed}" for i in pos]
        tgts = [targets[i] for i in pos]
        return ImageSet(ids=ids, targets=tgts, classes=list(CLASSES),
                        load=SyntheticImages(seed, pos),
                        fingerprint=split_fingerprint(ids, tgts, content))

    train, val = make("train", train_pos), make("val", val_pos)
    fingerprint = sha256_json({"kind": spec.kind.value, "synthetic_size": size,
                               "val_fraction": spec.val_fraction, "content": content,
                               "train": train.fingerprint, "val": val.fingerprint})
    return Splits(train=train, val=val, classes=list(CLASSES), fingerprint=fingerprint)
