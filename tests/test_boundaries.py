"""Boundary metrics (trimap, Boundary IoU, boundary F1) against an independent reference: scipy's chessboard
distance transforms per class in numpy, on random label maps with void bands, absent classes, objects cut by the
image border and ignored pixels; analytic cases (a square shifted by k pixels); exact sums over images and over
two processes (the 2-process sums: tests/test_ddp.py)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from deeplab_lightning.evaluation.boundaries import (BoundaryMetrics, BoundaryResults, BoundarySettings, dilate,
                                                     label_edges, square_window)

IGNORE = 255
WIDTHS = (1, 2, 4, 7)


# --- the reference: distances by scipy's distance transform, one class at a time -------------------------------

def distance_to(seeds: np.ndarray) -> np.ndarray:
    """Chessboard distance of every pixel to the nearest ``seeds`` pixel inside the image (inf without seeds)."""
    if not seeds.any():
        return np.full(seeds.shape, np.inf)
    return ndimage.distance_transform_cdt(~seeds, metric="chessboard").astype(float)


def reference_counts(pred: np.ndarray, target: np.ndarray, n: int, band: str, widths, d: int, theta: int) -> dict:
    """Per-image counts of every boundary metric, computed from distance maps (not from max-pooled windows)."""
    valid = (target != IGNORE) & (target < n)
    truth = np.where(valid, target, -1)
    pred = np.where(valid, pred, -1)  # void is in no class's mask on either side
    if band == "void":
        seeds = ~valid
    else:  # a 4-neighbour with another label
        seeds = np.zeros_like(valid)
        seeds[1:] |= truth[1:] != truth[:-1]
        seeds[:-1] |= truth[1:] != truth[:-1]
        seeds[:, 1:] |= truth[:, 1:] != truth[:, :-1]
        seeds[:, :-1] |= truth[:, 1:] != truth[:, :-1]
    to_seed = distance_to(seeds)
    trimap = np.zeros((len(widths), n, n), dtype=np.int64)
    for k, width in enumerate(widths):
        inside = valid & (to_seed <= width)
        np.add.at(trimap[k], (truth[inside], pred[inside]), 1)
    boundary = np.zeros((3, n), dtype=np.int64)
    f1 = np.zeros((4, n), dtype=np.int64)
    for c in range(n):
        g, p = truth == c, pred == c
        to_outside_g, to_outside_p = distance_to(~g), distance_to(~p)  # distance to the mask's contour
        g_d, p_d = g & (to_outside_g <= d), p & (to_outside_p <= d)
        boundary[:, c] = g_d.sum(), p_d.sum(), (g_d & p_d).sum()
        contour_g, contour_p = g & (to_outside_g <= 1), p & (to_outside_p <= 1)
        f1[:, c] = (contour_p.sum(), (contour_p & (distance_to(contour_g) <= theta)).sum(),
                    contour_g.sum(), (contour_g & (distance_to(contour_p) <= theta)).sum())
    return {"trimap_confmat": trimap, "boundary_counts": boundary, "f1_counts": f1}


def reference_scores(counts: dict) -> dict:
    """Scores from summed counts, written out one class at a time."""
    out = {}
    cm = counts["trimap_confmat"].astype(float)
    out["trimap_mIoU"] = [np.nanmean([cm[k, c, c] / (cm[k, c].sum() + cm[k, :, c].sum() - cm[k, c, c])
                                      if cm[k, c].sum() + cm[k, :, c].sum() else np.nan for c in range(cm.shape[1])])
                          for k in range(cm.shape[0])]
    out["trimap_pixel_acc"] = [np.trace(cm[k]) / cm[k].sum() for k in range(cm.shape[0])]
    g, p, both = counts["boundary_counts"].astype(float)
    out["boundary_iou"] = [both[c] / (g[c] + p[c] - both[c]) if g[c] + p[c] else np.nan for c in range(len(g))]
    pt, pm, gt, gm = counts["f1_counts"].astype(float)
    f1 = []
    for c in range(len(pt)):
        if pt[c] == 0 and gt[c] == 0:
            f1.append(np.nan)
        elif pt[c] == 0 or gt[c] == 0 or pm[c] + gm[c] == 0:
            f1.append(0.0)
        else:
            precision, recall = pm[c] / pt[c], gm[c] / gt[c]
            f1.append(2 * precision * recall / (precision + recall))
    out["boundary_f1"] = f1
    return out


def random_maps(rng: np.random.Generator, n: int, shape: tuple[int, int], void_band: bool):
    """A target of random rectangles and discs (some cut by the image border) with a void band along the class
    edges (as VOC and the toy data) or without, plus void blobs; a prediction that moves, grows and drops some of
    them. Class n - 1 never occurs in the target and class n - 2 is never predicted."""
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    target = np.zeros(shape, dtype=np.int64)
    pred = np.zeros(shape, dtype=np.int64)
    for _ in range(rng.integers(2, 6)):
        c = int(rng.integers(1, n - 1))
        cy, cx, r = rng.integers(-3, h + 3), rng.integers(-3, w + 3), rng.integers(2, max(3, min(h, w) // 2))
        shape_t = (np.abs(yy - cy) <= r) & (np.abs(xx - cx) <= r) if rng.random() < 0.5 else (
            (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r)
        target[shape_t] = c
        dy, dx = rng.integers(-3, 4, size=2)
        moved = np.roll(np.roll(shape_t, dy, 0), dx, 1)
        if rng.random() < 0.3:
            moved = ndimage.binary_dilation(moved, iterations=2)
        pred[moved] = c if c != n - 2 else n - 1  # class n - 2 is predicted as the absent class n - 1
    pred[rng.random(shape) < 0.02] = rng.integers(0, n - 2)  # salt: contours everywhere
    if void_band:
        edges = np.zeros(shape, dtype=bool)
        edges[1:] |= target[1:] != target[:-1]
        edges[:-1] |= target[1:] != target[:-1]
        edges[:, 1:] |= target[:, 1:] != target[:, :-1]
        edges[:, :-1] |= target[:, 1:] != target[:, :-1]
        target[edges] = IGNORE
    target[(yy - h // 3) ** 2 + (xx - w // 4) ** 2 <= 4] = IGNORE  # a void blob
    return pred, target


def metric(n: int, band: str, **settings) -> BoundaryMetrics:
    m = BoundaryMetrics(n, IGNORE, BoundarySettings(trimap_widths=WIDTHS, trimap_band=band, **settings))
    return m


# --- tests --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("radius", [0, 1, 2, 3, 5, 13, 40])
def test_square_windows_equal_scipys_filters_clipped_to_the_image(radius):
    rng = np.random.default_rng(radius)
    labels = rng.integers(0, 7, size=(9, 23))
    mask = rng.random((9, 23)) < 0.1
    size = 2 * radius + 1
    expected_max = ndimage.maximum_filter(labels, size=size, mode="constant", cval=-1)
    expected_min = ndimage.minimum_filter(labels, size=size, mode="constant", cval=99)
    assert np.array_equal(square_window(torch.from_numpy(labels), radius, torch.maximum).numpy(), expected_max)
    assert np.array_equal(square_window(torch.from_numpy(labels), radius, torch.minimum).numpy(), expected_min)
    expected = ndimage.binary_dilation(mask, structure=np.ones((3, 3)), iterations=radius) if radius else mask
    assert np.array_equal(dilate(torch.from_numpy(mask), radius).numpy(), expected)


def test_label_edges_are_pixels_with_a_differently_labelled_4_neighbour():
    labels = torch.tensor([[0, 0, 1], [0, 0, 1], [2, 0, 0]])
    assert label_edges(labels).int().tolist() == [[0, 1, 1], [1, 1, 1], [1, 1, 1]]


@pytest.mark.parametrize("void_band", [True, False])
def test_every_count_equals_the_distance_transform_reference_on_random_maps(void_band):
    rng = np.random.default_rng(int(void_band))
    n = 6
    m = metric(n, "void" if void_band else "labels", boundary_distance_ratio=0.05, f1_tolerance_ratio=0.03)
    summed = None
    for shape in [(31, 47), (40, 23), (17, 17), (50, 50)]:
        pred, target = random_maps(rng, n, shape, void_band)
        m.update(torch.from_numpy(pred), torch.from_numpy(target))
        d = max(1, round(0.05 * math.hypot(*shape)))
        theta = max(1, round(0.03 * math.hypot(*shape)))
        counts = reference_counts(pred, target, n, "void" if void_band else "labels", WIDTHS, d, theta)
        summed = counts if summed is None else {k: summed[k] + v for k, v in counts.items()}
    values = m.compute()
    for key in ("trimap_confmat", "boundary_counts", "f1_counts"):
        assert np.array_equal(values[key].numpy(), summed[key]), key
    assert summed["boundary_counts"][0, n - 1] == 0 < summed["boundary_counts"][1, n - 1]  # predicted, not there
    assert summed["boundary_counts"][1, n - 2] == 0 and summed["boundary_counts"][0, n - 2] > 0  # never predicted
    scores = reference_scores(summed)
    np.testing.assert_allclose(values["trimap_mIoU"].numpy(), scores["trimap_mIoU"], rtol=1e-6)
    np.testing.assert_allclose(values["trimap_pixel_acc"].numpy(), scores["trimap_pixel_acc"], rtol=1e-6)
    np.testing.assert_allclose(values["boundary_iou"].numpy(), scores["boundary_iou"], rtol=1e-6)
    np.testing.assert_allclose(values["boundary_f1"].numpy(), scores["boundary_f1"], rtol=1e-6)
    assert values["boundary_iou"][n - 1] == 0 and values["boundary_f1"][n - 2] == 0  # one-sided classes score 0
    # A mean of per-image scores is another (wrong) number: the metric is not that.
    assert abs(values["boundary_mIoU"].item() - np.nanmean(scores["boundary_iou"])) < 1e-6


def test_boundary_regions_are_cheng_et_als_mask_minus_its_erosion_but_the_image_border_is_no_contour():
    """Cheng et al.'s code: mask - erode(pad(mask, 0), 3x3, d times). Away from the border it is the same region;
    a mask cut by the border gets no boundary there (the deviation the docstring states)."""
    mask = np.zeros((30, 40), dtype=bool)
    mask[8:20, 5:30] = True  # away from the border
    mask[:, 35:] = True  # cut by the top, bottom and right borders
    d = 3
    padded = np.pad(mask, 1)
    cheng = mask & ~ndimage.binary_erosion(padded, np.ones((3, 3)), iterations=d)[1:-1, 1:-1]
    ours = BoundaryMetrics._boundary_regions(torch.from_numpy(mask.astype(np.uint8)), d)[1].numpy() & mask
    assert np.array_equal(ours[:, :33], cheng[:, :33])
    assert ours[:, 35:].sum() == 30 * 3 and cheng[:, 35:].sum() == 30 * 5  # all of the 5 columns in Cheng's


def shifted_square(k: int, size: int = 64, s: int = 20, at: int = 20):
    target = np.zeros((size, size), dtype=np.int64)
    pred = np.zeros((size, size), dtype=np.int64)
    target[at:at + s, at:at + s] = 1
    pred[at:at + s, at + k:at + k + s] = 1
    return pred, target


@pytest.mark.parametrize("k", [0, 2, 4])
def test_boundary_iou_of_a_square_shifted_by_k_pixels(k):
    s, d = 20, 5
    pred, target = shifted_square(k, s=s)
    m = metric(2, "labels", boundary_distance=d)
    m.update(torch.from_numpy(pred), torch.from_numpy(target))
    iou = m.compute()["boundary_iou"].double()
    ring = s * s - (s - 2 * d) ** 2  # the square's pixels within d of its contour
    inter = 2 * d * (s - k) + (s - 2 * d) * 2 * (d - k)  # top/bottom bands overlap s - k, sides d - k each
    outer = (s + 2 * d) ** 2 - s * s  # the background's pixels within d of the square
    outer_inter = 2 * d * (s + 2 * d - k) + s * 2 * (d - k)
    assert iou[1].item() == pytest.approx(inter / (2 * ring - inter))
    assert iou[0].item() == pytest.approx(outer_inter / (2 * outer - outer_inter))
    assert (iou[1].item() == 1.0) == (k == 0)


@pytest.mark.parametrize("k,theta", [(1, 1), (3, 1), (4, 2)])
def test_boundary_f1_of_a_square_shifted_by_k_pixels(k, theta):
    s = 20
    pred, target = shifted_square(k, s=s)
    m = metric(2, "labels", f1_tolerance=theta)
    m.update(torch.from_numpy(pred), torch.from_numpy(target))
    f1 = m.compute()["boundary_f1"][1].item()
    # Contours are the 4s - 4 pixels of each square's outer ring. Within the tolerance (k <= theta) every one is
    # matched; else the top and bottom rows match s - k + theta pixels each and each vertical side the theta
    # pixels next to a corner, the far side none.
    matched = 4 * s - 4 if k <= theta else 2 * (s - k + theta) + 2 * theta
    assert f1 == pytest.approx(matched / (4 * s - 4))  # precision = recall by symmetry


def test_trimap_of_a_square_shifted_by_k_pixels_around_label_boundaries():
    s, k, w = 20, 2, 4
    pred, target = shifted_square(k, s=s)
    m = BoundaryMetrics(2, IGNORE, BoundarySettings(trimap_widths=(w,), trimap_band="labels"))
    m.update(torch.from_numpy(pred), torch.from_numpy(target))
    values = m.compute()
    # Edges: the square's inner and outer 4-neighbour rings; within w of them: [-(w+1), s+w+1)^2 minus the
    # square's pixels farther than w from its inner ring, and minus the four outermost corners (the outer ring
    # has no diagonal corner pixel: they are w + 1 from it).
    in_square = s * s - (s - 2 * w - 2) ** 2
    in_background = (s + 2 * w + 2) ** 2 - s * s - 4
    wrong = k * s  # each way: square pixels predicted background and background pixels predicted square
    assert values["trimap_confmat"][0].tolist() == [[in_background - wrong, wrong], [wrong, in_square - wrong]]
    iou = [(in_background - wrong) / (in_background + wrong), (in_square - wrong) / (in_square + wrong)]
    assert values["trimap_mIoU"].item() == pytest.approx(np.mean(iou))  # one width: torchmetrics squeezes it
    assert values["trimap_pixel_acc"].item() == pytest.approx(1 - 2 * wrong / (in_square + in_background))


def test_trimap_around_void_pixels_counts_labelled_pixels_within_w_clipped_at_the_image_border():
    target = np.ones((10, 30), dtype=np.int64)
    target[:, 2] = IGNORE  # a void column two pixels from the left border
    target[4, 20] = IGNORE  # and one void pixel
    m = BoundaryMetrics(2, IGNORE, BoundarySettings(trimap_widths=(1, 4), trimap_band="void"))
    m.update(torch.from_numpy(target.clip(max=1)), torch.from_numpy(target))
    pixels = m.compute()["trimap_confmat"].sum((1, 2)).tolist()
    # width 1: columns 1 and 3 (20) + the 8 around the pixel; width 4: columns 0, 1, 3..6 (60) + a 9x9 square
    # around the pixel, less itself and the row below the image (rows 0..8: 9 x 9 - 1)
    assert pixels == [20 + 8, 60 + 9 * 9 - 1]


def test_a_prediction_equal_to_the_target_on_labelled_pixels_scores_one_whatever_it_says_in_the_void():
    rng = np.random.default_rng(5)
    pred, target = random_maps(rng, 5, (40, 40), void_band=True)
    pred = np.where(target == IGNORE, rng.integers(0, 5, size=target.shape), target)
    m = metric(5, "void")
    m.update(torch.from_numpy(pred), torch.from_numpy(target))
    values = m.compute()
    present = values["boundary_counts"][0] > 0
    assert torch.all(values["boundary_iou"][present] == 1) and torch.all(values["boundary_f1"][present] == 1)
    assert torch.all(values["trimap_pixel_acc"] == 1)


def test_absent_everywhere_is_nan_and_left_out_of_the_means():
    target = torch.zeros(12, 12, dtype=torch.long)
    target[3:8, 3:8] = 1
    m = metric(4, "labels")
    m.update(target.clone(), target)
    values = m.compute()
    assert torch.isnan(values["boundary_iou"][2:]).all() and torch.isnan(values["boundary_f1"][2:]).all()
    assert values["boundary_mIoU"].item() == 1.0 and values["boundary_mF1"].item() == 1.0


def test_settings_are_checked_with_the_setting_named():
    assert BoundarySettings.from_config(False) is None and BoundarySettings.from_config(True) == BoundarySettings()
    with pytest.raises(ValueError, match="model.boundary_metrics.trimap_widths must be increasing"):
        BoundarySettings(trimap_widths=(4, 2))
    with pytest.raises(ValueError, match="model.boundary_metrics has no setting 'width'"):
        BoundarySettings.from_config({"width": 3})
    with pytest.raises(ValueError, match="trimap_band must be one of auto, void, labels"):
        BoundarySettings(trimap_band="edges")
    with pytest.raises(ValueError, match="boundary_distance must be a whole number of pixels >= 1"):
        BoundarySettings(boundary_distance=0)
    settings = BoundarySettings()
    assert settings.boundary_distance_px(375, 500) == 12 and settings.f1_tolerance_px(375, 500) == 5
    assert settings.resolve_band(True) == "void" and settings.resolve_band(False) == "labels"
    with pytest.raises(ValueError, match="trimap_band is unset"):
        BoundaryMetrics(2, IGNORE, settings).update(torch.zeros(3, 3), torch.zeros(3, 3))


def test_results_name_the_band_and_give_one_width():
    m = metric(3, "void")
    pred, target = random_maps(np.random.default_rng(2), 3, (30, 30), void_band=True)
    m.update(torch.from_numpy(pred), torch.from_numpy(target))
    results = BoundaryResults.from_values(m.compute(), "void", m.settings)
    assert results.trimap_at(4) == (results.trimap_mIoU[2].item(), results.trimap_pixel_acc[2].item())
    assert "void pixels" in results.describe_trimap()
    logged = results.logged("val", ["a", "b", "c"])
    assert {"val/trimap_void/mIoU_4px", "val/boundary_mIoU", "val/boundary_iou/b", "val/boundary_f1/c"} <= set(logged)
    with pytest.raises(ValueError, match="No trimap of width 3 px"):
        results.trimap_at(3)
