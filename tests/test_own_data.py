"""Your own images and masks in folders: fit, validate and predict through the command, with clear errors."""
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from deeplab_lightning.commands.cli import main
from deeplab_lightning.data import FolderDataModule
from deeplab_lightning.data.toy import write_toy_folder


@pytest.fixture(scope="module")
def own_data(tmp_path_factory) -> Path:
    return write_toy_folder(tmp_path_factory.mktemp("own") / "shapes", num_train=8, num_val=3, num_test=2,
                            size_range=(48, 64))


def test_folder_data_module_fits_validates_and_predicts_through_the_command(tmp_path, own_data):
    config = tmp_path / "own.yaml"
    config.write_text(yaml.safe_dump({
        "trainer": {"accelerator": "cpu", "max_steps": 2, "logger": False, "enable_progress_bar": False,
                    "default_root_dir": str(tmp_path / "run"), "num_sanity_val_steps": 0,
                    "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                   "init_args": {"dirpath": str(tmp_path / "run" / "ckpt"), "filename": "best",
                                                 "monitor": "val/mIoU", "mode": "max"}}]},
        "model": {"arch": "deeplabv3plus_resnet18", "model_kwargs": {"aspp_channels": 16, "decoder_channels": 16},
                  "class_weights": [0.5, 1, 1, 1, 1, 1], "top_k_percent_pixels": 0.5},
        "data": {"class_path": "deeplab_lightning.data.FolderDataModule", "init_args": {
            "data_dir": str(own_data), "classes": str(own_data / "classes.yaml"), "crop_size": 48, "batch_size": 2,
            "val_batch_size": 2, "num_workers": 0}}}))
    cli = main(["fit", "--config", str(config)])
    assert cli.model.class_names[1] == "disk" and cli.model.num_classes == 6  # from classes.yaml
    assert cli.model.evaluation_results("val").confmat.sum() > 0
    best = str(tmp_path / "run" / "ckpt" / "best.ckpt")
    main(["validate", "--config", str(config), "--ckpt_path", best])
    main(["predict", "--config", str(config), "--ckpt_path", best, "--data.init_args.test_split", "test",
          "--output_dir", str(tmp_path / "pred")])
    for name in ("test_0000", "test_0001"):
        png = Image.open(tmp_path / "pred" / f"{name}.png")
        assert png.size == Image.open(own_data / "images" / "test" / f"{name}.jpg").size
        assert png.getpalette()[3:6] == yaml.safe_load((own_data / "classes.yaml").read_text())["palette"][1]


