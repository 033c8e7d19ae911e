"""Boundary metrics in validation and test: counted on each image's own extent (never the padded canvas), before
and after the dense CRF, logged under the stage's prefix, with the trimap's seeds chosen by the data and named."""
from __future__ import annotations

import lightning as L
import pytest
import torch
from torch import nn

from deeplab_lightning.callbacks import DenseCRFRefinement, WandbReport
from deeplab_lightning.data import TOY_CLASSES, ToyVOCDataModule
from deeplab_lightning.evaluation import BatchScores, BoundaryMetrics, BoundarySettings
from deeplab_lightning.module import SegmentationModule

N = len(TOY_CLASSES)


class ColourNet(nn.Module):
    """A network without weights: class (red // 43) % N everywhere, as confident logits. Its predictions depend
    on each pixel alone, so the boundary counts can be recomputed image by image."""

    pixel_mean = None
    align_corners = False

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        labels = (images[:, 0].long() // 43) % N
        return nn.functional.one_hot(labels, N).permute(0, 3, 1, 2).float() * 2  # the CRF can move edges


def labels_of(image: torch.Tensor) -> torch.Tensor:
    return (image[0].long() // 43) % N


def toy_module(toy_dir, toy_settings, eval_size, **boundary):
    data = ToyVOCDataModule(str(toy_dir), **toy_settings, val_batch_size=4, num_workers=0, eval_size=eval_size)
    module = SegmentationModule(ColourNet(), num_classes=N, class_names=TOY_CLASSES,
                                boundary_metrics=boundary or True)
    return data, module


def validate(module, data, callbacks=()):
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=list(callbacks))
    trainer.validate(module, datamodule=data, verbose=False)
    return trainer


def test_counts_are_taken_on_each_images_own_extent_not_on_its_padded_canvas(toy_dir, toy_settings):
    """The toy images (64-80 px) run on one 97 x 97 canvas whose mask padding is void: counted on the canvas,
    that padding would seed a trimap band and a contour along the bottom and right of every image."""
    data, module = toy_module(toy_dir, toy_settings, eval_size=97)
    validate(module, data)
    results = module.evaluation_results("val").boundary
    own, canvas = (BoundaryMetrics(N, 255, module.evaluator.boundary) for _ in range(2))
    for metric in (own, canvas):
        metric.trimap_band = "void"
    for sample in data.dataset("val"):
        own.update(labels_of(sample["image"]), sample["mask"].long())
        h, w = sample["mask"].shape
        padded_mask = torch.full((97, 97), 255, dtype=torch.long)
        padded_mask[:h, :w] = sample["mask"]
        canvas.update(labels_of(nn.functional.pad(sample["image"], (0, 97 - w, 0, 97 - h))), padded_mask)
    expected, on_canvas = own.compute(), canvas.compute()
    assert torch.equal(results.trimap_confmat, expected["trimap_confmat"])
    assert torch.equal(results.boundary_counts, expected["boundary_counts"])
    assert torch.equal(results.f1_counts, expected["f1_counts"])
    assert not torch.equal(results.trimap_confmat, on_canvas["trimap_confmat"])  # the test can tell them apart
    assert results.trimap_band == "void"  # the toy data's void marks object boundaries, as VOC's


def test_before_and_after_the_dense_crf_both_logged_under_the_stage_prefix(toy_dir, toy_settings):
    data, module = toy_module(toy_dir, toy_settings, eval_size="auto")
    crf = DenseCRFRefinement(iterations=1, bi_xy_std=10, bi_rgb_std=10, stages=["validate"])
    trainer = validate(module, data, [crf])
    final, before = module.evaluation_results("val"), module.evaluation_results("val", unrefined=True)
    assert final.boundary is not None and before.boundary is not None
    assert not torch.equal(final.boundary.boundary_counts, before.boundary.boundary_counts)  # the CRF moved edges
    logged = trainer.callback_metrics
    for prefix, results in (("val", final), ("val/unrefined", before)):
        assert logged[f"{prefix}/trimap_void/mIoU_2px"].item() == pytest.approx(results.boundary.trimap_mIoU[0].item())
        assert logged[f"{prefix}/boundary_mIoU"].item() == pytest.approx(results.boundary.boundary_mIoU)
        assert logged[f"{prefix}/boundary_mF1"].item() == pytest.approx(results.boundary.boundary_mF1)
        assert f"{prefix}/boundary_iou/disk" in logged and f"{prefix}/boundary_f1/star" in logged
    assert len(final.boundary.trimap_widths) == 8 and final.boundary.settings == BoundarySettings()
    # wandb's trimap curve: a line before and one after the CRF per evaluation, every evaluation of the run kept
    report = WandbReport()
    report._trimap_media(module, "val", "val", step=10)
    media = report._trimap_media(module, "val", "val", step=20)
    assert [line[0] for line in report.trimap_lines["val"]] == ["step 10", "step 10 + CRF", "step 20", "step 20 + CRF"]
    assert report.trimap_lines["val"][1][3] == final.boundary.trimap_mIoU.tolist()
    assert report.trimap_lines["val"][0][3] == before.boundary.trimap_mIoU.tolist()
    assert "void pixels" in media["val/trimap_curve"].spec.string_fields["title"]

    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.test(module, datamodule=data, verbose=False)  # the toy test split is its val split: test_on_val/
    assert "test_on_val/trimap_void/pixel_acc_40px" in trainer.callback_metrics
    assert module.evaluation_results("test", unrefined=True) is None  # no CRF in this test


def test_label_boundaries_when_configured_and_nothing_when_off(toy_dir, toy_settings):
    data, module = toy_module(toy_dir, toy_settings, eval_size="auto", trimap_band="labels", trimap_widths=[1, 3])
    trainer = validate(module, data)
    assert module.evaluation_results("val").boundary.trimap_band == "labels"
    assert {"val/trimap_labels/mIoU_1px", "val/trimap_labels/mIoU_3px"} <= set(trainer.callback_metrics)
    assert not any(k.startswith("val/trimap_void") for k in trainer.callback_metrics)

    off = SegmentationModule(ColourNet(), num_classes=N, class_names=TOY_CLASSES, boundary_metrics=False)
    trainer = validate(off, data)
    assert off.evaluation_results("val").boundary is None
    assert not any("boundary" in k or "trimap" in k for k in trainer.callback_metrics)


def test_auto_follows_the_data_modules_declaration():
    from deeplab_lightning.data import CityscapesDataModule, FolderDataModule, VOCDataModule

    assert VOCDataModule.void_marks_boundaries and ToyVOCDataModule.void_marks_boundaries
    assert not CityscapesDataModule.void_marks_boundaries and not FolderDataModule.void_marks_boundaries
    module = SegmentationModule(ColourNet(), num_classes=N)
    module.evaluator.begin("test", void_marks_boundaries=True)
    assert module.evaluator.final_boundary["test"].trimap_band == "void"
    # a split counted outside a trainer's loop (no data module to ask): label boundaries, named in the results
    module.evaluator.update("val", BatchScores([torch.randn(N, 8, 8)]), [torch.zeros(8, 8, dtype=torch.long)])
    assert module.evaluator.final_boundary["val"].trimap_band == "labels"
    with pytest.raises(ValueError, match="model.boundary_metrics has no setting 'widths'"):
        SegmentationModule(ColourNet(), num_classes=N, boundary_metrics={"widths": [2]})
