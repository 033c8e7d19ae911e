"""Seeds, settings, unusual images and the host syncs of a training step."""
import traceback

import lightning as L
import pytest
import torch

from deeplab_lightning.callbacks import PolyLR, ProgressBar
from deeplab_lightning.commands.cli import main
from deeplab_lightning.data import TOY_CLASSES, ToyVOCDataModule
from deeplab_lightning.module import SegmentationModule


class RecordLoss(L.Callback):
    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(outputs["loss"].item())


def _fit(toy_dir, toy_settings, tmp_path, seed, module_kwargs=None, steps=10):
    L.seed_everything(seed, workers=True)
    module = SegmentationModule("deeplabv3plus_resnet18", 6, class_names=TOY_CLASSES, lr=0.01,
                                model_kwargs={"aspp_channels": 16, "decoder_channels": 16}, **(module_kwargs or {}))
    dm = ToyVOCDataModule(str(toy_dir), **toy_settings, crop_size=48, batch_size=2, num_workers=0)
    recorder = RecordLoss()
    trainer = L.Trainer(max_steps=steps, limit_val_batches=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[recorder],
                        deterministic=True, default_root_dir=tmp_path)
    trainer.fit(module, datamodule=dm)
    return recorder.losses, trainer


def test_same_seed_gives_the_same_first_ten_losses(toy_dir, toy_settings, tmp_path):
    first, _ = _fit(toy_dir, toy_settings, tmp_path, seed=3)
    second, _ = _fit(toy_dir, toy_settings, tmp_path, seed=3)
    other, _ = _fit(toy_dir, toy_settings, tmp_path, seed=4)
    assert len(first) == 10 and first == second
    assert first != other


def test_checkpoint_of_another_architecture_is_refused(tmp_path, toy_dir, toy_settings, write_config):
    config = write_config(tmp_path, toy_dir, toy_settings)
    main(["fit", "--config", str(config)])
    with pytest.raises(ValueError, match=r"arch='deeplabv3plus_resnet18'.*arch='deeplabv3plus_resnet50'"):
        main(["test", "--config", str(config), "--model.arch", "deeplabv3plus_resnet50",
              "--ckpt_path", str(tmp_path / "ckpt" / "last.ckpt")])


def test_evaluate_at_output_stride_8_a_model_trained_at_16(tmp_path, toy_dir, toy_settings, write_config):
    config = write_config(tmp_path, toy_dir, toy_settings)
    main(["fit", "--config", str(config)])
    cli = main(["test", "--config", str(config), "--model.output_stride", "8",
                "--ckpt_path", str(tmp_path / "ckpt" / "last.ckpt")])
    assert cli.model.net.output_stride == 8 and cli.model.net.aspp.atrous_rates == (12, 24, 36)
    trained = torch.load(tmp_path / "ckpt" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    assert all(torch.equal(v, trained[k]) for k, v in cli.model.state_dict().items())  # the trained weights


@pytest.mark.parametrize("override, key", [(["--model.output_strid", "8"], "output_strid"),
                                           (["--trainer.max_step", "3"], "max_step"),
                                           (["--model.optimizer", "adam"], "optimizer")])
def test_unknown_config_keys_and_values_are_named(tmp_path, toy_dir, toy_settings, capsys, override, key, write_config):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(write_config(tmp_path, toy_dir, toy_settings)), *override])
    assert exit_info.value.code not in (0, None)
    assert key in capsys.readouterr().err


def test_a_zero_crop_size_is_named_before_any_network_runs(tmp_path, toy_dir, toy_settings, write_config):
    with pytest.raises(ValueError, match=r"crop_size must be a positive int or \[height, width\], got 0"):
        main(["fit", "--config", str(write_config(tmp_path, toy_dir, toy_settings)), "--data.init_args.crop_size", "0"])


def test_unknown_key_inside_a_config_file_is_named(tmp_path, toy_dir, toy_settings, capsys, write_config):
    import yaml

    path = write_config(tmp_path, toy_dir, toy_settings)
    config = yaml.safe_load(path.read_text())
    config["model"]["atrous_ratez"] = [6, 12, 18]
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(path)])
    assert exit_info.value.code not in (0, None)
    assert "atrous_ratez" in capsys.readouterr().err


