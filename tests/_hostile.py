"""Hostile image files for the reliability tests: odd modes that must be used, broken files
that must be skipped, a real decompression bomb. Shared by test_datacheck and test_reliability."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

# Valid images in unusual modes: training must use them, converted to RGB.
ODD_VALID = ("cmyk.jpg", "grey16.png", "rgba.png", "palette_transparent.png", "onebit.png",
             "one_pixel.png", "exif_rotated.jpg")
# Files that cannot be decoded: training must skip and list them.
BROKEN = ("empty.jpg", "truncated.png", "truncated.jpg", "html.png")


def _photo(seed: int, size: int = 48) -> np.ndarray:
    """A smooth random picture (so JPEG and PNG encoders produce real streams)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC))


def write_odd_valid(folder: Path, seed: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rgb = _photo(seed)
    Image.fromarray(rgb).convert("CMYK").save(folder / "cmyk.jpg", quality=95)
    ramp = (np.arange(48 * 48, dtype=np.uint32).reshape(48, 48) % 4096).astype(np.uint16)
    Image.fromarray(ramp).save(folder / "grey16.png")  # 12-bit values in a 16-bit PNG
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 128, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(folder / "rgba.png")
    pal = Image.fromarray(rgb).quantize(16)
    pal.save(folder / "palette_transparent.png", transparency=0)
    Image.fromarray(rgb).convert("1").save(folder / "onebit.png")
    Image.new("RGB", (1, 1), (200, 10, 10)).save(folder / "one_pixel.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    Image.fromarray(rgb[:, :32]).transpose(Image.Transpose.ROTATE_90).save(
        folder / "exif_rotated.jpg", exif=exif, quality=95)
    return [folder / n for n in ODD_VALID]


def write_broken(folder: Path, seed: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "empty.jpg").write_bytes(b"")
    Image.fromarray(_photo(seed + 1)).save(folder / "full.png")
    data = (folder / "full.png").read_bytes()
    (folder / "truncated.png").write_bytes(data[: len(data) // 2])
    (folder / "full.png").unlink()
    Image.fromarray(_photo(seed + 2)).save(folder / "full.jpg", quality=90)
    data = (folder / "full.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (folder / "full.jpg").unlink()
    (folder / "html.png").write_text("<!DOCTYPE html><html><body>404 Not Found</body></html>")
    return [folder / n for n in BROKEN]


def write_bomb(path: Path, side: int = 20_000) -> Path:
    """A complete, valid 1-bit PNG of side x side pixels (1.2 GB once decoded to RGB) in a
    few tens of KB: IHDR, one zlib stream of all-zero rows written row by row, IEND."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte + packed bits
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1-bit greyscale
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat)
                     + chunk(b"IEND", b""))
    return path
