"""What a backbone is made of: its layer table, parameter count and multiply-accumulates.

    summarize("alexnet_2012")        # {"layers": [{"name", "type", "output_shape", "params", ...}], ...}
    catalog()                        # one row per registered backbone: params, MACs, weights
    print(format_summary(summarize("vgg16")))

The table comes from forward hooks on a single forward pass (batch 1, eval mode, no
grad), so it lists layers in the order they run. Each convolution, linear and pooling
layer is a row. A layer that keeps its input's shape (BatchNorm, activation, LRN,
dropout) and takes a row's output directly is folded into that row (``folded``), its
parameters added to the row's; one whose input no row produced (the BatchNorm after
DenseNet's concatenation, the ReLU after a residual addition) is a row of its own. The
rows always add up to the model's parameter count.

MACs are multiply-accumulates of the convolutions and linear layers, the convention of
the papers' "FLOPs" / "mult-adds" tables (and of torchvision's "GFLOPS"):

    conv   = output elements * (in_channels / groups) * kH * kW
    linear = output elements * in_features

BatchNorm (folded into the preceding convolution at inference), activations, pooling,
residual additions and the products of attention gates are not counted: together they
are a few percent of the total and the papers leave them out too. Biases are not counted.

Shapes and MACs do not depend on the weights, so models built by name live on the
``meta`` device: no memory, no initialisation, and a forward pass that only propagates
shapes. That is what makes ``catalog()`` take seconds for the whole zoo.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from ._base import Backbone
from ._registry import create_backbone, list_models, model_family, resolve_name
from ._weights import local_weights_file

__all__ = ["catalog", "format_catalog", "format_summary", "meta_backbone", "summarize"]

# Layers that get a row of their own; any other leaf that keeps its input's shape
# (BatchNorm, ReLU, LRN, Dropout, ...) is folded into the row whose output it transforms.
_CONV = (nn.modules.conv._ConvNd,)
_LINEAR = (nn.Linear,)
_POOL = (
    nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._AdaptiveAvgPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd,
    nn.modules.pooling._LPPoolNd,
)
_MAIN = _CONV + _LINEAR + _POOL

# Short names for folded layers in the printed table.
_SHORT = {
    "BatchNorm1d": "BN", "BatchNorm2d": "BN", "LocalResponseNorm": "LRN",
    "Hardswish": "HSwish", "Hardsigmoid": "HSigmoid", "LeakyReLU": "LReLU",
}


# ----------------------------------------------------------------------- meta device


class _MetaShortcuts(TorchFunctionMode):
    """Skip work whose result nobody reads on the ``meta`` device.

    Meta tensors carry shapes, not values, yet PyTorch still runs random initialisation
    and BatchNorm on them through Python decompositions (about 1 ms a call, and the
    first one imports the compiler stack). Initialisers and in-place fills give their
    tensor back untouched, shape-preserving layers give their input back, and a linear
    layer returns an empty tensor of its output shape; shapes stay exactly what the real
    ops would produce. Tensors on any other device pass through unchanged.
    """

    _KEEP_INPUT = {
        torch.Tensor.normal_, torch.Tensor.uniform_, torch.Tensor.fill_, torch.Tensor.zero_,
        torch.Tensor.erfinv_, torch.Tensor.clamp_, torch.Tensor.mul_, torch.Tensor.add_,
        torch.Tensor.copy_, torch.Tensor.exponential_,
        F.batch_norm, F.layer_norm, F.group_norm, F.local_response_norm, F.dropout,
        F.relu, F.relu6, F.hardtanh, F.silu, F.hardswish, F.hardsigmoid, F.gelu, F.elu,
        F.leaky_relu, F.selu, F.prelu, torch.relu_,
    }

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        keep = func in self._KEEP_INPUT or getattr(func, "__module__", None) == "torch.nn.init"
        if keep or func is F.linear:
            first = args[0] if args else next(iter(kwargs.values()), None)
            if isinstance(first, torch.Tensor) and first.is_meta:
                if keep:
                    return first
                weight = args[1] if len(args) > 1 else kwargs["weight"]
                return first.new_empty((*first.shape[:-1], weight.shape[0]))
        return func(*args, **kwargs)


def meta_backbone(name: str, **kwargs) -> nn.Module:
    """Build backbone ``name`` on the meta device: no weight memory, no initialisation.

    A model whose constructor needs real values (some timm models turn tensors into
    Python numbers) is built on the CPU instead. Unknown names raise ``ValueError``
    with the nearest valid ones.
    """
    name = resolve_name(name)
    try:
        with torch.device("meta"), _MetaShortcuts():
            return create_backbone(name, **kwargs)
    except ValueError:
        raise
    except (RuntimeError, NotImplementedError):
        return create_backbone(name, **kwargs)


def _on_meta(model: nn.Module) -> bool:
    return any(t.is_meta for t in model.parameters())


# ----------------------------------------------------------------------- the hooks


def _macs(module: nn.Module, inputs: tuple, output: torch.Tensor) -> int:
    """Multiply-accumulates of one call, per image (see the module docstring)."""
    batch = output.shape[0] if output.dim() > 1 else 1
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        kernel = torch.Size(module.kernel_size).numel()
        return inputs[0].numel() // batch * (module.out_channels // module.groups) * kernel
    if isinstance(module, _CONV):
        kernel = torch.Size(module.kernel_size).numel()
        return output.numel() // batch * (module.in_channels // module.groups) * kernel
    if isinstance(module, _LINEAR):
        return output.numel() // batch * module.in_features
    return 0


def _pair(value) -> str:
    a, b = (value, value) if isinstance(value, int) else tuple(value)[:2]
    return f"{a}x{b}"


def _detail(module: nn.Module) -> str:
    """Kernel, stride and groups, as the papers' tables write them: ``11x11/4, 2 groups``."""
    if isinstance(module, _CONV):
        k, s = module.kernel_size, module.stride
        text = f"{_pair(k)}" if len(k) == 2 else f"k{k[0]}"
        if max(s) > 1:
            text += f"/{s[0]}"
        if module.groups > 1:
            depthwise = module.groups == module.in_channels
            text += ", depthwise" if depthwise else f", {module.groups} groups"
        return text
    if isinstance(module, (nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd)):
        stride = module.stride if module.stride is not None else module.kernel_size
        s = stride if isinstance(stride, int) else stride[0]
        return f"{_pair(module.kernel_size)}" + (f"/{s}" if s > 1 else "")
    if isinstance(module, (nn.modules.pooling._AdaptiveAvgPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd)):
        return f"to {_pair(module.output_size)}"
    if isinstance(module, _LINEAR):
        return f"from {module.in_features}"
    return ""


