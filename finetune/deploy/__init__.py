"""Deployment: export a run's model and predict with it.

* ``predict``: a ``Predictor`` for a run folder or an export folder (``finetune.load``);
* ``export``: the model with its labels and preprocessing, checked against PyTorch on
  real images before it is called a success;
* ``formats``: the registry of export formats, one module per format.

Loading a run folder goes through ``finetune.run_folder``, never the trainer.
"""

from __future__ import annotations

__all__ = ["Predictor", "load"]


def __getattr__(name: str):
    # On first use: the command line reads the format registry from this package, and
    # predict.py brings albumentations and OpenCV, which `finetune --help` does not need.
    if name in __all__:
        from . import predict

        return getattr(predict, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
