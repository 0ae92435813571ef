"""The recommender benchmark's target tasks, built offline from real images.

    python benchmarks/recommend/tasks.py --root datasets/recommend-bench            # all
    python benchmarks/recommend/tasks.py --tasks digits photos-blur --sizes 5

Twenty tasks, chosen to cover both columns of the grid and both kinds of shift:

    photos        crops of scikit-image's photographs (finetune's builtin:photos): near ImageNet
    digits        scikit-learn's 8x8 handwritten digits, upscaled, grey (builtin:digits): far
    glyphs        letters A-J in matplotlib's fonts, random colours/angles (builtin:glyphs): far
    textures      crops of texture and scientific images (brick, grass, gravel, the moon,
                  Hubble deep field, IHC microscopy, a retina, printed text): textures, mid-far
    faces         LFW faces vs. non-faces (scikit-image's lfw_subset.npy, 25x25 grey): far
    photos-blur   the photos, Gaussian blur sigma 2.5 px at 96 px  } input-level shift: the
    photos-noise  the photos, Gaussian noise sigma 40/255           } content is ImageNet-like,
    photos-colour the photos, channels permuted and gamma 0.5       } the pixels are not
    photos-small  crops of 8-16 % of the same photographs' side: little context
    photos-rotation  photo crops rotated by 0/90/180/270 degrees, 4 classes: a label
                  ImageNet never asked for, on ImageNet-like content
    textures-small   the textures at crops of 6-12 % of the side
    photos-small-noise  photos-small with the noise corruption
    photos-pixelate  the photos at 12 x 12 pixels, blown up in blocks: input-level shift
    fonts         which of eight typefaces draws a random capital: style, not content: far
    grey-crops    crops of eight other scikit-image pictures (camera, coins, a horse's
                  silhouette, cells, a retina's microaneurysms, a blurred clock, text,
                  a CT phantom), most of them grey: mid
    photos-jpeg   the photos saved as JPEG at quality 5: blocks and colour bleeding
    glyphs-lower  the glyphs task's letters in lower case, a-j: far
    textures-pixelate, grey-crops-pixelate  those crops at 12 x 12 pixels, in blocks
    photos-dither the photos with each channel dithered to 1 bit (Floyd-Steinberg)

Each task is written at each size as split folders that ``finetune run`` reads:

    <root>/<task>/<size>/train/<class>/*.png   size images per class (5, 20, 100)
    <root>/<task>/<size>/val/<class>/*.png     max(2, ceil(size / 4)) per class: for choosing lr
    <root>/<task>/<size>/test/<class>/*.png    20 per class, the same images at every size

Sizes are nested (the 5 training images are among the 20, which are among the 100), and
the test images never change with the size, so accuracies across sizes are comparable.
LFW has 100 images per class: its largest size is 60. Images are 96 px (the benchmark
trains at 96 px to fit a CPU budget; see docs/recommend.md).

Sizes above 100 (up to 400, where the recommender's large-data branches are measured)
keep the 100 pool as it is and add images from an independent stream of the same
generator (seed + 10000): the val images are the pool's 25 and the stream's first ones,
the train images the pool's 100 and the stream's next ones. So 200 still contains 100,
the test images stay the same, and the images of sizes up to 100 did not change when
the larger sizes were added. scikit-learn's digits (about 180 per class) stop at 100.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import io
import json
import math
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from finetune.data.builtin import PHOTO_SOURCES, build_dataset

SIZES = (5, 20, 100)
TEST_PER_CLASS = 20
IMAGE_PX = 96
MAX_SIZE = {"faces": 60, "digits": 100}  # lfw_subset has 100 images per class, digits ~180
POOL = 100  # the largest size laid out in one stream: [test | val | train]
LARGEST = 400  # sizes in (POOL, LARGEST] add images from a second stream
EXTRA_STREAM = 10_000  # seed offset of that stream: no image is drawn twice

# Texture and scientific images of scikit-image's data folder, one class each.
TEXTURE_SOURCES = {
    "brick": "brick.png", "grass": "grass.png", "gravel": "gravel.png", "moon": "moon.png",
    "hubble": "hubble_deep_field.jpg", "ihc": "ihc.png", "retina": "retina.jpg", "text": "page.png",
}

# Pictures of the same folder that no other task uses, one class each (grey-crops).
GREY_SOURCES = {
    "camera": "camera.png", "cell": "cell.png", "clock": "clock_motion.png", "coins": "coins.png",
    "horse": "horse.png", "microaneurysms": "microaneurysms.png", "phantom": "phantom.png",
    "text": "text.png",
}
# One regular cut of each family matplotlib ships, plus one bold (fonts).
FONT_FILES = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf",
              "STIXGeneral.ttf", "cmr10.ttf", "cmss10.ttf", "cmtt10.ttf")

Arrays = dict[str, list[np.ndarray]]  # class -> (H, W, 3) uint8 images


def _skimage_data() -> Path:
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("The benchmark tasks need scikit-image: pip install scikit-image")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def _val_count(size: int) -> int:
    return max(2, math.ceil(size / 4))


def _needed(task: str) -> int:
    largest = MAX_SIZE.get(task, POOL)
    return TEST_PER_CLASS + _val_count(largest) + largest


def _extra_val() -> int:
    """The second stream's first images, which only the val splits above POOL use."""
    return _val_count(LARGEST) - _val_count(POOL)


