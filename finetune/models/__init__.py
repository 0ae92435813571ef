"""The classic CNNs, one family per file, registered by name.

    from finetune.models import create_backbone
    model = create_backbone("resnet50", pretrained=True, num_classes=5)
"""

from . import (  # noqa: F401  (importing a family registers its models)
    alexnet,
    densenet,
    efficientnet,
    googlenet,
    mobilenet,
    resnet,
    shufflenet,
    vgg,
    zfnet,
)
from ._base import Backbone, PretrainedCfg, Stage
from ._builder import build_backbone, count_params, load_weights
from ._registry import (
    TIMM_PREFIX,
    create_backbone,
    is_model,
    list_models,
    model_family,
    register_model,
    resolve_name,
)
from ._weights import (
    UnsafeCheckpointError,
    WeightsNotFoundError,
    load_state_dict_file,
    resolve_pretrained,
)

__all__ = [
    "Backbone",
    "PretrainedCfg",
    "Stage",
    "TIMM_PREFIX",
    "UnsafeCheckpointError",
    "WeightsNotFoundError",
    "build_backbone",
    "count_params",
    "create_backbone",
    "is_model",
    "list_models",
    "load_state_dict_file",
    "load_weights",
    "model_family",
    "register_model",
    "resolve_name",
    "resolve_pretrained",
]
