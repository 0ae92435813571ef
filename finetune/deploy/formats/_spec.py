"""What an export format is (``ExportFormat``) and the registry that maps names to formats.

A format is one module in this package: its writer, its loader and one
``register_format(ExportFormat(...))`` call. ``finetune.deploy.formats`` imports every
module here whose name does not start with an underscore, so a new file is all a new
format needs: ``finetune export --format``, ``finetune.load`` and the tests parametrised
over ``format_names()`` pick it up.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch

from ...models import Backbone

MODEL_JSON = "model.json"
INPUT_NAME, OUTPUT_NAME = "input", "logits"

# (B, 3, S, S) float32 normalised batch -> (B, C) float32 logits on the CPU
Forward = Callable[[torch.Tensor], torch.Tensor]


class ExportError(ValueError):
    """An export that cannot be made or failed its parity check; nothing was written."""


class Tolerances(NamedTuple):
    probability: float  # bound on max |p_export - p_pytorch|
    logit: float  # bound on max |logit difference|, times max(1, largest |logit|)


# float32: the formats compute the same arithmetic in a different order, which moves
# probabilities by ~1e-7; 1e-4 leaves room for that and for nothing else. Probabilities
# saturate (a confident model gives 0.99999999 with a wrong mean as well as with the
# right one); logits do not: a wrong mean moves them by ~10 %, float32 reordering by ~1e-6.
FLOAT32 = Tolerances(probability=1e-4, logit=1e-3)
# --half: float16 keeps ~3 significant digits in every weight and activation, so
# probabilities move by up to ~1e-3 and logits by ~1 % on ordinary images; these bounds
# still catch a wrong mean, a channel swap or a broken layer.
FLOAT16 = Tolerances(probability=1e-2, logit=5e-2)


@dataclass(frozen=True)
class ExportOptions:
    half: bool = False  # float16 weights and input
    opset: int | None = None  # the operator-set version, for formats that have one


# (model: eval mode, CPU, float16 when half; file to write; example (2, 3, S, S) batch in
# the model's dtype; options) -> None
Writer = Callable[[Backbone, Path, torch.Tensor, ExportOptions], None]
# (model file, model.json content, device) -> Forward
Loader = Callable[[Path, dict, torch.device], Forward]
# (model file, model.json content) -> the package's own Backbone, weights loaded, eval mode
BackboneLoader = Callable[[Path, dict], Backbone]
# (model, options) -> fields the format adds to model.json
Metadata = Callable[[Backbone, ExportOptions], dict]


@dataclass(frozen=True)
class ExportFormat:
    name: str  # --format's value and model.json's "format"
    help: str  # one line in `finetune export --help`
    model_file: str  # the model's file name inside the export folder
    write: Writer
    load: Loader
    load_backbone: BackboneLoader | None = None  # only formats that hold the backbone's weights
    metadata: Metadata | None = None
    half: bool = True  # whether --half applies
    default_opset: int | None = None  # None: the format has no opset and refuses --opset
    tolerances: Tolerances = FLOAT32
    half_tolerances: Tolerances = FLOAT16

    def parity_tolerances(self, half: bool) -> Tolerances:
        return self.half_tolerances if half else self.tolerances

    def options(self, *, half: bool, opset: int | None) -> ExportOptions:
        """The options this format runs with; an option it cannot honour is an error."""
        if opset is not None and self.default_opset is None:
            takers = [f.name for f in _FORMATS.values() if f.default_opset is not None]
            raise ExportError(f"--opset applies to the {', '.join(takers) or 'no'} format only, "
                              f"not {self.name}; drop it.")
        if half and not self.half:
            takers = [f.name for f in _FORMATS.values() if f.half]
            raise ExportError(f"--half applies to the {', '.join(takers)} formats, not "
                              f"{self.name}; drop it or choose one of those.")
        return ExportOptions(half=half, opset=self.default_opset if opset is None else opset)


_FORMATS: dict[str, ExportFormat] = {}


def register_format(spec: ExportFormat) -> ExportFormat:
    """Add ``spec`` to the formats `finetune export` and ``finetune.load`` know."""
    if spec.name in _FORMATS:
        raise ValueError(f"Export format '{spec.name}' is registered twice; give the new one "
                         f"another name.")
    if not spec.name.isidentifier() or spec.name != spec.name.lower():
        raise ValueError(f"Export format name '{spec.name}' must be a lowercase identifier: it "
                         f"is a --format value and the default export folder's name.")
    if "\n" in spec.help or not spec.help:
        raise ValueError(f"Export format '{spec.name}' needs a one-line help, got {spec.help!r}.")
    taken = {f.model_file: f.name for f in _FORMATS.values()}
    if Path(spec.model_file).name != spec.model_file or spec.model_file == MODEL_JSON \
            or spec.model_file in taken:
        raise ValueError(f"Export format '{spec.name}': model_file {spec.model_file!r} must be a "
                         f"plain file name other than {MODEL_JSON} and "
                         f"{', '.join(taken) or 'none yet'}.")
    _FORMATS[spec.name] = spec
    return spec


def format_names() -> tuple[str, ...]:
    """Every registered format's name, in registration order."""
    return tuple(_FORMATS)


def get_format(name: str) -> ExportFormat:
    """The registered format ``name``; an unknown name raises with the valid ones."""
    try:
        return _FORMATS[name]
    except (KeyError, TypeError):
        close = difflib.get_close_matches(str(name), _FORMATS, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ValueError(f"Unknown export format {name!r}.{hint} Valid formats: "
                         f"{', '.join(_FORMATS)}.") from None


def torch_forward(model: torch.nn.Module, device: str | torch.device) -> Forward:
    """A PyTorch module as a ``Forward``: input cast to its device and dtype, logits back
    as float32 on the CPU."""
    device = torch.device(device)
    model = model.to(device).eval()
    dtype = next(model.parameters()).dtype

    def forward(x: torch.Tensor) -> torch.Tensor:
        return model(x.to(device, dtype)).float().cpu()

    return forward