def _read_folder(path: Path) -> Arrays:
    out: Arrays = {}
    for class_dir in sorted(p for p in path.iterdir() if p.is_dir()):
        files = sorted(class_dir.glob("*.png"), key=lambda p: int(p.stem))
        out[class_dir.name] = [np.asarray(Image.open(f).convert("RGB")) for f in files]
    return out


def _builtin(name: str, per_class: int, seed: int) -> Arrays:
    with tempfile.TemporaryDirectory() as tmp:
        # digits: per_class caps scikit-learn's ~180 images per class.
        return _read_folder(build_dataset(name, root=tmp, per_class=per_class, seed=seed, size=IMAGE_PX))


def _photos(per_class: int, seed: int) -> Arrays:
    return _builtin("photos", per_class, seed)


def _crop(image: Image.Image, rng: np.random.Generator, scale: tuple[float, float] = (0.25, 0.6)) -> np.ndarray:
    """A square crop of ``scale`` (25-60 %) of the shorter side at a random place, resized
    to IMAGE_PX."""
    w, h = image.size
    side = rng.uniform(*scale) * min(w, h)
    x0, y0 = rng.uniform(0, w - side), rng.uniform(0, h - side)
    crop = image.resize((IMAGE_PX, IMAGE_PX), Image.Resampling.BICUBIC, box=(x0, y0, x0 + side, y0 + side))
    return np.asarray(crop.convert("RGB"), dtype=np.uint8)


def _textures(per_class: int, seed: int, scale: tuple[float, float] = (0.25, 0.6),
              stream: int = 0, sources: dict[str, str] = TEXTURE_SOURCES) -> Arrays:
    """Crops of ``scale`` of each of ``sources`` (class -> file); ``stream`` offsets the
    per-class random streams, so that another task's crops are drawn independently."""
    data = _skimage_data()
    out: Arrays = {}
    for i, (name, file) in enumerate(sorted(sources.items())):
        image = Image.open(data / file).convert("RGB")
        rng = np.random.default_rng([seed, stream + i])
        out[name] = [_crop(image, rng, scale) for _ in range(per_class)]
    return out


def _photos_small(per_class: int, seed: int) -> Arrays:
    """The photos' eight sources, but crops of 8-16 % of the shorter side: a patch of
    fur, sky or metal with little of the object's shape. ImageNet-like pixels, less
    context, so the frozen features leave room to gain."""
    data = _skimage_data()
    out: Arrays = {}
    for i, (name, files) in enumerate(sorted(PHOTO_SOURCES.items())):
        sources = [Image.open(data / f).convert("RGB") for f in files]
        rng = np.random.default_rng([seed, 100 + i])
        out[name] = [_crop(sources[rng.integers(len(sources))], rng, (0.08, 0.16)) for _ in range(per_class)]
    return out


