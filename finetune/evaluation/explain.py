"""Why the model predicts what it predicts: Grad-CAM and occlusion maps, checked for faithfulness.

    result = explain_run("runs/photos-efficientnet_lite0-linear", [Path("cat.jpg")])
    # writes RUN_DIR/explain/cat.png (image, Grad-CAM, occlusion) and explain.json

Both maps come from Captum and are drawn on the image as the model saw it (after the
run's resize and centre crop, the evaluation pipeline):

* **Grad-CAM** (``LayerGradCam``) weighs the channels of the backbone's last feature map
  (``forward_features``: the output of its last spatial stage, the map the head pools) by
  the gradient of the target class's logit, keeps the positive part and is upsampled to
  the image (``LayerAttribution.interpolate``). Every family exposes that map, so the same
  code serves them all; ``feature_stage`` names the stage it comes from.
* **Occlusion** (``Occlusion``, Zeiler and Fergus's experiment) slides a patch of the
  pretraining mean colour (zero after normalisation) over the image and records how much
  the target class's probability drops. The window is a quarter of the image side and
  the stride half the window: 7 x 7 = 49 positions at any input size.

``faithfulness`` checks a map against the model: covering the map's most salient window
(the occlusion window's size) with the same mean-colour patch must lower the target's
probability more than covering windows of that size at random places. The check needs a
window that stands out; on a flat map (``is_flat``) it does not apply.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import nn

from ..data import ImageDecodeError, load_image
from ..data.transforms import build_transform, jpeg_draft_size
from ..io import atomic_write_bytes
from ..models import Backbone
from ..run_folder import load_run_model
from .figures import png_bytes

METHODS = ("gradcam", "occlusion")
EXPLAIN_DIRNAME = "explain"
EXPLAIN_JSON = "explain.json"
TOP_K = 3
# Random windows per image that the most salient window is compared with.
RANDOM_DRAWS = 8
# A map whose values span at most this share of its scale is flat (is_flat): float32
# probabilities near 1 move in steps of 6e-8, so a spread of 1e-6 is rounding, not evidence.
FLAT_TOLERANCE = 1e-6


# --------------------------------------------------------------------------- the model


class _Tapped(nn.Module):
    """The backbone with an identity layer on its feature map, for Captum's layer methods:
    ``forward_head(tap(forward_features(x)))`` is the backbone's own forward."""

    def __init__(self, backbone: Backbone) -> None:
        super().__init__()
        self.backbone = backbone
        self.tap = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, S, S) -> (B, C) logits
        return self.backbone.forward_head(self.tap(self.backbone.forward_features(x)))


def feature_stage(model: Backbone, x: torch.Tensor) -> str:
    """The name of the last of ``model.stages()`` with a spatial (B, C, h, w) output: the
    stage whose map Grad-CAM reads (``layer4`` of a ResNet, ``block5`` of a VGG, whose
    ``pre_logits`` stage of fully connected layers comes after it)."""
    seen: dict[str, int] = {}
    handles = []
    for stage in model.stages():
        for module in stage.modules:
            def hook(_m, _i, out, name=stage.name):
                seen[name] = out.dim() if isinstance(out, torch.Tensor) else 0
            handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        for handle in handles:
            handle.remove()
    spatial = [s.name for s in model.stages() if seen.get(s.name) == 4]
    if not spatial:
        raise ValueError(f"{model.variant} has no stage with a spatial (B, C, h, w) output, which "
                         f"Grad-CAM reads; explain it with --methods occlusion.")
    return spatial[-1]


def occlusion_geometry(size: int) -> tuple[int, int]:
    """``(window, stride)`` for an image of side ``size``: a quarter of the side, half that."""
    window = max(1, math.ceil(size / 4))
    return window, max(1, math.ceil(window / 2))


# --------------------------------------------------------------------------- the maps


