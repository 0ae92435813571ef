"""``finetune recommend``: place the data on the strategy grid from what the pretrained
network itself says about it, then refine the cell into a strategy and a command.

    rec = recommend("my_images", "efficientnet_lite0")
    print(rec.format())            # strategy, cell, evidence, thresholds, hyperparameters
    rec.to_json()["command"]       # finetune run --data my_images ... --strategy partial ...

The modules, in the order a recommendation is made:

* ``signals``: measure the data with the checkpoint (BatchNorm shift per stage, AdaBN,
  linear probes per stage, the forward speed);
* ``decide``: the cell and the strategy, a pure function of the signals and ``Thresholds``;
* ``plan``: hyperparameters with their reasons, and the time estimate;
* ``evidence`` and ``result``: the table and the report a person reads;
* ``recommendation``: ``recommend`` ties them together; ``resolve_auto`` serves
  ``--strategy auto``.
"""

from .decide import Decision, Thresholds, decide, similarity_line, similarity_score
from .recommendation import FeatureSource, apply_to_config, build_command, recommend, resolve_auto
from .result import Recommendation

__all__ = ["Decision", "FeatureSource", "Recommendation", "Thresholds", "apply_to_config", "build_command", "decide",
           "recommend", "resolve_auto", "similarity_line", "similarity_score"]
