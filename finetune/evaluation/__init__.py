"""Evaluation: metrics from predicted probabilities, and the report of a run.

* ``metrics``: accuracy, top-5, macro F1, calibration, per-class precision and recall
  (scikit-learn), from labels and probabilities;
* ``report``: ``report/`` of the run folder: confusion matrix and learning curves as PNG,
  ``per_class.csv``, ``summary.md``.
"""

from .metrics import classification_metrics, expected_calibration_error, most_confused_pairs
from .report import write_report

__all__ = ["classification_metrics", "expected_calibration_error", "most_confused_pairs",
           "write_report"]