def gradcam_maps(tapped: _Tapped, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B, 3, S, S) normalised images -> (B, S, S) Grad-CAM maps (>= 0) for ``target``."""
    # captum.attr imports matplotlib.pyplot (for its own plots, unused here): only code
    # that draws maps loads it, never a plain report or `import finetune`.
    from captum.attr import LayerAttribution, LayerGradCam

    cam = LayerGradCam(tapped, tapped.tap).attribute(x, target=target, relu_attributions=True)
    up = LayerAttribution.interpolate(cam, tuple(x.shape[-2:]), interpolate_mode="bilinear")
    return up[:, 0].detach().float().clamp_min(0)  # bilinear keeps it >= 0 up to rounding


def occlusion_maps(tapped: _Tapped, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B, 3, S, S) -> (B, S, S): the mean drop of the target's probability over the
    windows that covered each pixel (negative where covering raised it)."""
    from captum.attr import Occlusion  # see gradcam_maps

    window, stride = occlusion_geometry(x.shape[-1])
    occlusion = Occlusion(lambda inputs: torch.softmax(tapped(inputs).float(), dim=1))
    with torch.no_grad():
        attr = occlusion.attribute(x, sliding_window_shapes=(x.shape[1], window, window),
                                   strides=(x.shape[1], stride, stride), baselines=0.0,
                                   target=target, perturbations_per_eval=16)
    return attr[:, 0].float()  # every channel carries the same value


def is_flat(saliency: torch.Tensor | np.ndarray, method: str) -> bool:
    """Whether no part of ``saliency`` stands out: max - min <= ``FLAT_TOLERANCE`` x scale.

    The scale is 1 for occlusion, whose values are drops of a probability, and the map's
    largest absolute value for Grad-CAM, whose units are arbitrary (an all-zero map is
    flat). A saturated prediction gives a flat occlusion map: at p = 1.000 in float32 no
    cover moves p, every value is 0, and the "most salient" window would be the top-left
    corner, the first index of an argmax over equal sums.
    """
    values = torch.as_tensor(saliency).double()
    spread = float(values.max() - values.min())
    scale = 1.0 if method == "occlusion" else float(values.abs().max())
    return spread <= FLAT_TOLERANCE * scale


def format_drop(value: float, digits: int = 3, *, sign: bool = False) -> str:
    """``value`` with ``digits`` decimals (and its sign with ``sign``); one that rounds to
    zero reads ``0.000``, never ``-0.000``, which would claim a direction it does not have."""
    text = f"{value:{'+' if sign else ''}.{digits}f}"
    return text if float(text) != 0 else f"{0.0:.{digits}f}"


def _most_salient_window(saliency: torch.Tensor, window: int) -> tuple[int, int]:
    """Top-left corner of the ``window`` x ``window`` square with the largest summed saliency."""
    sums = F.avg_pool2d(saliency[None, None].double(), window, stride=1)[0, 0]
    index = int(torch.argmax(sums))
    return divmod(index, sums.shape[1])


@torch.no_grad()
def faithfulness(tapped: _Tapped, x: torch.Tensor, target: int, saliency: torch.Tensor, *,
                 draws: int = RANDOM_DRAWS, seed: int = 0) -> dict:
    """For one image (3, S, S) and its map (S, S): the drop of the target's probability when
    the map's most salient window is covered with the mean colour (``salient_drop``), and
    the mean drop over ``draws`` windows of the same size at random places (``random_drop``).

    The same two in log-odds, log(p / (1 - p)) (``salient_logodds_drop``,
    ``random_logodds_drop``): a confident prediction's probability sits at 1.0 and hardly
    moves when a window is covered, while its log-odds (the target's logit minus the
    log-sum-exp of the others') still shows how much evidence the window held."""
    size = x.shape[-1]
    window, _ = occlusion_geometry(size)
    generator = torch.Generator().manual_seed(seed)
    corners = [_most_salient_window(saliency.cpu(), window)]
    corners += torch.randint(0, size - window + 1, (draws, 2), generator=generator).tolist()
    covered = x.unsqueeze(0).repeat(len(corners) + 1, 1, 1, 1)  # row 0 stays whole
    for row, (top, left) in enumerate(corners, start=1):
        covered[row, :, top:top + window, left:left + window] = 0.0
    logits = tapped(covered).double()  # (1 + 1 + draws, C)
    p = torch.softmax(logits, dim=1)[:, target]
    others = logits.index_fill(1, torch.tensor([target], device=x.device), -math.inf)
    logodds = logits[:, target] - torch.logsumexp(others, dim=1)
    drops = (p[0] - p[1:]).tolist()
    log_drops = (logodds[0] - logodds[1:]).tolist()
    return {"salient_drop": drops[0], "random_drop": float(np.mean(drops[1:])),
            "salient_logodds_drop": log_drops[0], "random_logodds_drop": float(np.mean(log_drops[1:]))}


