"""Deployment: export a run's model and predict with it.

* ``predict``: a ``Predictor`` for a run folder or an export folder (``finetune.load``);
* ``export``: ONNX, TorchScript or safetensors, with labels and preprocessing, checked
  against PyTorch on real images before it is called a success.

Loading a run folder goes through ``finetune.run_folder``, never the trainer.
"""

from .predict import Predictor, load

__all__ = ["Predictor", "load"]