class _Recorder:
    """Forward hooks on every leaf module that build the rows in execution order."""

    def __init__(self, model: nn.Module) -> None:
        self.rows: list[dict] = []
        self.counted: set[int] = set()  # ids of parameters already in a row
        self._last_output: torch.Tensor | None = None  # what the last row produced
        self._names = {id(m): name for name, m in model.named_modules()}
        self._handles = [
            m.register_forward_hook(self._hook)
            for m in model.modules() if not any(True for _ in m.children())
        ]

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()

    def _new_params(self, module: nn.Module) -> int:
        fresh = [p for p in module.parameters() if id(p) not in self.counted]
        self.counted.update(id(p) for p in fresh)
        return sum(p.numel() for p in fresh)

    def _hook(self, module: nn.Module, inputs: tuple, output) -> None:
        if isinstance(output, (tuple, list)):
            output = next((o for o in output if isinstance(o, torch.Tensor)), None)
        if not isinstance(output, torch.Tensor):
            return
        first = inputs[0] if inputs and isinstance(inputs[0], torch.Tensor) else None
        # Fold a shape-keeping layer into the row whose very output it takes.
        if (
            not isinstance(module, _MAIN) and self.rows and first is not None
            and first is self._last_output and output.shape == first.shape
        ):
            row = self.rows[-1]
            row["params"] += self._new_params(module)
            if not isinstance(module, nn.Identity):
                row["folded"].append(type(module).__name__)
            self._last_output = output
            return
        if isinstance(module, nn.Identity):
            return
        self.rows.append({
            "name": self._names[id(module)],
            "type": type(module).__name__,
            "detail": _detail(module),
            "folded": [],
            "output_shape": list(output.shape[1:]),
            "params": self._new_params(module),
            "macs": _macs(module, inputs, output),
        })
        self._last_output = output


