import pytest
import torch
from torch import nn
from torchvision import models as tvm

from deeplab_lightning.models import ResNetBackbone, create_model, list_models
from deeplab_lightning.models.heads.aspp import ASPP, default_atrous_rates


def dilations(module: nn.Module) -> list[int]:
    return [m.dilation[0] for m in module.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]


@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_resnet_measured_strides_match_feature_info(output_stride):
    backbone = ResNetBackbone(18, output_stride=output_stride).eval()
    x = torch.randn(1, 3, 64, 96)
    features = backbone(x)
    assert len(features) == len(backbone.feature_info)
    for feat, info in zip(features, backbone.feature_info):
        assert feat.shape[1] == info.channels
        assert (64 // feat.shape[2], 96 // feat.shape[3]) == (info.stride, info.stride)
    assert backbone.feature_info[-1].stride == output_stride == backbone.output_stride


def test_resnet_multi_grid_dilations():
    # V3 section 3.2: OS16, multi_grid (1, 2, 4) -> block4 rates 2 * (1, 2, 4); OS8: block3 at 2, block4 at 4x.
    b16 = ResNetBackbone(50, output_stride=16, multi_grid=(1, 2, 4))
    assert [dilations(block) for block in b16.layer4] == [[2], [4], [8]]
    assert set(dilations(b16.layer3)) == {1}
    b8 = ResNetBackbone(50, output_stride=8, multi_grid=(1, 2, 4))
    assert [dilations(block) for block in b8.layer4] == [[4], [8], [16]]
    assert set(dilations(b8.layer3)) == {2}
    assert all(conv.stride == (1, 1) for conv in b8.layer4.modules() if isinstance(conv, nn.Conv2d))
    with pytest.raises(ValueError, match="2 blocks"):
        ResNetBackbone(18, multi_grid=(1, 2, 4))


@pytest.mark.parametrize("depth,builder", [(18, tvm.resnet18), (50, tvm.resnet50)])
def test_torchvision_resnet_state_dict_loads_strictly(depth, builder):
    reference = builder(weights=None)
    backbone = ResNetBackbone(depth, output_stride=16)
    backbone.load_torchvision_state_dict(reference.state_dict())
    assert torch.equal(backbone.layer4[0].conv1.weight, reference.layer4[0].conv1.weight)


def test_aspp_branches_rates_and_concat():
    assert default_atrous_rates(16) == (6, 12, 18)
    assert default_atrous_rates(8) == (12, 24, 36)
    aspp = ASPP(8, 4, (6, 12, 18)).eval()
    assert [dilations(b) for b in aspp.branches[1:4]] == [[6], [12], [18]]
    assert len(aspp.branches) == 5  # 1x1, three atrous, image pooling
    assert aspp.project[0][0].in_channels == 5 * 4  # concatenated, not summed
    assert aspp(torch.randn(2, 8, 9, 11)).shape == (2, 4, 9, 11)
    assert len(ASPP(8, 4, image_pooling=False).branches) == 4


def test_unknown_model_lists_known_names():
    with pytest.raises(ValueError) as err:
        create_model("deeplabv9_resnet7")
    for name in list_models():
        assert name in str(err.value)


@pytest.mark.parametrize("name", ["deeplabv3_resnet18", "deeplabv3plus_resnet18"])
@pytest.mark.parametrize("size", [(65, 65), (64, 97)])
def test_output_is_input_size_and_every_parameter_gets_a_gradient(name, size):
    model = create_model(name, num_classes=5, aspp_channels=16)
    out = model(torch.randn(2, 3, *size))
    assert out.shape == (2, 5, *size)
    out.mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing


def test_train_mode_batch_size_one_works_with_image_pooling():
    model = create_model("deeplabv3plus_resnet18", num_classes=3, aspp_channels=16).train()
    pooling_bn = model.aspp.branches[-1].bn
    before = pooling_bn.running_mean.clone()
    out = model(torch.randn(1, 3, 64, 64))
    assert out.shape == (1, 3, 64, 64) and torch.isfinite(out).all()
    assert torch.equal(pooling_bn.running_mean, before)  # running stats used, not updated, for N=1