def test_folder_data_module_names_what_is_missing(tmp_path, own_data):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(own_data, broken)
    (broken / "masks" / "val" / "val_0001.png").unlink()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(broken / "masks" / "val" / "stray.png")
    dm = FolderDataModule(str(broken), classes=["background", "thing"])
    with pytest.raises(FileNotFoundError, match=r"have no mask <name>.png .*val_0001.jpg.*; 1 mask\(s\) .*stray"):
        dm.samples("val")  # both kinds of unpaired file in one error
    import io

    from rich.console import Console

    from deeplab_lightning.commands.check_data import check_data

    size = Image.open(broken / "images" / "val" / "val_0002.jpg").size  # a paired mask's bad label: still found
    Image.fromarray(np.full(size[::-1], 7, np.uint8)).save(broken / "masks" / "val" / "val_0002.png")
    screen = io.StringIO()
    six = FolderDataModule(str(broken), classes=str(broken / "classes.yaml"))
    assert not check_data(six, ["val"], Console(file=screen, width=400))
    report = screen.getvalue()
    assert "have no mask" in report and "have no image" in report and "val_0002.png has values [7]" in report
    assert "val (2 images)" in report  # the split's column, counted over the files that pair up
    (broken / "images" / "val" / "val_0001.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"mask\(s\) in .*masks/val have no image .*stray"):
        dm.samples("val")
    with pytest.raises(FileNotFoundError, match=r"images/nope does not exist. Expected this layout"):
        dm.samples("nope")
    with pytest.raises(FileNotFoundError, match="Class file .*missing.yaml"):
        FolderDataModule(str(broken), classes=str(tmp_path / "missing.yaml"))


def test_overlay_legend_shows_the_classes_present_in_their_colours():
    from deeplab_lightning.callbacks import overlay
    from deeplab_lightning.data import TOY_CLASSES, voc_palette

    palette = np.array(voc_palette(), np.uint8)
    labels = np.zeros((40, 50), np.uint8)
    labels[5:20, 5:20], labels[25:35, 10:45] = 1, 3  # disk, triangle
    image = np.full((40, 50, 3), 128, np.uint8)
    plain = overlay(image, labels, palette)
    assert plain.shape == (40, 100, 3)
    shown = overlay(image, labels, palette, names=TOY_CLASSES)
    assert np.array_equal(shown[:40], plain)
    strip = {tuple(p) for p in shown[40:].reshape(-1, 3)}
    assert {tuple(palette[c]) for c in (0, 1, 3)} <= strip  # a swatch per class present
    assert tuple(palette[2]) not in strip and tuple(palette[4]) not in strip  # none for absent classes


@pytest.mark.parametrize("text,message", [
    ("names: [background, cat\n", r"classes.yaml is not valid YAML"),
    ("names: [background, cat]\npalette: [[0, 0, 0], [300, 0, 0]]\n", r"each value an integer 0-255"),
    ("names: [background, cat, cat]\n", r"name 'cat' more than once"),
])
def test_a_bad_class_file_is_named_with_what_is_wrong(tmp_path, text, message):
    from deeplab_lightning.data.folder import read_classes

    path = tmp_path / "classes.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        read_classes(str(path))


def test_binary_masks_saved_as_0_and_255_are_refused_with_the_fix(tmp_path):
    """The most common way to save binary masks (0 background, 255 object) makes every object the ignore label:
    check-data names it as a problem and a fit refuses to start, both saying how to save them instead."""
    import io

    from rich.console import Console

    from deeplab_lightning.commands.check_data import check_data

    for split in ("train", "val"):
        (tmp_path / "images" / split).mkdir(parents=True)
        (tmp_path / "masks" / split).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (40, 30), (i * 40, 90, 20)).save(tmp_path / "images" / split / f"{i}.jpg")
            mask = np.zeros((30, 40), np.uint8)
            mask[5:20, 10:30] = 255
            Image.fromarray(mask).save(tmp_path / "masks" / split / f"{i}.png")
    dm = FolderDataModule(str(tmp_path), classes=["background", "object"], crop_size=32, batch_size=2,
                          num_workers=0)
    screen = io.StringIO()
    assert not check_data(dm, ["train", "val"], Console(file=screen, width=300))
    report = screen.getvalue()
    assert "hold only 0 and 255, the ignore label" in report and "mask // 255" in report
    assert "2 problem(s) found" in report
    with pytest.raises(ValueError, match=r"split 'train' hold only 0 and 255.*checked 4 of 4 masks"):
        dm.train_dataloader()
    for i in range(4):  # saved as the fix says: the data trains, and check-data finds nothing
        for split in ("train", "val"):
            path = tmp_path / "masks" / split / f"{i}.png"
            Image.fromarray(np.array(Image.open(path)) // 255).save(path)
    assert dm.train_dataloader() is not None
    assert check_data(dm, ["train", "val"], Console(file=io.StringIO(), width=300))


def test_check_data_names_a_class_without_pixels_and_a_mostly_ignored_split(tmp_path):
    import io

    from rich.console import Console

    from deeplab_lightning.commands.check_data import check_data

    (tmp_path / "images" / "train").mkdir(parents=True)
    (tmp_path / "masks" / "train").mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (40, 30)).save(tmp_path / "images" / "train" / f"{i}.jpg")
        mask = np.full((30, 40), 255, np.uint8)
        mask[:5] = 0
        mask[5:8] = 1
        Image.fromarray(mask).save(tmp_path / "masks" / "train" / f"{i}.png")
    dm = FolderDataModule(str(tmp_path), classes=["background", "road", "car"], num_workers=0)
    screen = io.StringIO()
    assert not check_data(dm, ["train"], Console(file=screen, width=300))
    report = screen.getvalue()
    assert "class 'car' (index 2) has no pixel in split 'train'" in report
    assert "73 % of the pixels of split 'train' are the ignore label 255" in report


