"""finetune: transfer learning for image classification on pretrained CNNs.

    from finetune import create_backbone
    model = create_backbone("efficientnet_lite0", pretrained=True, num_classes=5)
"""

from .models import create_backbone, list_models

__version__ = "0.1.0"
__all__ = ["__version__", "create_backbone", "list_models"]
