"""Built-in datasets, generated offline from real images that installed packages ship.

    python -m finetune.data.builtin photos            # -> datasets/photos/<class>/<i>.png
    python -m finetune.data.builtin all --per-class 20

Three datasets cover the two columns of the strategy grid (docs/design.md):

* ``photos``: crops of scikit-image's bundled photographs (an astronaut, a cat, a coffee
  cup, a rocket launch, a motorcycle) and textures (brick, grass, gravel): natural
  images, close to ImageNet;
* ``digits``: scikit-learn's 8x8 handwritten digits, upscaled: far from ImageNet;
* ``glyphs``: the letters A-J rendered with the fonts matplotlib ships, at random size,
  angle, position and colours: far from ImageNet.

Each build is deterministic for its parameters (name, per_class, seed, size), recorded in
``<root>/<name>/.built.json``; a complete build with the same parameters is reused. A
build goes to a temporary folder that is renamed into place when complete, so an
interrupted build leaves nothing half-made.

The source files are read from the packages' folders; scikit-image's ``skimage.data``
functions are never called, since some of them download.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .images import load_image
from .sources import BUILTIN_PREFIX, DataError

logger = logging.getLogger("finetune")

BUILTIN_DATASETS: dict[str, str] = {
    "photos": "8 classes of natural photo crops from scikit-image's sample images "
    "(astronaut, cat, coffee, rocket, motorcycle, brick, grass, gravel); close to ImageNet",
    "digits": "10 classes of scikit-learn's 8x8 handwritten digits, upscaled, grey as RGB; "
    "far from ImageNet",
    "glyphs": "10 classes, the letters A-J rendered with matplotlib's fonts at random size, "
    "angle, position and colour; far from ImageNet",
}
DEFAULT_PER_CLASS = {"photos": 40, "digits": None, "glyphs": 40}  # None: every image there is

# Bump when a generator changes, so existing builds are rebuilt instead of reused.
_FORMAT_VERSION = 1
_MARKER = ".built.json"

# Class -> files in skimage/data. Only natural photographs and textures: horse.png is a
# drawn silhouette, and retina / ihc / hubble are medical, microscopy and astronomy images.
PHOTO_SOURCES: dict[str, tuple[str, ...]] = {
    "astronaut": ("astronaut.png",),
    "brick": ("brick.png",),
    "cat": ("chelsea.png",),
    "coffee": ("coffee.png",),
    "grass": ("grass.png",),
    "gravel": ("gravel.png",),
    "motorcycle": ("motorcycle_left.png", "motorcycle_right.png"),
    "rocket": ("rocket.jpg",),
}

GLYPH_CLASSES = tuple("ABCDEFGHIJ")
# Fonts in matplotlib's mpl-data/fonts/ttf that draw the Latin capitals as letters
# (cmex10 maps them to delimiters, LastResortHE to placeholder boxes, the STIX size and
# NonUni fonts and the DejaVu Display cuts lack them).
GLYPH_FONTS = (
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSans-BoldOblique.ttf",
    "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf", "DejaVuSerif-BoldItalic.ttf",
    "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSansMono-Oblique.ttf",
    "DejaVuSansMono-BoldOblique.ttf",
    "STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf", "STIXGeneralBolIta.ttf",
    "cmr10.ttf", "cmb10.ttf", "cmti10.ttf", "cmss10.ttf", "cmtt10.ttf", "cmmi10.ttf", "cmsy10.ttf",
)


def package_dir(package: str) -> Path:
    """The installed package's folder, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            f"The built-in datasets need the package '{package}'. Install it: pip install "
            f"{'scikit-image' if package == 'skimage' else package}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _rng(seed: int, name: str) -> np.random.Generator:
    """A generator per (seed, class): classes do not depend on each other's draws."""
    return np.random.default_rng([seed, zlib.crc32(name.encode("utf-8"))])


# --------------------------------------------------------------------------- generators
# Each returns {class name: [(size, size, 3) uint8 images]}, classes in sorted order.

_Maker = Callable[[int | None, int, int], dict[str, list[np.ndarray]]]


def _photos(per_class: int | None, seed: int, size: int) -> dict[str, list[np.ndarray]]:
    data_dir = package_dir("skimage") / "data"
    n = per_class or DEFAULT_PER_CLASS["photos"]
    out: dict[str, list[np.ndarray]] = {}
    for name, files in sorted(PHOTO_SOURCES.items()):
        sources = []
        for file in files:
            path = data_dir / file
            if not path.is_file():
                raise RuntimeError(f"scikit-image's sample image '{path}' is missing; reinstall scikit-image.")
            sources.append(Image.fromarray(load_image(path)))
        rng = _rng(seed, name)
        out[name] = [_random_crop(sources[rng.integers(len(sources))], rng, size) for _ in range(n)]
    return out