def _folder(root: Path, mask_name: str = "{}.png", rgb: bool = False) -> Path:
    """Two splits of three images ``x0.jpg`` ... with masks saved as ``mask_name`` (``{}`` is the image's name):
    class 1 in the middle, as class indices, or with ``rgb`` in the colours of ``classes.yaml``'s palette."""
    palette = [[0, 0, 0], [128, 0, 0]]
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "masks" / split).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (40, 30), (i * 40, 90, 20)).save(root / "images" / split / f"x{i}.jpg")
            mask = np.zeros((30, 40), np.uint8)
            mask[5:20, 10:30] = 1
            saved = np.array(palette, np.uint8)[mask] if rgb else mask
            Image.fromarray(saved).save(root / "masks" / split / mask_name.format(f"x{i}"))
    (root / "classes.yaml").write_text(yaml.safe_dump({"names": ["background", "thing"], "palette": palette}))
    (root / "own.yaml").write_text(yaml.safe_dump({
        "trainer": {"accelerator": "cpu", "max_steps": 1, "logger": False, "enable_progress_bar": False,
                    "default_root_dir": str(root / "run")},
        "model": {"arch": "deeplabv3plus_resnet18", "model_kwargs": {"aspp_channels": 16, "decoder_channels": 16}},
        "data": {"class_path": "deeplab_lightning.data.FolderDataModule", "init_args": {
            "data_dir": str(root), "classes": str(root / "classes.yaml"), "crop_size": 32, "batch_size": 2,
            "num_workers": 0}}}))
    return root


