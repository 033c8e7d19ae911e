"""Training: the LightningModule and its parts (network, loss, optimizer and parameter groups, non-finite
checks)."""
from .loss import SegmentationLoss
from .module import SegmentationModule
from .optim import build_optimizer, parameter_groups

__all__ = ["SegmentationLoss", "SegmentationModule", "build_optimizer", "parameter_groups"]
