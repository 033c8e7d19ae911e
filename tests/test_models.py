import pytest
import torch
from torch import nn
from torchvision import models as tvm

from deeplab_lightning.models import ResNetBackbone, convert_sync_batchnorm, create_model, list_models
from deeplab_lightning.models.heads.aspp import ASPP, default_atrous_rates

from conftest import float64_reference, set_batchnorm_statistics


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
    # V3 section 3.2: block4 unit i at rate * multi_grid[i]; the unit that held the stride reads the previous
    # stage's features, so its rate is the previous stage's (the module docstring's stated deviation).
    b16 = ResNetBackbone(50, output_stride=16, multi_grid=(1, 2, 4))
    assert [dilations(block) for block in b16.layer4] == [[1], [4], [8]]
    assert set(dilations(b16.layer3)) == {1}
    b8 = ResNetBackbone(50, output_stride=8, multi_grid=(1, 2, 4))
    assert [dilations(block) for block in b8.layer4] == [[2], [8], [16]]
    assert dilations(b8.layer3) == [1] + [2] * 5
    assert b16.stage_rate() == 2 and b8.stage_rate() == 4 and b8.stage_rate("layer3") == 2
    assert all(conv.stride == (1, 1) for conv in b8.layer4.modules() if isinstance(conv, nn.Conv2d))
    with pytest.raises(ValueError, match="2 blocks"):
        ResNetBackbone(18, multi_grid=(1, 2, 4))


@pytest.mark.parametrize("name", ["deeplabv3_resnet18", "deeplabv3plus_resnet18", "deeplabv3_cascade_resnet50"])
def test_v3_classifiers_start_as_the_tf_reference_does(name):
    # get_branch_logits: truncated normal (two standard deviations), std 0.01, zero bias
    torch.manual_seed(0)
    model = create_model(name, num_classes=21)
    conv = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.out_channels == 21][-1]
    assert conv.weight.abs().max() <= 0.02 and 0.007 <= conv.weight.std() <= 0.01
    assert not conv.bias.any()


def test_resnet_dilation_matches_torchvisions_replace_stride_with_dilation():
    geometry = lambda net: [(n, c.stride, c.dilation, c.padding) for n, c in net.named_modules()  # noqa: E731
                            if isinstance(c, nn.Conv2d) and n.startswith("layer")]
    for output_stride, dilate in ((16, [False, False, True]), (8, [False, True, True])):
        ours = ResNetBackbone(50, output_stride=output_stride)
        assert geometry(ours) == geometry(tvm.resnet50(replace_stride_with_dilation=dilate))


@pytest.mark.parametrize("name,kwargs", [
    ("resnet18", {}), ("resnet18", {"multi_grid": (1, 2)}), ("mobilenetv2", {}), ("xception65", {}),
    ("resnet50_beta", {"multi_grid": (1, 2, 4), "tf_same_padding": True})], ids=str)
def test_a_network_trained_at_one_output_stride_computes_the_same_at_a_denser_one(name, kwargs):
    """V3 trains at OS16 and evaluates at OS8 (section 4.1), and starts from ImageNet weights (OS32): with the
    same weights, the denser network's features subsampled must be the sparser network's, at every stride."""
    from deeplab_lightning.models.registry import build_backbone

    torch.manual_seed(0)
    with float64_reference(), torch.no_grad():
        x = torch.randn(1, 3, 129, 97)
        nets = {os_: build_backbone(name, os_, False, **kwargs).eval() for os_ in (32, 16, 8)}
        set_batchnorm_statistics(nets[32], x)
        for net in nets.values():
            net.load_state_dict(nets[32].state_dict())
        outputs = {os_: net(x)[-1] for os_, net in nets.items()}
    for sparse, dense in ((32, 16), (16, 8)):
        scale = outputs[sparse].abs().max().item()
        torch.testing.assert_close(outputs[dense][..., ::2, ::2], outputs[sparse], rtol=1e-9, atol=1e-9 * scale)


@pytest.mark.parametrize("depth,builder", [(18, tvm.resnet18), (50, tvm.resnet50)])
def test_torchvision_resnet_state_dict_loads_strictly(depth, builder):
    reference = builder(weights=None)
    backbone = ResNetBackbone(depth, output_stride=16)
    backbone.load_state_dict({k: v for k, v in reference.state_dict().items() if not k.startswith("fc.")})
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


def _batchnorm_calls(model: nn.Module, images: torch.Tensor) -> tuple[list[nn.Module], int]:
    """SyncBatchNorm modules that ran, and every call of F.batch_norm, in one forward of ``model``."""
    ran = []
    for m in model.modules():
        if isinstance(m, nn.SyncBatchNorm):
            m.register_forward_hook(lambda mod, i, o: ran.append(mod))
    calls = []
    original = torch.nn.functional.batch_norm

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    torch.nn.functional.batch_norm = counting
    try:
        model(images)
    finally:
        torch.nn.functional.batch_norm = original
    return ran, len(calls)


