"""Hostile inputs, one line each, nothing lost: an image declaring billions of bytes of pixels, a full disk under
the decoded cache, a cut-short cache index and a malformed checkpoint are each named with the file and the fix."""
import errno
import io
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import traceback
import zlib
from pathlib import Path

import pyspng
import pytest
import simplejpeg
import torch
from PIL import Image, ImageFile

from deeplab_lightning.commands import console_main
from deeplab_lightning.data import ImageFolderDataModule, ToyVOCDataModule
from deeplab_lightning.data.cache import IMAGES, INDEX, LABELS, write_split
from deeplab_lightning.data.dataset import image_tensor
from deeplab_lightning.data.decode import decode_image, decode_labels, image_size

SIDE = 15000  # 225 million pixels: 675 MB as RGB, over twice Pillow's limit (89.5 million)


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _zlib_zeros(row_bytes: int, rows: int, rows_per_block: int = 1000) -> bytes:
    """A zlib stream of ``rows`` filter-0 rows of zeros, compressed once per block of rows (a full flush makes every
    block's output the same) so that a 675 MB image takes a fraction of a second to write."""
    block = b"\0" * (row_bytes * rows_per_block)
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    piece = deflate.compress(block) + deflate.flush(zlib.Z_FULL_FLUSH)
    adler = 1
    for _ in range(rows // rows_per_block):
        adler = zlib.adler32(block, adler)
    return b"\x78\xda" + piece * (rows // rows_per_block) + deflate.flush() + struct.pack(">I", adler)


def png_of_zeros(path: Path, side: int, bit_depth: int = 8) -> Path:
    """A whole, valid palette PNG of ``side`` x ``side`` zeros (a few hundred kB for 15000 x 15000)."""
    header = struct.pack(">IIBBBBB", side, side, bit_depth, 3, 0, 0, 0)
    rows = _zlib_zeros(1 + (side * bit_depth + 7) // 8, side)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"PLTE", b"\0\0\0")
                     + _chunk(b"IDAT", rows) + _chunk(b"IEND", b""))
    return path


def jpeg_declaring(path: Path, side: int) -> Path:
    """A 16 x 16 JPEG whose frame header declares ``side`` x ``side``."""
    buffer = io.BytesIO()
    Image.new("L", (16, 16)).save(buffer, "JPEG")
    data = bytearray(buffer.getvalue())
    frame = data.index(b"\xff\xc0")
    data[frame + 5: frame + 9] = struct.pack(">HH", side, side)
    path.write_bytes(bytes(data))
    return path


def bmp_declaring(path: Path, side: int) -> Path:
    """An 8 x 8 BMP whose header declares ``side`` x ``side`` (a kind of file only Pillow reads)."""
    buffer = io.BytesIO()
    Image.new("1", (8, 8)).save(buffer, "BMP")
    data = bytearray(buffer.getvalue())
    data[18:26] = struct.pack("<ii", side, side)
    path.write_bytes(bytes(data))
    return path


@pytest.fixture
def decoders_called(monkeypatch):
    """The names of the decoders called (libspng, libjpeg-turbo, Pillow's pixel loading), recorded as they run."""
    called = []

    def recording(name, decode):
        def wrapper(*args, **kwargs):
            called.append(name)
            return decode(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(pyspng, "load", recording("pyspng.load", pyspng.load))
    monkeypatch.setattr(simplejpeg, "decode_jpeg", recording("simplejpeg.decode_jpeg", simplejpeg.decode_jpeg))
    monkeypatch.setattr(ImageFile.ImageFile, "load", recording("ImageFile.load", ImageFile.ImageFile.load))
    return called


def test_an_image_declaring_more_pixels_than_pillows_limit_is_refused_from_its_header(tmp_path, monkeypatch,
                                                                                     decoders_called):
    """Every decoder path (libspng, libjpeg-turbo, Pillow below and above twice its limit) refuses the file before
    decoding, naming it, the limit and how to raise it; the limit's variable lets such a file through."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # restored after the variable sets it
    monkeypatch.delenv("DEEPLAB_MAX_IMAGE_PIXELS", raising=False)
    png = png_of_zeros(tmp_path / "huge.png", SIDE)  # libspng's path
    bilevel = png_of_zeros(tmp_path / "bilevel.png", 10000, bit_depth=1)  # Pillow's, which only warns at 1-2x
    files = [png, bilevel, jpeg_declaring(tmp_path / "huge.jpg", SIDE), bmp_declaring(tmp_path / "huge.bmp", SIDE)]
    assert png.stat().st_size < 300_000 and bilevel.stat().st_size < 300_000
    for path in files:
        readers = [decode_image, image_size] + ([decode_labels] if path.suffix == ".png" else [])
        for read in readers:
            with pytest.raises(ValueError) as refused:
                read(path)
            message = str(refused.value)
            assert str(path) in message and "PIL.Image.MAX_IMAGE_PIXELS" in message, (read, message)
            assert "DEEPLAB_MAX_IMAGE_PIXELS=" in message and "\n" not in message
            if path.suffix != ".bmp":  # read from the header by this package (Pillow's refusal gives no sides)
                side = 10000 if path == bilevel else SIDE
                assert f"declares {side}x{side} pixels ({side * side:,}, {3 * side * side // 10**6} MB" in message
    assert decoders_called == []  # refused from the header: no pixel was decoded
    monkeypatch.setenv("DEEPLAB_MAX_IMAGE_PIXELS", str(SIDE * SIDE))  # the advice: such images are intended
    assert image_size(png) == (SIDE, SIDE) and image_size(files[2]) == (SIDE, SIDE)
    monkeypatch.setenv("DEEPLAB_MAX_IMAGE_PIXELS", "many")
    with pytest.raises(ValueError, match="DEEPLAB_MAX_IMAGE_PIXELS='many' is not a number of pixels"):
        image_size(png)


def test_training_evaluation_predict_and_check_data_name_the_huge_image(tmp_path, toy_dir, toy_settings,
                                                                        monkeypatch, capsys):
    """The dataset item (training, evaluation), a data-loader worker (one line through the command's error
    handler), the predict loader and the Python API refuse the image naming it; check-data lists it as a problem."""
    from deeplab_lightning.commands.errors import reporting_user_errors

    root = tmp_path / "voc"
    shutil.copytree(toy_dir, root)
    huge = root / "VOCdevkit/VOC2012/JPEGImages/toy_val_00002.jpg"
    png_of_zeros(huge, SIDE)  # a PNG under a .jpg name: decoders go by the content
    dm = ToyVOCDataModule(str(root), **toy_settings, num_workers=0)
    with pytest.raises(ValueError, match=re.escape(f"Image {huge} declares 15000x15000 pixels")):
        dm.dataset("val", train=True)[2]  # __getitem__ as training reads it
    with pytest.raises(ValueError, match=re.escape(f"Image {huge} declares")):
        dm.val_dataloader()  # evaluation sizes every image's canvas from its header first
    loader = torch.utils.data.DataLoader(dm.dataset("val"), batch_size=None, num_workers=1,
                                         sampler=[2])  # training and evaluation read in worker processes
    with pytest.raises(SystemExit) as exit_info:
        reporting_user_errors("fit", lambda: next(iter(loader)))
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 1 and len(lines) == 1 and lines[0].startswith(
        f"deeplab-lightning fit: error: Image {huge} declares 15000x15000 pixels"), lines

    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(huge, folder / "huge.png")
    shutil.copy(root / "VOCdevkit/VOC2012/JPEGImages/toy_val_00001.jpg", folder / "small.jpg")
    with pytest.raises(ValueError, match=re.escape(f"Image {folder / 'huge.png'} declares")):
        ImageFolderDataModule(str(folder), classes="toy", num_workers=0).predict_dataloader()
    with pytest.raises(ValueError, match=re.escape(f"Image {folder / 'huge.png'} declares")):
        image_tensor(folder / "huge.png")  # what Predictor.predict reads a path with

    config = tmp_path.parent / f"{tmp_path.name}.yaml"
    config.write_text(json.dumps({"data": {"class_path": "deeplab_lightning.data.ToyVOCDataModule",
                                           "init_args": {"data_dir": str(root), **toy_settings, "num_workers": 0}}}))
    monkeypatch.setenv("COLUMNS", "1000")  # one problem a line
    monkeypatch.setattr(sys, "argv", ["deeplab-lightning", "check-data", "--config", str(config), "--splits", "val"])
    with pytest.raises(SystemExit) as exit_info:
        console_main()
    out = capsys.readouterr().out
    assert exit_info.value.code == 1
    assert any(line.startswith(f"problem: Image {huge} declares 15000x15000 pixels") for line in out.splitlines()), out


@pytest.fixture
def small_disk(tmp_path):
    """A real 1 MB filesystem (tmpfs) at ``tmp_path/disk``; skipped where it cannot be mounted (not root)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1M", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=True)


def _in_child(run) -> tuple[int, dict]:
    """``run()`` in a forked process: (its wait status, what it returned); a process killed by a signal (SIGBUS)
    returns nothing."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            os.close(read_end)
            os.write(write_end, json.dumps(run()).encode())
            status = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        sent = pipe.read()
    _, status = os.waitpid(pid, 0)
    return status, json.loads(sent) if sent else {}


def test_a_disk_filling_up_while_caching_is_a_problem_naming_the_folder_not_a_sigbus(small_disk, toy_dir,
                                                                                    toy_settings, monkeypatch):
    """The free-space check passes, then another writer fills the disk: the store's space is allocated before it is
    memory-mapped, so the write ends with a problem naming the cache folder, the bytes needed and free, and
    leaves nothing behind, where writing through a sparse mapping died with SIGBUS (exit 135)."""
    dataset = ToyVOCDataModule(str(toy_dir), **toy_settings, num_workers=0).dataset("val", cached=False)
    folder = small_disk / "decoded" / "val"
    real_usage = shutil.disk_usage

    def checked_then_filled(path):
        usage = real_usage(path)  # what the check sees; then the disk fills up but for 8 kB
        with open(small_disk / "other-writer", "wb") as f:
            os.posix_fallocate(f.fileno(), 0, usage.free - 8192)
        monkeypatch.setattr(shutil, "disk_usage", real_usage)
        return usage

    monkeypatch.setattr(shutil, "disk_usage", checked_then_filled)
    status, result = _in_child(lambda: dict(zip(("size", "problems"), write_split(dataset, folder))))
    assert os.WIFEXITED(status), f"the writer was killed by signal {os.WTERMSIG(status)}"
    assert os.WEXITSTATUS(status) == 0
    needed = sum(4 * h * w for h, w in (image_size(s.image) for s in dataset.samples))
    assert result["size"] == 0 and len(result["problems"]) == 1
    problem = result["problems"][0]
    assert f"the decoded cache {folder} needs {needed:,} bytes but its disk ({folder.parent}) has " in problem
    free = int(problem.split(" has ")[1].split(" free")[0].replace(",", ""))
    assert free < needed and "data.init_args.cache_dir" in problem
    assert sorted(p.name for p in folder.parent.iterdir()) == [".val.lock"]  # no store, no partial folder


def test_a_full_disk_at_allocation_leaves_nothing_behind(tmp_path, toy_dir, toy_settings, monkeypatch):
    """Where no small filesystem can be mounted: posix_fallocate's ENOSPC becomes the same problem, and nothing
    partial remains or is published."""
    dataset = ToyVOCDataModule(str(toy_dir), **toy_settings, num_workers=0).dataset("val", cached=False)
    folder = tmp_path / "decoded" / "val"
    allocated = []

    def full(fd, offset, length):
        allocated.append(length)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", full)
    size, problems = write_split(dataset, folder)
    assert size == 0 and len(problems) == 1 and allocated
    assert f"the decoded cache {folder} needs " in problems[0] and " free: free space or set " in problems[0]
    assert sorted(p.name for p in folder.parent.iterdir()) == [".val.lock"]


def test_a_cut_short_cache_index_names_the_file_and_the_command_that_rebuilds_it(tmp_path, toy_dir, toy_settings,
                                                                                capsys):
    from rich.console import Console

    from deeplab_lightning.commands.cache import cache_splits
    from deeplab_lightning.commands.errors import reporting_user_errors

    dm = ToyVOCDataModule(str(toy_dir), **toy_settings, cache_dir=str(tmp_path / "decoded"), num_workers=0)
    assert not write_split(dm.dataset("val", cached=False), dm.decoded_dir("val"))[1]
    index = dm.decoded_dir("val") / INDEX
    whole = index.read_bytes()
    for damaged in (whole[: len(whole) // 2], b"", json.dumps({"format": 1, "samples": []}).encode()):
        index.write_bytes(damaged)
        with pytest.raises(ValueError, match=rf"decoded cache index {re.escape(str(index))} is damaged.*"
                                             rf"`deeplab-lightning cache --config <your config>`"):
            dm.dataset("val")
    index.write_bytes(whole[:-10])
    with pytest.raises(SystemExit) as exit_info:  # the command's error: one line
        reporting_user_errors("fit", lambda: dm.dataset("val"))
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 1 and len(lines) == 1 and str(index) in lines[0]
    assert cache_splits(dm, ["val"], workers=1, console=Console(file=io.StringIO()))  # the command rebuilds it
    assert dm.dataset("val").cache is not None and (dm.decoded_dir("val") / IMAGES).is_file()
    assert (dm.decoded_dir("val") / LABELS).is_file()


def test_a_checkpoint_whose_hyper_parameters_are_not_a_mapping_is_named(tmp_path, toy_dir, toy_settings,
                                                                         write_config, monkeypatch, capsys):
    """Named in one line by the Python API, export and --ckpt_path (read by Lightning through the checkpoint IO)."""
    import deeplab_lightning

    checkpoint = tmp_path.parent / f"{tmp_path.name}-edited.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": ["arch", "deeplabv3plus_resnet18"]}, checkpoint)
    with pytest.raises(ValueError, match=rf"Checkpoint {re.escape(str(checkpoint))} is malformed: its "
                                         rf"'hyper_parameters' is a list, not a mapping"):
        deeplab_lightning.load(str(checkpoint))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DEEPLAB_TRACEBACK", raising=False)
    config = str(write_config(tmp_path, toy_dir, toy_settings))
    for command in (["export"], ["validate", "--config", config]):
        monkeypatch.setattr(sys, "argv", ["deeplab-lightning", *command, "--ckpt_path", str(checkpoint)])
        with pytest.raises(SystemExit) as exit_info:
            console_main()
        lines = capsys.readouterr().err.strip().splitlines()
        assert exit_info.value.code == 1 and len(lines) == 1, lines
        assert lines[0].startswith(f"deeplab-lightning {command[0]}: error: Checkpoint {checkpoint} is malformed")
    torch.save({"state_dict": torch.zeros(3)}, checkpoint)  # a state dict that is not one
    with pytest.raises(ValueError, match=r"its 'state_dict' is a Tensor, not a mapping"):
        deeplab_lightning.load(str(checkpoint))
