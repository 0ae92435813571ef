"""Export formats: one module per format, each registering one ``ExportFormat``.

    finetune/deploy/formats/onnx.py         model.onnx, for onnxruntime
    finetune/deploy/formats/torchscript.py  model.pt, for torch.jit.load
    finetune/deploy/formats/safetensors.py  model.safetensors, the backbone's weights

Every module here whose name does not start with an underscore is imported below, so
adding a format is adding one file that ends with ``register_format(ExportFormat(...))``.
The modules import only what ``import finetune`` has loaded already (torch, the models);
onnx and onnxruntime load inside the writer and the loader, so that the command line,
which lists the formats in its help, stays light.
"""

from __future__ import annotations

import importlib
import pkgutil

from ._spec import (
    FLOAT16,
    FLOAT32,
    INPUT_NAME,
    MODEL_JSON,
    OUTPUT_NAME,
    ExportError,
    ExportFormat,
    ExportOptions,
    Forward,
    Tolerances,
    format_names,
    get_format,
    register_format,
    torch_forward,
)

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")):
    importlib.import_module(f"{__name__}.{_module}")

__all__ = [
    "FLOAT16",
    "FLOAT32",
    "INPUT_NAME",
    "MODEL_JSON",
    "OUTPUT_NAME",
    "ExportError",
    "ExportFormat",
    "ExportOptions",
    "Forward",
    "Tolerances",
    "format_names",
    "get_format",
    "register_format",
    "torch_forward",
]