@pytest.mark.parametrize("name, kwargs", [(name, {}) for name in list_models()] + [
    ("deeplabv3plus", {"backbone": "timm/efficientnet_b0"})], ids=lambda v: v if isinstance(v, str) else "")
def test_sync_batchnorm_reaches_every_normalisation_layer_and_changes_nothing_else(name, kwargs):
    # Under DDP only nn.SyncBatchNorm sees the global batch: every BatchNorm must be a module that
    # convert_sync_batchnorm converts (no F.batch_norm on private buffers), and each must run; the converted
    # network computes what the original does (PyTorch's own conversion drops the ReLU of timm's BatchNormAct2d).
    torch.manual_seed(0)
    model = create_model(name, num_classes=3, **kwargs).eval()
    for m in model.modules():  # non-trivial statistics, so a dropped activation shows in the output
        if isinstance(m, nn.modules.batchnorm._NormBase):
            m.running_mean.normal_(0, 0.5)
    images = torch.randint(0, 256, (2, 3, 33, 41), dtype=torch.uint8)
    with torch.no_grad():
        expected = model(images)
    model = convert_sync_batchnorm(model)
    leftover = [n for n, m in model.named_modules()
                if isinstance(m, nn.modules.batchnorm._NormBase) and not isinstance(m, nn.SyncBatchNorm)]
    assert not leftover
    with torch.no_grad():
        torch.testing.assert_close(model(images), expected, rtol=0, atol=0)
    model.train()
    syncs = [m for m in model.modules() if isinstance(m, nn.SyncBatchNorm)]
    ran, calls = _batchnorm_calls(model, images)
    assert {id(m) for m in ran} == {id(m) for m in syncs}
    assert calls == len(ran)  # no normalisation outside the converted modules


def test_train_mode_batch_size_one_works_with_image_pooling():
    model = create_model("deeplabv3plus_resnet18", num_classes=3, aspp_channels=16).train()
    pooling_bn = model.aspp.branches[-1].bn
    before = pooling_bn.running_mean.clone()
    out = model(torch.randn(1, 3, 64, 64))
    assert out.shape == (1, 3, 64, 64) and torch.isfinite(out).all()
    assert torch.equal(pooling_bn.running_mean, before)  # running stats used, not updated, for N=1


SMALL = {
    "deeplabv1_vgg16_largefov": {"channels": 32},
    "deeplabv2_vgg16": {"channels": 16},
    "deeplabv2_resnet101": {},
    "deeplabv3_resnet50": {"aspp_channels": 16},
    "deeplabv3_resnet101": {"aspp_channels": 16},
    "deeplabv3_cascade_resnet101": {"num_blocks": 1},
    "deeplabv3plus_resnet50": {"aspp_channels": 16, "decoder_channels": 16},
    "deeplabv3plus_resnet101": {"aspp_channels": 16, "decoder_channels": 16},
    "deeplabv3plus_xception65": {"aspp_channels": 16, "decoder_channels": 16},
}


def test_every_required_name_is_registered():
    assert set(SMALL) | {"deeplabv3plus_resnet18"} <= set(list_models())


def test_vgg16_atrous_geometry_and_strict_weights():
    from deeplab_lightning.models.backbones.vgg import VGG16Backbone

    backbone = VGG16Backbone().eval()
    reference = tvm.vgg16(weights=None).state_dict()  # its features load strictly (the classifier is not ours)
    backbone.load_state_dict({k: v for k, v in reference.items() if k.startswith("features.")})
    pools = [m for m in backbone.features if isinstance(m, nn.MaxPool2d)]
    assert [p.stride for p in pools] == [2, 2, 2, 1, 1]
    assert dilations(backbone.features[24:]) == [2, 2, 2] and set(dilations(backbone.features[:24])) == {1}
    feats = backbone(torch.randn(1, 3, 64, 64))
    assert [f.shape[-1] for f in feats] == [16, 8]


def test_largefov_subsamples_vgg_fc_layers():
    from deeplab_lightning.models.heads.largefov import FCHead

    fc = tvm.vgg16(weights=None).classifier.state_dict()
    head = FCHead(512, 21, dilation=12)
    head.load_vgg_fc(fc)
    assert head.fc6.dilation == (12, 12) and head.fc6.weight.shape == (1024, 512, 3, 3)
    full = fc["0.weight"].view(4096, 512, 7, 7)
    assert torch.equal(head.fc6.weight[5, :, 1, 2], full[20, :, 3, 6])
    assert torch.equal(head.fc7.weight[7, 9, 0, 0], fc["3.weight"][28, 36])


