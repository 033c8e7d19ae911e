import numpy as np
import pytest
import torch
from PIL import Image

from deeplab_lightning.data import TOY_CLASSES, ToyVOCDataModule, VOCDataModule, generate_toy_voc, pad_collate
from deeplab_lightning.data.dataset import SegmentationDataset, Sample, fill_padding, read_mask
from deeplab_lightning.data.toy import render_toy_sample
from deeplab_lightning.module import SegmentationModule


def test_toy_dataset_has_voc_layout_and_is_read_by_the_voc_module(toy_dir, toy_settings):
    root = toy_dir / "VOCdevkit" / "VOC2012"
    assert (root / "ImageSets" / "Segmentation" / "train.txt").read_text().split() == [
        f"toy_train_{i:05d}" for i in range(16)]
    mask = Image.open(root / "SegmentationClass" / "toy_val_00000.png")
    assert mask.mode == "P"
    values = set(np.unique(np.array(mask)).tolist())
    assert values <= set(range(len(TOY_CLASSES))) | {255} and 255 in values and len(values) > 2
    dm = VOCDataModule(str(toy_dir), num_workers=0)
    assert len(dm.samples("val")) == 6 and dm.num_classes == 21
    # The VOC reader on toy data with the toy class list: the same code path.
    toy = ToyVOCDataModule(str(toy_dir), **toy_settings, num_workers=0)
    assert [s.id for s in toy.samples("val")] == [s.id for s in dm.samples("val")]


def test_toy_generation_is_deterministic_and_refuses_other_settings(tmp_path, toy_dir, toy_settings):
    generate_toy_voc(tmp_path, **toy_settings)
    a = (tmp_path / "VOCdevkit/VOC2012/SegmentationClass/toy_train_00003.png").read_bytes()
    b = (toy_dir / "VOCdevkit/VOC2012/SegmentationClass/toy_train_00003.png").read_bytes()
    assert a == b
    with pytest.raises(FileExistsError, match="other settings"):
        generate_toy_voc(tmp_path, **{**toy_settings, "num_train": 3})
    assert not list(tmp_path.glob("VOCdevkit.partial*"))


def test_toy_colour_cue_draws_each_shape_class_in_its_hue_band():
    """The quickstart's toy data: object pixels of class c have hues near 72 * (c - 1) degrees."""
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(20):
        image, mask = render_toy_sample(rng, (96, 112), colour_cue=True)
        hsv = np.array(image.convert("HSV")).astype(float)
        labels = np.array(mask)
        for c in set(np.unique(labels).tolist()) - {0, 255}:
            inside = (labels == c) & (hsv[..., 1] > 100)  # saturated object pixels (noise shifts grey hues)
            if inside.sum() < 20:  # hidden behind other objects
                continue
            offset = np.angle(np.exp(1j * (hsv[..., 0][inside] / 255 * 2 * np.pi - (c - 1) * 2 * np.pi / 5)))
            assert np.degrees(abs(np.median(offset))) < 30, c
            seen.add(c)
    assert seen == {1, 2, 3, 4, 5}


def test_missing_voc_folder_names_the_expected_layout(tmp_path):
    dm = VOCDataModule(str(tmp_path / "nowhere"), num_workers=0)
    with pytest.raises(FileNotFoundError) as err:
        dm.setup("fit")
        dm.train_dataloader()
    message = str(err.value)
    assert "nowhere" in message and "JPEGImages" in message and "SegmentationClass" in message


@pytest.mark.parametrize("arch,mean_pixel", [("deeplabv3plus_resnet18", (123.675, 116.28, 103.53)),
                                              ("deeplabv3plus_xception65", (127.5, 127.5, 127.5))])
def test_train_batches_are_padded_to_the_crop_with_the_networks_mean_pixel_and_ignore(
        toy_dir, toy_settings, arch, mean_pixel):
    dm = ToyVOCDataModule(str(toy_dir), **toy_settings, crop_size=96, scale_range=(0.5, 0.5), batch_size=2,
                          num_workers=0)
    sample = dm.dataset("train", train=True)[0]
    assert sample["image"].dtype == torch.uint8 and max(sample["image"].shape[-2:]) <= 40
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 3, 96, 96) and batch["mask"].dtype == torch.long and batch["padded"]
    # Images of 64-80 px scaled by 0.5 are smaller than the crop: the rest of the crop is padding, whose label
    # is void (never a class) and whose pixels become the network's mean pixel (0 after its normalisation).
    module = SegmentationModule(arch, num_classes=len(TOY_CLASSES), model_kwargs={"aspp_channels": 8})
    filled = fill_padding(batch["image"], batch["size"], module.pixel_mean)
    for i, (h, w) in enumerate(batch["size"]):
        assert torch.equal(filled[i, :, :h, :w], batch["image"][i, :, :h, :w].float())
        for region in (filled[i, :, h:, :], filled[i, :, :, w:]):
            assert torch.allclose(region, torch.tensor(mean_pixel).view(3, 1, 1).expand_as(region))
            assert module.net.normalize(region[None]).abs().max() < 1e-5
        assert (batch["mask"][i, h:] == 255).all() and (batch["mask"][i, :, w:] == 255).all()


