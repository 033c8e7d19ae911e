"""TF DeepLab checkpoints read without TensorFlow and converted: the converted network computes the official
graph's logits (checkpoints and logits written by the official graph: tests/golden/tf_mobilenet_v2_dm05 in
every clone, the others in ../shared/tf_golden beside the repository), every variable is used exactly once, and
the written checkpoint is one the project's commands read."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from deeplab_lightning import load
from deeplab_lightning.models import architectures_only, create_model
from deeplab_lightning.official import convert_checkpoint, convert_tf, read_tf_checkpoint
from deeplab_lightning.official.mapping import MappingError
from deeplab_lightning.official.tf_deeplab import build, describe, is_model_variable, tf_state_dict
from deeplab_lightning.official.tf_reader import CheckpointFormatError

from conftest import REPO

LOCAL = Path(__file__).parent / "golden" / "tf_mobilenet_v2_dm05"
SHARED = REPO.parent / "shared" / "tf_golden"
NEEDS_SHARED = pytest.mark.skipif(not SHARED.is_dir(), reason=f"needs {SHARED} (the official graph's checkpoints "
                                                              f"and logits, beside the repository in CI)")


def _image(folder: Path) -> torch.Tensor:
    return torch.from_numpy(np.array(Image.open(folder / "input_image.png").convert("RGB"))).permute(2, 0, 1)[None]


def _network(converted) -> torch.nn.Module:
    with architectures_only():
        net = create_model(converted.arch, converted.num_classes, output_stride=converted.output_stride,
                           **converted.model_kwargs)
    net.load_state_dict(converted.state_dict)
    return net.eval()


def _parity(net: torch.nn.Module, image: torch.Tensor, golden: Path) -> tuple[float, float]:
    """max |Δ logit| / std of the official logits at the output stride, and the share of equal argmax."""
    reference = torch.from_numpy(np.load(golden)).permute(0, 3, 1, 2)
    with torch.no_grad():
        logits = net.head(net.backbone(net.normalize(image)))  # at the output stride, before the upsampling
    assert logits.shape == reference.shape
    return ((logits - reference).abs().max() / reference.std()).item(), \
        (logits.argmax(1) == reference.argmax(1)).float().mean().item()


@pytest.mark.parametrize("output_stride", [8, 16])
def test_mobilenet_v2_dm05_computes_the_official_graphs_logits(output_stride):
    """One checkpoint, two output strides (the zoo evaluates it at both): rates 2 and 4 past the removed strides
    at OS 8, BatchNorm epsilon 1e-3, [-1, 1] input, TF's ASPP concatenation order; measured 5e-5 of the std
    (the same in float64: TF's own float32 rounding)."""
    net = _network(convert_tf(LOCAL / "model.ckpt", output_stride))
    golden = LOCAL / ("logits_os.npy" if output_stride == 8 else "logits_os_os16.npy")
    deviation, agreement = _parity(net, _image(LOCAL), golden)
    assert deviation <= 1e-3 and agreement == 1.0, (deviation, agreement)


def test_the_full_forward_is_the_official_resize_of_those_logits():
    """The network's output at the input size is TF's bilinear align_corners=True resize of its logits."""
    net = _network(convert_tf(LOCAL / "model.ckpt", 8))
    reference = torch.from_numpy(np.load(LOCAL / "logits_os.npy")).permute(0, 3, 1, 2)
    with torch.no_grad():
        out = net(_image(LOCAL))
    expected = F.interpolate(reference, size=(513, 513), mode="bilinear", align_corners=True)
    assert (out - expected).abs().max() <= 1e-3 * reference.std()


@NEEDS_SHARED
@pytest.mark.parametrize("folder, output_stride, golden", [
    ("mobilenet_v2", 8, "logits_os.npy"), ("mobilenet_v2", 16, "logits_os_os16.npy"),
])  # mobilenet_v2_dm05: the files of tests/golden/tf_mobilenet_v2_dm05 (tested above)
def test_every_shared_golden_checkpoint_computes_the_official_logits(folder, output_stride, golden):
    net = _network(convert_tf(SHARED / folder / "model.ckpt", output_stride))
    deviation, agreement = _parity(net, _image(SHARED), SHARED / folder / golden)
    assert deviation <= 1e-3 and agreement == 1.0, (folder, output_stride, deviation, agreement)


def test_the_reader_reads_every_variable_with_its_name_shape_and_dtype():
    tensors, entries, _ = read_tf_checkpoint(LOCAL / "model.ckpt")
    listed = json.loads((LOCAL / "variables.json").read_text())
    assert {v["name"]: v["shape"] for v in listed} == {k: list(t.shape) for k, t in tensors.items()}
    assert all(t.dtype == np.float32 for t in tensors.values()) and set(entries) == set(tensors)
    # The index's prefix, the .index file and the folder name the same checkpoint.
    for path in (LOCAL / "model.ckpt.index", LOCAL):
        again, _, _ = read_tf_checkpoint(path)
        assert np.array_equal(again["logits/semantic/weights"], tensors["logits/semantic/weights"])


def test_a_zoo_tar_gz_reads_as_its_extracted_checkpoint(tmp_path):
    import tarfile

    archive = tmp_path / "deeplabv3_mnv2_dm05_pascal_trainaug_2018_10_01.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name in ("model.ckpt.index", "model.ckpt.data-00000-of-00001"):
            tar.add(LOCAL / name, arcname=f"deeplabv3_mnv2_dm05_pascal_trainaug/{name}")
    from_tar, _, where = read_tf_checkpoint(archive)
    from_files, _, _ = read_tf_checkpoint(LOCAL / "model.ckpt")
    assert where.endswith("deeplabv3_mnv2_dm05_pascal_trainaug/model.ckpt")
    assert from_tar.keys() == from_files.keys() and all(np.array_equal(from_tar[k], from_files[k]) for k in from_tar)


def test_truncated_and_foreign_files_are_named(tmp_path):
    (tmp_path / "model.ckpt.index").write_bytes((LOCAL / "model.ckpt.index").read_bytes()[:-10])
    with pytest.raises(CheckpointFormatError, match="not a TF checkpoint .index"):
        read_tf_checkpoint(tmp_path / "model.ckpt")
    (tmp_path / "model.ckpt.index").write_bytes((LOCAL / "model.ckpt.index").read_bytes())
    with pytest.raises(FileNotFoundError, match=r"model.ckpt.data-00000-of-00001 is missing"):
        read_tf_checkpoint(tmp_path / "model.ckpt")
    data = (LOCAL / "model.ckpt.data-00000-of-00001").read_bytes()
    (tmp_path / "model.ckpt.data-00000-of-00001").write_bytes(data[:len(data) // 2])
    with pytest.raises(CheckpointFormatError, match="ends before variable"):
        read_tf_checkpoint(tmp_path / "model.ckpt")
    with pytest.raises(FileNotFoundError, match="nothing.index does not exist"):
        read_tf_checkpoint(tmp_path / "nothing")


def test_every_model_variable_is_used_exactly_once_or_named():
    tensors, entries, where = read_tf_checkpoint(LOCAL / "model.ckpt", keep=is_model_variable)
    spec = describe(tensors, where)
    converted = convert_tf(LOCAL / "model.ckpt", 16)
    net = _network(converted)
    assert converted.record["variables_converted"] == len(entries) == 272
    with pytest.raises(MappingError, match=r"1 model tensor\(s\) the network has no place for \(extra/weights\)"):
        tf_state_dict(spec, net, {**tensors, "extra/weights": np.zeros(1, np.float32)}, where)
    missing = {k: v for k, v in tensors.items() if k != "aspp0/BatchNorm/moving_mean"}
    with pytest.raises(MappingError, match=r"lacks 1 tensor\(s\) the network needs \(aspp0/BatchNorm/moving_mean\)"):
        tf_state_dict(spec, net, missing, where)
    reshaped = {**tensors, "aspp0/weights": tensors["aspp0/weights"][:, :, :, :128]}
    with pytest.raises(MappingError, match=r"aspp0/weights has shape \[128, 160, 1, 1\] after conversion"):
        tf_state_dict(spec, net, reshaped, where)
    # Optimizer slots and the step are not model variables: skipped, and counted in the record.
    assert not is_model_variable("global_step") and not is_model_variable("aspp0/weights/Momentum")


def test_the_written_checkpoint_records_the_network_and_loads(tmp_path):
    path = convert_checkpoint(LOCAL / "model.ckpt", tmp_path / "mnv2.ckpt", output_stride=8)
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    hparams, record = checkpoint["hyper_parameters"], checkpoint["converted_from"]
    assert hparams["arch"] == "deeplabv3_mobilenetv2" and hparams["num_classes"] == 21
    assert hparams["output_stride"] == 8 and hparams["class_names"][15] == "person"
    assert hparams["model_kwargs"]["backbone_kwargs"] == {
        "pixel_mean": [127.5] * 3, "pixel_std": [127.5] * 3, "bn_eps": 1e-3, "depth_multiplier": 0.5,
        "tf_same_padding": True}
    assert record["model_variant"] == "mobilenet_v2" and record["input_range"].startswith("RGB x / 127.5 - 1")
    predictor = load(str(path))
    expected = torch.from_numpy(np.load(LOCAL / "logits_os.npy")).permute(0, 3, 1, 2)
    expected = F.interpolate(expected, size=(513, 513), mode="bilinear", align_corners=True).argmax(1)[0]
    labels = predictor.predict(_image(LOCAL)[0], eval_size=513)
    assert (torch.from_numpy(labels).long() == expected).float().mean() > 0.999  # ties at class boundaries aside
    with pytest.raises(FileExistsError, match="mnv2.ckpt exists"):
        convert_checkpoint(LOCAL / "model.ckpt", path)


@NEEDS_SHARED
def test_xception_65_computes_the_official_graphs_logits():
    """DeepLabV3+ Xception-65 at OS 16 (the zoo's xception65_coco_voc_trainaug network, every weight tensor
    ternary): ReLU before each separable conv but inside exit_flow/block2's, rate 2 in exit_flow/block2, the
    decoder's pre-ReLU low-level tap, separable ASPP and decoder, align_corners resizes. Measured 1.5e-4 of
    the std. The project's Xception-65 needed no change: only the ASPP concatenation order is converted."""
    folder = SHARED / "xception_65_ternary"
    converted = convert_tf(folder / "model.ckpt", 16)
    assert converted.arch == "deeplabv3plus_xception65" and converted.model_kwargs == {}
    deviation, agreement = _parity(_network(converted), _image(SHARED), folder / "logits_os.npy")
    assert deviation <= 1e-3 and agreement == 1.0, (deviation, agreement)


def _synthetic(folder: Path) -> dict[str, np.ndarray]:
    """Random tensors with the names and shapes of ``folder``'s variables.json (networks without golden logits)."""
    rng = np.random.default_rng(0)
    return {v["name"]: rng.standard_normal(v["shape"]).astype(np.float32)
            for v in json.loads((folder / "variables.json").read_text())}


@NEEDS_SHARED
def test_the_zoo_xception_65_variables_all_convert():
    """The real Xception-65 network's variable list (names and shapes of the 41.3 M parameters): each variable
    goes to one tensor of the project's network and every tensor gets one."""
    tensors = _synthetic(SHARED / "xception_65")
    spec = describe(tensors, "xception_65")
    net, arch, _ = build(spec, 16)
    state = tf_state_dict(spec, net, tensors, "xception_65")
    assert arch == "deeplabv3plus_xception65" and len(tensors) == 732
    depthwise = tensors["xception_65/exit_flow/block2/unit_1/xception_module/separable_conv3_depthwise/"
                        "depthwise_weights"]  # [3, 3, 1536, 1] -> [1536, 1, 3, 3]
    assert torch.equal(state["backbone.blocks.20.stack.conv3.conv_dw.weight"][7, 0],
                       torch.from_numpy(depthwise[:, :, 7, 0]))


@NEEDS_SHARED
def test_the_resnet_v1_101_beta_variables_all_convert_into_its_layout():
    """ResNet-v1-101-beta DeepLabV3+ (three-conv stem, each block's stride in its last unit, multi-grid 1/2/4,
    separable ASPP and decoder): every one of the official graph's 602 variables (45.9 M values) goes to one
    tensor of the project's network, and the network's feature maps at 513 have the official graph's shapes
    (first activation, block 4, decoder tap). ../shared holds no logits for it: its numbers are not compared."""
    folder = SHARED / "resnet_v1_101_beta"
    tensors, meta = _synthetic(folder), json.loads((folder / "meta.json").read_text())
    spec = describe(tensors, "resnet_v1_101_beta")
    net, arch, kwargs = build(spec, 16)
    state = tf_state_dict(spec, net, tensors, "resnet_v1_101_beta")
    assert (arch, kwargs["backbone"], kwargs["multi_grid"]) == ("deeplabv3plus", "resnet101_beta", [1, 2, 4])
    assert sum(t.numel() for k, t in state.items() if "num_batches" not in k) == meta["num_parameters"]
    backbone = net.backbone
    assert [u.conv2.dilation[0] for u in backbone.layer4] == [2, 4, 8]
    assert torch.equal(state["backbone.layer1.2.conv2.weight"],  # block1's stride-2 unit
                       torch.from_numpy(tensors["resnet_v1_101/block1/unit_3/bottleneck_v1/conv2/weights"]
                                        .transpose(3, 2, 0, 1)))
    shapes = {role: shape for role, (_, shape, *_) in meta["tensors"].items()}
    backbone.to("meta")  # shapes only: nothing is computed
    with torch.device("meta"):
        x = torch.empty(1, 3, 513, 513)
        first = backbone.stem[0](x)
        low_level, features = backbone(x)
    nhwc = lambda t: [t.shape[0], t.shape[2], t.shape[3], t.shape[1]]  # noqa: E731
    assert nhwc(first) == shapes["first_activation"] and nhwc(features) == shapes["backbone_features"]
    assert nhwc(low_level) == shapes["decoder_lowlevel_input"]


def test_tf_same_padding_pads_one_pixel_less_before_on_even_sizes_and_exports_dynamically():
    """TF's 'SAME' for a 3x3 stride-2 conv pads (1, 1) on odd sizes, as PyTorch does, and (0, 1) on even ones;
    ``Conv2dTFSame`` does so from the input's size, also in a torch.export program (the size stays dynamic)."""
    from deeplab_lightning.models.layers import Conv2dTFSame

    torch.manual_seed(0)
    conv = Conv2dTFSame(3, 4, 3, stride=2).eval()
    plain = torch.nn.Conv2d(3, 4, 3, stride=2).eval()
    plain.load_state_dict(conv.state_dict())
    odd, even = torch.randn(1, 3, 65, 33), torch.randn(1, 3, 64, 32)
    with torch.no_grad():
        torch.testing.assert_close(conv(odd), F.conv2d(odd, conv.weight, conv.bias, 2, 1))
        torch.testing.assert_close(conv(even), plain(F.pad(even, (0, 1, 0, 1))))
        assert not torch.allclose(conv(even), F.conv2d(even, conv.weight, conv.bias, 2, 1))
        net = torch.nn.Sequential(conv, Conv2dTFSame(4, 4, 3, stride=2)).eval()
        dims = ({2: torch.export.Dim.DYNAMIC, 3: torch.export.Dim.DYNAMIC},)
        program = torch.export.export(net, (odd,), dynamic_shapes=dims).module()  # traced on odd sizes
        for x in (even, torch.randn(1, 3, 50, 71)):
            torch.testing.assert_close(program(x), net(x))
