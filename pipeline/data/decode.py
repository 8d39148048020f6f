"""Decoding one image file the way training reads it, and checking many files in parallel.

The scan and the training loop share `open_rgb`: an image the scan accepts is an image training
can decode, because both run the same code to the last pixel (PIL's `verify()` alone checks only
structure, so a PNG with broken compressed data passed it and failed mid-training).
"""
from __future__ import annotations

import hashlib
import io
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from pipeline.data.imageset import DataError

# Fewer files than this are checked in the calling thread: a pool costs more than it saves.
PARALLEL_FROM = 16


class ImageReadError(DataError):
    """An image that passed the scan cannot be decoded when it is used (it changed since).

    A DataLoader worker's exception reaches the main process rebuilt from its formatted
    traceback; the constructor keeps only the original message, so the CLI still prints one line.
    """

    def __init__(self, message: str):
        if message.startswith("Caught ") and "Traceback" in message:
            last = message.rstrip().splitlines()[-1]
            message = last.split(": ", 1)[1] if ": " in last else last
        super().__init__(message)


def to_rgb(im):
    """Any PIL mode as RGB: transparency flattened onto black, 16-bit gray scaled, not clipped."""
    from PIL import Image
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im, dtype=np.float64)
        if arr.max() > 255:
            arr = arr / 257.0
        im = Image.fromarray(np.clip(np.round(arr), 0, 255).astype(np.uint8))
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba).convert("RGB")
    return im.convert("RGB")


def decode_rgb(source):
    """The image in `source` (a path or a binary file object) fully decoded as RGB, EXIF
    orientation applied so phone photos stand upright."""
    from PIL import Image, ImageOps
    with Image.open(source) as im:
        return to_rgb(ImageOps.exif_transpose(im))


# What the scan learns about one file: (sha256 of the bytes, why it cannot be read or None,
# sha256 of the decoded pixels, 64-bit perceptual hash); the last two are "" when unreadable.
Check = tuple[str, "str | None", str, str]


def check_image(data: bytes) -> tuple[str | None, str, str]:
    """(why these bytes are not a readable image or None, pixel digest, perceptual hash).

    `verify()` checks structure (PNG chunk CRCs, headers); a fresh open then decodes every pixel,
    which finds what `verify()` cannot: truncated JPEGs, broken PNG compressed data. A PNG whose
    compressed data ends cleanly before its last row decodes without an error (the rest black),
    so its rows are counted too. The two fingerprints come from the decoded image (see
    `perceptual`): the audit finds copies by them.
    """
    from PIL import Image
    from pipeline.data.perceptual import perceptual_hash, pixel_digest
    from pipeline.data.png_rows import missing_rows
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.verify()
        rgb = decode_rgb(io.BytesIO(data))
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, struct.error, zlib.error, ...
        return f"{type(e).__name__}: {e}".strip(), "", ""
    short = missing_rows(data)
    if short:
        return short, "", ""
    return None, pixel_digest(rgb), perceptual_hash(rgb)


def check_file(path: str | Path) -> Check:
    """(sha256 of the bytes, why they are not a readable image or None, pixel digest, perceptual
    hash)."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        return "", f"{type(e).__name__}: {e}", "", ""
    return (hashlib.sha256(data).hexdigest(), *check_image(data))


def workers() -> int:
    """Threads for checking images: PIL decodes and hashlib hashes with the GIL released."""
    return max(1, min(8, os.cpu_count() or 1))


def iter_checks(paths: Sequence[str]) -> Iterator[Check]:
    """`check_file` of every path, in order, on a thread pool when there are enough of them."""
    if len(paths) < PARALLEL_FROM or workers() == 1:
        yield from map(check_file, paths)
        return
    with ThreadPoolExecutor(max_workers=workers(), thread_name_prefix="edgeship-scan") as pool:
        yield from pool.map(check_file, paths)
