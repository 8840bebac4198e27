"""A small PNG reader (stdlib zlib + numpy), so exported images can be checked without Pillow."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from jaxtyping import UInt8

from ..errors import WorkbenchError

_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}  # greyscale, RGB, grey+alpha, RGBA


def _paeth_row(line: bytearray, prev: bytes, bpp: int) -> None:
    for i in range(len(line)):
        a = line[i - bpp] if i >= bpp else 0
        b = prev[i]
        c = prev[i - bpp] if i >= bpp else 0
        p = a + b - c
        pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
        pred = a if pa <= pb and pa <= pc else b if pb <= pc else c
        line[i] = (line[i] + pred) & 0xFF


def read_png(path: str | Path) -> UInt8[np.ndarray, "height width channels"]:
    """Pixels of an 8-bit, non-interlaced greyscale/RGB(A) PNG as ``[height, width, channels]`` uint8."""
    data = Path(path).read_bytes()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise WorkbenchError(f"{path}: not a PNG file")
    pos, idat, header = 8, [], None
    while pos + 8 <= len(data):
        (n,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + n]
        pos += 12 + n
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
    if header is None:
        raise WorkbenchError(f"{path}: PNG without IHDR")
    width, height, depth, colour, _, _, interlace = header
    if depth != 8 or colour not in _CHANNELS or interlace:
        raise WorkbenchError(f"{path}: only 8-bit non-interlaced grey/RGB(A) PNGs are supported")
    bpp = _CHANNELS[colour]
    raw = zlib.decompress(b"".join(idat))
    stride = width * bpp
    out = np.zeros((height, stride), dtype=np.uint8)
    prev = np.zeros(stride, dtype=np.uint8)
    for y in range(height):
        kind = raw[y * (stride + 1)]
        row = np.frombuffer(raw, dtype=np.uint8, count=stride, offset=y * (stride + 1) + 1).copy()
        if kind == 1:  # Sub: running sum along each channel, mod 256
            row = row.reshape(width, bpp).cumsum(0, dtype=np.uint8).reshape(-1)
        elif kind == 2:  # Up
            row = row + prev
        elif kind == 3:  # Average
            line = bytearray(row.tobytes())
            up = prev.tobytes()
            for i in range(stride):
                left = line[i - bpp] if i >= bpp else 0
                line[i] = (line[i] + ((left + up[i]) >> 1)) & 0xFF
            row = np.frombuffer(bytes(line), dtype=np.uint8)
        elif kind == 4:  # Paeth
            line = bytearray(row.tobytes())
            _paeth_row(line, prev.tobytes(), bpp)
            row = np.frombuffer(bytes(line), dtype=np.uint8)
        elif kind != 0:
            raise WorkbenchError(f"{path}: unknown PNG filter {kind} in row {y}")
        out[y] = row
        prev = row
    return out.reshape(height, width, bpp)


def distinct_colours(pixels: UInt8[np.ndarray, "height width channels"]) -> int:
    """Number of distinct pixel values: a blank page has one or two, a drawn figure dozens or more."""
    flat = pixels.reshape(-1, pixels.shape[-1])
    return int(np.unique(flat, axis=0).shape[0])