def _textures_small(per_class: int, seed: int) -> Arrays:
    """The textures' eight sources at crops of 6-12 % of the shorter side: brick, gravel
    and a patch of the moon grow alike, and the printed page loses its lines."""
    return _textures(per_class, seed, (0.06, 0.12), stream=200)


def _photos_small_noise(per_class: int, seed: int) -> Arrays:
    """photos-small with the photos-noise corruption (sigma 40/255): little context and
    input-level shift at once."""
    rng = np.random.default_rng([seed, 17])
    return {name: [_apply("noise", im, rng) for im in images]
            for name, images in _photos_small(per_class, seed).items()}


def _grey_crops(per_class: int, seed: int) -> Arrays:
    """Crops of 25-60 % of eight pictures no other task uses: a photograph, coins, a
    silhouette, micrographs, a motion-blurred clock, scanned text and a CT phantom."""
    return _textures(per_class, seed, stream=400, sources=GREY_SOURCES)


def _fonts(per_class: int, seed: int) -> Arrays:
    """Which typeface: a random capital A-Z in one of eight fonts, at the glyphs task's
    random size, angle and colours. The letter varies within a class and the class is
    the strokes' style, a label ImageNet never asked for."""
    from finetune.data.builtin import matplotlib_fonts, render_glyph

    cache: dict = {}
    out: Arrays = {}
    for i, font in enumerate(matplotlib_fonts(FONT_FILES, at_least=len(FONT_FILES))):
        rng = np.random.default_rng([seed, 300 + i])
        letters = rng.integers(0, 26, per_class)
        out[font.stem] = [render_glyph(chr(65 + int(k)), [font], rng, IMAGE_PX, cache) for k in letters]
    return out


def _glyphs_lower(per_class: int, seed: int) -> Arrays:
    """The glyphs task's rendering (random font, size, angle and colours) for the lower-case
    letters a-j, in the fonts that draw them as letters (not the TeX math cuts)."""
    from finetune.data.builtin import GLYPH_FONTS, matplotlib_fonts, render_glyph

    fonts = matplotlib_fonts(tuple(f for f in GLYPH_FONTS if f not in ("cmmi10.ttf", "cmsy10.ttf")), at_least=4)
    cache: dict = {}
    out: Arrays = {}
    for i, letter in enumerate("abcdefghij"):
        rng = np.random.default_rng([seed, 500 + i])
        out[letter] = [render_glyph(letter, fonts, rng, IMAGE_PX, cache) for _ in range(per_class)]
    return out


def _photos_rotation(per_class: int, seed: int) -> Arrays:
    """Which way up: photo crops (all eight sources, mixed) rotated by 0, 90, 180 or 270
    degrees, one class each. The content is ImageNet's; the label is not one ImageNet
    named, and the pretrained features, trained with flips but not rotations, hold it
    only in part. Rotated bricks, grass and gravel look alike: the ceiling is below 100 %."""
    pool = [im for images in _builtin("photos", math.ceil(4 * per_class / 8), seed).values() for im in images]
    order = np.random.default_rng([seed, 11]).permutation(len(pool))
    return {f"rot{90 * k:03d}": [np.ascontiguousarray(np.rot90(pool[j], k)) for j in order[k::4][:per_class]]
            for k in range(4)}


def _faces(per_class: int, seed: int) -> Arrays:
    # "The 100 first images are faces and the subsequent 100 are non-faces" (scikit-image).
    grey = np.load(_skimage_data() / "lfw_subset.npy")  # (200, 25, 25) float in [0, 1]
    out: Arrays = {}
    for name, rows in (("face", grey[:100]), ("non-face", grey[100:])):
        order = np.random.default_rng([seed, len(name)]).permutation(len(rows))[:per_class]
        out[name] = [
            np.asarray(Image.fromarray(np.uint8(np.rint(rows[i] * 255)), mode="L")
                       .resize((IMAGE_PX, IMAGE_PX), Image.Resampling.BICUBIC).convert("RGB"))
            for i in order
        ]
    return out


