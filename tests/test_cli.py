import shutil
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import yaml

from deeplab_lightning.callbacks import ScheduleCheck
from deeplab_lightning.commands.cli import main
from deeplab_lightning.evaluation import Inference
from deeplab_lightning.module import SegmentationModule

from conftest import REPO


def test_fit_through_the_command_line_then_reload_and_test(tmp_path, toy_dir, toy_settings, capsys, write_config,
                                                           recwarn):
    config = write_config(tmp_path, toy_dir, toy_settings)
    cli = main(["fit", "--config", str(config)])
    assert cli.trainer.global_step == 2
    assert any(isinstance(c, ScheduleCheck) for c in cli.trainer.callbacks)  # every fit checks for a schedule ...
    assert not [w for w in recwarn if "No learning-rate schedule" in str(w.message)]  # ... and this one has PolyLR
    assert cli.model.num_classes == 6 and cli.model.class_names[1] == "disk"  # linked from the data module
    assert "val/mIoU" in cli.trainer.callback_metrics
    best, last = tmp_path / "ckpt" / "best.ckpt", tmp_path / "ckpt" / "last.ckpt"
    assert best.is_file() and last.is_file()
    assert "mean IoU" in capsys.readouterr().out  # the final rich table

    reloaded = SegmentationModule.load_from_checkpoint(last, map_location="cpu")
    for (name, a), b in zip(cli.model.state_dict().items(), reloaded.state_dict().values()):
        assert torch.equal(a, b), name
    validated = cli.trainer.callback_metrics["val/mIoU"].item()  # the last step's weights, on the val split
    cli = main(["test", "--config", str(config), "--ckpt_path", str(last)])
    assert cli.trainer.callback_metrics["test_on_val/mIoU"].item() == pytest.approx(validated, abs=1e-6)  # test = val


def test_every_fit_ends_with_a_validation_of_its_final_weights_and_names_its_outputs(
        tmp_path, toy_dir, toy_settings, capsys, write_config):
    config = write_config(tmp_path, toy_dir, toy_settings, max_steps=3)  # validates at step 3 ...
    cli = main(["fit", "--config", str(config), "--trainer.val_check_interval", "2",  # ... but every 2 steps
                "--trainer.num_sanity_val_steps", "1"])
    assert cli.model.evaluation_results("val").step == 3  # the final weights, not step 2's
    out = capsys.readouterr().out
    assert "Validation of the weights after step 3" in out
    best = torch.load(tmp_path / "ckpt" / "best.ckpt", map_location="cpu", weights_only=False)
    checkpoint = cli.trainer.checkpoint_callback
    assert best["global_step"] in (2, 3) and checkpoint.best_model_path == str(tmp_path / "ckpt" / "best.ckpt")
    if best["global_step"] == 2:  # step 3's validation ran and did not beat step 2's
        assert cli.model.evaluation_results("val").mIoU <= checkpoint.best_model_score.item()
    else:
        assert cli.model.evaluation_results("val").mIoU == pytest.approx(checkpoint.best_model_score.item())
    assert f"Run folder: {tmp_path}" in out and f"config: {tmp_path / 'config.yaml'}" in out
    assert f"best checkpoint: {tmp_path / 'ckpt' / 'best.ckpt'} (val/mIoU" in out
    # The printed test command uses the run's own config (with the command line's overrides) and a command name
    # that runs without activating the environment; it works as printed.
    from deeplab_lightning.commands.cli import command_name

    saved, best_path = tmp_path / "config.yaml", tmp_path / "ckpt" / "best.ckpt"
    assert f"Test it: {command_name()} test --config {saved} --ckpt_path {best_path}" in out
    assert command_name() == "deeplab-lightning" or Path(command_name().split()[0]).is_file()
    tested = main(["test", "--config", str(saved), "--ckpt_path", str(best_path)])
    assert tested.trainer.callback_metrics["test_on_val/mIoU"].item() == pytest.approx(checkpoint.best_model_score.item())


