"""Two fingerprints of an image's decoded pixels, taken by the scan while it decodes every image.

- `pixel_digest`: sha256 of the RGB pixels and size. Equal digests are the same picture even when
  the files differ (a PNG saved again as a lossless PNG or WebP, metadata stripped, EXIF rotation
  baked in), which the bytes' sha256 cannot see.
- `perceptual_hash`: the 64-bit DCT hash (pHash; Zauner, 2010): the image in gray at 32x32, its
  2-D DCT, and one bit per low-frequency coefficient of the top-left 8x8, set when it is above
  their median. Recompressing, resizing or a light crop moves only a few bits, so near-copies lie
  within a small Hamming distance (see `audit.NEAR_BITS` for the threshold and what it was
  measured on).
"""
from __future__ import annotations

import hashlib

import numpy as np

SIDE = 32          # px of the gray thumbnail the DCT runs on
LOW = 8            # the LOW x LOW lowest frequencies make the 64 bits


def _dct_matrix(n: int) -> np.ndarray:
    """The orthonormal DCT-II matrix: `C @ x` is the DCT of a column vector x."""
    k = np.arange(n)[:, None]
    c = np.sqrt(2.0 / n) * np.cos(np.pi * (2 * np.arange(n)[None, :] + 1) * k / (2 * n))
    c[0] /= np.sqrt(2.0)
    return c


_C = _dct_matrix(SIDE)


def pixel_digest(rgb) -> str:
    """sha256 of a PIL RGB image's size and pixels (hex)."""
    h = hashlib.sha256(f"{rgb.width}x{rgb.height}:".encode())
    h.update(rgb.tobytes())
    return h.hexdigest()


def perceptual_hash(rgb) -> str:
    """The 64-bit DCT hash of a PIL image, as 16 hex digits."""
    from PIL import Image
    # BOX averages every source pixel into the thumbnail, so a 4000 px photo and its 400 px
    # copy give the same 32x32 (a point-sampling resize would alias textures differently).
    gray = np.asarray(rgb.convert("L").resize((SIDE, SIDE), Image.Resampling.BOX), dtype=np.float64)
    low = (_C @ gray @ _C.T)[:LOW, :LOW].ravel()
    bits = low > np.median(low)
    return f"{int(''.join('1' if b else '0' for b in bits), 2):016x}"


_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bits that differ between every hash in `a` [N] and every hash in `b` [M] (uint64): [N, M]."""
    x = np.bitwise_xor(a[:, None], b[None, :])
    return _POPCOUNT[x.view(np.uint8)].reshape(*x.shape, 8).sum(axis=-1, dtype=np.int32)


def close_pairs(a: np.ndarray, b: np.ndarray, max_bits: int, chunk: int = 256
                ) -> list[tuple[int, int, int]]:
    """(i, j, bits) of every a[i], b[j] within `max_bits` of each other; rows in chunks, so ten
    thousand images need megabytes, not gigabytes."""
    out = []
    for start in range(0, len(a), chunk):
        d = hamming(a[start:start + chunk], b)
        for i, j in zip(*np.nonzero(d <= max_bits)):
            out.append((start + int(i), int(j), int(d[i, j])))
    return out


def as_uint64(hashes: list[str]) -> np.ndarray:
    """Hex hashes as a uint64 array (for `hamming`)."""
    return np.array([int(h, 16) for h in hashes], dtype=np.uint64)
