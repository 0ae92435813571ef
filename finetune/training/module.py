"""The LightningModule: a backbone with its head, trained one phase at a time.

The same module trains on images (``partial``, ``full``) or on cached pooled features
(``linear``): in the second case only the classifier runs, but the checkpoint still
holds the whole model, so evaluation and export never care which path trained it.
"""

from __future__ import annotations

import logging
import math
import zlib

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from ..config import RunConfig
from ..data.sampling import seed_globals
from ..data.transforms import prepare_batch
from ..models import Backbone
from ..strategies import Phase

log = logging.getLogger("finetune")


class FinetuneModule(pl.LightningModule):
    def __init__(
        self,
        model: Backbone,
        phase: Phase,
        cfg: RunConfig,
        *,
        classes: list[str],
        class_weights: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.phase = phase
        self.cfg = cfg
        self.classes = list(classes)
        self.register_buffer("class_weights", class_weights, persistent=False)
        self.on_features = phase.feature_cache
        phase.freeze(model)
        self.history: list[dict] = []
        self.images_seen = 0  # training examples processed, for images_per_s
        self._train_sums = {"loss": 0.0, "correct": 0, "n": 0}
        self._val_sums = {"loss": 0.0, "correct": 0, "n": 0}
        self._validated = False

    # ------------------------------------------------------------------ modes
    def train(self, mode: bool = True) -> FinetuneModule:
        """Train mode where the phase trains; frozen stages stay in eval mode."""
        super().train(mode)
        if mode:
            self.phase.apply_bn_policy(self.model)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.on_features:
            return self.model.get_classifier()(x)  # (B, num_features) -> (B, C)
        return self.model(prepare_batch(x, self.model.pretrained_cfg))  # (B, 3, H, W) -> (B, C)

    def _loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(
            logits.float(), y, weight=self.class_weights, label_smoothing=self.cfg.label_smoothing
        )

    # ------------------------------------------------------------------ steps
    def on_train_epoch_start(self) -> None:
        # Lightning leaves modules in the mode it finds them (after validation it restores
        # the mode from before it). A phase after a head-only one (lp-ft's fine-tuning)
        # would find the network in eval mode, its BatchNorm statistics frozen, and a
        # resumed run, whose probe did not run in this process, would not: set it here.
        self.train()
        self.phase.check_bn_policy(self.model)
        # Dropout and drop-path draw from the global generators: reseeded from where the
        # run is, so that an epoch replayed after a resume draws what it drew the first time.
        seed_globals(self.cfg.seed, zlib.crc32(self.phase.name.encode()), self.current_epoch,
                     self.global_rank)
        self._train_sums = {"loss": 0.0, "correct": 0, "n": 0}
        self._validated = False  # whether this epoch's validation ran (and logged the train sums)

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        loss = self._loss(logits, y)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"Loss is {loss.item()} at epoch {self.current_epoch}, step {self.global_step} "
                f"of phase '{self.phase.name}'. The learning rate ({self.phase.lr:g}) is likely "
                f"too high for this data: lower --lr, or check the images for corrupt values."
            )
        n = y.numel()
        self.images_seen += n
        self._train_sums["loss"] += loss.detach().item() * n
        self._train_sums["correct"] += (logits.argmax(1) == y).sum().item()
        self._train_sums["n"] += n
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=False, batch_size=n)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits.float(), y, reduction="sum")
        self._val_sums["loss"] += loss.item()
        self._val_sums["correct"] += (logits.argmax(1) == y).sum().item()
        self._val_sums["n"] += y.numel()

    def on_validation_epoch_start(self) -> None:
        self._val_sums = {"loss": 0.0, "correct": 0, "n": 0}

    def _global_sums(self, *sums: dict) -> list[dict]:
        """Under DDP each rank saw a shard of each split: the sums of every rank added up
        (every rank calls the hooks that ask, so the collective cannot deadlock)."""
        local = torch.tensor([x for d in sums for x in (d["loss"], d["correct"], d["n"])],
                             dtype=torch.float32 if self.device.type == "mps" else torch.float64,
                             device=self.device)  # MPS has no float64
        total = self.trainer.strategy.reduce(local, reduce_op="sum").tolist()
        return [{"loss": total[i], "correct": total[i + 1], "n": int(total[i + 2])}
                for i in range(0, len(total), 3)]

    def _log_train_epoch(self, t: dict) -> dict:
        """The epoch's mean train loss and accuracy, logged per epoch (the step losses are
        ``train_loss``); already global, sync_dist only keeps the ranks in step."""
        values = {"train_loss_epoch": t["loss"] / t["n"], "train_accuracy": t["correct"] / t["n"]}
        self.log_dict(values, sync_dist=True)
        return {"train_loss": values["train_loss_epoch"], "train_accuracy": values["train_accuracy"]}

    def on_train_epoch_end(self) -> None:
        if not self._validated:  # no validation split: the train sums are logged here instead
            (t,) = self._global_sums(self._train_sums)
            if t["n"]:
                self._log_train_epoch(t)

    def on_validation_epoch_end(self) -> None:
        s, t = self._global_sums(self._val_sums, self._train_sums)
        if s["n"] == 0:
            return
        val_loss, val_acc = s["loss"] / s["n"], s["correct"] / s["n"]
        if not math.isfinite(val_loss):
            # Raised before ModelCheckpoint runs (it saves in on_validation_end), so a
            # diverged model never becomes best.ckpt or last.ckpt.
            raise FloatingPointError(
                f"Validation loss is {val_loss} after epoch {self.current_epoch}, step "
                f"{self.global_step} of phase '{self.phase.name}': the weights diverged. The "
                f"learning rate ({self.phase.lr:g}) is likely too high: lower --lr. The last "
                f"checkpoint with finite weights is kept."
            )
        # Already global; sync_dist keeps Lightning's checkpoint monitor in step on every rank.
        self.log("val_loss", val_loss, prog_bar=True, sync_dist=True)
        self.log("val_accuracy", val_acc, prog_bar=True, sync_dist=True)
        if self.trainer.sanity_checking:
            return
        row = {"epoch": len(self.history), "phase": self.phase.name,
               "val_loss": val_loss, "val_accuracy": val_acc,
               "lr": self.trainer.optimizers[0].param_groups[0]["lr"]}
        if t["n"]:
            row.update(self._log_train_epoch(t))
            self._validated = True
        self.history.append(row)

    # ------------------------------------------------------------------ optimizer
    def configure_optimizers(self):
        groups = self.phase.param_groups(self.model, self.cfg)
        n_train = sum(p.numel() for g in groups for p in g["params"])
        n_decay = sum(p.numel() for g in groups if g["weight_decay"] > 0 for p in g["params"])
        log.info("Optimizer AdamW: %s trainable parameters in %d groups (%s with weight decay); "
                 "lr %s", f"{n_train:,}", len(groups), f"{n_decay:,}",
                 ", ".join(f"{g['name']}={g['lr']:.2g}" for g in groups if "no_decay" not in g["name"]))
        optimizer = torch.optim.AdamW(groups)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        per_epoch = max(1, total // max(1, self.phase.epochs))
        warmup = min(total - 1, int(round(self.phase.warmup_epochs * per_epoch)))

        def schedule(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            progress = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------ checkpoint
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Last line of defence (e.g. no val split to catch divergence): never save NaN
        # weights. Only what trains can diverge; frozen tensors are skipped to keep it cheap.
        bad = next((k for k, p in self.model.named_parameters()
                    if p.requires_grad and not bool(torch.isfinite(p).all())), None)
        if bad is not None:
            raise FloatingPointError(
                f"Not saving a checkpoint at epoch {self.current_epoch}, step {self.global_step} "
                f"of phase '{self.phase.name}': '{bad}' holds NaN or Inf (the training diverged). "
                f"Lower --lr; the last checkpoint with finite weights is kept."
            )
        # What a resume must rebuild identically: checked in on_load_checkpoint.
        checkpoint["finetune"] = {
            "phase": self.phase.name,
            "trainable_stages": [s.name for s in self.phase.trainable_stages(self.model)],
            "classes": self.classes,
            "backbone": self.model.variant,
            "history": self.history,
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        saved = checkpoint.get("finetune")
        if saved is None:
            raise ValueError("This checkpoint was not written by finetune; cannot resume from it.")
        if saved["classes"] != self.classes:
            raise ValueError(
                f"The checkpoint was trained on classes {saved['classes']}, but the data now "
                f"has {self.classes}. Resume with the same data, or start a new run."
            )
        mine = [s.name for s in self.phase.trainable_stages(self.model)]
        if saved["phase"] != self.phase.name or saved["trainable_stages"] != mine:
            raise ValueError(
                f"The checkpoint is from phase '{saved['phase']}' training "
                f"{saved['trainable_stages']}, but this run's phase '{self.phase.name}' trains "
                f"{mine}. Resume with the same --strategy and --unfreeze."
            )
        self.history = list(saved.get("history", []))


def count_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
