"""The interface every backbone offers, and the data that travels with its weights.

A backbone is an ``nn.Module`` with its classifier attached (timm's convention), so a
fine-tuning run never slices ``children()[:-1]``:

    feats  = model.forward_features(x)              # (B, C, h, w)
    pooled = model.forward_head(feats, pre_logits=True)   # (B, num_features)
    logits = model.forward_head(feats)               # (B, num_classes)

``stages()`` lists the backbone from stem to last stage; it is the unit that the
``partial`` strategy unfreezes, and together with ``get_classifier()`` it covers every
parameter exactly once.

A family names where its classifier sits (``classifier_path = "fc"``, or
``"classifier.6"`` for the last layer of a Sequential); ``get_classifier()`` and
``reset_classifier()`` live here once and read that path, so a fresh head takes the old
one's place and the state_dict keys stay the reference's (torchvision's or timm's).
"""

import abc
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from .layers import create_classifier

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class PretrainedCfg:
    """Preprocessing and provenance of a backbone's pretrained weights.

    Preprocessing lives next to the weights so the two cannot drift apart: every
    transform the toolkit builds (training, evaluation, export) reads it from here.
    """

    input_size: tuple[int, int, int] = (3, 224, 224)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"  # "bilinear" | "bicubic" | "nearest"
    crop_pct: float = 0.875  # resize to size / crop_pct, then centre-crop to size
    num_classes: int = 1000
    # Where the weights come from, in the order they are looked for (see _weights.py).
    package: str | None = None  # importable package that ships the file (offline)
    package_file: str | None = None  # glob inside the package folder
    url: str | None = None  # torchvision / timm release URL (torch hub cache name = basename)
    hf_hub_id: str | None = None  # timm's Hugging Face repository
    source: str = "none"  # a word for people: "torchvision", "timm", "efficientnet-pytorch"
    license: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def image_size(self) -> int:
        return self.input_size[-1]

    @property
    def has_weights(self) -> bool:
        return bool(self.package or self.url or self.hf_hub_id)


@dataclass
class Stage:
    """A named group of modules, the unit of partial unfreezing (stem, layer1, ...)."""

    name: str
    modules: list[nn.Module]

    def parameters(self) -> Iterator[nn.Parameter]:
        for module in self.modules:
            yield from module.parameters()

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


class Backbone(nn.Module, metaclass=abc.ABCMeta):
    """Abstract base: subclasses define the layers, the three abstract methods below and
    ``classifier_path``; a subclass that misses a method cannot be instantiated, and one
    that names no classifier cannot even be defined (checked before any training, not at
    the first call hours into a run)."""

    pretrained_cfg: PretrainedCfg = PretrainedCfg()
    variant: str = ""
    # How many of the last stages `partial` unfreezes when the user does not say.
    default_unfreeze: int = 1
    num_features: int = 0
    num_classes: int = 0
    # Dotted path from the model to its final classifier ("fc", "classifier.1"): the
    # reference's name, so that a reset head keeps the reference's state_dict keys.
    classifier_path: str = ""

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        own_head = (
            cls.get_classifier is not Backbone.get_classifier
            and cls.reset_classifier is not Backbone.reset_classifier
        )
        if not cls.classifier_path and not own_head:
            raise TypeError(
                f"{cls.__name__} names no classifier: set classifier_path to the head's "
                f"attribute path (e.g. classifier_path = 'fc'), or override both "
                f"get_classifier and reset_classifier."
            )

    @abc.abstractmethod
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, C, h, w)
        """Feature map before pooling."""

    @abc.abstractmethod
    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool and classify; ``pre_logits=True`` returns the pooled (B, num_features)."""

    def get_classifier(self) -> nn.Module:
        """The final classifier module (the head that `linear` trains)."""
        return self.get_submodule(self.classifier_path)

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier with a fresh one for ``num_classes`` (0: identity).

        Only the final layer changes: dropout or pre-logits layers in front of it (VGG's
        fc6 / fc7, MobileNet v3's hidden layer) keep their weights.
        """
        parent, _, leaf = self.classifier_path.rpartition(".")
        # The first parameter is the stem's: the new head takes its device and dtype.
        like = next(self.parameters())
        head = create_classifier(self.num_features, num_classes, like=like)
        setattr(self.get_submodule(parent), leaf, head)
        self.num_classes = num_classes

    @abc.abstractmethod
    def stages(self) -> list[Stage]:
        """Stem to last stage; with the classifier they cover every parameter once."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def pooled_features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features, (B, num_features): what a linear probe trains on."""
        return self.forward_head(self.forward_features(x), pre_logits=True)