def _stage_of(model: nn.Module) -> dict[int, str]:
    """Module id -> the name of the stage (or "head") that holds it."""
    owner: dict[int, str] = {}
    if isinstance(model, Backbone):
        for stage in model.stages():
            for module in stage.modules:
                for sub in (getattr(module, "owner", module),) + tuple(module.modules()):
                    owner.setdefault(id(sub), stage.name)
        for sub in model.get_classifier().modules():
            owner[id(sub)] = "head"
    return owner


def _input_shape(model: nn.Module, input_size) -> tuple[int, int, int]:
    cfg = getattr(model, "pretrained_cfg", None)
    default = tuple(cfg.input_size) if cfg is not None else (3, 224, 224)
    if input_size is None:
        return default
    if isinstance(input_size, int):
        return (default[0], input_size, input_size)
    size = tuple(input_size)
    return size if len(size) == 3 else (default[0], *size[-2:])


def _run(model: nn.Module, shape: tuple[int, int, int]) -> _Recorder:
    like = next(model.parameters(), None)
    device = like.device if like is not None else torch.device("cpu")
    dtype = like.dtype if like is not None and like.is_floating_point() else torch.float32
    recorder = _Recorder(model)
    try:
        with torch.no_grad(), (_MetaShortcuts() if device.type == "meta" else nullcontext()):
            model(torch.zeros((1, *shape), device=device, dtype=dtype))
    finally:
        recorder.remove()
    return recorder


def summarize(
    model_or_name: nn.Module | str,
    *,
    input_size: int | tuple[int, ...] | None = None,
) -> dict:
    """The layer table of a model (or of backbone ``name``, built on the meta device).

    Returns ``{"name", "input_size": [C, H, W], "layers": [...], "total_params",
    "trainable_params", "macs", "stages": [{"name", "params"}], "default_unfreeze"}``
    where each layer is ``{"name", "type", "detail", "folded", "stage", "output_shape"
    ([C, H, W] or [F]), "params", "macs"}``. ``input_size`` defaults to the model's
    pretrained configuration; an int N means C x N x N.

    Parameters that no executed layer owns (auxiliary heads that ``forward`` skips,
    tensors registered on containers) get rows without an output shape, so the rows'
    params always add up to ``total_params``. A meta model whose forward pass needs
    real values is moved to the CPU with uninitialised weights first.
    """
    model = meta_backbone(model_or_name) if isinstance(model_or_name, str) else model_or_name
    shape = _input_shape(model, input_size)
    was_training = model.training
    model.eval()
    try:
        try:
            recorder = _run(model, shape)
        except (RuntimeError, NotImplementedError) as err:
            # Only an op that needs values ("... meta tensors", "'Meta' backend") earns
            # a second, real pass; a too-small input fails the same way on any device.
            if not (_on_meta(model) and "meta" in str(err).lower()):
                raise _too_small(model, shape, err) from None
            model.to_empty(device="cpu")
            try:
                recorder = _run(model, shape)
            except RuntimeError as err_cpu:
                raise _too_small(model, shape, err_cpu) from None
    finally:
        model.train(was_training)

    rows = recorder.rows
    for name, module in model.named_modules():
        own = [(k, p) for k, p in module.named_parameters(recurse=False) if id(p) not in recorder.counted]
        if own:
            recorder.counted.update(id(p) for _, p in own)
            # A leaf's parameters are counted when it runs; a container's own tensors
            # (ViT's pos_embed, ConvNeXt's layer-scale gamma) are used in its forward.
            is_leaf = not any(True for _ in module.children())
            rows.append({
                "name": name or "(model)", "type": type(module).__name__,
                "detail": "not run by forward()" if is_leaf else ", ".join(k for k, _ in own),
                "folded": [], "output_shape": None,
                "params": sum(p.numel() for _, p in own), "macs": 0,
            })
    modules = dict(model.named_modules())
    stage_of = _stage_of(model)
    for row in rows:
        row["stage"] = stage_of.get(id(modules.get(row["name"], model)), "")

    result = {
        "name": getattr(model, "variant", "") or type(model).__name__,
        "input_size": list(shape),
        "layers": rows,
        "total_params": sum(p.numel() for p in model.parameters()),
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "macs": sum(row["macs"] for row in rows),
        "stages": [],
        "default_unfreeze": None,
    }
    if isinstance(model, Backbone):
        result["stages"] = [{"name": s.name, "params": s.num_params()} for s in model.stages()]
        result["stages"].append(
            {"name": "head", "params": sum(p.numel() for p in model.get_classifier().parameters())}
        )
        result["default_unfreeze"] = model.default_unfreeze
    return result


