"""Reading an image file into an (H, W, 3) uint8 RGB array: one implementation for all.

Training, evaluation, feature extraction, ``recommend`` and ``predict`` all call
``load_image``, so an image looks the same to the model wherever it is read. What it does,
in order:

1. Refuses zero-byte files, unreadable files and files Pillow cannot identify (an HTML
   error page saved as ``.png`` is the classic case).
2. Reads the size from the header and refuses decompression bombs (more than
   ``MAX_IMAGE_PIXELS`` pixels) before a single pixel is decoded. Pillow's own
   ``DecompressionBombWarning`` is turned into an error for the same reason.
3. Decodes the whole image. A truncated file is an error: Pillow's global
   ``ImageFile.LOAD_TRUNCATED_IMAGES`` is never set, because it would silently feed
   half-grey images to training and change Pillow's behaviour for the whole process.
4. Applies the EXIF orientation (phones store portrait photos sideways with a tag).
5. Converts every mode to RGB (see ``to_rgb``): transparency is composited on white,
   16-bit and float greyscale are stretched to 8 bits by their value range.

Every failure is an ``ImageDecodeError`` whose ``reason`` is short enough to list in a
report ("cannot identify image file", "truncated or corrupt: ...").
"""

from __future__ import annotations

import logging
import threading
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

logger = logging.getLogger("finetune")

# What the data layer treats as an image file (lower-case, compared case-insensitively).
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})

# Pillow's default limit (a 0.25 GB RGB image, about 9,459 x 9,459). Kept as our own
# constant so a library that sets ``Image.MAX_IMAGE_PIXELS = None`` cannot switch it off.
MAX_IMAGE_PIXELS = 89_478_485

# ``warnings.catch_warnings`` swaps a process-wide filter list and is not thread-safe;
# header reads are cheap, so they are serialised while the expensive decode runs in
# parallel (verification decodes in a thread pool).
_OPEN_LOCK = threading.Lock()

_ALPHA_MODES = frozenset({"LA", "La", "PA", "RGBA", "RGBa"})
_HIGH_DEPTH_GREY = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N", "F"})


class ImageDecodeError(ValueError):
    """An image file that cannot be used; ``str(err)`` is ``"<path>: <reason>"``."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def is_image_file(path: str | Path) -> bool:
    """True for a visible file whose extension is an image format we read."""
    path = Path(path)
    return not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS


def load_image(
    path: str | Path, *, max_pixels: int = MAX_IMAGE_PIXELS, draft_size: int | None = None
) -> np.ndarray:
    """Decode ``path`` to an (H, W, 3) uint8 RGB array, or raise ``ImageDecodeError``.

    Mode conversion (``to_rgb``):
      * ``RGB`` as is; ``L``, ``1``, ``P``, ``CMYK``, ``YCbCr``, ``RGBX`` -> RGB by Pillow;
      * anything with transparency (``RGBA``, ``LA``, ``PA``, a palette or greyscale image
        with a ``transparency`` entry) is composited over a WHITE background, so a logo on
        a transparent background looks like the same logo on paper rather than on black;
      * 16-bit and 32-bit greyscale (``I;16``, ``I``, ``F``) are rescaled linearly from
        their min..max range to 0..255 (a 12-bit scan stored as 0..4095 fills the 8-bit
        range instead of being clamped to white); a constant image maps to its value
        scaled from the type's nominal range.

    ``draft_size`` lets a JPEG decode at a reduced scale (1/2 .. 1/8, never below
    ``draft_size`` on either side) at a fraction of the cost; the whole compressed stream
    is still read, so corruption is still detected. Code that feeds a model passes
    ``transforms.jpeg_draft_size(cfg, image_size)`` (twice the resize target, recorded in
    the export's preprocessing), so training, evaluation and prediction see the same
    pixels; ``None`` decodes at full size.
    """
    path = Path(path)
    try:
        nbytes = path.stat().st_size
    except FileNotFoundError:
        raise ImageDecodeError(path, "file not found") from None
    except OSError as err:
        raise ImageDecodeError(path, f"cannot read file ({err.strerror or err})") from None
    if nbytes == 0:
        raise ImageDecodeError(path, "empty file (0 bytes)")

    try:
        with _OPEN_LOCK, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path)
    except UnidentifiedImageError:
        raise ImageDecodeError(path, "cannot identify image file") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageDecodeError(path, f"decompression bomb refused ({err})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise ImageDecodeError(path, f"cannot open image ({_short(err)})") from None

    with image:
        width, height = image.size
        if width * height > max_pixels:
            raise ImageDecodeError(
                path,
                f"decompression bomb refused: {width}x{height} = {width * height:,} pixels "
                f"exceeds the limit of {max_pixels:,}",
            )
        if width == 0 or height == 0:
            raise ImageDecodeError(path, f"image has no pixels ({width}x{height})")
        if draft_size is not None and image.format == "JPEG":
            image.draft("RGB", (draft_size, draft_size))
        try:
            image.load()
        except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as err:
            # Pillow reports truncation as OSError("image file is truncated ...") and
            # corrupt streams as OSError / SyntaxError / zlib ValueError.
            raise ImageDecodeError(path, f"truncated or corrupt: {_short(err)}") from None
        image = apply_exif_orientation(image, path)
        try:
            rgb = to_rgb(image)
        except (OSError, ValueError) as err:
            raise ImageDecodeError(path, f"unsupported image mode {image.mode!r} ({_short(err)})") from None
    return rgb


def _short(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text if len(text) <= 120 else text[:117] + "..."


def apply_exif_orientation(image: Image.Image, path: Path) -> Image.Image:
    try:
        # in_place: no copy of a full-size image when there is nothing to rotate.
        ImageOps.exif_transpose(image, in_place=True)
    except Exception as err:  # a malformed EXIF block must not make a good image unusable
        logger.debug("%s: ignoring unreadable EXIF orientation (%s)", path, err)
    return image


def to_rgb(image: Image.Image) -> np.ndarray:
    mode = image.mode
    if mode == "RGB":
        return np.asarray(image, dtype=np.uint8).copy()
    if mode in _HIGH_DEPTH_GREY:
        return _rescale_high_depth(image)
    if mode in _ALPHA_MODES or "transparency" in image.info:
        return _composite_on_white(np.asarray(image.convert("RGBA"), dtype=np.uint8))
    return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()


def _composite_on_white(rgba: np.ndarray) -> np.ndarray:
    """(H, W, 4) uint8 -> (H, W, 3) uint8: colour * a + white * (1 - a), rounded."""
    alpha = rgba[..., 3:4].astype(np.uint32)
    colour = rgba[..., :3].astype(np.uint32)
    out = (colour * alpha + 255 * (255 - alpha) + 127) // 255
    return out.astype(np.uint8)


def _rescale_high_depth(image: Image.Image) -> np.ndarray:
    values = np.asarray(image).astype(np.float64)  # (H, W); I;16B arrives big-endian, fine
    lo, hi = float(values.min()), float(values.max())
    if hi > lo:
        grey = (values - lo) * (255.0 / (hi - lo))
    else:
        nominal = 65535.0 if image.mode.startswith("I;16") else 255.0
        grey = np.full_like(values, np.clip(hi, 0.0, nominal) * 255.0 / nominal)
    grey = np.clip(np.rint(grey), 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)
