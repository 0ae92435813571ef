"""``finetune evaluate``: a finished run's model on its test split, or on another folder;
``tta=True`` averages the test-time views of ``finetune.deploy.tta`` instead of one view."""

from __future__ import annotations

from pathlib import Path

from ..data import DataSplits, FinetuneDataModule, discover, resolve_data
from ..deploy.tta import tta_views
from ..evaluation import classification_metrics
from ..run_folder import RunError, load_run_model
from .features import predict_probs
from .trainer import eval_batch_size_for, num_workers, select_device


def evaluate_run(run_dir: Path, data: str | None = None, *, tta: bool = False,
                 progress: bool = True) -> dict:
    """Re-evaluate a run's model on its test split, or on every image of ``data``; ``tta``
    adds ``"tta": {"views": [...]}`` to the metrics."""
    model, cfg, splits = load_run_model(run_dir)
    if data is not None:
        splits = _relabelled(data, splits, seed=cfg.seed)
    image_size = cfg.image_size or model.pretrained_cfg.image_size
    device = select_device(cfg)
    dm = FinetuneDataModule(splits, model.pretrained_cfg, image_size=image_size, augment="none",
                            batch_size=cfg.batch_size,
                            eval_batch_size=eval_batch_size_for(cfg.batch_size, device),
                            num_workers=num_workers(cfg))
    dm.setup("test")
    views = tta_views(hflip=cfg.hflip) if tta else None
    probs, labels = predict_probs(model, dm.eval_dataloader("test"), device=device,
                                  desc="evaluate (tta)" if tta else "evaluate",
                                  progress=progress, views=views)
    metrics = classification_metrics(labels.numpy(), probs.numpy(), splits.classes)
    metrics["num_samples"] = int(len(labels))
    metrics["skipped_files"] = list(splits.skipped)
    metrics["data"] = data or "test split"
    if views:
        metrics["tta"] = {"views": views}
    return metrics


def _relabelled(data: str, splits: DataSplits, *, seed: int) -> DataSplits:
    """Every image of ``data`` as a test split, labelled with the run's class indices."""
    new = discover(resolve_data(data), val_fraction=0.0, test_fraction=0.0, seed=seed)
    unknown = sorted(set(new.classes) - set(splits.classes))
    if unknown:
        raise RunError(
            f"'{data}' has classes the run never saw: {', '.join(unknown)}. The run knows "
            f"{', '.join(splits.classes)}; evaluate on folders named after those."
        )
    index = {c: i for i, c in enumerate(splits.classes)}
    samples = [(p, index[new.classes[y]]) for p, y in new.train]
    return DataSplits(classes=splits.classes, train=[], val=[], test=samples,
                      skipped=new.skipped, source=new.source)


__all__ = ["evaluate_run"]