def _too_small(model: nn.Module, shape: tuple[int, ...], err: Exception) -> ValueError:
    name = getattr(model, "variant", "") or type(model).__name__
    first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return ValueError(
        f"Cannot run {name} on a {'x'.join(map(str, shape))} input: {first_line}. "
        f"The input is probably too small for its downsampling; use a larger --input-size."
    )


# ------------------------------------------------------------------------ catalog


def catalog() -> list[dict]:
    """Every registered backbone: family, params, MACs at its default input size, and
    where its pretrained weights come from and whether they are on this machine now."""
    rows = []
    for name in list_models():
        model = meta_backbone(name)
        summary = summarize(model)
        cfg = model.pretrained_cfg
        rows.append({
            "name": name,
            "family": model_family(name),
            "params": summary["total_params"],
            "macs": summary["macs"],
            "input_size": cfg.image_size,
            "weights": cfg.source,
            "weights_offline": local_weights_file(cfg) is not None,
        })
    return rows


# ----------------------------------------------------------------------- printing


def _shape_text(shape: list[int] | None) -> str:
    return "-" if shape is None else " x ".join(str(d) for d in shape)


def _type_text(row: dict) -> str:
    text = row["type"] + (f" {row['detail']}" if row["detail"] else "")
    if row["folded"]:
        text += " +" + "+".join(_SHORT.get(t, t) for t in row["folded"])
    return text


def _table(header: list[str], lines: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *lines]) for i in range(len(header))]
    out = []
    for cells in [header, *lines]:
        parts = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))]
        out.append("  ".join(parts).rstrip())
    return out


def format_summary(summary: dict) -> str:
    """The lecture table: stage, layer, type, output volume, params, MACs; totals last."""
    header = ["stage", "layer", "type", "output", "params", "MACs"]
    lines = [
        [row["stage"], row["name"], _type_text(row), _shape_text(row["output_shape"]),
         f"{row['params']:,}", f"{row['macs']:,}"]
        for row in summary["layers"]
    ]
    size = " x ".join(map(str, summary["input_size"]))
    text = [f"{summary['name']}, input {size}"]
    text += _table(header, lines, right={4, 5})
    text.append(
        f"Total: {summary['total_params']:,} parameters ({summary['trainable_params']:,} trainable), "
        f"{summary['macs'] / 1e9:.3f} GMACs (conv + linear multiply-accumulates per image)"
    )
    if summary["stages"]:
        k = summary["default_unfreeze"]
        text.append(f"Stages (partial trains the last {k} and the head by default):")
        *body, head = summary["stages"]
        lines = [[s["name"], f"{s['params']:,}", "trains" if i >= len(body) - k else "frozen"]
                 for i, s in enumerate(body)]
        lines.append([head["name"], f"{head['params']:,}", "trains (new)"])
        text += ["  " + line for line in _table(["stage", "params", "partial"], lines, right={1})]
    return "\n".join(text)


def format_catalog(rows: list[dict]) -> str:
    header = ["name", "family", "params", "GMACs", "size", "weights"]
    lines = [
        [r["name"], r["family"], f"{r['params']:,}", f"{r['macs'] / 1e9:.3f}", str(r["input_size"]),
         f"{r['weights']} ({'offline' if r['weights_offline'] else 'download'})"
         if r["weights"] != "none" else "none"]
        for r in rows
    ]
    text = _table(header, lines, right={2, 3, 4})
    text.append("GMACs: conv + linear multiply-accumulates per image at the default size. "
                "Any timm model also works as timm:<name>.")
    return "\n".join(text)
