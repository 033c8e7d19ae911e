"""The released DeepLab Caffe models read without Caffe and converted. No Caffe runtime exists here, so each test
writes a synthetic .caffemodel from the published layer list of the released prototxt (names, types, kernel,
stride, padding, dilation, blob shapes; random weights), converts it, and compares the converted network with
the prototxt's network computed here layer by layer in Caffe's conventions (BGR minus the mean pixel, ceil-mode
pooling, BatchNorm + Scale, Interp zoom by 8)."""
from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from deeplab_lightning import load
from deeplab_lightning.models import architectures_only, create_model
from deeplab_lightning.official import convert_caffe, convert_checkpoint, read_caffemodel
from deeplab_lightning.official.caffe_reader import CaffeFormatError
from deeplab_lightning.official.mapping import MappingError

from caffemodel_writer import Layer, write_caffemodel
from conftest import float64_reference

MEAN_BGR = (104.008, 116.669, 122.675)
# DeepLab-LargeFOV's test.prototxt (DeepLab v1's released model), layer by layer: convolutions as
# name:outputs:kernel:pad:hole, pools as name:MAX|AVE:kernel:stride:pad (ReLU and dropout layers in between).
LARGEFOV = """conv1_1:64:3:1:1 conv1_2:64:3:1:1 pool1:MAX:3:2:1 conv2_1:128:3:1:1 conv2_2:128:3:1:1 pool2:MAX:3:2:1
conv3_1:256:3:1:1 conv3_2:256:3:1:1 conv3_3:256:3:1:1 pool3:MAX:3:2:1 conv4_1:512:3:1:1 conv4_2:512:3:1:1
conv4_3:512:3:1:1 pool4:MAX:3:1:1 conv5_1:512:3:2:2 conv5_2:512:3:2:2 conv5_3:512:3:2:2 pool5:MAX:3:1:1
pool5a:AVE:3:1:1 fc6:1024:3:12:12 fc7:1024:1:0:1 fc8_voc12:21:1:0:1""".split()


def _rng() -> np.random.Generator:
    return np.random.default_rng(0)


def _conv_blobs(rng, out: int, inp: int, k: int, bias: bool = True) -> list[np.ndarray]:
    weight = (rng.standard_normal((out, inp, k, k)) * np.sqrt(2 / (inp * k * k))).astype(np.float32)
    return [weight, (rng.standard_normal(out) * 0.1).astype(np.float32)] if bias else [weight]


def largefov_layers() -> list[Layer]:
    rng, layers, channels = _rng(), [], 3
    for spec in LARGEFOV:
        name, *values = spec.split(":")
        if values[0] in ("MAX", "AVE"):
            layers.append(Layer(name, "Pooling"))
            continue
        out, k, pad, hole = map(int, values)
        layers.append(Layer(name, "Convolution", _conv_blobs(rng, out, channels, k),
                            {"num_output": out, "kernel_size": k, "pad": pad, "dilation": hole}))
        if not name.startswith("fc8"):
            layers.append(Layer(name.replace("conv", "relu").replace("fc", "relu"), "ReLU"))
        channels = out
    return layers


def _bgr_minus_mean(images: torch.Tensor) -> torch.Tensor:
    return images.double().flip(1) - torch.tensor(MEAN_BGR, dtype=torch.float64).view(1, 3, 1, 1)


def largefov_reference(layers: list[Layer], images: torch.Tensor) -> torch.Tensor:
    """The prototxt's network in Caffe's conventions, at the output stride: [N, 21, h, w] (float64)."""
    blobs = {layer.name: layer for layer in layers}
    x = _bgr_minus_mean(images)
    for spec in LARGEFOV:
        name, *values = spec.split(":")
        if values[0] == "MAX":
            x = F.max_pool2d(x, int(values[1]), int(values[2]), int(values[3]), ceil_mode=True)  # Caffe rounds up
        elif values[0] == "AVE":
            x = F.avg_pool2d(x, int(values[1]), int(values[2]), int(values[3]), ceil_mode=True, count_include_pad=True)
        else:
            _, k, pad, hole = map(int, values)
            w, b = (torch.from_numpy(a).double() for a in blobs[name].blobs)
            x = F.conv2d(x, w, b.view(-1), padding=pad, dilation=hole)
            x = x if name.startswith("fc8") else F.relu(x)
    return x


