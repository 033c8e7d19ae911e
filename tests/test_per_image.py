"""Per-image confusion matrices: what every evaluation saves (summing to the split's matrix, once per image under
DDP, never overwritten), the mIoU and the bootstrap over images built on them, per-image deltas, the worst-images
gallery."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from deeplab_lightning.callbacks.per_image import image_confusion_matrices, publish
from deeplab_lightning.commands.cli import main
from deeplab_lightning.data import TOY_CLASSES, generate_toy_voc
from deeplab_lightning.evaluation import SegmentationMetrics
from deeplab_lightning.evaluation.per_image import (
    PerImageMatrices, bootstrap_delta_interval, bootstrap_interval, image_deltas, per_image_miou,
    read_per_image, split_miou)


def evaluator_miou(confmat: np.ndarray) -> float:
    """The mIoU SegmentationMetrics computes from one [C, C] matrix (float32, as logged)."""
    metric = SegmentationMetrics(confmat.shape[0])
    metric.confmat += torch.as_tensor(confmat)
    return SegmentationMetrics.compute(metric)["mIoU"].item()  # the method itself (no torchmetrics sync)


def random_matrices(n: int, c: int, seed: int = 0) -> np.ndarray:
    """[n, c, c] pixel counts, each image holding a random subset of the classes (so some classes are absent
    from an image's ground truth, its prediction or both)."""
    rng = np.random.default_rng(seed)
    cm = rng.integers(0, 50, size=(n, c, c)) * (rng.random((n, c, c)) < 0.4)
    cm[:, np.arange(c), np.arange(c)] += rng.integers(0, 400, size=(n, c)) * (rng.random((n, c)) < 0.6)
    return cm


def save(path, ids, confmat, class_names=("a", "b"), **fields):
    data = {"ids": np.array(ids, dtype=str), "confmat": np.asarray(confmat, np.int64),
            "class_names": np.array(class_names, dtype=str), "step": 7, "stage": "val", "split": "val",
            "inference": "single scale", "unrefined": False} | fields
    np.savez_compressed(path, **data)
    return path


# The numbers.

def test_split_and_per_image_miou_are_the_evaluators_definition():
    cm = random_matrices(40, 5)
    cm[:, 4, :] = 0  # class 4 never in the ground truth: IoU 0 where predicted, left out where not
    cm[:20, :, 4] = 0
    cm[20:, :, 4] = 0
    cm[25, 0, 4] = 3
    assert np.float32(split_miou(cm)) == evaluator_miou(cm.sum(0))
    assert np.float32(split_miou(cm, [3, 3, 25])) == evaluator_miou(2 * cm[3] + cm[25])  # a repeat counts again
    single = per_image_miou(cm)
    assert single.shape == (40,)
    assert all(np.float32(single[i]) == evaluator_miou(cm[i]) for i in range(40) if cm[i].any())
    empty = cm.copy()
    empty[5] = 0
    assert np.isnan(per_image_miou(empty)[5])  # no labelled pixel: no mIoU


def test_image_confusion_matrices_count_each_image_as_the_evaluator_does():
    torch.manual_seed(0)
    sizes = [(5, 7), (3, 4), (6, 6)]
    preds = [torch.randint(0, 4, s) for s in sizes]
    targets = [torch.randint(0, 4, s) for s in sizes]
    targets[0][0, :] = 255  # ignored pixels, and a target that is all ignored
    targets[1][:] = 255
    matrices = image_confusion_matrices(preds, targets, num_classes=4, ignore_index=255)
    assert matrices.shape == (3, 4, 4) and matrices.dtype == torch.long
    for pred, target, matrix in zip(preds, targets, matrices):
        metric = SegmentationMetrics(4, ignore_index=255)
        metric.update(pred[None], target[None])
        assert torch.equal(matrix, metric.confmat)
    assert matrices[1].sum() == 0 and matrices[0].sum() == 5 * 7 - 7


def two_images() -> np.ndarray:
    """A: 1000 background and 1000 object pixels, all right; B: the same, its object predicted as background."""
    a = np.array([[1000, 0], [0, 1000]])
    b = np.array([[1000, 0], [1000, 0]])
    return np.stack([a, b])


def test_bootstrap_resamples_images_not_pixels():
    cm = two_images()
    both, only_a, only_b = split_miou(cm), split_miou(cm, [0, 0]), split_miou(cm, [1, 1])
    assert (only_b, both, only_a) == (0.25, pytest.approx(7 / 12), 1.0)
    # Two images drawn with replacement: AA, AB/BA, BB with probabilities 1/4, 1/2, 1/4; the 2.5 % and 97.5 %
    # quantiles of 2000 resamples fall inside the BB and AA blocks.
    assert bootstrap_interval(cm) == (only_b, only_a)
    # Resampling the 4000 pixels instead would be nearly certain of the split's value.
    rng = np.random.default_rng(0)
    total = cm.sum(0)
    pixels = rng.multinomial(total.sum(), total.ravel() / total.sum(), size=2000).reshape(-1, 2, 2)
    pixel_values = [split_miou(m[None]) for m in pixels]
    assert np.percentile(pixel_values, 97.5) - np.percentile(pixel_values, 2.5) < 0.05


def test_bootstrap_interval_contains_the_estimate_narrows_with_images_and_is_exact_for_identical_images():
    cm = random_matrices(30, 6, seed=1)
    low, high = bootstrap_interval(cm, resamples=1000)
    assert low < split_miou(cm) < high
    wide = high - low
    low4, high4 = bootstrap_interval(np.concatenate([cm] * 4), resamples=1000)  # 4x the images, same kinds
    assert low4 < split_miou(cm) < high4 and high4 - low4 < 0.7 * wide  # about half as wide (1 / sqrt(4))
    identical = np.repeat(cm[:1], 25, axis=0)
    assert bootstrap_interval(identical) == (split_miou(identical), split_miou(identical))
    assert bootstrap_interval(cm, seed=3) == bootstrap_interval(cm, seed=3) != bootstrap_interval(cm, seed=4)
    with pytest.raises(ValueError, match="level"):
        bootstrap_interval(cm, level=95)


def test_paired_bootstrap_interval_of_a_difference():
    base = random_matrices(30, 4, seed=2)
    assert bootstrap_delta_interval(base, base) == (0.0, 0.0)
    better = base.copy()
    better[:, np.arange(4), np.arange(4)] += 100  # every image gains correct pixels of every class
    low, high = bootstrap_delta_interval(base, better)
    assert 0 < low <= split_miou(better) - split_miou(base) <= high


def test_image_deltas_align_by_id_and_say_which_images_a_run_improves_or_breaks(tmp_path):
    a, b = two_images()
    base = save(tmp_path / "base.npz", ["x", "y", "z"], [a, b, a])
    # the other run fixes y, breaks z, keeps x; its file lists the images in another order
    other = save(tmp_path / "other.npz", ["z", "x", "y"], [b, a, a])
    deltas = image_deltas(base, other)
    assert deltas.ids.tolist() == ["x", "y", "z"]
    assert deltas.delta.tolist() == [0.0, 0.75, -0.75]
    assert deltas.improved() == [("y", 0.75)] and deltas.broken() == [("z", -0.75)]
    assert deltas.improved(margin=0.8) == []
    fewer = save(tmp_path / "fewer.npz", ["x", "w"], [a, a])
    with pytest.raises(ValueError, match=r"different images: 2 only in .*base.npz \(y, z\); 1 only in .*fewer.npz "
                                         r"\(w\)"):
        image_deltas(base, fewer)
    with pytest.raises(ValueError, match="classes"):
        image_deltas(base, save(tmp_path / "named.npz", ["x", "y", "z"], [a, b, a], class_names=("a", "c")))


def test_read_per_image_names_the_file_and_what_is_wrong(tmp_path):
    a, b = two_images()
    read = read_per_image(save(tmp_path / "ok.npz", ["x", "y"], [a, b]))
    assert isinstance(read, PerImageMatrices) and read.step == 7 and read.class_names == ["a", "b"]
    assert read.ranking() == [("y", 0.25), ("x", 1.0)] and read.miou == split_miou(np.stack([a, b]))
    with pytest.raises(FileNotFoundError, match="missing.npz do not exist"):
        read_per_image(tmp_path / "missing.npz")
    np.savez_compressed(tmp_path / "partial.npz", ids=np.array(["x"]))
    with pytest.raises(ValueError, match="partial.npz is not a per-image .* lacks confmat, class_names"):
        read_per_image(tmp_path / "partial.npz")
    with pytest.raises(ValueError, match="twice.npz is malformed: an id appears more than once \\(x\\)"):
        read_per_image(save(tmp_path / "twice.npz", ["x", "x"], [a, b]))
    with pytest.raises(ValueError, match="shape.npz is malformed: confmat has 2 classes but class_names 3"):
        read_per_image(save(tmp_path / "shape.npz", ["x", "y"], [a, b], class_names=("a", "b", "c")))
    (tmp_path / "text.npz").write_text("not an archive")
    with pytest.raises(ValueError, match="text.npz cannot be read"):
        read_per_image(tmp_path / "text.npz")


def test_publish_never_replaces_a_file(tmp_path):
    target = tmp_path / "x.npz"
    assert publish(lambda p: p.write_bytes(b"first"), target)
    assert not publish(lambda p: p.write_bytes(b"second"), target)
    assert target.read_bytes() == b"first" and sorted(p.name for p in tmp_path.iterdir()) == ["x.npz"]


# Evaluations through the command line.

def toy_config(tmp_path, toy_dir, toy_settings, write_config, diverse_start, callbacks=()):
    """The tiny config, evaluating the diverse untrained network (every class predicted somewhere)."""
    path = write_config(tmp_path, toy_dir, toy_settings)
    config = yaml.safe_load(path.read_text())
    config["model"]["init_checkpoint"] = diverse_start
    config["trainer"]["callbacks"] += list(callbacks)
    path.write_text(yaml.safe_dump(config))
    return path


def gallery_ids(path) -> list[str]:
    return [i for i, _ in json.loads(Image.open(path).text["Description"])]


def test_validate_saves_per_image_matrices_summing_to_the_split_and_never_overwrites(
        tmp_path, toy_dir, toy_settings, write_config, diverse_start):
    config = toy_config(tmp_path, toy_dir, toy_settings, write_config, diverse_start)
    cli = main(["validate", "--config", str(config)])  # the standard callbacks save them
    folder = tmp_path / "evaluations"
    assert sorted(p.name for p in folder.iterdir()) == ["val_step0.npz", "val_step0_worst.png"]
    saved = read_per_image(folder / "val_step0.npz")
    results = cli.model.evaluation_results("val")
    assert saved.ids.tolist() == sorted(s.id for s in cli.datamodule.dataset("val").samples) and len(saved.ids) == 6
    assert saved.confmat.shape == (6, len(TOY_CLASSES), len(TOY_CLASSES))
    assert np.array_equal(saved.confmat.sum(0), results.confmat.numpy())
    assert np.float32(split_miou(saved.confmat)) == cli.trainer.callback_metrics["val/mIoU"].item()
    assert (saved.stage, saved.step, saved.split, saved.unrefined) == ("val", 0, "val", False)
    assert saved.class_names == list(TOY_CLASSES) and saved.inference == "single scale"
    mious = saved.per_image_miou()
    assert len(set(np.round(mious, 6))) > 1  # images differ: a ranking means something
    assert gallery_ids(folder / "val_step0_worst.png") == [i for i, _ in saved.ranking()][:8]

    first = (folder / "val_step0.npz").read_bytes()
    main(["validate", "--config", str(config)])  # the same evaluation again: numbered, the first file kept
    assert (folder / "val_step0.npz").read_bytes() == first
    again = read_per_image(folder / "val_step0-2.npz")
    assert np.array_equal(again.confmat, saved.confmat) and (folder / "val_step0-2_worst.png").is_file()


def test_a_test_with_the_dense_crf_saves_both_predictions_and_the_k_worst_images(
        tmp_path, toy_dir, toy_settings, write_config, diverse_start):
    callbacks = [{"class_path": "deeplab_lightning.callbacks.DenseCRFRefinement",
                  "init_args": {"iterations": 2, "bi_xy_std": 10, "bi_rgb_std": 10, "stages": ["test"]}},
                 {"class_path": "deeplab_lightning.callbacks.PerImageConfusion",
                  "init_args": {"folder": str(tmp_path / "mine"), "label": "crf", "worst": 3, "thumbnail": 40}}]
    config = toy_config(tmp_path, toy_dir, toy_settings, write_config, diverse_start, callbacks)
    cli = main(["test", "--config", str(config)])
    folder = tmp_path / "mine"
    assert sorted(p.name for p in folder.iterdir()) == ["crf.npz", "crf_unrefined.npz", "crf_worst.png"]
    assert not (tmp_path / "evaluations").exists()  # the configured callback replaces the standard one
    final, unrefined = read_per_image(folder / "crf.npz"), read_per_image(folder / "crf_unrefined.npz")
    for saved, before in ((final, False), (unrefined, True)):
        assert np.array_equal(saved.confmat.sum(0), cli.model.evaluation_results("test", before).confmat.numpy())
        assert saved.unrefined == before and saved.stage == "test"
    assert final.inference == "single scale + dense CRF" and unrefined.inference == "single scale"
    assert not np.array_equal(final.confmat, unrefined.confmat)  # the CRF changed some images
    assert gallery_ids(folder / "crf_worst.png") == [i for i, _ in final.ranking()][:3]  # the 3 worst, refined
    width, height = Image.open(folder / "crf_worst.png").size
    assert height > width  # three rows of image | ground truth | prediction


def test_two_process_validation_writes_each_image_once(tmp_path, write_config, diverse_start):
    toy = tmp_path / "toy"
    settings = {"num_train": 4, "num_val": 5, "size_range": (64, 80), "seed": 2}  # shards of 3 + 2 images
    generate_toy_voc(toy, **settings)
    single_dir, ddp_dir = tmp_path / "single", tmp_path / "ddp"
    single = toy_config(single_dir, toy, settings, write_config, diverse_start)
    main(["validate", "--config", str(single)])
    path = toy_config(ddp_dir, toy, settings, write_config, diverse_start)
    config = yaml.safe_load(path.read_text())
    config["trainer"].update(devices=2, strategy="ddp")
    config["data"]["init_args"]["val_batch_size"] = 2
    path.write_text(yaml.safe_dump(config))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-m", "deeplab_lightning", "validate", "--config", str(path)], env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert sorted(p.name for p in (ddp_dir / "evaluations").iterdir()) == ["val_step0.npz", "val_step0_worst.png"]
    ddp = read_per_image(ddp_dir / "evaluations" / "val_step0.npz")
    alone = read_per_image(single_dir / "evaluations" / "val_step0.npz")
    assert ddp.ids.tolist() == alone.ids.tolist() and len(ddp.ids) == 5
    assert np.array_equal(ddp.confmat, alone.confmat)  # each image once, with its own prediction
    assert gallery_ids(ddp_dir / "evaluations" / "val_step0_worst.png") == gallery_ids(
        single_dir / "evaluations" / "val_step0_worst.png")