def test_sixteen_bit_and_rgba_images_are_read_as_8_bit_rgb(tmp_path):
    import numpy as np
    from PIL import Image

    from deeplab_lightning.data.dataset import read_image

    gray16 = (np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000)
    Image.fromarray(gray16).save(tmp_path / "g16.png")
    image = read_image(tmp_path / "g16.png")
    assert image.dtype == torch.uint8 and image.shape == (3, 3, 4)
    assert torch.equal(image[0], torch.from_numpy((gray16 >> 8).astype(np.uint8)))  # not clipped to white
    rgba = np.zeros((2, 3, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 10
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    assert read_image(tmp_path / "a.png")[:, 0, 0].tolist() == [200, 0, 0]
    # the Python API's other inputs: an RGBA array or tensor is the same image as the file and the PIL image
    from deeplab_lightning.data.dataset import image_tensor

    for same in (rgba, torch.from_numpy(rgba).permute(2, 0, 1), Image.fromarray(rgba, mode="RGBA")):
        assert torch.equal(image_tensor(same), read_image(tmp_path / "a.png"))
    with pytest.raises(FileNotFoundError, match=r"missing.png does not exist; check the path"):
        image_tensor(tmp_path / "missing.png")


def test_full_cityscapes_frame_is_evaluated_window_by_window_on_cpu():
    from torch.utils.data import DataLoader

    from deeplab_lightning.callbacks import MultiScaleInference
    from deeplab_lightning.data.dataset import pad_collate

    sizes = []
    module = SegmentationModule("deeplabv3plus_resnet18", 3, model_kwargs={"aspp_channels": 8,
                                                                            "decoder_channels": 8})
    module.net.register_forward_pre_hook(lambda m, args: sizes.append(tuple(args[0].shape[-2:])))
    frame = {"image": torch.randint(0, 256, (3, 1024, 2048), dtype=torch.uint8),
             "mask": torch.randint(0, 3, (1024, 2048)), "id": "frame", "size": (1024, 2048)}
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[MultiScaleInference(scales=[1.0], flip=False, window=512, stages=["validate"])])
    trainer.validate(module, DataLoader([frame], batch_size=1, collate_fn=pad_collate))
    assert max(sizes) == (512, 512) and len(sizes) == 3 * 6  # 1/3 overlap: 3 x 6 windows, none larger
    assert module.evaluation_results("val").confmat.sum() == 1024 * 2048  # every pixel of the frame counted


def test_training_steps_copy_nothing_to_the_host(toy_dir, toy_settings, monkeypatch):
    """On a GPU, reading a tensor's value on the host (``.item()``, ``bool()``...) makes the CPU wait for the
    GPU, so it cannot queue the next batch meanwhile. A fit with the experiment configs' callbacks reads none
    from the start of step 2 to the start of step 5 (the progress bar reads the loss once, after step 1),
    except the non-finite loss check's read of its host copy, which waits for that loss only."""
    reads = []

    class Window(L.Callback):
        active = False

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            Window.active = 2 <= trainer.global_step < 5

    for name in ("item", "tolist", "__bool__", "__float__", "__int__"):
        def counted(self, *args, _original=getattr(torch.Tensor, name), _name=name, **kwargs):
            if Window.active:
                caller = traceback.extract_stack(limit=2)[0]
                reads.append((_name, self.dtype, self.dim(), f"{caller.filename}:{caller.lineno}"))
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    module = SegmentationModule("deeplabv3plus_resnet18", 6, model_kwargs={"aspp_channels": 16,
                                                                            "decoder_channels": 16})
    # One worker: the data pipeline's reads of its own CPU tensors happen in another process.
    dm = ToyVOCDataModule(str(toy_dir), **toy_settings, crop_size=48, batch_size=2, num_workers=1)
    trainer = L.Trainer(max_steps=6, limit_val_batches=0, logger=False, enable_checkpointing=False,
                        enable_model_summary=False, callbacks=[PolyLR(), ProgressBar(metrics_every_s=1e9), Window()])
    trainer.fit(module, datamodule=dm)
    assert trainer.global_step == 6
    # One read per step in the window, of one scalar flag (is the loss finite?); nothing else.
    assert [(name, dtype, dim) for name, dtype, dim, _ in reads] == [("__bool__", torch.bool, 0)] * 3, reads


def test_ids_are_names_and_predictions_never_land_in_an_input_folder(tmp_path):
    """A split list's id cannot lead a prediction out of its folder; overlays never go into a folder of inputs."""
    from deeplab_lightning.callbacks import SegmentationWriter
    from deeplab_lightning.data.dataset import Sample
    from deeplab_lightning.data.voc import read_split

    lists = tmp_path / "train.txt"
    lists.write_text("2007_000032\n../../../escape\n")
    with pytest.raises(ValueError, match=r"train.txt line 2: '../../../escape' is a path"):
        read_split(lists)
    out = tmp_path / "p" / "a" / "b" / "c"
    writer = SegmentationWriter(str(out))
    image = tmp_path / "x.jpg"
    with pytest.raises(ValueError, match=r"'../../../escape' would write .*escape.png, outside the output folder"):
        writer.check_outputs([Sample("../../../escape", image, None)])
    inputs = tmp_path / "X"
    (inputs / "overlays").mkdir(parents=True)
    writer = SegmentationWriter(str(inputs))  # overlays would go to X/overlays, where the inputs are
    with pytest.raises(FileExistsError, match=r"into .*X/overlays, a folder of input images"):
        writer.check_outputs([Sample("photo", inputs / "overlays" / "photo.jpg", None)])
    assert list((inputs / "overlays").iterdir()) == []


def test_last_checkpoint_holds_the_latest_validation_on_a_plateau(tmp_path, toy_dir, toy_settings, write_config,
                                                                  capsys):
    """With nothing learnt (lr 0, BatchNorm statistics kept) val/mIoU never improves after step 2, so Lightning alone would leave last.ckpt at
    step 2; a resumed run would train steps 3-6 again."""
    config = write_config(tmp_path / "run", toy_dir, toy_settings, max_steps=6)
    main(["fit", "--config", str(config), "--model.lr", "0", "--model.bn_momentum", "0",
          "--trainer.val_check_interval", "2"])
    folder = tmp_path / "run" / "ckpt"
    assert torch.load(folder / "best.ckpt", map_location="cpu", weights_only=True)["global_step"] == 2
    assert torch.load(folder / "last.ckpt", map_location="cpu", weights_only=True)["global_step"] == 6
    assert f"last checkpoint: {folder / 'last.ckpt'} (step 6)" in capsys.readouterr().out


def test_resume_with_last_continues_the_run_and_a_changed_learning_rate_is_refused(tmp_path, toy_dir, toy_settings,
                                                                                   write_config):
    config = write_config(tmp_path / "run", toy_dir, toy_settings, max_steps=2)
    main(["fit", "--config", str(config)])
    last = tmp_path / "run" / "ckpt" / "last.ckpt"
    with pytest.raises(ValueError, match=r"model.lr=0.01\), but the config sets model.lr=0.5"):
        main(["fit", "--config", str(config), "--ckpt_path", str(last), "--model.lr", "0.5"])
    assert not (tmp_path / "run" / "config-2.yaml").exists()  # the refused resume left nothing behind
    main(["fit", "--config", str(config), "--ckpt_path", "last", "--trainer.max_steps", "3"])
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 3  # continued, same folder
    assert not (tmp_path / "run-2" / "ckpt").exists()
    with pytest.raises(FileNotFoundError, match=r"--ckpt_path last: no last.ckpt in .*elsewhere"):
        main(["fit", "--config", str(config), "--ckpt_path", "last", "--trainer.default_root_dir",
              str(tmp_path / "elsewhere")])


def test_a_validation_split_without_labelled_pixels_is_an_error_not_a_nan_score(tmp_path, toy_settings, write_config):
    import numpy as np
    from PIL import Image

    from deeplab_lightning.data import generate_toy_voc

    root = tmp_path / "toy"
    voc = generate_toy_voc(root, **toy_settings)
    for line in (voc / "ImageSets" / "Segmentation" / "val.txt").read_text().split():
        label = voc / "SegmentationClass" / f"{line}.png"
        Image.fromarray(np.full_like(np.array(Image.open(label)), 255)).save(label)
    config = write_config(tmp_path / "run", root, toy_settings)
    with pytest.raises(ValueError, match=r"The val split has no labelled pixel: every label is the ignore index 255"):
        main(["validate", "--config", str(config)])


def test_a_second_predict_into_a_folder_being_written_is_refused(tmp_path):
    """The lock is taken before the outputs are checked, so two predictions started together never both pass."""
    import json
    import os
    import subprocess
    import sys

    from deeplab_lightning.callbacks import SegmentationWriter
    from deeplab_lightning.runs.folder import RunFolderBusy

    out = tmp_path / "p"
    out.mkdir()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:  # a live predict process holds the folder
        (out / "predict.lock").write_text(json.dumps({"pid": other.pid, "host": os.uname().nodename}))
        trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
        with pytest.raises(RunFolderBusy, match=r"Another process is writing to the predictions in .*p"):
            SegmentationWriter(str(out)).setup(trainer, None, "predict")
    finally:
        other.kill()
        other.wait()
    writer = SegmentationWriter(str(out))  # once it has ended, its lock is taken over and released after
    writer.setup(trainer, None, "predict")
    assert json.loads((out / "predict.lock").read_text())["pid"] == os.getpid()
    writer.teardown(trainer, None, "predict")
    assert not (out / "predict.lock").exists()


@pytest.mark.parametrize("weights,batch_size", [([0.0] * 6, 2), ([1.0, float("nan"), 1, 1, 1, 1], 2), (None, 0)])
def test_class_weights_and_batch_sizes_that_cannot_train_are_named(tmp_path, toy_dir, toy_settings, write_config,
                                                                   weights, batch_size):
    config = write_config(tmp_path / "run", toy_dir, toy_settings)
    args = ["fit", "--config", str(config), "--data.init_args.batch_size", str(batch_size)]
    if weights is not None:
        args += ["--model.class_weights", str(weights).replace("nan", ".nan")]
    expected = r"model.class_weights needs 6 finite, non-negative weights" if weights else \
        r"data.batch_size must be a positive number of images, got 0"
    with pytest.raises(ValueError, match=expected):
        main(args)


def test_image_inputs_are_converted_only_where_their_scale_is_unambiguous(tmp_path):
    import numpy as np
    from PIL import Image

    from deeplab_lightning.data.dataset import image_tensor, read_image

    rgb = torch.randint(0, 256, (3, 5, 7), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(image_tensor(rgb.float() / 255), rgb)  # torchvision's [0, 1] floats
    assert torch.equal(image_tensor(rgb.to(torch.int64) * 257), rgb)  # 16-bit: the high bits
    assert torch.equal(image_tensor(rgb.double()), rgb)  # floats holding 0-255
    assert torch.equal(image_tensor(rgb.permute(1, 2, 0).numpy().astype(np.float32) / 255), rgb)
    for bad, message in ((rgb.bool(), "bool are not an image"), (rgb.to(torch.complex64), "complex"),
                         (rgb.float() - 300, r"pixel values -\d+\.\.-\d+ fit neither"), (rgb.permute(1, 2, 0), "image.permute")):
        with pytest.raises(ValueError, match=message):
            image_tensor(bad)
    gray = np.arange(0, 240, 2, dtype=np.uint16).reshape(8, 15)  # a 16-bit PNG holding 8-bit values
    Image.fromarray(gray).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    assert torch.equal(read_image(tmp_path / "g16.png")[0], torch.from_numpy(gray.astype(np.uint8)))
    floats = Image.fromarray((gray / 255).astype(np.float32))  # PIL mode F, in [0, 1]
    assert floats.mode == "F"
    assert torch.equal(image_tensor(floats)[1], torch.from_numpy(gray.astype(np.uint8)))


def test_a_training_split_smaller_than_one_batch_is_refused_naming_both_numbers(tmp_path, toy_dir, toy_settings,
                                                                                write_config):
    config = write_config(tmp_path / "run", toy_dir, toy_settings)  # 16 training images
    with pytest.raises(ValueError, match=r"The train split has 16 images, fewer than one batch \(data.batch_size "
                                         r"32\).*at most 16"):
        main(["fit", "--config", str(config), "--data.init_args.batch_size", "32"])
    assert not (tmp_path / "run").exists()  # no checkpoint, and no empty run folder left behind


def test_a_prediction_that_cannot_be_written_is_named_and_leaves_no_partial_file(tmp_path):
    from PIL import Image

    from deeplab_lightning.callbacks.writer import save_whole

    gone = tmp_path / "removed" / "a.png"  # any OSError of the write (a full disk: ENOSPC) takes this path
    with pytest.raises(OSError, match=r"Cannot write prediction .*removed/a.png .*choose another --output_dir"):
        save_whole(Image.new("L", (4, 4)), gone)
    save_whole(Image.new("L", (4, 4)), tmp_path / "b.png")
    assert [p.name for p in tmp_path.iterdir() if p.is_file()] == ["b.png"]