def test_eval_samples_keep_full_resolution(toy_dir, toy_settings):
    dm = ToyVOCDataModule(str(toy_dir), **toy_settings, num_workers=0)
    ds = dm.dataset("val")
    root = toy_dir / "VOCdevkit" / "VOC2012"
    for i in range(3):
        sample = ds[i]
        labels = np.array(Image.open(root / "SegmentationClass" / f"{sample['id']}.png"))
        assert torch.equal(sample["mask"], torch.from_numpy(labels).long())
        assert sample["size"] == labels.shape


def test_pad_collate_pads_masks_with_ignore_and_records_sizes():
    a = {"image": torch.ones(3, 4, 5, dtype=torch.uint8), "mask": torch.zeros(4, 5, dtype=torch.long), "id": "a",
         "size": (4, 5)}
    b = {"image": torch.ones(3, 6, 3, dtype=torch.uint8), "mask": torch.ones(6, 3, dtype=torch.long), "id": "b",
         "size": (6, 3)}
    batch = pad_collate([a, b])
    assert batch["image"].shape == (2, 3, 6, 5) and batch["mask"].shape == (2, 6, 5) and batch["padded"]
    assert (batch["mask"][0, 4:] == 255).all() and (batch["mask"][1, :, 3:] == 255).all()
    assert batch["image"][0, :, 4:].sum() == 0
    assert batch["size"] == [(4, 5), (6, 3)] and batch["id"] == ["a", "b"] and batch["canvas"] is None
    canvas = pad_collate([a], size=(8, 9), ignore_index=0, fixed=True)
    assert canvas["image"].shape == (1, 3, 8, 9) and canvas["padded"] and canvas["canvas"] == (8, 9)
    assert (canvas["mask"][0, 4:] == 0).all() and (canvas["mask"][0, :, 5:] == 0).all()
    assert not pad_collate([a])["padded"]


def test_bad_labels_and_sizes_name_the_file(tmp_path):
    bad = tmp_path / "bad.png"
    Image.fromarray(np.array([[0, 1], [30, 255]], dtype=np.uint8), mode="L").save(bad)
    with pytest.raises(ValueError, match="bad.png.*30"):
        read_mask(bad, num_classes=21)
    Image.new("RGB", (2, 2)).save(tmp_path / "rgb.png")
    with pytest.raises(ValueError, match="rgb.png"):
        read_mask(tmp_path / "rgb.png", num_classes=21)
    Image.new("RGB", (3, 2)).save(tmp_path / "img.jpg")
    Image.new("L", (2, 2)).save(tmp_path / "ok.png")
    ds = SegmentationDataset([Sample("x", tmp_path / "img.jpg", tmp_path / "ok.png")], num_classes=21)
    with pytest.raises(ValueError, match="img.jpg"):
        ds[0]
    with pytest.raises(ValueError, match="empty"):
        SegmentationDataset([], num_classes=21)


def test_truncated_image_names_the_file(tmp_path):
    from deeplab_lightning.data.dataset import read_image

    path = tmp_path / "cut.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:400])
    with pytest.raises(ValueError, match="cut.jpg"):
        read_image(path)
    gray = tmp_path / "gray.png"
    Image.new("L", (5, 4), 7).save(gray)
    assert read_image(gray).shape == (3, 4, 5)  # grayscale (and RGBA) images are converted to RGB


def test_random_scale_resizes_masks_with_nearest_neighbour():
    from torchvision import tv_tensors

    from deeplab_lightning.data.transforms import RandomScale, train_transform

    labels = torch.zeros(40, 60, dtype=torch.uint8)
    labels[10:30, 20:50] = 3
    labels[0:2] = 255
    image = tv_tensors.Image(torch.randint(0, 255, (3, 40, 60), dtype=torch.uint8))
    mask = tv_tensors.Mask(labels)
    sizes = set()
    for _ in range(20):
        out_image, out_mask = RandomScale((0.5, 2.0))(image, mask)
        assert out_image.shape[-2:] == out_mask.shape
        assert 20 <= out_mask.shape[0] <= 80
        assert set(out_mask.unique().tolist()) <= {0, 3, 255}  # no interpolated label values
        sizes.add(out_mask.shape[0])
    assert len(sizes) > 5
    out_image, out_mask = train_transform(32, (1.0, 1.0))(image, mask)
    assert out_image.shape == (3, 32, 32) and out_mask.shape == (32, 32)
    with pytest.raises(ValueError, match="scale_range"):
        RandomScale((2.0, 0.5))


@pytest.mark.parametrize("scale", [0.55, 0.7, 1.3])
def test_random_scale_keeps_labels_on_the_image_pixels(scale):
    """A horizontal ramp as image and as labels (x): after scaling, each label must be, on average, the x of
    the image pixel it sits on (torchvision's floor-rule mask resize was 0.35-0.85 source pixels off here)."""
    from torchvision import tv_tensors

    from deeplab_lightning.data.transforms import RandomScale

    x = torch.arange(200, dtype=torch.uint8).expand(4, 200)
    image = tv_tensors.Image(x.float().expand(3, 4, 200).contiguous())
    image, mask = RandomScale((scale, scale))(image, tv_tensors.Mask(x))
    offset = mask.float() - image[0]  # [h, w]; the border columns see the antialias filter's edge
    assert abs(offset[:, 4:-4].mean().item()) <= 0.1


