"""safetensors: ``model.safetensors``, the backbone's weights with its trained head. They
reload as the package's own backbone (``finetune.deploy.predict.load_backbone``) and, for
timm backbones, as the timm model itself."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save

from ...io import atomic_write_bytes
from ...models import TIMM_PREFIX, Backbone, create_backbone, load_state_dict_file, load_weights
from ._spec import ExportFormat, ExportOptions, Forward, register_format, torch_forward


def write(model: Backbone, path: Path, example: torch.Tensor, options: ExportOptions) -> None:
    state = model.state_dict()
    if model.variant.startswith(TIMM_PREFIX):
        # timm's own keys, so the file loads into timm.create_model(...) as is;
        # TimmBackbone.adapt_state_dict maps them back when finetune loads it.
        prefix = "model."
        state = {k[len(prefix):]: v for k, v in state.items()}
    # Cloned: safetensors refuses tensors that share memory, which a state_dict may hold.
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}
    # Serialised in memory, written by Python: a full disk is an OSError naming the file.
    data = save(tensors, metadata={"format": "pt", "backbone": model.variant,
                                   "num_classes": str(model.num_classes)})
    atomic_write_bytes(path, data)


def load_backbone(path: Path, meta: dict) -> Backbone:
    model = create_backbone(meta["backbone"], num_classes=len(meta["labels"]))
    # float16 (--half) tensors are cast to the model's float32 as they are copied in.
    load_weights(model, load_state_dict_file(path), f"export {path}")
    return model.eval()


def load(path: Path, meta: dict, device: torch.device) -> Forward:
    return torch_forward(load_backbone(path, meta), device)


def metadata(model: Backbone, options: ExportOptions) -> dict:
    variant, n = model.variant, model.num_classes
    timm_name = variant[len(TIMM_PREFIX):] if variant.startswith(TIMM_PREFIX) else None
    return {"weights": {
        "keys": "timm" if timm_name else "finetune",
        "timm_model": timm_name,
        "dtype": "float16" if options.half else "float32",
        "load": (f"timm.create_model({timm_name!r}, num_classes={n}) + load_state_dict"
                 if timm_name else
                 f"finetune.create_backbone({variant!r}, num_classes={n}) + "
                 f"finetune.models.load_weights"),
    }}


register_format(ExportFormat(
    name="safetensors",
    help="weights that reload as the backbone, and as the timm model",
    model_file="model.safetensors",
    write=write,
    load=load,
    load_backbone=load_backbone,
    metadata=metadata,
))
