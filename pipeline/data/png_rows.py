"""Whether a PNG's compressed data holds every row its header promises.

A PNG cut off mid-upload and closed again (valid chunk CRCs and IEND, as some tools leave it), or
written by a tool that stopped early, can carry a zlib stream that ends cleanly after a few
rows. Pillow then decodes it without an error and fills the missing rows with black, and
training learns from the filler. Inflating the IDAT data and comparing its length with what the
header's size, bit depth, colour type and interlacing need finds it; it costs one inflate.
"""
from __future__ import annotations

import struct
import zlib

SIGNATURE = b"\x89PNG\r\n\x1a\n"
_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}          # colour type -> samples per pixel
# Adam7 passes: (x start, y start, x step, y step)
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


def _raw_size(width: int, height: int, bits: int, interlaced: bool) -> int:
    """Bytes the inflated data must hold: per row a filter byte and the row's packed samples."""
    def rows(w: int, h: int) -> int:
        return 0 if w == 0 or h == 0 else h * (1 + (w * bits + 7) // 8)
    if not interlaced:
        return rows(width, height)
    return sum(rows((width - x0 + dx - 1) // dx if width > x0 else 0,
                    (height - y0 + dy - 1) // dy if height > y0 else 0)
               for x0, y0, dx, dy in _ADAM7)


def missing_rows(data: bytes) -> str | None:
    """Why the PNG in `data` holds fewer pixel rows than its header says, or None (also None for
    what is not a PNG, or is broken in a way the decoder itself reports)."""
    if not data.startswith(SIGNATURE):
        return None
    pos, header, idat = len(SIGNATURE), None, []
    while pos + 8 <= len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        if kind == b"IHDR" and len(body) >= 13:
            header = struct.unpack(">IIBBBBB", body[:13])
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
        pos += 12 + n
    if header is None or not idat:
        return None
    width, height, depth, colour, _, _, interlace = header
    if colour not in _CHANNELS:
        return None
    need = _raw_size(width, height, depth * _CHANNELS[colour], interlace == 1)
    try:
        # max_length: inflating stops at what the rows need, whatever the stream claims to hold
        got = len(zlib.decompressobj().decompress(b"".join(idat), need))
    except zlib.error:
        return None                       # broken compressed data: the decoder names it itself
    if got >= need:
        return None
    row = 1 + (width * depth * _CHANNELS[colour] + 7) // 8
    held = (f"{got // row} of its {height} rows" if not interlace
            else f"{got} of the {need} bytes its rows need")
    return (f"PNG data ends after {held} (the file was cut short; the decoder would fill the rest "
            f"with black)")