def test_samplers_shard_without_repeats_and_depend_only_on_seed_and_epoch():
    from deeplab_lightning.data.sampling import EvalSampler, TrainSampler, per_process_batch

    shards = [list(EvalSampler(7, num_replicas=2, rank=r)) for r in range(2)]
    assert sorted(shards[0] + shards[1]) == list(range(7)) and len(EvalSampler(7, 2, 1)) == 3  # no padding

    train = [TrainSampler(10, num_replicas=2, rank=r, seed=5) for r in range(2)]
    for s in train:
        s.set_epoch(3)
    items = [list(s) for s in train]
    indices = [i for shard in items for i, _ in shard]
    assert len(indices) == len(set(indices)) == 10 and len(train[0]) == 5
    again = TrainSampler(10, num_replicas=2, rank=0, seed=5)
    again.set_epoch(3)
    assert list(again) == items[0]  # a function of (seed, epoch) only
    again.set_epoch(4)
    assert list(again) != items[0]
    again.set_epoch(3)
    again.skip_batches(2, batch_size=2)
    assert list(again) == items[0][4:] and list(again) == items[0]  # the skip applies to one pass only
    assert per_process_batch(16, 4) == 4
    with pytest.raises(ValueError, match="batch_size=10.*3"):
        per_process_batch(10, 3)


def test_seeded_augmentation_does_not_depend_on_what_ran_before(toy_dir, toy_settings):
    dm = ToyVOCDataModule(str(toy_dir), **toy_settings, crop_size=48, num_workers=0)
    dataset = dm.dataset("train", train=True)
    first = dataset[(3, 1234)]
    torch.rand(100)  # consume the global random state
    second = dataset[(3, 1234)]
    assert torch.equal(first["image"], second["image"]) and torch.equal(first["mask"], second["mask"])
    assert not torch.equal(first["image"], dataset[(3, 99)]["image"])


def test_split_lists_name_repeated_ids_and_skip_blank_lines(tmp_path, toy_dir, toy_settings):
    import shutil

    root = tmp_path / "voc"
    shutil.copytree(toy_dir, root)
    val = root / "VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt"
    ids = val.read_text().split()
    val.write_text("\n".join(ids[:2]) + "\n\n  \n" + "\n".join(ids[2:]) + "\n")  # blank lines are skipped
    dm = VOCDataModule(str(root), num_workers=0)
    assert [s.id for s in dm.samples("val")] == ids
    val.write_text(val.read_text() + ids[1] + "\n")  # listed twice: would count twice in the metric
    with pytest.raises(ValueError, match=rf"val.txt lists id '{ids[1]}' twice \(lines 2 and 9\)"):
        dm.samples("val")


def test_empty_sbd_label_file_names_its_path(tmp_path):
    (tmp_path / "2008_000002.mat").touch()
    with pytest.raises(ValueError, match=r"Cannot read label map .*2008_000002.mat"):
        read_mask(tmp_path / "2008_000002.mat", num_classes=21)


def test_exif_orientation_turns_images_upright_and_leaves_label_maps_as_stored(tmp_path):
    from deeplab_lightning.data.dataset import EXIF_ORIENTATION, image_size, read_image

    stored = np.zeros((2, 4, 3), np.uint8)
    stored[0, 0] = 255  # top-left pixel as stored
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6  # "rotate 90 degrees clockwise to display", as phones write
    Image.fromarray(stored).save(tmp_path / "photo.png", exif=exif)
    upright = read_image(tmp_path / "photo.png")
    assert upright.shape == (3, 4, 2) and image_size(tmp_path / "photo.png") == (4, 2)
    assert upright[0, 0, 1] == 255 and upright[0, 0, 0] == 0  # the stored top-left is now top-right
    Image.fromarray(np.arange(8, dtype=np.uint8).reshape(2, 4), mode="L").save(tmp_path / "mask.png", exif=exif)
    assert read_mask(tmp_path / "mask.png", num_classes=21).shape == (2, 4)  # label maps are not rotated


def test_two_processes_generating_the_toy_data_at_once_both_succeed(tmp_path):
    import subprocess
    import sys

    code = ("from deeplab_lightning.data import generate_toy_voc; "
            f"generate_toy_voc({str(tmp_path)!r}, num_train=30, num_val=4, size_range=(64, 64))")
    runs = [subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True) for _ in range(2)]
    errors = [run.communicate(timeout=300)[1] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], errors
    assert len(list((tmp_path / "VOCdevkit/VOC2012/JPEGImages").iterdir())) == 34
    assert sorted(p.name for p in tmp_path.iterdir()) == ["VOCdevkit"]  # no partial folder left
