"""The decoded cache: written once by `deeplab-lightning cache`, read by the data modules, never silently stale."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deeplab_lightning.data import ToyVOCDataModule
from deeplab_lightning.data.cache import IMAGES, INDEX, write_split


def _items(dataset, keys):
    return [dataset[key] for key in keys]


def test_training_and_evaluation_read_the_same_samples_from_the_cache(tmp_path, toy_dir, toy_settings):
    """Same crops (same seeds) and same full images from the store as from the files; the store is atomic,
    memory-mapped and per split, and its size is what it holds."""
    import shutil

    root = tmp_path / "voc"
    shutil.copytree(toy_dir, root)
    dm = ToyVOCDataModule(str(root), **toy_settings, crop_size=48, num_workers=0)
    files = {split: dm.dataset(split, train=split == "train") for split in ("train", "val")}
    assert all(d.cache is None for d in files.values())  # nothing cached yet
    for split, dataset in files.items():
        size, problems = write_split(dataset, dm.decoded_dir(split), workers=2 if split == "train" else 1)
        assert not problems
        expected = sum(3 * h * w + h * w for h, w in (dataset.read(i)[1].shape for i in range(len(dataset))))
        assert size == expected == sum(f.stat().st_size for f in dm.decoded_dir(split).glob("*.u8"))
    left = sorted(p.name for p in dm.decoded_dir("train").parent.iterdir() if not p.name.endswith(".lock"))
    assert left == ["train", "val"]  # no temporary folders left
    cached = {split: dm.dataset(split, train=split == "train") for split in ("train", "val")}
    assert all(d.cache is not None for d in cached.values())
    keys = [(i, 1000 + i) for i in range(len(cached["train"]))]
    for a, b in zip(_items(files["train"], keys), _items(cached["train"], keys)):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"]) and a["id"] == b["id"]
    for a, b in zip(_items(files["val"], range(6)), _items(cached["val"], range(6))):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    # A data-loader worker gets the store without its memory maps, and opens its own.
    loader = torch.utils.data.DataLoader(cached["val"], batch_size=None, num_workers=1)
    assert torch.equal(next(iter(loader))["mask"], files["val"][0]["mask"])
    assert not ToyVOCDataModule(str(root), **toy_settings, use_cache=False).dataset("val").cache
    # A store rewritten after a dataset checked its index is refused, not read at the old offsets.
    reader = dm.dataset("val")
    assert not write_split(dm.dataset("val", cached=False), dm.decoded_dir("val"))[1]
    with pytest.raises(ValueError, match="rewritten while this run used it"):
        reader[0]
    with open(dm.decoded_dir("val") / IMAGES, "r+b") as f:  # a damaged (truncated) store names itself
        f.truncate(100)
    with pytest.raises(ValueError, match=r"decoded cache .*val is damaged: images.u8 holds 100 bytes"):
        dm.dataset("val")


def test_a_changed_or_missing_source_file_is_never_read_from_a_stale_cache(tmp_path, toy_dir, toy_settings):
    import shutil

    root = tmp_path / "voc"
    shutil.copytree(toy_dir, root)
    dm = ToyVOCDataModule(str(root), **toy_settings, num_workers=0)
    assert not write_split(dm.dataset("val"), dm.decoded_dir("val"))[1]
    labels = root / "VOCdevkit/VOC2012/SegmentationClass/toy_val_00001.png"
    os.utime(labels, ns=(labels.stat().st_atime_ns, labels.stat().st_mtime_ns + 10**9))  # touched: maybe edited
    with pytest.raises(ValueError, match=r"decoded cache .*val is out of date: .*toy_val_00001.png changed.*"
                                         r"deeplab-lightning cache"):
        dm.dataset("val")
    assert not write_split(dm.dataset("val", cached=False), dm.decoded_dir("val"))[1]  # rebuilt: fine again
    assert dm.dataset("val").cache is not None
    val_list = root / "VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt"
    val_list.write_text("\n".join(val_list.read_text().split()[:-1]) + "\n")  # one image fewer
    with pytest.raises(ValueError, match="holds 6 images, the split 5"):
        dm.dataset("val")
    other = ToyVOCDataModule(str(root), **toy_settings, num_workers=0)
    other.ignore_index = 0  # another labelling: the stored labels were checked against 255
    val_list.write_text(val_list.read_text() + "toy_val_00005\n")
    with pytest.raises(ValueError, match="ignore_index"):
        other.dataset("val")


def test_a_bad_file_writes_nothing_and_names_the_file(tmp_path, toy_dir, toy_settings):
    import shutil

    root = tmp_path / "voc"
    shutil.copytree(toy_dir, root)
    dm = ToyVOCDataModule(str(root), **toy_settings, num_workers=0)
    bad = root / "VOCdevkit/VOC2012/SegmentationClass/toy_val_00002.png"
    Image.fromarray(np.full((70, 70), 40, np.uint8), "L").save(bad)
    cut = root / "VOCdevkit/VOC2012/JPEGImages/toy_val_00004.jpg"
    cut.write_bytes(cut.read_bytes()[:300])
    size, problems = write_split(dm.dataset("val", cached=False), dm.decoded_dir("val"), workers=2)
    assert size == 0 and len(problems) == 2  # every problem, not only the first
    assert any("toy_val_00002.png" in p and "[40]" in p for p in problems)
    assert any("toy_val_00004.jpg" in p for p in problems)
    leftover = dm.decoded_dir("val").parent / ".val.partial-1"  # of a writer killed mid-way: removed
    leftover.mkdir()
    with open(dm.decoded_dir("val").parent / ".val.lock", "w") as lock:  # another writer at work: refused
        import fcntl

        fcntl.flock(lock, fcntl.LOCK_EX)
        assert "another `deeplab-lightning cache` is writing" in write_split(dm.dataset("val", cached=False),
                                                                            dm.decoded_dir("val"))[1][0]
    write_split(dm.dataset("val", cached=False), dm.decoded_dir("val"))
    assert not leftover.exists()
    assert [p.name for p in dm.decoded_dir("val").parent.iterdir()] == [".val.lock"]  # nothing else written


def test_cache_command_writes_reports_and_keeps_an_up_to_date_store(tmp_path, toy_dir, toy_settings,
                                                                    write_config):
    import shutil

    root = tmp_path / "voc"
    shutil.copytree(toy_dir, root)
    config = write_config(tmp_path, root, toy_settings)
    script = Path(sys.executable).parent / "deeplab-lightning"
    first = subprocess.run([str(script), "cache", "--config", str(config), "--workers", "2"], capture_output=True,
                           text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    assert "train: 16 images decoded into" in first.stdout and "val: 6 images decoded into" in first.stdout
    assert " MB on disk" in first.stdout
    stamp = (root / "decoded/val" / IMAGES).stat().st_mtime_ns
    again = subprocess.run([str(script), "cache", "--config", str(config), "--splits", "val"],
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "val: up to date" in again.stdout
    assert (root / "decoded/val" / IMAGES).stat().st_mtime_ns == stamp and (root / "decoded/val" / INDEX).is_file()
