"""A converted official checkpoint is a project checkpoint like any other (convert, then load, validate, test,
predict, export, init_checkpoint), and the experiments/zoo configs evaluate it with its source's protocol: the
canvas and its padding value, the input range, the output stride, scales and flip of the published row."""
from __future__ import annotations

import functools
import shlex
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image

from deeplab_lightning import load
from deeplab_lightning.commands.cli import main as cli_main
from deeplab_lightning.commands import console_main
from deeplab_lightning.evaluation.multiscale import scaled_size
from deeplab_lightning.official import convert_tf
from deeplab_lightning.official.caffe_deeplab import build as caffe_build

from conftest import REPO

GOLDEN = Path(__file__).parent / "golden" / "tf_mobilenet_v2_dm05"
SHARED = REPO.parent / "shared" / "tf_golden"
ZOO = REPO / "experiments" / "zoo"
PAPER_ROWS = yaml.safe_load((REPO / "docs" / "paper_rows.yaml").read_text())
ZOO_CONFIGS = {name: spec for name, spec in PAPER_ROWS["configs"].items() if name.startswith("zoo/")}
CONVERTED_ROWS = [row for row in PAPER_ROWS["rows"] if row.get("convert")]


def _image() -> np.ndarray:
    return np.array(Image.open(GOLDEN / "input_image.png").convert("RGB"))


def command(monkeypatch, *args) -> int:
    """``deeplab-lightning ARGS`` as the console script runs it; its exit status."""
    monkeypatch.setattr(sys, "argv", ["deeplab-lightning", *args])
    with pytest.raises(SystemExit) as exit_info:
        console_main()
    return exit_info.value.code


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> Path:
    """The MobileNetV2 x0.5 golden checkpoint converted by the command line, as a user converts a zoo download."""
    from deeplab_lightning.commands.convert import main

    path = tmp_path_factory.mktemp("zoo") / "mobilenetv2_dm05_coco_voc_trainaug.ckpt"
    assert main([str(GOLDEN / "model.ckpt"), "--output", str(path)]) == 0
    return path


@pytest.fixture(scope="module")
def tiny_voc(tmp_path_factory) -> Path:
    """VOC 2012's layout with two val images smaller than the 513 canvas (crops of the golden photo)."""
    root = tmp_path_factory.mktemp("voc")
    voc = root / "VOCdevkit" / "VOC2012"
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / folder).mkdir(parents=True)
    image, rng = _image(), np.random.default_rng(0)
    for name, crop in (("2007_000001", image[:300, :400]), ("2007_000002", image[100:, 50:250])):
        Image.fromarray(crop).save(voc / "JPEGImages" / f"{name}.jpg", quality=95)
        labels = rng.integers(0, 21, crop.shape[:2], dtype=np.uint8)
        labels[:5] = 255
        Image.fromarray(labels).save(voc / "SegmentationClass" / f"{name}.png")
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("2007_000001\n2007_000002\n")
    (voc / "ImageSets" / "Segmentation" / "train.txt").write_text("2007_000001\n")
    return root


def test_convert_prints_the_command_that_tests_it_and_never_overwrites(converted, monkeypatch, capsys):
    assert command(monkeypatch, "convert", str(GOLDEN / "model.ckpt"), "--output", str(converted)) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "exists; choose another file or pass --overwrite true" in err[0]
    out = converted.parent / "my zoo" / "again.ckpt"
    out.parent.mkdir()
    monkeypatch.chdir(converted.parent)  # not the repository: its zoo config is named by its whole path
    assert command(monkeypatch, "convert", str(GOLDEN / "model.ckpt"), "--output", str(out)) == 0
    printed = capsys.readouterr().out
    assert "deeplabv3_mobilenetv2 (mobilenet_v2), 21 classes, output stride 16" in printed
    suggested = printed.split("Evaluate it as its source did: ", 1)[1].split(" (single scale", 1)[0]
    assert shlex.split(suggested) == ["deeplab-lightning", "validate", "--config",  # pasted into a shell, it runs
                                      str((ZOO / "mobilenetv2_dm05_coco_voc_trainaug.yaml").resolve()),
                                      "--ckpt_path", str(out)]
    assert command(monkeypatch, "convert", str(GOLDEN / "logits_os.npy"), "--output", str(out.with_name("x.ckpt"))) == 1
    assert "logits_os.npy.index does not exist" in capsys.readouterr().err


