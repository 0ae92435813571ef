"""Export formats: one module per format, each registering one ``ExportFormat``; the
module's docstring says what its format is for.

Every module here whose name does not start with an underscore is imported below, so
adding a format is adding one file that ends with ``register_format(ExportFormat(...))``.
The command line imports this package for ``export --help``, so a format module imports
at its top only what ``import finetune`` loads anyway (torch, the models) and small
libraries (safetensors, ~1 ms); a runtime such as onnx or onnxruntime is imported inside
the writer or the loader.
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
