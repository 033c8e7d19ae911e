import numpy as np
import torch

from deeplab_lightning.evaluation import SegmentationMetrics


def reference_confmat(batches, num_classes, ignore=255):
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    for pred, target in batches:
        for p, t in zip(pred.ravel().tolist(), target.ravel().tolist()):
            if t != ignore:
                cm[t, p] += 1
    return cm


def test_confusion_matrix_and_scores_over_several_batches():
    g = torch.Generator().manual_seed(0)
    batches = []
    for n in (1, 3, 2):  # batches of different sizes and content
        target = torch.randint(0, 4, (n, 5, 7), generator=g)
        target[torch.rand(target.shape, generator=g) < 0.2] = 255
        pred = torch.randint(0, 4, (n, 5, 7), generator=g)
        batches.append((pred, target))
    metric = SegmentationMetrics(num_classes=4)
    for pred, target in batches:
        metric.update(pred, target)
    cm = reference_confmat([(p.numpy(), t.numpy()) for p, t in batches], 4)
    assert torch.equal(metric.confmat, torch.from_numpy(cm))
    tp = np.diag(cm)
    iou = tp / (cm.sum(0) + cm.sum(1) - tp)
    out = metric.compute()
    np.testing.assert_allclose(out["iou"].numpy(), iou, rtol=1e-6)
    assert abs(out["mIoU"].item() - iou.mean()) < 1e-6
    assert abs(out["pixel_acc"].item() - tp.sum() / cm.sum()) < 1e-6
    # A mean of per-batch mIoUs is a different (wrong) number: the metric must not be that.
    per_batch = []
    for pred, target in batches:
        m = SegmentationMetrics(num_classes=4)
        m.update(pred, target)
        per_batch.append(m.compute()["mIoU"].item())
    assert abs(np.mean(per_batch) - out["mIoU"].item()) > 1e-4


def test_hand_computed_example_with_ignored_and_absent_classes():
    target = torch.tensor([[[0, 0, 1, 255]], [[1, 1, 255, 0]]])
    pred = torch.tensor([[[0, 1, 1, 2]], [[1, 0, 2, 0]]])
    metric = SegmentationMetrics(num_classes=4)
    metric.update(pred[:1], target[:1])
    metric.update(pred[1:], target[1:])
    # rows = target, cols = prediction; the 255 pixels (predicted 2) are not counted
    expected = torch.tensor([[2, 1, 0, 0], [1, 2, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    assert torch.equal(metric.confmat, expected)
    out = metric.compute()
    assert torch.allclose(out["iou"][:2], torch.tensor([0.5, 0.5]))
    assert torch.isnan(out["iou"][2:]).all()  # classes 2 and 3 never occur: left out of the mean
    assert out["mIoU"].item() == 0.5
    assert abs(out["pixel_acc"].item() - 4 / 6) < 1e-6


def test_logits_are_argmaxed_and_out_of_range_labels_never_count():
    logits = torch.zeros(1, 3, 1, 3)
    logits[0, 2] = 1.0  # predicts class 2 everywhere
    target = torch.tensor([[[2, 7, 255]]])  # 7 is out of range: discarded, not counted as class 2's TP
    metric = SegmentationMetrics(num_classes=3)
    metric.update(logits, target)
    assert metric.confmat.sum().item() == 1
    assert metric.confmat[2, 2].item() == 1


def test_ignore_index_is_read_even_inside_the_class_range():
    # A dataset whose void label is 0: those pixels are skipped, not counted as class 0.
    metric = SegmentationMetrics(num_classes=3, ignore_index=0)
    metric.update(torch.tensor([[1, 1, 2, 0]]), torch.tensor([[0, 1, 2, 2]]))
    assert metric.confmat.tolist() == [[0, 0, 0], [0, 1, 0], [1, 0, 1]]


def test_a_class_predicted_but_absent_from_the_targets_scores_zero_and_counts():
    """A class with no target pixel but predicted has IoU 0 and is in the mean; a class neither in the targets nor
    predicted is NaN and left out, as torchmetrics' macro JaccardIndex averages."""
    from torchmetrics.classification import MulticlassJaccardIndex

    target = torch.tensor([[0, 0, 1, 1, 0, 1]])
    pred = torch.tensor([[0, 2, 1, 1, 0, 0]])  # class 2 predicted once, never a target; class 3 nowhere
    metric = SegmentationMetrics(num_classes=4)
    metric.update(pred, target)
    out = metric.compute()
    assert out["iou"][2].item() == 0 and torch.isnan(out["iou"][3])
    expected = (2 / 4 + 2 / 3 + 0) / 3  # background, class 1, class 2: class 3 left out
    assert abs(out["mIoU"].item() - expected) < 1e-6
    macro = MulticlassJaccardIndex(num_classes=4, average="macro")(pred, target)
    assert abs(macro.item() - expected) < 1e-6