def test_quickstart_config_parses(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(REPO / "experiments" / "quickstart.yaml"), "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["arch"] == "deeplabv3plus_resnet18"
    assert printed["data"]["class_path"] == "deeplab_lightning.data.ToyVOCDataModule"
    # its fit has a learning-rate schedule (so no "No learning-rate schedule" warning)
    assert "deeplab_lightning.callbacks.PolyLR" in [c["class_path"] for c in printed["trainer"]["callbacks"]]


def test_unknown_model_name_fails_at_parse_time_with_the_list(tmp_path, toy_dir, toy_settings, capsys,
                                                               write_config):
    config = write_config(tmp_path, toy_dir, toy_settings)
    with pytest.raises(SystemExit) as exit_info:  # refused when the command line is parsed, before --print_config
        main(["fit", "--config", str(config), "--model.arch", "deeplab_unknown", "--print_config"])
    assert exit_info.value.code not in (0, None)
    assert "deeplab_unknown" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    assert "deeplabv3plus_xception65" in help_text and "deeplabv1_vgg16_largefov" in help_text  # the choices
    assert "torch.nn.Conv2d" not in help_text and len(help_text.splitlines()) < 900  # no nn.Module catalogue


def test_console_entry_points_answer_help_and_version():
    from deeplab_lightning import __version__
    from deeplab_lightning.commands import SUBCOMMANDS

    script = Path(sys.executable).parent / "deeplab-lightning"  # installed beside this Python
    out = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert all(f"  {sub} " in out.stdout for sub in SUBCOMMANDS)  # check-data and ablate included
    out = subprocess.run([sys.executable, "-m", "deeplab_lightning", "--version"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == f"deeplab-lightning {__version__}"
    out = subprocess.run([str(script), "fit", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "--model.arch" in out.stdout
    out = subprocess.run([str(script), "check-data", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "\nThe dataset: VOCDataModule, CityscapesDataModule" in out.stdout  # a heading
    out = subprocess.run([str(script), "fitt"], capture_output=True, text=True, timeout=120)  # a typo: one hint
    assert out.returncode == 2 and "unknown subcommand 'fitt'; did you mean: deeplab-lightning fit" in out.stderr
    assert len(out.stderr.splitlines()) == 2 and not out.stdout


def test_check_data_summarises_splits_and_lists_problems(tmp_path, toy_dir, toy_settings, write_config):
    config = write_config(tmp_path, toy_dir, toy_settings)
    script = Path(sys.executable).parent / "deeplab-lightning"
    ok = subprocess.run([str(script), "check-data", "--config", str(config)], capture_output=True, text=True,
                        timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert "train (16 images)" in ok.stdout and "val (6 images)" in ok.stdout and "star" in ok.stdout
    assert "0 problem(s) found" in ok.stdout

    # Every problem is listed, not only the first: a split list naming an id twice, a truncated image.
    import io

    from rich.console import Console

    from deeplab_lightning.commands.check_data import check_data
    from deeplab_lightning.data import ToyVOCDataModule

    broken = tmp_path / "broken"
    shutil.copytree(toy_dir, broken)
    image = broken / "VOCdevkit/VOC2012/JPEGImages/toy_val_00002.jpg"
    image.write_bytes(image.read_bytes()[:300])
    train_list = broken / "VOCdevkit/VOC2012/ImageSets/Segmentation/train.txt"
    train_list.write_text(train_list.read_text() + "toy_train_00003\n")
    screen = io.StringIO()
    dm = ToyVOCDataModule(str(broken), **toy_settings, num_workers=0)
    assert not check_data(dm, ["train", "val"], Console(file=screen, width=300))
    report = screen.getvalue()
    assert "'toy_train_00003' twice (lines 4 and 17)" in report and "toy_val_00002.jpg" in report
    # Without the unreadable image, a class has no pixel left in the 6-image val split: also a problem.
    assert "has no pixel in split 'val'" in report and "3 problem(s) found" in report


def test_test_with_multiscale_and_crf_reports_both_metrics(tmp_path, toy_dir, toy_settings, capsys, write_config,
                                                            diverse_start):
    config = write_config(tmp_path, toy_dir, toy_settings)
    settings = yaml.safe_load(config.read_text())
    settings["model"]["init_checkpoint"] = diverse_start  # predictions the CRF can change
    config.write_text(yaml.safe_dump(settings))
    main(["fit", "--config", str(config)])
    last = str(tmp_path / "ckpt" / "last.ckpt")
    # Multi-scale + flip alone, with the eval config's scales. (Run first: in one process, jsonargparse carries
    # a previous command's callbacks into a later "callbacks+=".)
    ms_only = main(["test", "--config", str(config), "--trainer.callbacks+=deeplab_lightning.callbacks."
                    "MultiScaleInference", "--trainer.callbacks.scales", "[0.75, 1.0, 1.25, 1.5]",
                    "--trainer.callbacks.stages", "[test]", "--ckpt_path", last])
    eval_config = REPO / "experiments" / "quickstart_eval_ms_flip_crf.yaml"
    cli = main(["test", "--config", str(config), "--config", str(eval_config),
                "--trainer.enable_progress_bar", "true", "--ckpt_path", last])
    metrics = cli.trainer.callback_metrics
    assert cli.model.evaluation_results("test").mIoU == pytest.approx(metrics["test_on_val/mIoU"].item())
    # Before refinement is exactly multi-scale + flip alone; the CRF changes the predictions.
    assert metrics["test_on_val/unrefined/mIoU"].item() == pytest.approx(
        ms_only.trainer.callback_metrics["test_on_val/mIoU"].item(), abs=1e-6)
    refined, unrefined = cli.model.evaluation_results("test"), cli.model.evaluation_results("test", unrefined=True)
    assert not torch.equal(refined.confmat, unrefined.confmat)
    assert cli.model.pipeline.settings == Inference()  # both callbacks' changes undone after the stage
    out = capsys.readouterr().out
    titles = " ".join(out.split())
    assert "+ flip, before the dense CRF" in titles and "+ flip + dense CRF" in titles and "mean IoU" in out
    # The boundary metrics: per-class Boundary IoU and F1 in the IoU tables, and the trimap before and after the
    # CRF at each band width, the band named (the toy data's void marks object boundaries).
    assert "Boundary IoU d = 2% of the diagonal" in titles and "Trimap, test (step" in titles
    assert "Trimap: labelled pixels within w px (chessboard) of void pixels" in titles
    assert refined.boundary is not None and unrefined.boundary is not None
    # A later test without the CRF has no "before refinement" numbers (not the previous test's).
    L.Trainer(logger=False, enable_progress_bar=False).test(cli.model, datamodule=cli.datamodule, verbose=False)
    assert cli.model.evaluation_results("test", unrefined=True) is None and cli.model.evaluation_results("test")


def test_predict_writes_pngs_and_overlays_and_never_overwrites_an_input_or_a_prediction(
        tmp_path, toy_dir, toy_settings, write_config, diverse_start):
    from PIL import Image

    config = write_config(tmp_path, toy_dir, toy_settings)
    main(["fit", "--config", str(config), "--model.init_checkpoint", diverse_start])  # predicts every class
    images = tmp_path / "images"
    images.mkdir()
    source = toy_dir / "VOCdevkit/VOC2012/JPEGImages"
    shutil.copy(source / "toy_val_00000.jpg", images / "a.jpg")
    Image.open(source / "toy_val_00001.jpg").save(images / "a.png")  # same stem, another image
    Image.open(source / "toy_val_00002.jpg").resize((40, 30)).save(images / "b.jpg")  # smaller than the others
    (images / "notes.txt").write_text("not an image")

    def predict(*args):
        return main(["predict", "--config", str(config), "--data", "deeplab_lightning.data.ImageFolderDataModule",
                     "--data.image_dir", str(images), "--data.classes", "toy", "--data.num_workers", "0",
                     "--data.val_batch_size", "2", "--ckpt_path", str(tmp_path / "ckpt" / "last.ckpt"), *args])

    predict()  # no writer configured: PNGs by default, in the run folder
    out = tmp_path / "predictions"
    expected = {"a.jpg": "a.jpg", "a.png": "a.png", "b.jpg": "b"}  # an extension is kept only to tell apart
    assert sorted(p.name for p in out.glob("*.png")) == sorted(f"{v}.png" for v in expected.values())
    for name, stem in expected.items():
        labels = Image.open(out / f"{stem}.png")
        size = Image.open(images / name).size
        assert labels.mode == "P" and labels.size == size
        assert set(np.unique(np.array(labels)).tolist()) <= set(range(6))
        overlay = Image.open(out / "overlays" / f"{stem}.jpg")
        assert overlay.size[0] == 2 * size[0] and overlay.size[1] > size[1]  # image | overlay, legend below
    written = (out / "b.png").stat().st_mtime_ns

    # One image, one prediction: each image is predicted on its own smallest canvas, so the command gives the
    # Python API's prediction (from a path, a PIL image or an array) whatever else is in the folder.
    import deeplab_lightning

    model = deeplab_lightning.load(str(tmp_path / "ckpt" / "last.ckpt"))
    for name, stem in expected.items():
        from_cli = np.array(Image.open(out / f"{stem}.png"))
        assert np.array_equal(model.predict(images / name), from_cli), name
    from_cli = np.array(Image.open(out / "b.png"))
    for image in (Image.open(images / "b.jpg"), np.array(Image.open(images / "b.jpg"))):
        labels = model.predict(image)
        assert labels.dtype == np.uint8 and np.array_equal(labels, from_cli)
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(images / "b.jpg", alone / "b.jpg")
    main(["predict", "--config", str(config), "--data", "deeplab_lightning.data.ImageFolderDataModule",
          "--data.image_dir", str(alone), "--data.classes", "toy", "--data.num_workers", "0",
          "--ckpt_path", str(tmp_path / "ckpt" / "last.ckpt"), "--output_dir", str(tmp_path / "alone_out")])
    assert np.array_equal(np.array(Image.open(tmp_path / "alone_out" / "b.png")), from_cli)
    own_size = model.predict(images / "b.jpg", eval_size=None, scales=(0.75, 1.0), flip=True, crf=True)
    assert own_size.shape == from_cli.shape
    assert model.module.pipeline.settings.scales == (1.0,)  # the options were for that call only

    predict()  # again: a new folder, the first predictions untouched
    assert len(list((tmp_path / "predictions-2").glob("*.png"))) == 3
    with pytest.raises(FileExistsError, match=r"3 images already have predictions .*--overwrite true"):
        predict("--output_dir", str(out))
    assert (out / "b.png").stat().st_mtime_ns == written
    predict("--output_dir", str(out), "--overwrite", "true")
    assert (out / "b.png").stat().st_mtime_ns > written
    with pytest.raises(FileExistsError, match=r"a folder of input images"):
        predict("--output_dir", str(images))
    assert sorted(p.name for p in images.iterdir()) == ["a.jpg", "a.png", "b.jpg", "notes.txt"]


@pytest.mark.parametrize("arch,mean,std", [
    ("deeplabv3plus_xception65", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),  # [-1, 1], as the TF weights expect
    ("deeplabv3plus_resnet18", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),  # torchvision's ImageNet weights
])
def test_validate_feeds_the_first_convolution_the_range_its_weights_expect(
        tmp_path, toy_dir, toy_settings, monkeypatch, arch, mean, std, write_config):
    seen = []
    forward = torch.nn.Conv2d.forward

    def recording(conv, x):
        if conv.in_channels == 3:  # only the backbone's first convolution takes RGB
            seen.append(x.detach().clone())
        return forward(conv, x)

    monkeypatch.setattr(torch.nn.Conv2d, "forward", recording)
    config = write_config(tmp_path, toy_dir, toy_settings)
    cli = main(["validate", "--config", str(config), "--model.arch", arch, "--data.init_args.val_batch_size", "1"])
    first = cli.datamodule.dataset("val")[0]["image"].float() / 255  # the first validation image, RGB in [0, 1]
    expected = (first - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    h, w = first.shape[-2:]
    assert len(seen) == 6 and seen[0].shape[-2:] == (81, 81)  # the fixed evaluation canvas
    assert torch.allclose(seen[0][0, :, :h, :w], expected, atol=1e-5)
    assert seen[0][0, :, h:].abs().max() < 1e-5 and seen[0][0, :, :, w:].abs().max() < 1e-5  # mean-pixel padding


def test_the_data_modules_ignore_label_reaches_loss_metrics_and_padding(tmp_path, toy_dir, toy_settings,
                                                                        monkeypatch, write_config):
    from deeplab_lightning.data import ToyVOCDataModule

    config = write_config(tmp_path, toy_dir, toy_settings)
    args = ["validate", "--config", str(config), "--data.init_args.val_batch_size", "3"]
    reference = main(args).trainer.callback_metrics
    void_254 = np.arange(256, dtype=np.uint8)
    void_254[255] = 254  # the toy masks' void pixels read as 254
    monkeypatch.setattr(ToyVOCDataModule, "label_map", void_254, raising=False)
    monkeypatch.setattr(ToyVOCDataModule, "ignore_index", 254, raising=False)
    cli = main(args)
    assert cli.model.hparams.ignore_index == 254 and cli.model.evaluator.final["val"].ignore_index == 254
    assert cli.datamodule.val_dataloader().collate_fn.keywords["ignore_index"] == 254
    for key in ("val/mIoU", "val/loss"):  # the same pixels ignored under another label
        assert cli.trainer.callback_metrics[key].item() == pytest.approx(reference[key].item(), abs=1e-6)


def test_bf16_on_a_cpu_without_native_bf16_is_named_with_the_fix(tmp_path, toy_dir, toy_settings, write_config,
                                                                 recwarn):
    """A paper config (bf16-mixed) on such a CPU would run emulated bf16, about 20x slower: one warning says so."""
    from deeplab_lightning.commands.cli import cpu_has_native_bf16

    config = write_config(tmp_path, toy_dir, toy_settings)
    main(["validate", "--config", str(config), "--trainer.precision", "bf16-mixed", "--trainer.limit_val_batches",
          "1"])
    named = [w for w in recwarn if "without native bfloat16" in str(w.message)]
    assert len(named) == (0 if cpu_has_native_bf16() else 1)
    if named:
        assert "--trainer.precision 32-true" in str(named[0].message)