# --------------------------------------------------------------------------- one image


@dataclass
class Explanation:
    """One image explained: what the model saw, what it predicted, each map, their checks."""

    image: np.ndarray  # (S, S, 3) float in [0, 1]: the network's input, un-normalised
    probs: np.ndarray  # (C,)
    target: int
    maps: dict[str, np.ndarray]  # method -> (S, S)
    # method -> {"flat", "salient_drop", "random_drop", "salient_logodds_drop",
    # "random_logodds_drop"}; a flat map's salient window is arbitrary, its drops no check
    faithfulness: dict[str, dict]


class Explainer:
    """A model with the evaluation pipeline of a run: images in, ``Explanation`` out.

    The model runs in eval mode and its weights are never changed (Captum differentiates
    with ``torch.autograd.grad``, which fills no ``.grad``); ``restore()`` gives the model
    back in the mode it was handed over in.
    """

    def __init__(self, model: Backbone, image_size: int) -> None:
        self.model = model
        self._was_training = model.training
        model.eval()
        self.tapped = _Tapped(model)
        self.device = next(model.parameters()).device
        cfg = model.pretrained_cfg
        self.image_size = image_size
        self.transform = build_transform(cfg, image_size=image_size, train=False)
        self.draft_size = jpeg_draft_size(cfg, image_size)
        self._mean = torch.tensor(cfg.mean).view(3, 1, 1)
        self._std = torch.tensor(cfg.std).view(3, 1, 1)

    def restore(self) -> None:
        self.model.train(self._was_training)

    def load(self, path: str | Path) -> torch.Tensor:
        """(3, S, S) normalised, exactly as evaluation prepares the file."""
        return self.transform(image=load_image(path, draft_size=self.draft_size))["image"]

    def seen(self, x: torch.Tensor) -> np.ndarray:
        """(3, S, S) normalised -> (S, S, 3) in [0, 1]: the image as the network saw it."""
        rgb = x.detach().cpu().float() * self._std + self._mean
        return rgb.clamp(0, 1).permute(1, 2, 0).numpy()

    def probabilities(self, x: torch.Tensor) -> np.ndarray:
        """(B, 3, S, S) -> (B, C) softmax probabilities."""
        with torch.no_grad():
            return torch.softmax(self.tapped(x.to(self.device)).float(), dim=1).cpu().numpy()

    def explain(self, x: torch.Tensor, *, target: int | None = None,
                methods: Sequence[str] = METHODS, check: bool = True, seed: int = 0) -> Explanation:
        """Maps of one (3, S, S) image for ``target`` (default: the predicted class) and,
        with ``check``, their faithfulness figures (``seed`` places the random windows),
        each with ``"flat"``: whether the map is flat (``is_flat``), and the check moot."""
        x = x.to(self.device)
        probs = self.probabilities(x[None])[0]
        target = int(np.argmax(probs)) if target is None else int(target)
        t = torch.tensor([target], device=self.device)
        compute = {"gradcam": gradcam_maps, "occlusion": occlusion_maps}
        maps = {m: compute[m](self.tapped, x[None], t)[0] for m in methods}
        checks = ({m: {"flat": is_flat(saliency, m),
                       **faithfulness(self.tapped, x, target, saliency, seed=seed)}
                   for m, saliency in maps.items()}
                  if check else {})
        return Explanation(self.seen(x), probs, target, {m: v.cpu().numpy() for m, v in maps.items()},
                           checks)


