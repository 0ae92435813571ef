"""TorchScript: ``model.pt``, a traced module with a dynamic batch, for ``torch.jit.load``.

``torch.jit.load``'s unpickler builds TorchScript types only: an archive that names any
other Python callable is refused (``UnsafeCheckpointError``), as a pickled checkpoint is.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import torch

from ...io import atomic_write_bytes
from ...models import Backbone, UnsafeCheckpointError
from ._spec import ExportFormat, ExportOptions, Forward, register_format


def write(model: Backbone, path: Path, example: torch.Tensor, options: ExportOptions) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TracerWarnings as for ONNX; "jit is deprecated"
        # Tracing, not scripting: torch.jit.script is deprecated and cannot compile modules
        # that carry dataclasses (the pretrained config). check_trace would retrace at the
        # same batch size; parity checks at two others instead. _store_inputs=False keeps
        # the example images (real data) out of the archive.
        traced = torch.jit.trace(model, example, check_trace=False, _store_inputs=False)
        # Serialised in memory, written by Python: a full disk is an OSError naming the file.
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer)
    atomic_write_bytes(path, buffer.getbuffer())


def load(path: Path, meta: dict, device: torch.device) -> Forward:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # "torch.jit is deprecated": still the format
            module = torch.jit.load(str(path), map_location=device)
    except RuntimeError as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UnsafeCheckpointError(
            f"Refusing to load '{path}': torch.jit.load cannot read it as a TorchScript archive "
            f"({first_line}). It is corrupt, or holds Python objects that would need arbitrary "
            f"code to load. Re-export it with `finetune export RUN_DIR --format torchscript`."
        ) from err
    module.eval()
    # A traced module has no parameters to read its dtype from: model.json records it.
    dtype = getattr(torch, meta.get("input", {}).get("dtype", "float32"))

    def forward(x: torch.Tensor) -> torch.Tensor:
        return module(x.to(device, dtype)).float().cpu()

    return forward


register_format(ExportFormat(
    name="torchscript",
    help="torch.jit.load from C++ or Python without this package, dynamic batch",
    model_file="model.pt",
    write=write,
    load=load,
))