def _corrupt(kind: str, source: Callable[[int, int], Arrays] = _photos) -> Callable[[int, int], Arrays]:
    """``source``'s images with the corruption ``kind``."""
    def make(per_class: int, seed: int) -> Arrays:
        clean = source(per_class, seed)
        rng = np.random.default_rng([seed, 7])
        out: Arrays = {}
        for name, images in clean.items():
            out[name] = [_apply(kind, im, rng) for im in images]
        return out
    return make


def _apply(kind: str, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if kind == "blur":
        return np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(2.5)))
    if kind == "noise":
        noisy = image.astype(np.float64) + rng.normal(0.0, 40.0, image.shape)
        return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)
    if kind == "pixelate":
        small = Image.fromarray(image).resize((12, 12), Image.Resampling.BOX)
        return np.asarray(small.resize(image.shape[1::-1], Image.Resampling.NEAREST))
    if kind == "jpeg":
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=5)
        return np.asarray(Image.open(buffer).convert("RGB"))
    if kind == "dither":
        # Each channel to 1 bit with Floyd-Steinberg error diffusion: eight colours, the
        # content kept in the density of the dots.
        channels = [c.convert("1").convert("L") for c in Image.fromarray(image).split()]
        return np.asarray(Image.merge("RGB", channels))
    if kind == "colour":
        # B, R, G order and gamma 0.5: a cast no camera makes, on unchanged content.
        shifted = 255.0 * (image[..., [2, 0, 1]].astype(np.float64) / 255.0) ** 0.5
        return np.clip(np.rint(shifted), 0, 255).astype(np.uint8)
    raise ValueError(f"Unknown corruption '{kind}'.")


TASKS: dict[str, Callable[[int, int], Arrays]] = {
    "photos": _photos,
    "digits": lambda n, seed: _builtin("digits", n, seed),
    "glyphs": lambda n, seed: _builtin("glyphs", n, seed),
    "textures": _textures,
    "faces": _faces,
    "photos-blur": _corrupt("blur"),
    "photos-noise": _corrupt("noise"),
    "photos-colour": _corrupt("colour"),
    # Held-out tasks for the pre-sweep thresholds, added after the reduced sweep (the
    # first eight saturate at or near 100 % too often).
    "photos-small": _photos_small,
    "photos-rotation": _photos_rotation,
    # Held-out tasks for the thresholds of 63c6932 (lp-ft wherever the probe leaves
    # headroom), added before anything ran on them; those thresholds stayed frozen until
    # these were scored.
    "textures-small": _textures_small,
    "photos-small-noise": _photos_small_noise,
    # The third held-out set, added before anything ran on it and scored with the
    # thresholds of 63c6932 frozen (finetune.recommend.Thresholds as of 2829015).
    "photos-pixelate": _corrupt("pixelate"),
    "fonts": _fonts,
    "grey-crops": _grey_crops,
    # The held-out test of the thresholds recalibrated on the 15 tasks above (0e1f313),
    # added before anything ran on them.
    "photos-jpeg": _corrupt("jpeg"),
    "glyphs-lower": _glyphs_lower,
    # Held-out tasks for the early-shift line, registered with their signals before
    # anything ran on them (results/registered-s12-early-shift.md): input-level
    # corruptions of other content than the photos.
    "textures-pixelate": _corrupt("pixelate", _textures),
    "grey-crops-pixelate": _corrupt("pixelate", _grey_crops),
    "photos-dither": _corrupt("dither"),
}