# --------------------------------------------------------------------------- figures


def draw_map(ax, image: np.ndarray, saliency: np.ndarray, method: str) -> None:
    """``saliency`` over ``image`` on ``ax``: Grad-CAM from its minimum (blue) to its maximum
    (red), occlusion as the probability drop on a scale symmetric about zero (red: covering
    it lowered the class's probability, blue: raised it)."""
    ax.imshow(image)
    if method == "gradcam":
        ax.imshow(saliency, cmap="jet", alpha=0.45)  # imshow scales min..max
    else:
        bound = max(float(np.abs(saliency).max()), 1e-6)
        ax.imshow(saliency, cmap="coolwarm", alpha=0.5, vmin=-bound, vmax=bound)
    ax.set_axis_off()


_TITLES = {"gradcam": "Grad-CAM", "occlusion": "Occlusion (drop in p)"}


def explanation_figure(explanation: Explanation, classes: Sequence[str], name: str) -> Figure:
    """The image as the model saw it, then one overlay per map; the prediction in the title."""
    panels = len(explanation.maps) + 1
    fig = Figure(figsize=(3.2 * panels, 3.8), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, panels, squeeze=False)[0]
    axes[0].imshow(explanation.image)
    axes[0].set_axis_off()
    axes[0].set_title("Input (as the model saw it)", fontsize=9)
    for ax, (method, saliency) in zip(axes[1:], explanation.maps.items(), strict=True):
        draw_map(ax, explanation.image, saliency, method)
        drops = explanation.faithfulness.get(method)
        # The change when covered: negative is a drop.
        if not drops:
            note = ""
        elif drops["flat"]:
            note = "\nflat: no window stands out, no check"
        else:
            note = (f"\ncover top window: p {format_drop(-drops['salient_drop'], sign=True)}, "
                    f"log-odds {format_drop(-drops['salient_logodds_drop'], 2, sign=True)}"
                    f"\na random one: p {format_drop(-drops['random_drop'], sign=True)}, "
                    f"log-odds {format_drop(-drops['random_logodds_drop'], 2, sign=True)}")
        ax.set_title(f"{_TITLES[method]}{note}", fontsize=9)
    top = np.argsort(-explanation.probs, kind="stable")[:TOP_K]
    prediction = ", ".join(f"{classes[i]} {explanation.probs[i]:.2f}" for i in top)
    fig.suptitle(f"{name}: {prediction}  ·  map of '{classes[explanation.target]}'", fontsize=10)
    return fig


# --------------------------------------------------------------------------- a run


def check_methods(methods: Sequence[str]) -> tuple[str, ...]:
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ValueError(f"Unknown explanation method {', '.join(map(repr, unknown)) or '(none)'}. "
                         f"Valid: {', '.join(METHODS)} (comma-separated, e.g. --methods gradcam).")
    return tuple(dict.fromkeys(methods))


def _target_index(target: str | None, classes: Sequence[str]) -> int | None:
    if target is None:
        return None
    if target not in classes:
        raise ValueError(f"Unknown --target '{target}'. The run's labels: {', '.join(classes)}.")
    return list(classes).index(target)


def _figure_name(path: Path, taken: set[str]) -> str:
    """``<stem>.png``; a stem met before gets ``-2``, ``-3``, ... so no figure overwrites another."""
    name, n = f"{path.stem}.png", 1
    while name in taken:
        n += 1
        name = f"{path.stem}-{n}.png"
    taken.add(name)
    return name


