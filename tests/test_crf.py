import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deeplab_lightning.evaluation.crf import PermutohedralLattice, _pixel_features, dense_crf

GOLDEN_LABELS = Path(__file__).parent / "golden" / "pydensecrf2_voc_sized_labels.png"


def exact_dense_crf(image, probs, iterations, bi_w, bi_xy_std, bi_rgb_std, pos_w, pos_xy_std, clip=1e-5):
    """O(N^2) mean field in float64 with exact Gaussian kernels and the same symmetric normalisation."""
    c = probs.shape[0]
    unary = -torch.log(probs.double().clamp_min(clip)).reshape(c, -1).T
    kernels = []
    for weight, feats in ((pos_w, _pixel_features(image, pos_xy_std, None)),
                          (bi_w, _pixel_features(image, bi_xy_std, bi_rgb_std))):
        f = feats.double()
        k = torch.exp(-0.5 * torch.cdist(f, f) ** 2)
        norm = 1.0 / torch.sqrt(k.sum(1, keepdim=True))
        kernels.append(weight * norm * k * norm.T)
    q = torch.softmax(-unary, 1)
    for _ in range(iterations):
        q = torch.softmax(-unary + sum(k @ q for k in kernels), 1)
    return q.T.reshape(probs.shape)


def test_lattice_filter_is_proportional_to_the_exact_gaussian():
    torch.manual_seed(0)
    f = torch.randn(300, 2) * 3
    v = torch.rand(300, 4)
    exact = torch.exp(-0.5 * torch.cdist(f, f) ** 2) @ v
    ratio = PermutohedralLattice(f).filter(v) / exact
    assert ratio.std() / ratio.mean() < 0.15  # a constant factor (removed by normalisation), small local error


def test_lattice_filter_without_autograd_reuses_its_buffers_but_not_its_results():
    """Inference filters through buffers kept with the lattice; the results must equal the autograd path's
    and stay valid when the same lattice filters other values (in another dtype or width) afterwards."""
    torch.manual_seed(0)
    lattice = PermutohedralLattice(torch.randn(500, 5) * 2)
    v1, v2 = torch.rand(500, 3), torch.rand(500, 3)
    with torch.no_grad():
        first = lattice.filter(v1)
        second = lattice.filter(v2)
        lattice.filter(torch.rand(500, 7, dtype=torch.float64))
    assert len(lattice._buffers) == 2  # one pair per (dtype, width), reused by the second call
    reference = lattice.filter(v1.clone().requires_grad_())
    assert reference.requires_grad
    torch.testing.assert_close(first, reference.detach(), rtol=1e-6, atol=1e-6)
    assert not torch.allclose(first, second)


def test_matches_exact_dense_mean_field_on_a_tiny_image():
    rng = np.random.default_rng(0)
    image = np.zeros((14, 18, 3), np.uint8)
    image[:, 9:] = (200, 60, 40)
    image = np.clip(image + rng.normal(0, 6, image.shape), 0, 255).astype(np.uint8)
    logits = torch.zeros(3, 14, 18)
    logits[0, :, :9] = 1.0
    logits[1, :, 9:] = 1.0
    logits += torch.from_numpy(rng.normal(0, 1.2, logits.shape)).float()
    probs = logits.softmax(0)
    params = dict(iterations=5, bi_w=4.0, bi_xy_std=5.0, bi_rgb_std=10.0, pos_w=3.0, pos_xy_std=1.0)
    ours = dense_crf(torch.from_numpy(image), probs, **params)
    exact = exact_dense_crf(torch.from_numpy(image), probs, **params).float()
    assert torch.allclose(ours.sum(0), torch.ones(14, 18), atol=1e-5)  # still a distribution
    assert (ours.argmax(0) == exact.argmax(0)).float().mean() >= 0.99
    assert (ours - exact).abs().max() < 0.1
    # and the CRF did something: it cleans the noisy unary labels towards the image's two regions
    truth = torch.zeros(14, 18, dtype=torch.long)
    truth[:, 9:] = 1
    assert (ours.argmax(0) == truth).float().mean() > (probs.argmax(0) == truth).float().mean()


def test_input_checks():
    torch.manual_seed(0)
    image = torch.randint(0, 255, (12, 16, 3), dtype=torch.uint8)
    probs = torch.rand(4, 12, 16).softmax(0)
    with pytest.raises(ValueError, match="uint8"):
        dense_crf(image.float(), probs)
    with pytest.raises(ValueError, match="probs"):
        dense_crf(image, probs[:, :5])


def _voc_sized_case() -> tuple[np.ndarray, torch.Tensor]:
    """A 375 x 500 image (colour ramps and noise) and 21-class probabilities (smooth coarse logits and noise)."""
    h, w, c = 375, 500, 21
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:h, 0:w]
    image = np.stack([(xx * 0.5) % 256, (yy * 0.7) % 256, ((xx + yy) * 0.3) % 256], -1)
    image = np.clip(image + rng.normal(0, 10, image.shape), 0, 255).astype(np.uint8)
    coarse = torch.from_numpy(rng.normal(0, 3, (1, c, h // 16, w // 16))).float()
    logits = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear")[0]
    return image, torch.softmax(logits + torch.from_numpy(rng.normal(0, 0.5, (c, h, w))).float(), 0)


def _pydensecrf_labels(image: np.ndarray, probs: torch.Tensor) -> np.ndarray:
    """pydensecrf2's labels (Krähenbühl's code) with DeepLab V2's parameters."""
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax

    c, h, w = probs.shape
    crf = dcrf.DenseCRF2D(w, h, c)
    crf.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(probs.numpy())))
    crf.addPairwiseGaussian(sxy=1, compat=3)
    crf.addPairwiseBilateral(sxy=67, srgb=3, rgbim=np.ascontiguousarray(image), compat=4)
    return np.array(crf.inference(10)).reshape(c, h, w).argmax(0).astype(np.uint8)


def test_agrees_with_pydensecrf_on_a_voc_sized_case():
    """Against pydensecrf2's labels stored in tests/golden (written by ``python tests/test_crf.py``), and against
    pydensecrf2 itself where it is installed (scripts/test.sh builds it when a C++ compiler is present)."""
    image, probs = _voc_sized_case()
    ours = dense_crf(torch.from_numpy(image), probs).numpy().argmax(0)
    stored = np.array(Image.open(GOLDEN_LABELS))
    assert stored.shape == ours.shape and (ours == stored).mean() >= 0.995
    assert (stored != probs.argmax(0).numpy()).mean() > 0.05  # the CRF changed many pixels
    if importlib.util.find_spec("pydensecrf") is not None:
        assert np.array_equal(_pydensecrf_labels(image, probs), stored)  # the stored labels are pydensecrf2's


if __name__ == "__main__":
    Image.fromarray(_pydensecrf_labels(*_voc_sized_case())).save(GOLDEN_LABELS, optimize=True)