def _command(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    """``deeplab-lightning ARGS`` as the console script runs it: its exit status and its output."""
    import sys

    from deeplab_lightning.commands import console_main

    monkeypatch.setattr(sys, "argv", ["deeplab-lightning", *args])
    with pytest.raises(SystemExit) as exit_info:
        console_main()
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out + captured.err


def test_jpeg_masks_are_listed_with_the_naming_rule_not_an_empty_split(tmp_path, monkeypatch, capsys):
    """Masks saved as JPEG (x0.jpg beside the image x0.jpg) are named file by file, with the rule they break and
    why renaming is not the fix; check-data used to stop at 'The split is empty'."""
    root = _folder(tmp_path / "data", "{}.jpg")
    status, out = _command(monkeypatch, capsys, "check-data", "--config", str(root / "own.yaml"))
    assert status == 1 and "split is empty" not in out
    problems = [line for line in out.splitlines() if line.startswith("problem: split 'train'")]
    assert "3 image(s)" in problems[0] and "have no mask <name>.png" in problems[0] and "x0.png for x0.jpg" in problems[0]
    assert "3 file(s)" in problems[1] and "are not PNG" in problems[1] and "x0.jpg, x1.jpg, x2.jpg" in problems[1]
    assert "are .jpg files" in problems[2] and "save them again as PNG from their source" in problems[2]
    assert "train (not read)" in out and "6 problem(s) found" in out


def test_masks_named_name_mask_png_are_named_with_the_rename_that_fixes_them(tmp_path, monkeypatch, capsys):
    """``x0_mask.png`` beside ``x0.jpg``: a fit and check-data name the files, the rule and the rename command, and
    after running the printed command the data checks clean."""
    import subprocess

    root = _folder(tmp_path / "data", "{}_mask.png")
    monkeypatch.chdir(tmp_path)
    status, out = _command(monkeypatch, capsys, "fit", "--config", str(root / "own.yaml"))
    assert status == 1 and len(out.strip().splitlines()) == 1
    assert "have no image" in out and "x0_mask.png, x1_mask.png, x2_mask.png" in out
    assert "are named <name>_mask.png (e.g. x0_mask.png for the image x0.jpg); a mask is <name>.png" in out
    status, out = _command(monkeypatch, capsys, "check-data", "--config", str(root / "own.yaml"))
    assert status == 1
    renames = re.findall(r"rename them, e\.g\. (cd .*; done)$", out, flags=re.MULTILINE)
    assert len(renames) == 2 and "masks/val" in renames[1]
    for rename in renames:
        subprocess.run(["bash", "-c", rename], check=True)
    assert sorted(p.name for p in (root / "masks" / "train").iterdir()) == ["x0.png", "x1.png", "x2.png"]
    status, out = _command(monkeypatch, capsys, "check-data", "--config", str(root / "own.yaml"))
    assert status == 0 and "0 problem(s) found" in out


def test_rgb_masks_are_one_line_per_split_with_the_conversion_that_maps_them(tmp_path, monkeypatch, capsys):
    """Colour masks are counted in one line per split (not one per file), with the command that maps the
    palette's colours to classes; the converted masks show the same colours and check clean."""
    root = _folder(tmp_path / "data", rgb=True)
    before = {p: np.array(Image.open(p)) for p in sorted((root / "masks").rglob("*.png"))}
    status, out = _command(monkeypatch, capsys, "check-data", "--config", str(root / "own.yaml"))
    problems = [line for line in out.splitlines() if line.startswith("problem:")]
    assert status == 1 and len(problems) == 2, problems
    assert "3 mask(s) of split 'train' are RGB colour images, not class indices" in problems[0]
    assert f"{root / 'classes.yaml'} has a palette" in problems[0] and "Cannot read" not in out
    (command,) = set(re.findall(r'python -c "([^"]+)"$', out, flags=re.MULTILINE))
    exec(command, {})  # what `python -c` runs
    for path, rgb in before.items():
        converted = Image.open(path)
        assert converted.mode == "P" and np.array_equal(np.array(converted.convert("RGB")), rgb)
    status, out = _command(monkeypatch, capsys, "check-data", "--config", str(root / "own.yaml"))
    assert status == 0 and "0 problem(s) found" in out

    import io

    from rich.console import Console

    from deeplab_lightning.commands.check_data import check_data

    plain = _folder(tmp_path / "plain", rgb=True)  # classes without a palette: how to save indices or add one
    screen = io.StringIO()
    assert not check_data(FolderDataModule(str(plain), classes=["background", "thing"]), ["train"],
                          Console(file=screen, width=100))
    assert "save each as an 8-bit PNG of class indices, or add palette: [[r, g, b], ...]" in screen.getvalue()


def test_a_colour_outside_the_palette_is_named_and_its_mask_left_unchanged(tmp_path):
    from deeplab_lightning.data import convert_colour_masks

    root = _folder(tmp_path / "data", rgb=True)
    odd = root / "masks" / "val" / "x1.png"
    rgb = np.array(Image.open(odd))
    rgb[0, 0] = (224, 224, 192)  # VOC's void colour, in no class
    Image.fromarray(rgb).save(odd)
    saved = odd.read_bytes()
    with pytest.raises(ValueError, match=r"1 mask\(s\) .*not in the palette .*val/x1.png \[\(224, 224, 192\)\].*"
                                         r"ignore_colour=.*\(5 converted\)"):
        convert_colour_masks(root)
    assert odd.read_bytes() == saved
    assert convert_colour_masks(root, ignore_colour=(224, 224, 192)) == 1
    labels = np.array(Image.open(odd))
    assert labels[0, 0] == 255 and labels[10, 20] == 1 and labels[29, 0] == 0
