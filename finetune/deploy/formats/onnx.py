"""ONNX: ``model.onnx``, batch axis dynamic, checked by ``onnx.checker``; loaded with
onnxruntime's CPU provider whatever ``device`` says."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import torch

from ...io import atomic_write_bytes
from ...models import Backbone
from ._spec import (
    INPUT_NAME,
    OUTPUT_NAME,
    ExportError,
    ExportFormat,
    ExportOptions,
    Forward,
    register_format,
)

DEFAULT_OPSET = 17  # supported by every maintained ONNX runtime; --opset to change


def write(model: Backbone, path: Path, example: torch.Tensor, options: ExportOptions) -> None:
    import onnx

    opset = options.opset or DEFAULT_OPSET
    with warnings.catch_warnings(), torch.no_grad():
        # TracerWarnings: TF-"same" padding reads the input's height and width, which the
        # export fixes (only the batch axis is dynamic), so the traced constants are right.
        # The dynamo exporter needs onnxscript, which is not a dependency; the TorchScript-
        # based one handles these CNNs, and parity checks its output.
        warnings.simplefilter("ignore")
        # Serialised in memory, written by Python: a full disk is an OSError naming the file.
        buffer = io.BytesIO()
        try:
            torch.onnx.export(
                model, (example,), buffer, dynamo=False, opset_version=opset,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                do_constant_folding=True,
            )
        except (RuntimeError, ValueError) as err:
            if "opset" in str(err).lower():
                raise ExportError(f"--opset {opset} is not supported by this PyTorch's ONNX "
                                  f"exporter ({err}). Try --opset {DEFAULT_OPSET}.") from err
            raise
    atomic_write_bytes(path, buffer.getbuffer())
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as err:
        raise ExportError(f"The ONNX model fails onnx.checker (full check): {err}") from err


def load(path: Path, meta: dict, device: torch.device) -> Forward:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    dtype = np.float16 if inp.type == "tensor(float16)" else np.float32

    def forward(x: torch.Tensor) -> torch.Tensor:
        (logits,) = session.run(None, {inp.name: x.numpy().astype(dtype)})
        return torch.from_numpy(logits).float()

    return forward


def metadata(model: Backbone, options: ExportOptions) -> dict:
    return {"opset": options.opset or DEFAULT_OPSET}


register_format(ExportFormat(
    name="onnx",
    help="onnxruntime or any ONNX runtime, dynamic batch",
    model_file="model.onnx",
    write=write,
    load=load,
    metadata=metadata,
    default_opset=DEFAULT_OPSET,
))