def _random_crop(image: Image.Image, rng: np.random.Generator, size: int) -> np.ndarray:
    """A square-ish crop at a random scale (35-100 % of the shorter side), aspect
    3:4..4:3 and position, resized to size x size with antialiasing, maybe mirrored."""
    width, height = image.size
    side = rng.uniform(0.35, 1.0) * min(width, height)
    aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    crop_w = min(width, side * np.sqrt(aspect))
    crop_h = min(height, side / np.sqrt(aspect))
    x0 = rng.uniform(0, width - crop_w)
    y0 = rng.uniform(0, height - crop_h)
    crop = image.resize(
        (size, size), Image.Resampling.BICUBIC, box=(x0, y0, x0 + crop_w, y0 + crop_h), reducing_gap=None
    )
    if rng.random() < 0.5:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return np.asarray(crop, dtype=np.uint8)


def _digits(per_class: int | None, seed: int, size: int) -> dict[str, list[np.ndarray]]:
    from sklearn.datasets import load_digits  # reads the copy bundled with scikit-learn

    digits = load_digits()
    out: dict[str, list[np.ndarray]] = {}
    for digit in range(10):
        name = str(digit)
        rows = np.flatnonzero(digits.target == digit)
        rows = rows[_rng(seed, name).permutation(len(rows))]
        if per_class is not None:
            rows = rows[:per_class]
        images = []
        for row in rows:
            # 0..16 ink counts -> dark ink on white paper, then bilinear upscaling.
            grey = np.rint(255.0 - digits.images[row] * (255.0 / 16.0)).astype(np.uint8)
            big = Image.fromarray(grey, mode="L").resize((size, size), Image.Resampling.BILINEAR)
            images.append(np.asarray(big.convert("RGB"), dtype=np.uint8))
        out[name] = images
    return out


def matplotlib_fonts(names: tuple[str, ...], at_least: int) -> list[Path]:
    """The files of ``names`` (in that order) that matplotlib's installation ships in
    mpl-data/fonts/ttf; an error naming the fix when fewer than ``at_least`` are there."""
    font_dir = package_dir("matplotlib") / "mpl-data" / "fonts" / "ttf"
    fonts = [font_dir / f for f in names if (font_dir / f).is_file()]
    if len(fonts) < at_least:
        missing = [f for f in names if not (font_dir / f).is_file()]
        raise RuntimeError(f"Too few of matplotlib's fonts found in '{font_dir}' (missing: "
                           f"{', '.join(missing)}); reinstall matplotlib.")
    return fonts


def _glyphs(per_class: int | None, seed: int, size: int) -> dict[str, list[np.ndarray]]:
    fonts = matplotlib_fonts(GLYPH_FONTS, at_least=4)
    n = per_class or DEFAULT_PER_CLASS["glyphs"]
    cache: dict[tuple[Path, int], ImageFont.FreeTypeFont] = {}
    out: dict[str, list[np.ndarray]] = {}
    for letter in GLYPH_CLASSES:
        rng = _rng(seed, letter)
        out[letter] = [render_glyph(letter, fonts, rng, size, cache) for _ in range(n)]
    return out


