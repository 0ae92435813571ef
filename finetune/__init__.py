"""finetune: transfer learning for image classification on pretrained CNNs.

    from finetune import create_backbone
    model = create_backbone("efficientnet_lite0", pretrained=True, num_classes=5)
"""

from .models import create_backbone, list_models

__version__ = "0.1.0"
__all__ = ["__version__", "create_backbone", "list_models", "load"]


def load(path, *, device="cpu"):
    """A predictor for a run folder or an export folder: ``.predict(images, top_k=5)``
    takes paths, PIL images or (H, W, 3) uint8 RGB arrays (see finetune/deploy/predict.py)."""
    # Imported here: onnxruntime, albumentations and Lightning stay out of `import finetune`.
    from .deploy.predict import load as _load

    return _load(path, device=device)