def _zoo_args(name: str, tiny_voc: Path, *more: str) -> list[str]:
    """A zoo config's command on the tiny VOC, on the CPU; each image on its own smallest canvas (faster than 513:
    the protocol's canvas is tested below)."""
    return ["--config", str(ZOO / f"{name}.yaml"), f"--data.init_args.data_dir={tiny_voc}",
            "--data.init_args.num_workers=0", "--data.init_args.eval_size=auto", "--trainer.accelerator=cpu",
            "--trainer.devices=1", "--trainer.logger=false", "--trainer.enable_progress_bar=false", *more]


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated")
def test_validate_test_predict_export_and_init_checkpoint_accept_it(converted, tiny_voc, tmp_path, monkeypatch):
    """The zoo config evaluates the converted checkpoint (validate; test at output stride 8 from the same weights;
    predict), model.init_checkpoint starts from it (same scores), export writes its network, and a config whose
    network computes something else from the same tensors (another depth multiplier is another shape, but the
    x1.0 config's input range and epsilon would load) is refused."""
    monkeypatch.chdir(tmp_path)
    name = "mobilenetv2_dm05_coco_voc_trainaug"
    scores = cli_main(["validate", *_zoo_args(name, tiny_voc, f"--ckpt_path={converted}")]).trainer.callback_metrics
    started = cli_main(["validate", *_zoo_args(name, tiny_voc, f"--model.init_checkpoint={converted}")])
    assert float(started.trainer.callback_metrics["val/mIoU"]) == pytest.approx(float(scores["val/mIoU"]))
    tested = cli_main(["test", *_zoo_args(name, tiny_voc, "--model.output_stride=8", f"--ckpt_path={converted}")])
    assert tested.model.net.output_stride == 8 and "test_on_val/mIoU" in tested.trainer.callback_metrics
    cli_main(["predict", *_zoo_args(name, tiny_voc, f"--ckpt_path={converted}", f"--output_dir={tmp_path / 'pred'}")])
    assert sorted(p.name for p in (tmp_path / "pred").glob("*.png") if "overlay" not in p.name) == [
        "2007_000001.png", "2007_000002.png"]
    from deeplab_lightning.commands.export import main as export_main

    exported = tmp_path / "net.pt"  # TorchScript, the fastest to write; torch.export of TF's padding: test_official_tf
    assert export_main(["--ckpt_path", str(converted), "--format", "torchscript", "--output", str(exported)]) == 0
    image = torch.from_numpy(_image()).permute(2, 0, 1)[None]
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.load(str(exported))(image), load(str(converted)).net(image))
    with pytest.raises(ValueError, match=r"built with model.model_kwargs.backbone_kwargs=.*'depth_multiplier': 0.5"):
        cli_main(["validate", *_zoo_args("mobilenetv2_coco_voc_trainaug", tiny_voc, f"--ckpt_path={converted}")])


def test_an_image_is_evaluated_on_the_sources_canvas_padded_with_its_mean_pixel(converted):
    """TF DeepLab (and the Caffe releases) pad every evaluation image at the bottom and right to the eval crop
    (513 x 513 on VOC) with the mean pixel, 127.5 (0 after the [-1, 1] scaling): the prediction for a 300 x 400
    image is the network's on that canvas, cropped. Image pooling sees the padding, so another canvas would give
    other scores."""
    predictor = load(str(converted))
    net = predictor.net
    assert net.pixel_mean.flatten().tolist() == [127.5] * 3 and net.pixel_std.flatten().tolist() == [127.5] * 3
    crop = _image()[:300, :400]
    canvas = np.full((513, 513, 3), 127.5, np.float32)
    canvas[:300, :400] = crop
    with torch.no_grad():
        expected = net(torch.from_numpy(canvas).permute(2, 0, 1)[None])[0, :, :300, :400].argmax(0)
        own_size = net(torch.from_numpy(crop).permute(2, 0, 1)[None])[0].argmax(0)
    labels = torch.from_numpy(predictor.predict(crop, eval_size=513)).long()
    assert torch.equal(labels, expected)
    assert not torch.equal(labels, own_size)  # the canvas matters: image pooling averages the padding too
    caffe_net, _, _ = caffe_build("v2_resnet101", 21)  # on the meta device: its settings only
    assert [255 * m for m in caffe_net.backbone.input_mean] == pytest.approx([122.675, 116.669, 104.008])


def _tf_multi_scale(net, image: torch.Tensor, scales: tuple[float, ...]) -> torch.Tensor:
    """TF's ``predict_labels_multi_scale`` written out: per scale and flip, the image resized to ``(size - 1) * s + 1``,
    the logits at the output stride resized onto the logit grid of the image at max(1, s) (``multi_scale_logits``),
    flipped back, resized to the image; their softmax averaged. [C,H,W] of image [1,3,H,W]."""
    size = tuple(image.shape[-2:])
    total = 0
    for scale in scales:
        scaled = F.interpolate(image.float(), size=scaled_size(size, scale, True), mode="bilinear", align_corners=True)
        for flip in (False, True):
            logits = net.head(net.backbone(net.normalize(scaled.flip(-1) if flip else scaled)))
            grid = [int((d - 1) * max(1.0, scale) / net.output_stride + 1) for d in size]
            logits = F.interpolate(logits, size=grid, mode="bilinear", align_corners=True)
            logits = logits.flip(-1) if flip else logits
            total = total + F.interpolate(logits, size=size, mode="bilinear", align_corners=True).softmax(1)
    return total[0] / (2 * len(scales))


