"""Backbones by name: any timm encoder that dilates, under V3 and V3+ (real strides measured)."""
import pytest
import torch
import yaml

from deeplab_lightning.commands.cli import main
from deeplab_lightning.models import create_model
from deeplab_lightning.models.backbones.base import PretrainedWeightsUnavailable

TINY = {"aspp_channels": 8}
FAMILIES = ["timm/convnext_atto", "timm/efficientnet_b0", "timm/regnetx_002", "timm/resnest14d",
            "timm/mobilenetv3_large_100"]


def measured_strides(model, size=64):
    with torch.no_grad():
        features = model.backbone(model.normalize(torch.zeros(1, 3, size, size)))
    return [size // f.shape[-1] for f in features]


@pytest.mark.parametrize("output_stride", [8, 16])
@pytest.mark.parametrize("backbone", FAMILIES)
def test_timm_encoders_reach_the_output_stride_and_feed_the_decoder_a_stride_4_map(backbone, output_stride):
    model = create_model("deeplabv3plus", 3, output_stride=output_stride, backbone=backbone, decoder_channels=8,
                         low_level_channels=8, **TINY).eval()
    strides = measured_strides(model)
    assert strides == [info.stride for info in model.backbone.feature_info]  # declared = measured
    assert strides[-1] == output_stride and model.output_stride == output_stride
    assert strides[model.low_level_index] == 4
    images = torch.randint(0, 256, (2, 3, 57, 71), dtype=torch.uint8)
    assert model(images).shape == (2, 3, 57, 71)
    v3 = create_model("deeplabv3", 3, output_stride=output_stride, backbone=backbone, **TINY).eval()
    assert measured_strides(v3)[-1] == output_stride


def test_encoders_that_cannot_dilate_and_missing_names_are_refused():
    with pytest.raises(ValueError, match="vit_tiny_patch16_224 cannot be built at output_stride 16"):
        create_model("deeplabv3plus", 3, backbone="timm/vit_tiny_patch16_224")
    with pytest.raises(ValueError, match="timm has no model 'convnext_nonexistent'"):
        create_model("deeplabv3", 3, backbone="timm/convnext_nonexistent")
    with pytest.raises(ValueError, match="needs a backbone"):
        create_model("deeplabv3plus", 3)
    with pytest.raises(ValueError, match="Unknown backbone 'vgg19'"):
        create_model("deeplabv3", 3, backbone="vgg19")


def test_timm_weights_missing_offline_name_the_hub_repo(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(PretrainedWeightsUnavailable) as info:
        create_model("deeplabv3plus", 3, backbone="timm/regnetx_002", pretrained_backbone=True)
    assert "timm/regnetx_002" in str(info.value) and "\n" not in str(info.value)


def test_the_normalisation_comes_from_the_encoders_pretrained_config():
    model = create_model("deeplabv3", 3, backbone="timm/convnext_atto", **TINY)
    assert model.backbone.input_mean == model.backbone.encoder.pretrained_cfg["mean"]
    x = torch.full((1, 3, 8, 8), 255.0) * torch.tensor(model.backbone.input_mean).view(1, 3, 1, 1)
    assert model.normalize(x).abs().max() < 1e-5  # the weights' mean pixel normalises to zero


def test_a_timm_backbone_trains_from_the_command_line(tmp_path, toy_dir, toy_settings, write_config):
    path = write_config(tmp_path / "run", toy_dir, toy_settings, max_steps=1)
    config = yaml.safe_load(path.read_text())
    config["model"].update(arch="deeplabv3plus", model_kwargs={"backbone": "timm/regnetx_002", "aspp_channels": 8,
                                                               "decoder_channels": 8})
    path.write_text(yaml.safe_dump(config))
    cli = main(["fit", "--config", str(path)])
    assert cli.trainer.global_step == 1 and type(cli.model.net.backbone).__name__ == "TimmBackbone"
    assert (tmp_path / "run" / "ckpt" / "best.ckpt").is_file()