def test_aspp_l_sums_four_branches():
    from deeplab_lightning.models.heads.aspp import ASPPL

    head = ASPPL(8, 3, channels=None).eval()
    assert [b.dilation[0] for b in head.branches] == [6, 12, 18, 24]
    x = torch.randn(1, 8, 30, 30)
    assert torch.allclose(head(x), sum(b(x) for b in head.branches), atol=1e-6)
    assert [b.fc6.dilation[0] for b in ASPPL(8, 3, channels=4).branches] == [6, 12, 18, 24]


def test_cascade_block_rates_follow_multi_grid():
    model = create_model("deeplabv3_cascade_resnet50", num_classes=3)
    blocks = model.cascade.blocks
    assert len(blocks) == 3  # block5-7
    assert [[u.conv2.dilation[0] for u in block] for block in blocks] == [[4, 8, 16], [8, 16, 32], [16, 32, 64]]


@pytest.mark.parametrize("output_stride,multi_grid,block4,cascade", [
    (16, (1, 1, 1), [1, 2, 2], [[4, 4, 4], [8, 8, 8], [16, 16, 16]]),
    (8, (1, 2, 1), [2, 8, 4], [[8, 16, 8], [16, 32, 16], [32, 64, 32]]),
])
def test_cascade_takes_multi_grid_and_block4_rate_from_the_backbone(output_stride, multi_grid, block4, cascade):
    # V3 section 3.2: the multi-grid unit rates apply to block4 and to its cascaded copies block5-7.
    model = create_model("deeplabv3_cascade_resnet50", num_classes=3, output_stride=output_stride,
                         multi_grid=multi_grid)
    assert [u.conv2.dilation[0] for u in model.backbone.layer4] == block4
    assert [[u.conv2.dilation[0] for u in block] for block in model.cascade.blocks] == cascade


def test_largefov_dropout_is_element_wise():
    # Caffe's DropoutLayer (V1/V2) drops single activations; Dropout2d would zero whole channels.
    from deeplab_lightning.models.heads.largefov import FCHead

    head = FCHead(4, 3, dilation=2, channels=64).train()
    torch.manual_seed(0)
    dropped = head[2](torch.ones(1, 64, 8, 8)) == 0
    partly = dropped.flatten(2).any(-1) & ~dropped.flatten(2).all(-1)  # channels with some zeros, not all
    assert partly.float().mean() > 0.9


def test_xception_uses_separable_convs_and_stride_4_decoder_input():
    model = create_model("deeplabv3plus_xception65", num_classes=3, aspp_channels=16, decoder_channels=16)
    assert model.backbone.feature_info[model.low_level_index].channels == 256
    depthwise = model.aspp.branches[1][0]
    assert depthwise.groups == depthwise.in_channels and depthwise.dilation == (6, 6)


def test_xception_low_level_feature_is_the_tf_tap_before_any_relu():
    # TF: entry_flow/block2/unit_1/xception_module/separable_conv2_pointwise, i.e. conv2's BN output.
    backbone = create_model("deeplabv3plus_xception65", num_classes=3).backbone.eval()
    seen = {}
    backbone.blocks[1].stack.conv2.register_forward_hook(lambda m, i, o: seen.setdefault("conv2", o.clone()))
    with torch.no_grad():
        low_level, out = backbone(torch.randn(1, 3, 65, 65))
    assert torch.equal(low_level, seen["conv2"]) and (low_level < 0).any()
    assert low_level.shape == (1, 256, 17, 17) and out.shape == (1, 2048, 5, 5)


