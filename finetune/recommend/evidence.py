"""The evidence table of a recommendation: each signal, its value, and what it means."""

from __future__ import annotations

from typing import Any

from .decide import Decision, Thresholds
from .plan import Plan


def _e(signal: str, value: Any, meaning: str) -> dict[str, Any]:
    if isinstance(value, float):
        value = round(value, 4)
    return {"signal": signal, "value": value, "meaning": meaning}


def _profile(stages: list[dict], key: str) -> str:
    return " | ".join(f"{s['name']} {s[key]:.2f}" for s in stages if s[key] is not None)


def evidence(signals: dict, amount: dict, decision: Decision, plan: Plan, thr: Thresholds) -> list[dict]:
    out = [
        _e("images", amount["images"], f"the images that train (train + val), {amount['classes']} classes; "
           f"{amount['train_images']} train / {amount['val_images']} val with `finetune run`'s split, "
           f"and {amount['test_images']} test images that only score"),
        _e("per_class_median", amount["per_class_median"],
           f"{decision.amount}: the line is {thr.little_per_class:g} images per class "
           f"(min {amount['per_class_min']}, max {amount['per_class_max']})"),
        _e("imbalance", amount["imbalance"], "largest / smallest class; above 3 `finetune run` weights "
           "the loss by class" if amount["imbalance"] > 3 else "largest / smallest class: balanced enough"),
        _e("image_size_median", f"{amount['median_width']:.0f}x{amount['median_height']:.0f}",
           f"width x height from the file headers; the model sees {signals['image_size']} px"),
        _e("grey_fraction", amount.get("grey_fraction", signals["grey_fraction"]),
           "share of sampled images that are grey (ImageNet is colour)"),
        _e("probe_accuracy", signals["probe_accuracy"],
           f"balanced leave-one-out accuracy of a linear (ridge) classifier on the frozen penultimate "
           f"features of {signals['subsample']} images at {signals['image_size']} px; chance {signals['chance']:.3f}; kappa "
           f"{signals['kappa']:.2f}: what a linear head can expect"),
        _e("probe_by_stage", _profile(signals["stages"], "probe_accuracy"),
           f"label information per depth: best at {signals['best_stage_name']} "
           f"({signals['best_stage_accuracy']:.2f})"
           + (f", {signals['best_stage_accuracy'] - signals['probe_accuracy']:.2f} above the penultimate "
              f"features: the last stages are specialised to ImageNet"
              if signals["best_stage_accuracy"] - signals["probe_accuracy"] > thr.plateau else
              ": deep features suit the task")),
        _e("learning_curve_slope", signals["learning_curve_slope"],
           "probe accuracy gain from half to all of the subsample ("
           + ", ".join(f"{float(k):.0%}: {v:.2f}" for k, v in signals["learning_curve"].items()) + "); "
           + ("still rising: more data would help" if signals["learning_curve_slope"] > 0.02 else "flat: saturated")),
    ]
    if signals["has_batchnorm"]:
        out += [
            _e("shift_by_stage", _profile(signals["stages"], "shift"),
               "per stage, mean over BN layers and channels of the symmetric KL between the data's "
               "activation statistics and the checkpoint's running statistics (0 = identical)"),
            _e("shift_after_early_adabn", _profile(signals["stages"], "shift_after_early_adabn"),
               f"the same for the later stages once the first {signals['early_stages']} stages' BN "
               f"statistics are re-estimated on the data (AdaBN)"),
            _e("shift_pixel", signals["shift_pixel"],
               f"later-stage shift removed by early AdaBN ({signals['shift_later']:.2f} -> "
               f"{signals['shift_later_after_early_adabn']:.2f}): "
               + ("input-level (blur, noise, colour, contrast)" if decision.input_level
                  else "mostly semantic: it persists after re-normalising the early stages"
                  if signals["shift_later_after_early_adabn"] >= thr.semantic_hot
                  else "small either way")),
            _e("adabn_gain", signals["adabn_gain"],
               "penultimate probe accuracy after early AdaBN minus before: what re-estimated early "
               "statistics alone buy"),
        ]
    else:
        out.append(_e("batchnorm", "none",
                      "this backbone has no BatchNorm layers with stored statistics: the shift and "
                      "AdaBN signals are unavailable, similarity falls back to the probe (kappa) alone"))
    out.append(_e("similarity_score", decision.score,
                  f"{decision.similarity}: "
                  + (f"{thr.probe_weight:g} x kappa + {1 - thr.probe_weight:g} x exp(-shift after early "
                     f"AdaBN / {thr.shift_scale:g}); the line is {decision.line:g}"
                     if signals["has_batchnorm"] else f"kappa alone; the line is {decision.line:g}")))
    if plan.estimated_minutes is not None:
        at = plan.hyperparameters["image_size"]["value"]
        speed = signals["speed"][str(at)]
        out.append(_e("estimated_minutes", plan.estimated_minutes,
                      f"wall time of the command below on this machine, from timed batches at "
                      f"{at} px ({speed['forward_ms']:.1f} ms per image inference, "
                      f"{speed['train_ms']:.1f} ms a training step, {speed['load_ms']:.1f} ms decoding)"))
    return out
