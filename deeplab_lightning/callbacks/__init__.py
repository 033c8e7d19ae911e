"""Lightning callbacks, one module per concern; configs name them as ``deeplab_lightning.callbacks.<Name>``.

- :mod:`.schedule`: the poly learning-rate schedule, and the warning when a fit has none;
- :mod:`.progress`: the progress bar (terminal bar, or plain lines in a log file);
- :mod:`.throughput`: training images per second;
- :mod:`.status`: a fit's step and ETA in a JSON file other processes read;
- :mod:`.run_safety`: a checkpoint on SIGTERM, ``last.ckpt`` after every validation, a validation of the final
  weights;
- :mod:`.reporting`: the network summary and the per-class IoU tables printed;
- :mod:`.inference`: multi-scale + flip and dense CRF evaluation for chosen stages;
- :mod:`.writer`: prediction PNGs and overlays;
- :mod:`.wandb_report`: IoU table, confusion matrix and predicted masks sent to wandb;
- :mod:`.per_image`: per-image confusion matrices of every evaluation and a gallery of its worst images.
"""
from .inference import DenseCRFRefinement, MultiScaleInference
from .per_image import PerImageConfusion
from .progress import ProgressBar
from .reporting import IoUTable, NetworkSummary, iou_table, trimap_table
from .run_safety import CurrentLastCheckpoint, FinalValidation, PreemptionCheckpoint
from .schedule import LRSchedule, PolyLR, ScheduleCheck, poly_lr_factor, step_lr_factor
from .status import RunStatus
from .throughput import Throughput
from .wandb_report import WandbReport
from .writer import SegmentationWriter, legend, overlay

__all__ = [
    "CurrentLastCheckpoint",
    "DenseCRFRefinement",
    "FinalValidation",
    "IoUTable",
    "MultiScaleInference",
    "NetworkSummary",
    "PerImageConfusion",
    "LRSchedule",
    "PolyLR",
    "PreemptionCheckpoint",
    "ProgressBar",
    "RunStatus",
    "ScheduleCheck",
    "SegmentationWriter",
    "Throughput",
    "WandbReport",
    "iou_table",
    "legend",
    "overlay",
    "poly_lr_factor",
    "step_lr_factor",
    "trimap_table",
]