@pytest.mark.parametrize("name,mean,std", [
    ("deeplabv3plus_xception65", (0.5,) * 3, (0.5,) * 3),  # TF DeepLab / timm tf_in1k: [-1, 1]
    ("deeplabv3plus_resnet18", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),  # torchvision ImageNet
    ("deeplabv1_vgg16_largefov", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
])
def test_network_normalises_rgb_input_for_its_backbone(name, mean, std):
    model = create_model(name, num_classes=3).eval()
    first_conv = next(m for m in model.backbone.modules() if isinstance(m, nn.Conv2d))
    seen = []
    first_conv.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    images = torch.tensor([0, 255], dtype=torch.uint8).repeat_interleave(16).view(1, 1, 2, 16).expand(1, 3, 2, 16)
    with torch.no_grad():
        model(images.contiguous())
    for c in range(3):
        low, high = (0 - mean[c]) / std[c], (1 - mean[c]) / std[c]
        assert seen[0][0, c].amin().item() == pytest.approx(low, abs=1e-5)
        assert seen[0][0, c].amax().item() == pytest.approx(high, abs=1e-5)


@pytest.mark.parametrize("builder", [tvm.segmentation.deeplabv3_resnet50, tvm.segmentation.deeplabv3_resnet101,
                                     tvm.segmentation.deeplabv3_mobilenet_v3_large])
def test_from_torchvision_gives_the_same_outputs(builder, torchvision_reference):
    from deeplab_lightning.models import from_torchvision

    reference = torchvision_reference(builder, 5)
    model = from_torchvision(reference).eval()
    images = torch.randint(0, 256, (2, 3, 67, 81), dtype=torch.uint8)  # ours normalises its RGB input itself
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    x = (images / 255.0 - mean.view(3, 1, 1)) / std.view(3, 1, 1)  # torchvision's transforms
    with torch.no_grad():
        expected = reference(x)["out"]
        # Randomly initialised, the 101-layer network's logits reach ~1e4: compare relative to their scale.
        scale = max(1.0, expected.abs().max().item())
        assert (model(images) - expected).abs().max().item() <= 1e-4 * scale
    assert model.aspp.atrous_rates == (12, 24, 36)
    assert model.output_stride == (16 if "mobilenet" in builder.__name__ else 8)


def test_mobilenet_v3_dilation_is_torchvisions_and_mobilenet_v2_is_the_tf_references():
    geometry = lambda module: [(name, c.stride, c.dilation, c.padding) for name, c in  # noqa: E731
                               module.named_modules() if isinstance(c, nn.Conv2d)]
    ours = create_model("deeplabv3_mobilenet_v3_large", num_classes=3, output_stride=16).backbone.features
    assert geometry(ours) == geometry(tvm.mobilenet_v3_large(dilated=True).features)
    for name, channels in (("deeplabv3_mobilenet_v3_large", [24, 960]), ("deeplabv3_mobilenetv2", [144, 320])):
        for output_stride in (8, 16):
            model = create_model(name, num_classes=3, output_stride=output_stride).eval()
            with torch.no_grad():
                features = model.backbone(model.normalize(torch.zeros(1, 3, 64, 64)))
            assert [64 // f.shape[-1] for f in features] == [4, output_stride]
            assert [f.shape[1] for f in features] == channels
    v2 = create_model("deeplabv3_mobilenetv2", num_classes=3)
    assert v2.aspp.atrous_rates == () and len(v2.aspp.branches) == 2  # TF: 1x1 conv + image pooling only


def test_multiply_adds_against_the_v3plus_paper():
    from deeplab_lightning.models.analysis import PAPER_MULTIPLY_ADDS, multiply_adds

    # Xception-65 (separable, decoder) is the reference's network: within 0.4 % of Table 5. ResNet-101 keeps
    # torchvision's geometry (7x7 stem, stride in the first unit), the README's stated deviation from Table 3.
    ours_resnet = {("deeplabv3_resnet101", 16): 71.06, ("deeplabv3_resnet101", 8): 246.18,
                   ("deeplabv3plus_resnet101", 16): 92.82, ("deeplabv3plus_resnet101", 8): 267.92}
    for (name, output_stride), paper in PAPER_MULTIPLY_ADDS.items():
        with torch.device("meta"):
            ours = multiply_adds(create_model(name, num_classes=21, output_stride=output_stride))
        if "xception" in name:
            assert abs(ours / paper - 1) <= 0.004, (name, output_stride, ours)
        else:
            assert ours == pytest.approx(ours_resnet[name, output_stride], abs=0.01)


def test_missing_pretrained_weights_name_the_file_and_where_to_put_it(monkeypatch, tmp_path):
    """On a compute node without internet the download fails: one line says which file goes where."""
    from urllib.error import URLError

    import timm.models._builder
    import torchvision.models._api
    from huggingface_hub.errors import LocalEntryNotFoundError

    from deeplab_lightning.models.backbones.base import PretrainedWeightsUnavailable

    def offline(*args, **kwargs):
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    with pytest.raises(PretrainedWeightsUnavailable,
                       match=rf"ResNet-18 .*\(URLError\): put resnet18-f37072fd.pth .* into {tmp_path}/torch/hub/"
                             rf"checkpoints .*model.pretrained_backbone false"):
        create_model("deeplabv3plus_resnet18", 6, pretrained_backbone=True)

    def not_cached(*args, **kwargs):
        raise LocalEntryNotFoundError("offline and not in the cache")

    monkeypatch.setattr(timm.models._builder, "load_pretrained", not_cached)
    with pytest.raises(PretrainedWeightsUnavailable, match=r"Hugging Face repo timm/xception65.tf_in1k .*"
                                                           r"models--timm--xception65.tf_in1k"):
        create_model("deeplabv3plus_xception65", 6, pretrained_backbone=True)
