"""Per-image confusion matrices of an evaluation: reading the saved file, mIoU of a split or of any subset or
resample of its images, a bootstrap interval over images, and which images a run improves or breaks.

The file (``<label>.npz``, written by :class:`~deeplab_lightning.callbacks.PerImageConfusion`) holds, for the N
images of one evaluation sorted by id: ``ids`` [N] str, ``confmat`` [N, C, C] int64 (rows: ground truth, columns:
prediction; ignored pixels left out), ``class_names`` [C] str and the scalars ``step``, ``stage`` (``val`` or
``test``), ``split``, ``inference`` (e.g. ``"single scale + dense CRF"``) and ``unrefined`` (True: the
predictions before the dense CRF). Summed over the images, the matrices are the evaluator's split matrix.

mIoU is the definition of :class:`~deeplab_lightning.evaluation.SegmentationMetrics` (per class TP / (TP + FP +
FN), a class with neither ground truth nor prediction left out of the mean), here batched over any leading axes
in float64 (``SegmentationMetrics`` rounds its mIoU to float32; the tests check the two agree).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

KEYS = ("ids", "confmat", "class_names", "step", "stage", "split", "inference", "unrefined")
_EXACT = 2 ** 53  # float64 sums of integers are exact below this
_BLOCK = 2 ** 21  # image draws per block of resamples (bounds memory; the draws do not depend on it)


@dataclass(frozen=True, eq=False)
class PerImageMatrices:
    """One evaluation's per-image confusion matrices (see the module docstring for the fields)."""

    ids: np.ndarray
    confmat: np.ndarray
    class_names: list[str]
    step: int
    stage: str
    split: str = ""
    inference: str = ""
    unrefined: bool = False
    path: Path | None = None

    @property
    def miou(self) -> float:
        """The split's mIoU (all images)."""
        return split_miou(self.confmat)

    def per_image_miou(self) -> np.ndarray:
        """mIoU of each image [N] (NaN for an image without a labelled pixel)."""
        return per_image_miou(self.confmat)

    def ranking(self) -> list[tuple[str, float]]:
        """(id, mIoU) of every image, worst first (ties by id; images without a labelled pixel last)."""
        return ranked(self.ids, self.per_image_miou())


def ranked(ids: Sequence[str], values: np.ndarray) -> list[tuple[str, float]]:
    """``(id, value)`` pairs in ascending value, ties broken by id, NaN last."""
    pairs = [(str(i), float(v)) for i, v in zip(ids, values)]
    return sorted(pairs, key=lambda p: (p[1] != p[1], p[1] if p[1] == p[1] else 0.0, p[0]))


