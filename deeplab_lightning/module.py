"""The import path configs, scripts and checkpoints name: ``deeplab_lightning.module.SegmentationModule``. The
module lives in :mod:`deeplab_lightning.training.module`."""
from .training.module import SegmentationModule

__all__ = ["SegmentationModule"]