def _network(converted, float64: bool = True) -> torch.nn.Module:
    """The converted network, in float64 (its mean pixel too) as the reference computes; VGG-16 in float32
    (torchvision builds its 120 M-value classifier first: 1 GB in float64)."""
    with architectures_only(), (float64_reference() if float64 else contextlib.nullcontext()):
        net = create_model(converted.arch, converted.num_classes, output_stride=converted.output_stride,
                           **converted.model_kwargs)
    net.load_state_dict(converted.state_dict)
    return net.eval()


def _zoomed(logits: torch.Tensor) -> torch.Tensor:
    """Caffe's Interp with zoom_factor 8: (h - 1) * 8 + 1 rows, corners aligned."""
    h, w = logits.shape[-2:]
    return F.interpolate(logits, size=((h - 1) * 8 + 1, (w - 1) * 8 + 1), mode="bilinear", align_corners=True)


def test_largefov_converts_into_the_released_prototxts_network(tmp_path):
    """DeepLab-LargeFOV (the old 'layers' format, legacy 4-D blob shapes): every blob used once, the convolutions'
    geometry as the file states it, and the converted network computes the prototxt's (pool5a, Caffe's rounding
    pooling on even sizes, BGR minus the mean, the zoom by 8) on an even-sized image."""
    layers = largefov_layers()
    path = write_caffemodel(tmp_path / "DeepLab-LargeFOV.caffemodel", layers, v1=True)
    converted = convert_caffe(path)
    assert converted.arch == "deeplabv1_vgg16_largefov" and converted.num_classes == 21
    assert converted.model_kwargs == {"upsampling": "zoom", "backbone_kwargs": {
        "pixel_mean": [122.675, 116.669, 104.008], "pixel_std": [1.0, 1.0, 1.0], "ceil_mode": True, "pool5a": True}}
    assert converted.record["blobs_converted"] == 32 and converted.record["layers_with_geometry_checked"] == 16
    assert converted.module_kwargs == {}  # single scale: no MSC copies
    net = _network(converted, float64=False)
    images = torch.randint(0, 256, (1, 3, 100, 78), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    reference = largefov_reference(layers, images)
    with torch.no_grad():
        logits = net.head(net.backbone(net.normalize(images))).double()
        out = net(images).double()
    assert logits.shape == reference.shape == (1, 21, 14, 11)  # rounding up: 100 -> 51 -> 26 -> 14 (floor: 13)
    scale = reference.abs().max().item()  # float32 against float64: ~1e-6 of the scale; a wrong layer: ~1
    torch.testing.assert_close(logits, reference, rtol=0, atol=1e-4 * scale)
    zoomed = _zoomed(reference)  # Caffe's output: 105 x 81, its first 100 x 78 pixels cover the image
    torch.testing.assert_close(out, zoomed[..., :100, :78], rtol=0, atol=1e-4 * scale)


def test_each_blob_is_used_once_and_a_foreign_or_misshapen_file_is_named(tmp_path):
    layers = largefov_layers()
    extra = [*layers, Layer("fc9_extra", "Convolution", _conv_blobs(_rng(), 21, 21, 1))]
    with pytest.raises(MappingError, match=r"2 model tensor\(s\) the network has no place for \(fc9_extra/0, "
                                           r"fc9_extra/1\)"):
        convert_caffe(write_caffemodel(tmp_path / "extra.caffemodel", extra, v1=True))
    geometry = [Layer(l.name, l.type, l.blobs, {**l.conv, "dilation": 1} if l.name == "conv5_2" else l.conv)
                for l in layers]
    with pytest.raises(MappingError, match="layer conv5_2 has dilation 1, the converted network's "
                                           "backbone.features.26 2"):
        convert_caffe(write_caffemodel(tmp_path / "geometry.caffemodel", geometry, v1=True))
    (tmp_path / "test.prototxt").write_text('layers { name: "conv1_1" type: CONVOLUTION }\n')
    with pytest.raises(CaffeFormatError, match="not a .caffemodel"):
        read_caffemodel(tmp_path / "test.prototxt")


# DeepLab v2 ResNet-101 (its released prototxt's layers, as DrSleep/tensorflow-deeplab-resnet lists them): units
# a, b, c (res2, res5) or a, b1, b2, ... (res3: 4 units, res4: 23); the stride 2 in res3a's 1x1 convs (branch1
# and branch2a); branch2b dilated 2 in res4, 4 in res5 (pad = dilation), the first unit's too; fc1_voc12_c0..c3:
# 3x3 at 6/12/18/24 with a bias. Each conv is followed by BatchNorm (mean * s, var * s, s) and Scale (gamma, beta).
V2_STAGES = {2: (3, 64, 1, 1), 3: (4, 128, 2, 1), 4: (23, 256, 1, 2), 5: (3, 512, 1, 4)}  # units, width, stride, rate


def _unit(stage: int, u: int, units: int) -> str:
    return f"{stage}{'abc'[u]}" if units == 3 else f"{stage}{'a' if u == 0 else f'b{u}'}"


def _conv_bn(rng, layers: list[Layer], name: str, bn: str, out: int, inp: int, k: int, stride: int = 1,
             pad: int = 0, dilation: int = 1) -> None:
    layers.append(Layer(name, "Convolution", _conv_blobs(rng, out, inp, k, bias=False),
                        {"num_output": out, "kernel_size": k, "stride": stride, "pad": pad, "dilation": dilation}))
    # Caffe stores the statistics times a normaliser s; a power of two keeps (mean * s) / s exact in float32
    s = np.array([rng.choice([0.25, 0.5, 2.0, 4.0])], np.float32)
    mean, var = rng.standard_normal(out) * 0.1, rng.uniform(0.5, 2.0, out)
    layers.append(Layer(f"bn{bn}", "BatchNorm", [(mean * s).astype(np.float32), (var * s).astype(np.float32), s],
                        eps=1e-5))
    layers.append(Layer(f"scale{bn}", "Scale", [rng.uniform(0.5, 1.5, out).astype(np.float32),
                                                (rng.standard_normal(out) * 0.1).astype(np.float32)]))


def v2_layers(msc: bool = True) -> list[Layer]:
    rng, layers = _rng(), []
    _conv_bn(rng, layers, "conv1", "_conv1", 64, 3, 7, stride=2, pad=3)
    layers.append(Layer("pool1", "Pooling"))
    channels = 64
    for stage, (units, width, stride, rate) in V2_STAGES.items():
        for u in range(units):
            unit = _unit(stage, u, units)
            if u == 0:
                _conv_bn(rng, layers, f"res{unit}_branch1", f"{unit}_branch1", 4 * width, channels, 1, stride=stride)
            _conv_bn(rng, layers, f"res{unit}_branch2a", f"{unit}_branch2a", width, channels if u == 0 else 4 * width,
                     1, stride=stride if u == 0 else 1)
            _conv_bn(rng, layers, f"res{unit}_branch2b", f"{unit}_branch2b", width, width, 3, pad=rate,
                     dilation=rate)
            _conv_bn(rng, layers, f"res{unit}_branch2c", f"{unit}_branch2c", 4 * width, width, 1)
        channels = 4 * width
    for i, rate in enumerate((6, 12, 18, 24)):
        layers.append(Layer(f"fc1_voc12_c{i}", "Convolution", _conv_blobs(rng, 21, 2048, 3),
                            {"num_output": 21, "kernel_size": 3, "pad": rate, "dilation": rate}))
    if msc:  # the scaled copies share the weights; two of them stand for all
        by_name = {layer.name: layer for layer in layers}
        layers += [Layer(f"{name}_res075", "Convolution", by_name[name].blobs) for name in ("conv1", "fc1_voc12_c2")]
        layers.append(Layer("bn_conv1_res05", "BatchNorm", by_name["bn_conv1"].blobs, eps=1e-5))
    return layers


def v2_reference(layers: list[Layer], images: torch.Tensor) -> torch.Tensor:
    """DeepLab v2 ResNet-101 in Caffe's conventions, at the output stride (float64)."""
    blobs = {layer.name: [torch.from_numpy(b).double() for b in layer.blobs] for layer in layers}

    def conv_bn(x, name, bn, stride=1, pad=0, dilation=1):
        x = F.conv2d(x, blobs[name][0], stride=stride, padding=pad, dilation=dilation)
        mean, var, s = blobs[f"bn{bn}"]
        gamma, beta = blobs[f"scale{bn}"]
        return F.batch_norm(x, mean / s, var / s, gamma, beta, False, 0.0, 1e-5)

    x = F.relu(conv_bn(_bgr_minus_mean(images), "conv1", "_conv1", 2, 3))
    x = F.max_pool2d(x, 3, 2, 0, ceil_mode=True)
    for stage, (units, _, stride, rate) in V2_STAGES.items():
        for u in range(units):
            unit, s = _unit(stage, u, units), stride if u == 0 else 1
            shortcut = conv_bn(x, f"res{unit}_branch1", f"{unit}_branch1", s) if u == 0 else x
            y = F.relu(conv_bn(x, f"res{unit}_branch2a", f"{unit}_branch2a", s))
            y = F.relu(conv_bn(y, f"res{unit}_branch2b", f"{unit}_branch2b", 1, rate, rate))
            x = F.relu(shortcut + conv_bn(y, f"res{unit}_branch2c", f"{unit}_branch2c"))
    return sum(F.conv2d(x, *blobs[f"fc1_voc12_c{i}"], padding=r, dilation=r) for i, r in enumerate((6, 12, 18, 24)))


@pytest.fixture(scope="module")
def v2_model(tmp_path_factory):
    layers = v2_layers()
    return layers, write_caffemodel(tmp_path_factory.mktemp("v2") / "deeplabv2_resnet101_msc_voc12.caffemodel", layers)


def test_v2_resnet101_msc_converts_into_the_released_prototxts_network(v2_model):
    """DeepLab v2 ResNet-101 (MSC): MSRA's layout (stride in res3a's 1x1 convs, the stem's unpadded rounding-up
    pool, res4a/res5a's 3x3 at the new rate), BatchNorm + Scale with Caffe's stored normaliser, summed ASPP-L;
    the scaled copies hold the same weights and make the module evaluate at scales 1, 0.75, 0.5."""
    layers, path = v2_model
    converted = convert_caffe(path)
    assert converted.arch == "deeplabv2_resnet101" and converted.module_kwargs == {"msc_scales": [1.0, 0.75, 0.5]}
    assert converted.model_kwargs["backbone_kwargs"]["layout"] == "caffe"
    assert converted.record["msc_copies_checked_equal"] == 3
    assert converted.record["layers_with_geometry_checked"] == 1 + 33 * 3 + 4 + 4  # stem, units, shortcuts, ASPP-L
    net = _network(converted)
    images = torch.randint(0, 256, (1, 3, 66, 50), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    reference = v2_reference(layers, images)
    with torch.no_grad():
        logits = net.head(net.backbone(net.normalize(images)))
        out = net(images)
    assert logits.shape == reference.shape == (1, 21, 8, 6)  # 66 -> 33 -> 16 (pool rounding up) -> 8
    scale = reference.abs().max().item()
    torch.testing.assert_close(logits, reference, rtol=1e-9, atol=1e-9 * scale)
    zoomed = _zoomed(reference)  # Caffe's output, 57 x 41 pixels: features every 8 pixels, not stretched to 66
    torch.testing.assert_close(out[..., :57, :41], zoomed, rtol=1e-9, atol=1e-9 * scale)
    assert torch.equal(out[..., 57:, :41], out[..., 56:57, :41].expand(-1, -1, 9, -1))  # the last row repeated


def test_an_msc_copy_with_other_weights_is_named(tmp_path):
    layers = v2_layers(msc=False)
    by_name = {layer.name: layer for layer in layers}
    layers.append(Layer("fc1_voc12_c1_res05", "Convolution", [b + 1 for b in by_name["fc1_voc12_c1"].blobs]))
    with pytest.raises(MappingError, match="layer fc1_voc12_c1_res05 holds other weights than fc1_voc12_c1"):
        convert_caffe(write_caffemodel(tmp_path / "bad.caffemodel", layers))


def test_the_converted_v2_checkpoint_loads_with_msc(v2_model, tmp_path):
    _, path = v2_model
    out = convert_checkpoint(path, tmp_path / "deeplabv2.ckpt")
    checkpoint = torch.load(out, map_location="cpu", weights_only=True)
    assert checkpoint["hyper_parameters"]["msc_scales"] == [1.0, 0.75, 0.5]
    assert checkpoint["converted_from"]["input_range"].startswith("RGB minus the mean pixel")
    predictor = load(str(out))
    assert predictor.module.hparams.msc_scales == [1.0, 0.75, 0.5]
    assert predictor.predict(torch.zeros(3, 41, 33, dtype=torch.uint8)).shape == (41, 33)
