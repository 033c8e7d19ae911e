"""VOC + SBD train_aug and Cityscapes, on miniature copies of their real folder layouts."""
import numpy as np
import pytest
import torch
from PIL import Image
from scipy.io import savemat

from deeplab_lightning.data import CityscapesDataModule, VOCDataModule


def _jpg(path, h=6, w=8):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), 100, np.uint8)).save(path)


def _png(path, labels):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(labels, np.uint8), mode="L").save(path)


@pytest.fixture
def voc_sbd(tmp_path):
    root = tmp_path / "VOCdevkit" / "VOC2012"
    lists = root / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    for sid in "abcde":
        _jpg(root / "JPEGImages" / f"{sid}.jpg")
    _png(root / "SegmentationClass" / "a.png", np.full((6, 8), 1))
    _png(root / "SegmentationClass" / "b.png", np.full((6, 8), 2))
    (lists / "train.txt").write_text("a\n")
    (lists / "val.txt").write_text("b\n")
    (lists / "trainval.txt").write_text("a\nb\n")
    sbd = tmp_path / "sbd"
    for sid, label in (("b", 5), ("c", 3), ("d", 4), ("a", 7)):
        _jpg(sbd / "img" / f"{sid}.jpg")
        (sbd / "cls").mkdir(parents=True, exist_ok=True)
        savemat(sbd / "cls" / f"{sid}.mat", {"GTcls": {"Segmentation": np.full((6, 8), label, np.uint8)}})
    (sbd / "train.txt").write_text("c\nb\n")
    (sbd / "val.txt").write_text("d\na\n")
    return tmp_path, sbd


def test_train_aug_is_voc_train_and_sbd_minus_voc_val(voc_sbd):
    data_dir, sbd = voc_sbd
    dm = VOCDataModule(str(data_dir), sbd_dir=str(sbd), num_workers=0)
    samples = dm.samples("train_aug")
    assert [s.id for s in samples] == ["a", "c", "d"]  # b is a VOC val image: never trained on
    assert samples[0].mask.suffix == ".png"  # VOC's own annotation wins over SBD's
    ds = dm.dataset("train_aug")
    assert [int(ds[i]["mask"][0, 0]) for i in range(3)] == [1, 3, 4]


def test_train_aug_from_the_preconverted_layout_drops_val_ids(voc_sbd):
    data_dir, _ = voc_sbd
    root = data_dir / "VOCdevkit" / "VOC2012"
    for sid in "abc":
        _png(root / "SegmentationClassAug" / f"{sid}.png", np.full((6, 8), 9))
    (root / "ImageSets" / "Segmentation" / "train_aug.txt").write_text("a\nb\nc\nc\n")
    samples = VOCDataModule(str(data_dir), num_workers=0).samples("train_aug")
    assert [s.id for s in samples] == ["a", "c"]
    assert all(s.mask.parent.name == "SegmentationClassAug" for s in samples)


def test_train_aug_without_sbd_says_what_to_provide(voc_sbd):
    data_dir, _ = voc_sbd
    with pytest.raises(FileNotFoundError, match="sbd_dir"):
        VOCDataModule(str(data_dir), num_workers=0).samples("train_aug")
    with pytest.raises(FileNotFoundError, match="available splits"):
        VOCDataModule(str(data_dir), num_workers=0).samples("nonexistent")


def test_cityscapes_label_ids_map_to_train_ids(tmp_path):
    ids = np.array([[7, 8, 26, 0], [33, 1, 24, 255]], np.uint8)
    for split in ("train", "val"):
        stem = tmp_path / "leftImg8bit" / split / "aachen" / "aachen_000000_000019"
        _jpg(stem.with_name(stem.name + "_leftImg8bit.png"), 2, 4)
        gt = tmp_path / "gtFine" / split / "aachen" / "aachen_000000_000019_gtFine_labelIds.png"
        _png(gt, ids)
    dm = CityscapesDataModule(str(tmp_path), num_workers=0)
    assert dm.num_classes == 19 and dm.class_names[13] == "car"
    sample = dm.dataset("val")[0]
    assert sample["id"] == "aachen_000000_000019"
    assert sample["mask"].tolist() == [[0, 1, 13, 255], [18, 255, 11, 255]]
    assert dm.dataset("train", train=True).transform is not None