@pytest.mark.parametrize("side, scales", [(513, (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)), (401, (1.25,))])
def test_multi_scale_evaluation_merges_the_scales_as_the_tf_reference(converted, side, scales):
    """The evaluation pipeline with a converted model's module (what ``test`` runs) equals TF's multi-scale merge on
    the golden photo: the zoo's protocol on the 513 canvas (OS 16, scales 0.5-1.75, flip), and a 401 canvas at 1.25
    (25 logits on a 501-pixel input: upsampling them first would not put TF's grid on their samples)."""
    from deeplab_lightning.evaluation.pipeline import EvaluationPipeline, Inference

    predictor = load(str(converted))
    image = torch.from_numpy(np.ascontiguousarray(_image()[:side, :side])).permute(2, 0, 1)[None]
    with torch.no_grad():
        batch = {"image": image, "size": [(side, side)], "canvas": (side, side), "padded": False}
        ours = EvaluationPipeline(Inference(scales=scales, flip=True))(predictor.module, batch).final[0].exp()
        reference = _tf_multi_scale(predictor.net, image, scales)
    assert (ours - reference).abs().max() < 1e-5
    assert torch.equal(ours.argmax(0), reference.argmax(0))


def _printed(capsys, subcommand: str, config: Path, args: list[str]) -> dict:
    with pytest.raises(SystemExit) as exit_info:
        cli_main([subcommand, "--config", str(config), *args, "--print_config"])
    assert exit_info.value.code == 0
    return yaml.safe_load(capsys.readouterr().out)


def test_every_zoo_config_has_its_paper_rows_and_every_converted_row_a_zoo_config():
    """docs/paper_rows.yaml states each experiments/zoo config's settings (tests/test_paper_rows.py checks them and
    each row's evaluation and number against the published row) and converts then evaluates with it."""
    assert {f"zoo/{p.stem}" for p in ZOO.glob("*.yaml")} == set(ZOO_CONFIGS)
    assert {row["config"] for row in CONVERTED_ROWS} == set(ZOO_CONFIGS)
    for row in CONVERTED_ROWS:
        assert row["checkpoint"] == f"{row['config']}.ckpt" and row["command"] in ("validate", "test")


@pytest.mark.parametrize("name", sorted(ZOO_CONFIGS))
def test_each_zoo_config_builds_the_converted_network_on_its_sources_canvas(name, capsys):
    """The network the config builds is the one the converter records for its source (input range, BatchNorm
    epsilon, padding, layout, upsampling: a mismatch would be refused when the checkpoint loads), evaluated in float32
    on the source's canvas: 513 x 513 for VOC (TF eval_crop_size and the Caffe test.prototxt's crop_size), 1025 x
    2049 for Cityscapes, padded with the network's mean pixel."""
    printed = _printed(capsys, "validate", ZOO / f"{name[len('zoo/'):]}.yaml", [])
    assert (printed["model"].get("model_kwargs") or {}) == _converter_kwargs(ZOO_CONFIGS[name]["source"])
    assert printed["trainer"]["precision"] == "32-true"
    voc = printed["data"]["class_path"].endswith("VOCDataModule")
    assert printed["data"]["init_args"]["eval_size"] == (513 if voc else [1025, 2049])


@functools.lru_cache(maxsize=None)
def _tf_kwargs(folder: str) -> dict:
    return convert_tf(Path(folder) / "model.ckpt").model_kwargs


def _converter_kwargs(model: str) -> dict:
    """The model_kwargs ``deeplab-lightning convert`` records for a source's ``model`` (from the golden checkpoints,
    and the Caffe converter's network)."""
    if model.startswith("caffe:"):
        return caffe_build(model.split(":")[1], 21)[2]
    if model == "xception_65":  # the project's Xception-65 is TF's: nothing to record
        return _tf_kwargs(str(SHARED / "xception_65_ternary")) if SHARED.is_dir() else {}
    if model == "mobilenet_v2_dm05" or not SHARED.is_dir():
        kwargs = _tf_kwargs(str(GOLDEN))
        multiplier = 0.5 if model == "mobilenet_v2_dm05" else 1.0  # x1.0 differs only by its multiplier
        return {"backbone_kwargs": {**kwargs["backbone_kwargs"], "depth_multiplier": multiplier}}
    return _tf_kwargs(str(SHARED / "mobilenet_v2"))
