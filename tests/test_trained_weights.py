"""Trained weights by name: torchvision's COCO-trained DeepLabV3 models through create_model(weights=...),
tested on state dicts saved from seeded torchvision models in a private TORCH_HOME (nothing downloaded)."""
import urllib.error
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from deeplab_lightning.commands.cli import main
from deeplab_lightning.models import create_model
from deeplab_lightning.models.backbones.base import PretrainedWeightsUnavailable
from deeplab_lightning.models.convert import TORCHVISION_WEIGHTS
from deeplab_lightning.module import SegmentationModule
from deeplab_lightning.predictor import load_module

from conftest import REPO

MEAN, STD = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


@pytest.fixture
def torch_home(tmp_path, monkeypatch) -> Path:
    """An empty TORCH_HOME where no download can happen."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(url, *args, **kwargs):
        raise urllib.error.URLError("no network in this test")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    return tmp_path


@pytest.fixture
def cache_seeded_weights(torchvision_reference):
    """``cache_seeded_weights(name, torch_home)`` -> a seeded torchvision model of ``name``, its state dict
    saved where torchvision looks for the release."""
    def cache(name: str, torch_home: Path) -> nn.Module:
        builder, weights = TORCHVISION_WEIGHTS[name]
        reference = torchvision_reference(builder, 21)
        folder = torch_home / "hub" / "checkpoints"
        folder.mkdir(parents=True)
        torch.save(reference.state_dict(), folder / weights.url.rsplit("/", 1)[-1])
        return reference

    return cache


@pytest.mark.parametrize("name", sorted(TORCHVISION_WEIGHTS))
def test_torchvision_weights_by_name_give_torchvisions_outputs_and_voc_names(name, torch_home,
                                                                              cache_seeded_weights):
    reference = cache_seeded_weights(name, torch_home)
    model = create_model(name, weights="torchvision").eval()
    images = torch.randint(0, 256, (2, 3, 67, 81), dtype=torch.uint8)
    with torch.no_grad():
        expected = reference((images / 255.0 - MEAN) / STD)["out"]
        scale = max(1.0, expected.abs().max().item())
        assert (model(images) - expected).abs().max().item() <= 1e-4 * scale
    assert len(model.class_names) == 21 and model.class_names[:3] == ["background", "aeroplane", "bicycle"]
    assert model.transforms.resize_size == [520]


def test_missing_weights_offline_name_the_file_and_folder_in_one_line(torch_home):
    with pytest.raises(PretrainedWeightsUnavailable) as info:
        create_model("deeplabv3_mobilenet_v3_large", weights="torchvision")
    message = str(info.value)
    assert "deeplabv3_mobilenet_v3_large-fc3c493d.pth" in message and "\n" not in message
    assert str(torch_home / "hub" / "checkpoints") in message
    # It names these weights and the setting that asked for them (not ImageNet's, nor pretrained_backbone).
    assert "trained weights (COCO images of the 20 VOC classes)" in message and "leave model.weights unset" in message
    assert "ImageNet weights of" not in message and "pretrained_backbone" not in message


def test_weights_by_name_refuse_what_they_cannot_honour():
    with pytest.raises(ValueError, match="num_classes=6"):
        create_model("deeplabv3_resnet50", 6, weights="torchvision")
    with pytest.raises(ValueError, match="torchvision has trained weights for"):
        create_model("deeplabv3plus_resnet101", weights="torchvision")


def test_a_fine_tuned_torchvision_start_reloads_from_its_checkpoint_without_downloading(
        torch_home, tmp_path, cache_seeded_weights):
    cache_seeded_weights("deeplabv3_mobilenet_v3_large", torch_home)
    module = SegmentationModule("deeplabv3_mobilenet_v3_large", 21, weights="torchvision")
    assert module.class_names[1] == "aeroplane"
    with torch.no_grad():
        next(module.net.parameters()).add_(1.0)  # "fine-tuned": differs from the cached release
    path = tmp_path / "tuned.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    for cached in (torch_home / "hub" / "checkpoints").iterdir():
        cached.unlink()  # a download would now fail
    reloaded = load_module(path)
    for key, value in module.state_dict().items():
        assert torch.equal(reloaded.state_dict()[key], value), key


def test_the_command_line_takes_weights_by_name(capsys):
    config = str(REPO / "experiments" / "v3_r101_os16_mg124_voc_513_30k_bs16.yaml")
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", config, "--model.weights", "torchvision", "--print_config"])
    assert exit_info.value.code == 0
    assert yaml.safe_load(capsys.readouterr().out)["model"]["weights"] == "torchvision"
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", config, "--model.weights", "coco"])
    assert exit_info.value.code not in (0, None) and "torchvision" in capsys.readouterr().err