def _mean_drops(images: Sequence[Mapping], methods: Sequence[str]) -> dict:
    """Per method, each drop's mean over the images whose map is not flat (``images``
    of them; ``flat_images`` the rest): a flat map's salient window is an arbitrary one.
    The drops are null when every map is flat."""
    keys = ("salient_drop", "random_drop", "salient_logodds_drop", "random_logodds_drop")
    means = {}
    for m in methods:
        checked = [im["faithfulness"][m] for im in images if not im["faithfulness"][m]["flat"]]
        means[m] = {**{key: float(np.mean([c[key] for c in checked])) if checked else None
                       for key in keys},
                    "images": len(checked), "flat_images": len(images) - len(checked)}
    return means


def explain_run(run_dir: str | Path, files: Sequence[Path], *, output: str | Path | None = None,
                target: str | None = None, methods: Sequence[str] = METHODS) -> dict:
    """Explain ``files`` with a run's model: one figure per image and ``explain.json`` in
    ``output`` (default ``RUN_DIR/explain/``); returns what ``explain.json`` holds.

    Undecodable files are listed under ``"skipped"``; when none can be read nothing is
    written and a ``ValueError`` says so.
    """
    methods = check_methods(methods)
    run_dir = Path(run_dir)
    model, cfg, splits = load_run_model(run_dir)
    classes = splits.classes
    wanted = _target_index(target, classes)
    image_size = cfg.image_size or model.pretrained_cfg.image_size
    explainer = Explainer(model, image_size)
    loaded, skipped = [], []
    for path in map(Path, files):
        try:
            loaded.append((path, explainer.load(path)))
        except ImageDecodeError as err:
            skipped.append({"path": str(path), "reason": err.reason})
    if not loaded:
        raise ValueError(f"None of the {len(files)} images could be read: "
                         f"{'; '.join(s['path'] + ': ' + s['reason'] for s in skipped[:3])}.")
    first = loaded[0][1][None].to(explainer.device)
    stage = feature_stage(model, first) if "gradcam" in methods else None
    out_dir = Path(output) if output is not None else run_dir / EXPLAIN_DIRNAME
    out_dir.mkdir(parents=True, exist_ok=True)
    taken: set[str] = set()
    images = []
    for index, (path, x) in enumerate(loaded):
        explanation = explainer.explain(x, target=wanted, methods=methods, seed=index)
        name = _figure_name(path, taken)
        atomic_write_bytes(out_dir / name, png_bytes(explanation_figure(explanation, classes, path.name)))
        top = np.argsort(-explanation.probs, kind="stable")[:TOP_K]
        images.append({
            "path": str(path),
            "top3": [{"label": classes[i], "probability": float(explanation.probs[i])} for i in top],
            "target": classes[explanation.target],
            "target_probability": float(explanation.probs[explanation.target]),
            "files": {"figure": name},
            "faithfulness": explanation.faithfulness,
        })
    window, stride = occlusion_geometry(image_size)
    result = {
        "run": str(run_dir), "backbone": model.variant, "image_size": image_size,
        "methods": list(methods), "gradcam_stage": stage,
        "occlusion": {"window": window, "stride": stride, "baseline": "mean colour (0 normalised)"},
        "faithfulness": {"window": window, "random_draws": RANDOM_DRAWS,
                         "mean": _mean_drops(images, methods)},
        "images": images, "skipped": skipped,
    }
    atomic_write_bytes(out_dir / EXPLAIN_JSON, (json.dumps(result, indent=2) + "\n").encode())
    return result


__all__ = ["EXPLAIN_DIRNAME", "EXPLAIN_JSON", "FLAT_TOLERANCE", "METHODS", "Explainer", "Explanation",
           "check_methods", "draw_map", "explain_run", "explanation_figure", "faithfulness",
           "feature_stage", "format_drop", "gradcam_maps", "is_flat", "occlusion_geometry",
           "occlusion_maps"]
