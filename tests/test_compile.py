"""``--compile``: torch.compile on the phases that train the backbone, in place, so that
checkpoints keep the plain model's parameter names."""

from __future__ import annotations

import pytest
import torch

from finetune.config import RunConfig
from finetune.training import run
from finetune.training.trainer import quiet_lightning


def _cfg(data, out, **kw) -> RunConfig:
    base = dict(data=str(data), output=str(out), backbone="resnet18", weights="none",
                image_size=32, batch_size=16, num_workers=0, epochs=1, seed=0)
    base.update(kw)
    return RunConfig(**base)


@pytest.mark.slow
def test_compile_applies_to_backbone_phases_only(photos_dir, tmp_path, monkeypatch):
    compiled = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *a, **k: compiled.append(self))
    with quiet_lightning():
        run(_cfg(photos_dir, tmp_path / "lpft", strategy="lp-ft", lp_epochs=1, compile=True),
            progress=False)
    # lp-ft: the cached-feature probe is not compiled, the fine-tuning phase is, once.
    assert [type(m).__name__ for m in compiled] == ["ResNet"]
    compiled.clear()
    with quiet_lightning():
        run(_cfg(photos_dir, tmp_path / "partial", strategy="partial", unfreeze=1), progress=False)
    assert compiled == []  # off by default


@pytest.mark.slow
def test_compiled_run_matches_eager_and_saves_plain_names(photos_dir, tmp_path):
    states = {}
    for flag in (False, True):
        with quiet_lightning():
            result = run(_cfg(photos_dir, tmp_path / str(flag), strategy="partial", unfreeze=1,
                              compile=flag), progress=False)
        states[flag] = torch.load(result.run_dir / "checkpoints" / "last.ckpt",
                                  weights_only=True, map_location="cpu")["state_dict"]
    eager, compiled = states[False], states[True]
    assert compiled.keys() == eager.keys()
    assert not any("_orig_mod" in k for k in compiled)
    # Inductor fuses kernels, so the numbers differ in the last bits, not more.
    for k in eager:
        if eager[k].is_floating_point():
            torch.testing.assert_close(compiled[k], eager[k], atol=2e-3, rtol=1e-3, msg=k)
        else:
            assert torch.equal(compiled[k], eager[k]), k