def task_sizes(task: str, sizes: tuple[int, ...] = SIZES) -> list[int]:
    too_large = [s for s in sizes if s > LARGEST]
    if too_large:
        raise ValueError(f"Sizes {too_large} are above {LARGEST} images per class, the largest the "
                         "benchmark lays out; raise tasks.LARGEST (it re-draws every size above 100).")
    return sorted({min(s, MAX_SIZE.get(task, s)) for s in sizes})


def build_task(task: str, root: str | Path, *, sizes: tuple[int, ...] = SIZES, seed: int = 0) -> dict[int, Path]:
    """Write ``root/task/<size>/{train,val,test}`` for each size; reuse a finished build."""
    if task not in TASKS:
        raise ValueError(f"Unknown task '{task}'. Valid: {', '.join(TASKS)}.")
    root = Path(root)
    wanted = task_sizes(task, sizes)
    marker = root / task / ".built.json"
    # The layout above POOL decides which images sizes above 100 get: a build made under
    # another LARGEST or stream is not reused.
    params = {"task": task, "seed": seed, "px": IMAGE_PX, "test": TEST_PER_CLASS, "version": 1,
              "layout": [POOL, LARGEST, EXTRA_STREAM]}
    done = json.loads(marker.read_text()) if marker.is_file() else {}
    if done.get("params") == params and set(wanted) <= set(done.get("sizes", [])):
        return {s: root / task / str(s) for s in wanted}
    arrays = TASKS[task](_needed(task), seed)
    short = {c: len(v) for c, v in arrays.items() if len(v) < _needed(task)}
    if short:
        raise RuntimeError(f"Task '{task}' has too few images per class for its sizes: {short}.")
    extra = TASKS[task](_extra_val() + LARGEST - POOL, seed + EXTRA_STREAM) if max(wanted) > POOL else {}
    paths = {}
    for size in wanted:
        target = root / task / str(size)
        shutil.rmtree(target, ignore_errors=True)
        n_val = _val_count(min(size, POOL))
        for name, images in arrays.items():
            parts = {"test": images[:TEST_PER_CLASS],
                     "val": images[TEST_PER_CLASS:TEST_PER_CLASS + n_val],
                     # The val pool is sized for the largest size, so train stays nested.
                     "train": images[TEST_PER_CLASS + _val_count(MAX_SIZE.get(task, POOL)):][:size]}
            if size > POOL:
                more = extra[name]
                parts["val"] += more[:_val_count(size) - n_val]
                parts["train"] += more[_extra_val():][:size - POOL]
            for split, items in parts.items():
                folder = target / split / name
                folder.mkdir(parents=True, exist_ok=True)
                for i, array in enumerate(items):
                    Image.fromarray(array).save(folder / f"{i}.png", compress_level=1)
        paths[size] = target
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"params": params, "sizes": sorted(set(wanted) | set(done.get("sizes", [])))
                                  if done.get("params") == params else wanted}) + "\n")
    return paths


def pixel_digest(path: Path) -> str:
    """SHA-256 of a built size's decoded pixels, file by file in a fixed order: equal
    digests mean the same images, whatever the PNG encoder wrote (another machine's
    rebuild can be checked against this one's)."""
    h = hashlib.sha256()
    for f in sorted(path.rglob("*.png"), key=lambda p: (p.parent.as_posix(), int(p.stem))):
        h.update(f.relative_to(path).as_posix().encode())
        h.update(np.asarray(Image.open(f).convert("RGB")).tobytes())
    return h.hexdigest()[:16]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default="datasets/recommend-bench")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--sizes", nargs="+", type=int, default=list(SIZES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--digest", action="store_true", help="also print each size's pixel digest")
    args = parser.parse_args(argv)
    for task in args.tasks:
        for size, path in build_task(task, args.root, sizes=tuple(args.sizes), seed=args.seed).items():
            classes = sorted(p.name for p in (path / "train").iterdir())
            digest = f", pixels {pixel_digest(path)}" if args.digest else ""
            print(f"{task} {size}/class: {path} ({len(classes)} classes{digest})", file=sys.stdout)


if __name__ == "__main__":
    main()