def read_per_image(path: str | Path) -> PerImageMatrices:
    """Read a per-image confusion-matrix file; a missing, unreadable or malformed file is one error naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Per-image confusion matrices {path} do not exist (an evaluation with the "
                                f"PerImageConfusion callback writes <run>/evaluations/<stage>_step<step>.npz)")
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, EOFError, ValueError) as err:
        raise ValueError(f"{path} cannot be read as a per-image confusion-matrix file (.npz): {err}") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise ValueError(f"{path} is a single array, not a per-image confusion-matrix file (.npz with {KEYS})")
    with data:
        missing = [k for k in KEYS if k not in data.files]
        if missing:
            raise ValueError(f"{path} is not a per-image confusion-matrix file: it lacks {', '.join(missing)}")
        fields = {k: data[k] for k in KEYS}
    ids, confmat, names = fields["ids"], fields["confmat"], [str(n) for n in fields["class_names"]]
    problem = _matrix_problem(confmat, len(names))
    if problem is None and (ids.ndim != 1 or len(ids) != len(confmat)):
        problem = f"ids {list(ids.shape)} do not match confmat {list(confmat.shape)}"
    if problem is None and len(set(ids.tolist())) != len(ids):
        problem = f"an id appears more than once ({_repeated(ids.tolist())})"
    if problem is not None:
        raise ValueError(f"{path} is malformed: {problem}")
    return PerImageMatrices(ids=ids.astype(str), confmat=confmat.astype(np.int64), class_names=names,
                            step=int(fields["step"]), stage=str(fields["stage"]), split=str(fields["split"]),
                            inference=str(fields["inference"]), unrefined=bool(fields["unrefined"]), path=path)


def _matrix_problem(confmat: np.ndarray, num_classes: int | None = None) -> str | None:
    if confmat.ndim != 3 or confmat.shape[1] != confmat.shape[2]:
        return f"confmat must be [N, C, C], got {list(confmat.shape)}"
    if num_classes is not None and confmat.shape[1] != num_classes:
        return f"confmat has {confmat.shape[1]} classes but class_names {num_classes}"
    if not np.issubdtype(confmat.dtype, np.integer):
        return f"confmat must hold pixel counts (integers), got {confmat.dtype}"
    if confmat.size and confmat.min() < 0:
        return "confmat holds negative counts"
    return None


def _repeated(ids: Sequence[str]) -> str:
    seen, repeated = set(), []
    for i in ids:
        if i in seen and i not in repeated:
            repeated.append(i)
        seen.add(i)
    return ", ".join(repeated[:5]) + (" ..." if len(repeated) > 5 else "")


def _matrices(confmat: np.ndarray | PerImageMatrices) -> np.ndarray:
    """The [N, C, C] integer array of ``confmat``; raises naming what is wrong."""
    array = confmat.confmat if isinstance(confmat, PerImageMatrices) else np.asarray(confmat)
    problem = _matrix_problem(array)
    if problem is not None:
        raise ValueError(problem)
    return array


def miou_of(confmat: np.ndarray) -> np.ndarray:
    """mIoU of confusion matrices [..., C, C] -> [...] (float64; NaN where no class has a pixel): per class
    TP / (TP + FP + FN), averaged over the classes present in the ground truth or the prediction."""
    cm = np.asarray(confmat, dtype=np.float64)
    tp = np.diagonal(cm, axis1=-2, axis2=-1)
    union = cm.sum(-1) + cm.sum(-2) - tp
    present = union > 0
    iou = np.divide(tp, union, out=np.zeros_like(tp), where=present)
    count = present.sum(-1)
    return np.where(count > 0, iou.sum(-1) / np.maximum(count, 1), np.nan)


def split_miou(confmat: np.ndarray | PerImageMatrices, indices: Sequence[int] | np.ndarray | None = None) -> float:
    """mIoU of the sum of the chosen images' matrices ([N, C, C]; ``indices``: image indices, a repeated index
    counts its image again; None: all images), as the evaluator computes the split's mIoU."""
    cm = _matrices(confmat)
    chosen = cm if indices is None else cm[np.asarray(indices, dtype=np.int64)]
    return float(miou_of(chosen.sum(0)))


def per_image_miou(confmat: np.ndarray | PerImageMatrices) -> np.ndarray:
    """mIoU of each image's own matrix: [N, C, C] -> [N] (NaN for an image without a labelled pixel)."""
    return miou_of(_matrices(confmat))


