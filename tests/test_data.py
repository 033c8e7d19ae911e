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
    assert batch["image"].shape == (2, 3, 96, 96) and batch["mask"].dtype == torch.uint8 and batch["padded"]
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
        assert torch.equal(sample["mask"], torch.from_numpy(labels))
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


def _smooth_image(h: int, w: int, seed: int) -> np.ndarray:
    """uint8 [h, w, 3]: noise blurred over a few pixels (photo-like gradients, no aliasing-prone edges)."""
    noise = torch.rand(1, 3, max(2, h // 4), max(2, w // 4), generator=torch.Generator().manual_seed(seed))
    image = torch.nn.functional.interpolate(noise, size=(h, w), mode="bicubic", align_corners=False)
    return (image[0].clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()


def _scale_then_crop(image: np.ndarray, labels: np.ndarray, window) -> tuple[np.ndarray, np.ndarray]:
    """The reference: scale the whole image (bilinear without antialiasing; labels nearest-exact, in integers:
    torch's float32 rounds ties either way), crop, flip."""
    from torch.nn.functional import interpolate

    scaled = interpolate(torch.from_numpy(image).permute(2, 0, 1)[None].float(), size=window.scaled,
                         mode="bilinear", align_corners=False)[0].permute(1, 2, 0).numpy()
    (h, w), (sh, sw) = labels.shape, window.scaled
    scaled_labels = labels[(2 * np.arange(sh) + 1) * h // (2 * sh)][:, (2 * np.arange(sw) + 1) * w // (2 * sw)]
    rows, cols = slice(window.top, window.top + window.height), slice(window.left, window.left + window.width)
    image_crop, label_crop = scaled[rows, cols], scaled_labels[rows, cols]
    if window.flip:
        image_crop, label_crop = image_crop[:, ::-1], label_crop[:, ::-1]
    return image_crop, label_crop


@pytest.mark.parametrize("size", [(120, 170), (40, 60), (375, 500)])
def test_crop_window_first_gives_the_crops_of_scale_then_crop(size):
    """Fixed seeds: each crop computed from its window equals the crop of the whole scaled image (image within
    the bilinear resampler's rounding, labels exactly), at scales below and above 1, flipped or not, and when
    the scaled image is smaller than the crop (then kept whole)."""
    from deeplab_lightning.data.transforms import RandomScaleCrop

    h, w = size
    image = _smooth_image(h, w, seed=h)
    labels = (np.arange(h)[:, None] // 7 * 3 + np.arange(w)[None] // 5).astype(np.uint8) % 21
    labels[:3] = 255
    transform = RandomScaleCrop(64, (0.5, 2.0))
    seen = set()
    for seed in range(40):
        window = transform.draw((h, w), torch.Generator().manual_seed(seed))
        out_image, out_labels = window.resample_image(image), window.resample_labels(labels)
        ref_image, ref_labels = _scale_then_crop(image, labels, window)
        assert out_image.shape == (*ref_labels.shape, 3) and out_image.dtype == np.uint8
        assert np.abs(out_image.astype(float) - ref_image).max() <= 1.5
        assert np.array_equal(out_labels, ref_labels)
        seen.add((window.scaled[0] < h, window.flip, (window.height, window.width) == window.scaled))
    assert {(True, True), (True, False), (False, True), (False, False)} <= {k[:2] for k in seen}
    assert any(whole for *_, whole in seen) == (max(h, w) * 0.5 < 64)  # scaled within the crop: kept whole


def test_random_scale_crop_draws_scales_crops_and_flips():
    from deeplab_lightning.data.transforms import RandomScaleCrop

    labels = np.zeros((40, 60), np.uint8)
    labels[10:30, 20:50] = 3
    labels[0:2] = 255
    image = np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8)
    scaled = set()
    for seed in range(30):
        window = RandomScaleCrop(1000, (0.5, 2.0)).draw((40, 60), torch.Generator().manual_seed(seed))
        out_image, out_labels = window.resample_image(image), window.resample_labels(labels)
        assert out_image.shape[:2] == out_labels.shape == window.scaled and 20 <= out_labels.shape[0] <= 80
        assert set(np.unique(out_labels).tolist()) <= {0, 3, 255}  # no interpolated label values
        scaled.add(window.scaled[0])
    assert len(scaled) > 5
    out_image, out_labels = RandomScaleCrop(32, (1.0, 1.0))(image, labels)
    assert out_image.shape == (32, 32, 3) and out_labels.shape == (32, 32)
    steps = RandomScaleCrop(8, (0.5, 2.0), scale_step=0.25)
    assert steps.scales == [0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0]
    drawn = {steps.draw((40, 60), torch.Generator().manual_seed(s)).scaled for s in range(60)}
    assert drawn == {(round(40 * k), round(60 * k)) for k in steps.scales}  # every step, nothing between
    with pytest.raises(ValueError, match="scale_range"):
        RandomScaleCrop(8, (2.0, 0.5))
    with pytest.raises(ValueError, match="scale_step 0.4"):
        RandomScaleCrop(8, (0.5, 2.0), scale_step=0.4)


@pytest.mark.parametrize("scale", [0.55, 0.7, 1.3])
def test_random_scale_keeps_labels_on_the_image_pixels(scale):
    """A horizontal ramp as image and as labels (x): after scaling, each label must be, on average, the x of
    the image pixel it sits on (torchvision's floor-rule mask resize was 0.35-0.85 source pixels off here)."""
    from deeplab_lightning.data.transforms import RandomScaleCrop

    x = np.broadcast_to(np.arange(200, dtype=np.uint8), (4, 200))
    image = np.ascontiguousarray(np.repeat(x[..., None], 3, axis=2))
    for seed in range(4):  # flipped and not
        image_crop, labels = RandomScaleCrop(1000, (scale, scale))(image, x, torch.Generator().manual_seed(seed))
        offset = labels.astype(float) - image_crop[..., 0]  # [h, w]; the border columns see the image's edge
        assert abs(offset[:, 4:-4].mean()) <= 0.1 and np.abs(offset[:, 4:-4]).max() <= 1


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


def test_fast_decoders_give_what_pillow_gives(tmp_path):
    """libjpeg-turbo and libspng where they apply, Pillow elsewhere: every kind of file decodes to Pillow's pixels
    (images as RGB, label maps as their stored indices), EXIF-rotated photos upright."""
    from PIL import ImageOps

    from deeplab_lightning.data.decode import decode_image, decode_labels

    rng = np.random.default_rng(0)
    rgb = (_smooth_image(30, 40, seed=1).astype(int) + rng.integers(0, 9, (30, 40, 3))).clip(0, 255).astype(np.uint8)
    images = {"rgb.jpg": Image.fromarray(rgb), "gray.jpg": Image.fromarray(rgb[..., 0]),
              "cmyk.jpg": Image.fromarray(rgb).convert("CMYK"), "rgb.png": Image.fromarray(rgb),
              "rgba.png": Image.fromarray(np.dstack([rgb, rgb[..., :1]])), "gray.png": Image.fromarray(rgb[..., 1]),
              "la.png": Image.fromarray(rgb[..., 1]).convert("LA"), "p.png": Image.fromarray(rgb).quantize(40),
              "g16.png": Image.fromarray(rgb[..., 2].astype(np.uint16) * 257)}
    exif = Image.Exif()
    exif[0x0112] = 6
    for name, image in images.items():
        image.save(tmp_path / name)
        with Image.open(tmp_path / name) as reference:
            expected = np.array(reference.convert("RGB")) if name != "g16.png" else np.repeat(rgb[..., 2:], 3, 2)
        assert np.array_equal(decode_image(tmp_path / name), expected), name
    from PIL import PngImagePlugin

    xmp = PngImagePlugin.PngInfo()  # the orientation as XMP in a text chunk, which Pillow applies too
    xmp.add_itxt("XML:com.adobe.xmp", '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/'
                 '1999/02/22-rdf-syntax-ns#"><rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" '
                 'tiff:Orientation="6"/></rdf:RDF></x:xmpmeta>')
    Image.fromarray(rgb).save(tmp_path / "rotated.jpg", exif=exif)
    Image.fromarray(rgb).save(tmp_path / "xmp.png", pnginfo=xmp)
    for name in ("rotated.jpg", "xmp.png"):
        with Image.open(tmp_path / name) as reference:
            upright = np.array(ImageOps.exif_transpose(reference))
        assert upright.shape[:2] == (40, 30) and np.array_equal(decode_image(tmp_path / name), upright), name
    # A flipped byte in the pixel data: Pillow refuses the file, and so must the fast decoder (no wrong pixels).
    broken = bytearray((tmp_path / "rgb.png").read_bytes())
    broken[len(broken) // 2] ^= 1
    (tmp_path / "broken.png").write_bytes(bytes(broken))
    with pytest.raises(ValueError, match="broken.png"):
        decode_image(tmp_path / "broken.png")
    labels = rng.integers(0, 21, (30, 40)).astype(np.uint8)
    labels[:2] = 255
    for name, kwargs in (("p8.png", {}), ("p8t.png", {"transparency": 0}), ("p4.png", {"bits": 4}),
                         ("l.png", {}), ("interlaced.png", {"interlace": 1})):
        stored = labels % 16 if name == "p4.png" else labels
        image = Image.fromarray(stored, "L" if name == "l.png" else "P")
        if name != "l.png":
            image.putpalette(rng.integers(0, 256, 768).tolist())
        image.save(tmp_path / name, **kwargs)
        assert np.array_equal(decode_labels(tmp_path / name), stored), name
    broken = bytearray((tmp_path / "p8.png").read_bytes())
    broken[-20] ^= 1  # inside the last data chunk
    (tmp_path / "broken_labels.png").write_bytes(bytes(broken))
    with pytest.raises(ValueError, match="broken_labels.png"):
        decode_labels(tmp_path / "broken_labels.png")