def render_glyph(
    letter: str,
    fonts: list[Path],
    rng: np.random.Generator,
    size: int,
    cache: dict[tuple[Path, int], ImageFont.FreeTypeFont],
) -> np.ndarray:
    """``letter`` drawn as the glyphs dataset draws it: a ``size`` px RGB image (uint8) with
    the letter in one of ``fonts`` at 35-75 % of the side, turned up to 30 degrees either
    way, at a random place, in one of two contrasting colours. ``rng`` decides each of
    these in a fixed order, so a seeded stream gives the same images; ``cache`` keeps the
    loaded fonts across calls (the benchmark's font and letter tasks share the drawing)."""
    font_path = fonts[rng.integers(len(fonts))]
    font_px = int(rng.integers(max(6, round(0.35 * size)), max(7, round(0.75 * size)) + 1))
    key = (font_path, font_px)
    if key not in cache:
        cache[key] = ImageFont.truetype(str(font_path), font_px)
    canvas = 3 * font_px
    mask = Image.new("L", (canvas, canvas), 0)
    ImageDraw.Draw(mask).text((canvas // 2, canvas // 2), letter, font=cache[key], fill=255, anchor="mm")
    mask = mask.crop(mask.getbbox())
    mask = mask.rotate(float(rng.uniform(-30, 30)), resample=Image.Resampling.BICUBIC, expand=True)
    limit = int(0.95 * size)
    if max(mask.size) > limit:  # keep the whole letter inside the image
        scale = limit / max(mask.size)
        mask = mask.resize((max(1, int(mask.width * scale)), max(1, int(mask.height * scale))), Image.Resampling.BICUBIC)
    background, stroke = _contrasting_colours(rng)
    image = Image.new("RGB", (size, size), background)
    x = int(rng.integers(0, size - mask.width + 1))
    y = int(rng.integers(0, size - mask.height + 1))
    image.paste(stroke, (x, y), mask)
    return np.asarray(image, dtype=np.uint8)


def _contrasting_colours(rng: np.random.Generator) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """A plain background and a stroke colour at least 100 grey levels apart."""
    light = tuple(int(v) for v in rng.integers(170, 256, size=3))
    dark = tuple(int(v) for v in rng.integers(0, 70, size=3))
    return (light, dark) if rng.random() < 0.75 else (dark, light)


_GENERATORS: dict[str, _Maker] = {"photos": _photos, "digits": _digits, "glyphs": _glyphs}


# --------------------------------------------------------------------------- building
def resolve_data(data: str, root: str | Path = "datasets") -> Path:
    """What ``--data`` names: a path, or ``builtin:<name>`` built offline into ``root``."""
    if data.startswith(BUILTIN_PREFIX):
        name = data[len(BUILTIN_PREFIX):]
        if name not in BUILTIN_DATASETS:
            raise DataError(
                f"Unknown built-in dataset '{name}'. Choose one of: {', '.join(BUILTIN_DATASETS)}."
            )
        return build_dataset(name, root=root)
    return Path(data).expanduser()



def build_dataset(
    name: str,
    root: str | Path = "datasets",
    *,
    per_class: int | None = None,
    seed: int = 0,
    size: int = 128,
) -> Path:
    """Write ``<root>/<name>/<class>/<i>.png`` and return ``<root>/<name>``.

    ``per_class`` defaults to 40 for photos and glyphs and to every image (about 180) for
    digits, where it is a cap. A complete build with the same parameters is reused.
    """
    if name not in _GENERATORS:
        raise ValueError(f"Unknown built-in dataset '{name}'. Valid: {', '.join(BUILTIN_DATASETS)}.")
    if per_class is not None and per_class < 1:
        raise ValueError(f"per_class={per_class} must be at least 1 (or None for the default).")
    if size < 8:
        raise ValueError(f"size={size} is too small; use at least 8 pixels (default 128).")
    root = Path(root)
    target = root / name
    params = {"name": name, "per_class": per_class, "seed": seed, "size": size, "version": _FORMAT_VERSION}
    if _read_marker(target) == params:
        return target

    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".building", dir=root))
    try:
        classes = _GENERATORS[name](per_class, seed, size)
        counts = {}
        for class_name, images in classes.items():
            (tmp / class_name).mkdir()
            for i, array in enumerate(images):
                # compress_level 1: these are rebuilt on demand, speed beats file size.
                Image.fromarray(array).save(tmp / class_name / f"{i}.png", compress_level=1)
            counts[class_name] = len(images)
        (tmp / _MARKER).write_text(json.dumps({**params, "counts": counts}, indent=2) + "\n")
        _move_into_place(tmp, target, params)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("Built dataset '%s' at %s: %s", name, target, counts)
    return target


def _read_marker(target: Path) -> dict | None:
    try:
        marker = json.loads((target / _MARKER).read_text())
    except (OSError, ValueError):
        return None
    marker.pop("counts", None)
    return marker


def _move_into_place(tmp: Path, target: Path, params: dict) -> None:
    """Rename the finished build over ``target``; the old one is moved aside first."""
    if _read_marker(target) == params:  # another process (a DDP rank) finished first
        shutil.rmtree(tmp, ignore_errors=True)
        return
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.rename(target, old)
    try:
        os.rename(tmp, target)
    except OSError:
        # Another process (a DDP rank) finished the same build first: use theirs.
        if _read_marker(target) != params:
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m finetune.data.builtin",
        description="Build the offline built-in datasets as <root>/<name>/<class>/<i>.png.",
    )
    parser.add_argument("names", nargs="+", choices=[*BUILTIN_DATASETS, "all"], help="datasets to build")
    parser.add_argument("--root", default="datasets", help="parent folder (default: %(default)s)")
    parser.add_argument("--per-class", type=int, default=None, help="images per class (default: per dataset)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    parser.add_argument("--size", type=int, default=128, help="image side in pixels (default: %(default)s)")
    args = parser.parse_args(argv)
    names = list(BUILTIN_DATASETS) if "all" in args.names else list(dict.fromkeys(args.names))
    for name in names:
        path = build_dataset(name, args.root, per_class=args.per_class, seed=args.seed, size=args.size)
        counts = json.loads((path / _MARKER).read_text())["counts"]
        print(f"{name}: {path} ({len(counts)} classes, {sum(counts.values())} images)")


if __name__ == "__main__":
    main()
