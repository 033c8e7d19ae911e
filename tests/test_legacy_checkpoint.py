"""Checkpoints written before the training/evaluation packages existed still load: by the Python API, by
Lightning, and with their optimizer state (a fit resumes from them)."""
import gzip
import shutil
from pathlib import Path

import pytest
import torch

from deeplab_lightning import load
from deeplab_lightning.module import SegmentationModule

LEGACY = Path(__file__).parent / "golden" / "legacy_0.1.0_tiny.ckpt.gz"  # a 1-step fit of conftest's tiny config,
# written by deeplab_lightning 0.1.0 (commit e07f967) through the command line, its weights zeroed to compress


@pytest.fixture(scope="module")
def legacy_checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("legacy") / "last.ckpt"
    with gzip.open(LEGACY, "rb") as src, open(path, "wb") as dst:
        shutil.copyfileobj(src, dst)
    return path


def test_a_legacy_checkpoint_loads_everywhere(legacy_checkpoint):
    checkpoint = torch.load(legacy_checkpoint, map_location="cpu", weights_only=False)
    predictor = load(str(legacy_checkpoint))
    assert predictor.class_names[1] == "disk" and predictor.module.hparams.arch == "deeplabv3plus_resnet18"
    # Every key of the old state dict is a key of the new module, and the other way round (strict loading).
    assert set(predictor.module.state_dict()) == set(checkpoint["state_dict"])
    reloaded = SegmentationModule.load_from_checkpoint(legacy_checkpoint, map_location="cpu")
    assert torch.equal(reloaded.net.decoder.classifier.weight, torch.zeros_like(reloaded.net.decoder.classifier.weight))
    optimizer = reloaded.configure_optimizers()
    optimizer.load_state_dict(checkpoint["optimizer_states"][0])  # same groups, same parameters in each
    assert [g["name"] for g in optimizer.param_groups] == ["backbone_no_decay", "backbone", "head_no_decay", "head"]
    assert predictor.predict(torch.zeros(3, 20, 30, dtype=torch.uint8)).shape == (20, 30)


class RunsCode:
    """A pickled object whose loading runs a command (creates the file ``mark``)."""

    def __init__(self, mark: Path) -> None:
        self.mark = mark

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.mark}",)


def test_a_checkpoint_that_would_run_code_is_refused_everywhere_as_unsafe(legacy_checkpoint, tmp_path, write_config,
                                                                         toy_dir, toy_settings):
    from deeplab_lightning.commands.cli import main as cli_main
    from deeplab_lightning.commands.export import main as export_main

    mark = tmp_path / "MARK"
    checkpoint = torch.load(legacy_checkpoint, map_location="cpu", weights_only=True)
    evil = tmp_path / "evil.ckpt"
    torch.save({**checkpoint, "extra": RunsCode(mark)}, evil)
    unsafe = r"evil.ckpt is unsafe: besides weights it holds Python objects \(.*system.*\)"
    with pytest.raises(ValueError, match=unsafe):
        load(str(evil))
    with pytest.raises(ValueError, match=unsafe):
        export_main(["--ckpt_path", str(evil), "--output", str(tmp_path / "x.onnx")])
    config = write_config(tmp_path / "run", toy_dir, toy_settings)
    with pytest.raises(ValueError, match=unsafe):  # a fit started from its weights
        cli_main(["fit", "--config", str(config), "--model.init_checkpoint", str(evil)])
    with pytest.raises(ValueError, match=unsafe):  # a fit resumed from it
        cli_main(["fit", "--config", str(config), "--ckpt_path", str(evil)])
    assert not mark.exists()
