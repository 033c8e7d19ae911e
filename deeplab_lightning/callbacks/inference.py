"""Callbacks that change how evaluation infers for some stages: multi-scale + flip, dense CRF refinement."""
from __future__ import annotations

from collections.abc import Sequence

import lightning as L

from ..evaluation import CRFSettings, Inference


def _check_stages(owner: str, stages: Sequence[str]) -> None:
    unknown = set(stages) - {"fit", "validate", "test", "predict"}
    if unknown:
        raise ValueError(f"{owner} stages {sorted(unknown)} unknown; use fit, validate, test, predict")


class _ConfigureInference(L.Callback):
    """Applies ``changes`` to the module's :class:`~deeplab_lightning.evaluation.Inference` for ``stages``
    and restores the settings it changed after each."""

    def __init__(self, stages: Sequence[str], **changes) -> None:
        _check_stages(type(self).__name__, stages)
        Inference().replace(**changes)  # a bad setting fails here, named, not at the first evaluation
        self.stages, self.changes = tuple(stages), changes
        self._previous: Inference | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage in self.stages:
            self._previous = pl_module.configure_inference(**self.changes)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._previous is not None:  # undo only this callback's changes: others may have changed the rest
            pl_module.configure_inference(**{key: getattr(self._previous, key) for key in self.changes})
            self._previous = None


class MultiScaleInference(_ConfigureInference):
    """Switches evaluation to multi-scale (+ flip, + sliding window) inference for the chosen stages.

    Args:
        scales: input scales (V3 section 4.3: 0.5 to 1.75 in steps of 0.25).
        flip: also average the left-right flipped inputs.
        window: sliding-window size for large images (None: whole images).
        overlap: fraction by which neighbouring windows overlap.
        stages: trainer stages it applies to: any of ``fit`` (validation during training), ``validate``,
            ``test`` and ``predict``.
    """

    def __init__(self, scales: Sequence[float] = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75), flip: bool = True,
                 window: int | None = None, overlap: float = 1 / 3,
                 stages: Sequence[str] = ("validate", "test", "predict")) -> None:
        super().__init__(stages, scales=scales, flip=flip, window=window, overlap=overlap)


class DenseCRFRefinement(_ConfigureInference):
    """Refines evaluation and prediction outputs with :func:`~deeplab_lightning.evaluation.dense_crf` and the
    un-normalised image (DeepLab V1 section 3.2, V2 section 3.4). Metrics before refinement are logged under
    ``<stage>/unrefined/``. Defaults: DeepLab V2's ResNet-101 VOC parameters.
    """

    def __init__(self, iterations: int = 10, bi_w: float = 4.0, bi_xy_std: float = 67.0, bi_rgb_std: float = 3.0,
                 pos_w: float = 3.0, pos_xy_std: float = 1.0, stages: Sequence[str] = ("test", "predict")) -> None:
        super().__init__(stages, crf=CRFSettings(iterations, bi_w, bi_xy_std, bi_rgb_std, pos_w, pos_xy_std))