def test_cityscapes_missing_folder_names_the_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match="gtFine"):
        CityscapesDataModule(str(tmp_path), num_workers=0).samples("train")


def test_cityscapes_mapping_of_every_label_id():
    from deeplab_lightning.data.cityscapes import cityscapes_label_map

    expected = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
                26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
    table = cityscapes_label_map()
    for label_id in range(34):
        assert table[label_id] == expected.get(label_id, 255), label_id
    assert (table[34:] == 255).all()


def test_empty_split_list_is_reported(voc_sbd):
    data_dir, _ = voc_sbd
    (data_dir / "VOCdevkit/VOC2012/ImageSets/Segmentation/empty.txt").write_text("\n")
    with pytest.raises(ValueError, match="empty.txt names no images"):
        VOCDataModule(str(data_dir), num_workers=0).samples("empty")


def test_augmentation_keeps_image_and_mask_aligned(tmp_path):
    """Images whose grey level encodes the label: after scale, crop and flip, every pixel inside a label
    region (away from edges, where bilinear resizing blends levels) must decode to its mask label."""
    root = tmp_path / "VOCdevkit" / "VOC2012"
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    rng = np.random.default_rng(0)
    ids = [f"im{k}" for k in range(4)]
    for sid in ids:
        labels = np.zeros((60, 90), np.uint8)
        for _ in range(4):
            y, x = rng.integers(0, 45), rng.integers(0, 70)
            labels[y:y + 15, x:x + 20] = rng.integers(1, 21)
        _png(root / "SegmentationClass" / f"{sid}.png", labels)
        # Lossless content under the .jpg name the VOC layout expects (PIL reads by content).
        Image.fromarray(np.stack([labels * 12] * 3, -1)).save(root / "JPEGImages" / f"{sid}.jpg", format="PNG")
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("\n".join(ids))
    dm = VOCDataModule(str(tmp_path), train_split="train", crop_size=48, scale_range=(0.5, 2.0), num_workers=0)
    ds = dm.dataset("train", train=True)
    torch.manual_seed(0)
    checked = 0
    for _ in range(6):
        for i in range(len(ds)):
            sample = ds[i]
            mask = sample["mask"]
            # interior: the 5x5 neighbourhood, inside the crop, has one label (resizing blends levels near edges)
            padded = torch.nn.functional.pad(mask[None, None].float(), (2, 2, 2, 2), value=-1.0)[0, 0]
            interior = torch.ones_like(mask, dtype=torch.bool)
            for dy in range(5):
                for dx in range(5):
                    interior &= padded[dy:dy + mask.shape[0], dx:dx + mask.shape[1]] == mask
            interior &= mask != 255
            decoded = (sample["image"][0].float() / 12).round().long()
            assert torch.equal(decoded[interior], mask[interior])
            checked += int(interior.sum())
    assert checked > 10_000


def test_missing_split_list_and_listed_file_name_the_path(voc_sbd):
    data_dir, _ = voc_sbd
    with pytest.raises(FileNotFoundError, match=r"trainval_typo.txt does not exist \(available splits: .*'val'"):
        VOCDataModule(str(data_dir), num_workers=0).samples("trainval_typo")
    lists = data_dir / "VOCdevkit/VOC2012/ImageSets/Segmentation"
    (lists / "ghost.txt").write_text("no_such_image\n")
    with pytest.raises(FileNotFoundError, match="no_such_image.*ghost.txt"):
        VOCDataModule(str(data_dir), num_workers=0).samples("ghost")


def test_truncated_png_label_names_the_file_even_from_a_worker(tmp_path):
    import numpy as np
    from PIL import Image
    from torch.utils.data import DataLoader

    from deeplab_lightning.data.dataset import Sample, SegmentationDataset, pad_collate

    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "a.jpg")
    Image.fromarray(np.random.default_rng(0).integers(0, 5, (32, 32), dtype=np.uint8), mode="L").save(tmp_path / "a.png")
    (tmp_path / "a.png").write_bytes((tmp_path / "a.png").read_bytes()[:60])
    dataset = SegmentationDataset([Sample("a", tmp_path / "a.jpg", tmp_path / "a.png")], num_classes=21)
    with pytest.raises(ValueError, match="a.png"):
        next(iter(DataLoader(dataset, num_workers=1, collate_fn=pad_collate)))