def bootstrap_mious(confmat: np.ndarray | PerImageMatrices, resamples: int = 2000, seed: int = 0) -> np.ndarray:
    """The split mIoU of ``resamples`` bootstrap resamples of the images [R]: each draws N images with replacement
    (whole images, never pixels) and sums their matrices. The draws depend only on N and ``seed`` (the first R of
    a seed are the same for any ``resamples`` >= R): two evaluations of the same N images (aligned by id) see the
    same resamples, so their difference is a paired bootstrap (:func:`bootstrap_delta_interval`)."""
    cm = _matrices(confmat)
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    n, c = cm.shape[0], cm.shape[1]
    if n == 0:
        raise ValueError("no images to resample")
    flat = cm.reshape(n, c * c)
    exact = n * int(flat.max(initial=0)) < _EXACT  # every partial sum of the product is an integer below 2**53
    weights = flat.astype(np.float64) if exact else flat.astype(np.int64)
    rng = np.random.default_rng(seed)
    out, block = np.empty(resamples), max(1, _BLOCK // n)
    for start in range(0, resamples, block):
        r = min(block, resamples - start)
        draws = rng.integers(0, n, size=(r, n)) + n * np.arange(r)[:, None]
        counts = np.bincount(draws.ravel(), minlength=r * n).reshape(r, n)  # times each image is drawn
        sums = counts.astype(weights.dtype) @ weights  # [r, C*C]: each resample's summed matrix
        out[start:start + r] = miou_of(sums.reshape(r, c, c))
    return out


def _interval(values: np.ndarray, level: float) -> tuple[float, float]:
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    low, high = np.percentile(values, [50 * (1 - level), 50 * (1 + level)])
    return float(low), float(high)


def bootstrap_interval(confmat: np.ndarray | PerImageMatrices, resamples: int = 2000, level: float = 0.95,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval (low, high) of the split mIoU at ``level``, resampling images
    (:func:`bootstrap_mious`). It measures how much the score depends on which images the split happens to hold,
    not the variation between training runs (seeds)."""
    return _interval(bootstrap_mious(confmat, resamples, seed), level)


def bootstrap_delta_interval(base: np.ndarray | PerImageMatrices, other: np.ndarray | PerImageMatrices,
                             resamples: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Paired percentile bootstrap interval of mIoU(other) - mIoU(base) over the same resampled images. Both
    [N, C, C] must hold the same images in the same order (:class:`PerImageMatrices` are aligned by id)."""
    if isinstance(base, PerImageMatrices) and isinstance(other, PerImageMatrices):
        _check_same_images(base, other)
    a, b = _matrices(base), _matrices(other)
    if a.shape != b.shape:
        raise ValueError(f"paired matrices must have one shape, got {list(a.shape)} and {list(b.shape)}")
    return _interval(bootstrap_mious(b, resamples, seed) - bootstrap_mious(a, resamples, seed), level)


@dataclass(frozen=True, eq=False)
class ImageDeltas:
    """Per-image mIoU of a baseline and of another evaluation of the same images, aligned by id (sorted)."""

    ids: np.ndarray
    base: np.ndarray
    other: np.ndarray

    @property
    def delta(self) -> np.ndarray:
        """other - base per image [N] (NaN where an image has no labelled pixel)."""
        return self.other - self.base

    def improved(self, margin: float = 0.0) -> list[tuple[str, float]]:
        """(id, delta) of the images whose mIoU rose by more than ``margin``, largest gain first."""
        return [(i, -d) for i, d in ranked(self.ids, -self.delta) if d == d and -d > margin]

    def broken(self, margin: float = 0.0) -> list[tuple[str, float]]:
        """(id, delta) of the images whose mIoU fell by more than ``margin``, largest loss first."""
        return [(i, d) for i, d in ranked(self.ids, self.delta) if d == d and d < -margin]


def _named(source: PerImageMatrices | str | Path) -> PerImageMatrices:
    return source if isinstance(source, PerImageMatrices) else read_per_image(source)


def _check_same_images(base: PerImageMatrices, other: PerImageMatrices) -> None:
    a, b = set(base.ids.tolist()), set(other.ids.tolist())
    if a != b:
        def listed(ids: set[str]) -> str:
            return ", ".join(sorted(ids)[:5]) + (" ..." if len(ids) > 5 else "")

        parts = [f"{len(ids)} only in {where} ({listed(ids)})"
                 for ids, where in ((a - b, base.path or "base"), (b - a, other.path or "other")) if ids]
        raise ValueError(f"{other.path or 'other'} and {base.path or 'base'} evaluate different images: "
                         f"{'; '.join(parts)}")
    if base.class_names != other.class_names:
        raise ValueError(f"{other.path or 'other'} has classes {other.class_names}, {base.path or 'base'} "
                         f"{base.class_names}")
    if base.ids.tolist() != other.ids.tolist():
        raise ValueError(f"{other.path or 'other'} and {base.path or 'base'} hold the same images in another "
                         f"order: use image_deltas, which aligns them by id")


def image_deltas(base: PerImageMatrices | str | Path, other: PerImageMatrices | str | Path) -> ImageDeltas:
    """Per-image mIoU of ``other`` minus ``base`` (files or read matrices), aligned by id: which images a run
    improves or breaks relative to a baseline. Refuses two evaluations of different images or classes, naming
    the ids found in only one of them."""
    base, other = _named(base), _named(other)
    try:
        _check_same_images(base, other)
    except ValueError as err:
        if "another order" not in str(err):
            raise
    ids = np.sort(base.ids)
    order_a, order_b = np.argsort(base.ids), np.argsort(other.ids)
    return ImageDeltas(ids=ids, base=per_image_miou(base.confmat[order_a]),
                       other=per_image_miou(other.confmat[order_b]))
