"""Third-party start-up noise, filtered at its source so the first lines of a run are the run's own.

What is dropped, and why it is harmless here:

- Lightning's hardware lines (``GPU available ...``, ``TPU available ...``), its advertising tip and ``Seed set
  to N`` (the seed is in the saved config and ``run_info.json``);
- Lightning's ``LeafSpec`` deprecation warning (its own use of a torch API; nothing for a user to change) and
  tqdm's "IProgress not found" in notebooks without ipywidgets (progress is shown by rich, not tqdm);
- outside a SLURM job, Lightning's hint to launch with ``srun`` (given on any machine where SLURM is installed,
  e.g. a login node or a workstation running the ablation queue; inside a job it is kept);
- wandb's banner and closing lines (``WANDB_SILENT``, unless set otherwise: the run folder, the sync command
  or the run's URL are printed at the end of a fit; errors still show) and its ``anonymous`` deprecation
  warning (Lightning's ``WandbLogger`` always passes the setting; :func:`drop_wandb_anonymous` removes it);
- Lightning's warning that an epoch has fewer batches than ``log_every_n_steps``: training here is counted in
  steps, and metrics are logged every ``log_every_n_steps`` global steps across epochs;
- Lightning's model summary table, which lists the metric modules and ``Total FLOPs: 0``: the command prints
  :class:`~deeplab_lightning.callbacks.NetworkSummary` instead.
"""
from __future__ import annotations

import logging
import os
import warnings
from typing import Any

from ..compat import wandb_init_kwargs

NOISE = ("GPU available:", "TPU available:", "HPU available:", "💡 Tip:", "Seed set to ")


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(message.startswith(prefix) for prefix in NOISE)


def silence_third_party_noise() -> None:
    """Install the filters (idempotent)."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.seed",
                 "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropNoise) for f in logger.filters):
            logger.addFilter(_DropNoise())
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message="IProgress not found")
    warnings.filterwarnings("ignore", message=r"The number of training batches \(\d+\) is smaller than the logging")
    if not getattr(warnings.formatwarning, "_deeplab", False):
        warnings.formatwarning = _own_warnings_plain(warnings.formatwarning)
    if "SLURM_JOB_ID" not in os.environ:
        warnings.filterwarnings("ignore", message="The `srun` command is available on your system but is not used")
    os.environ.setdefault("WANDB_SILENT", "true")


def _own_warnings_plain(default: Any) -> Any:
    """``warnings.formatwarning`` that prints this package's own warnings as ``warning: <message>`` (they name
    what to do; the source line of the warn call means nothing to a user), others as ``default`` does."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # deeplab_lightning/

    def formatwarning(message, category, filename, lineno, line=None):  # noqa: ANN001, ANN202 - warnings' API
        if os.path.abspath(filename).startswith(package + os.sep):
            return f"warning: {message}\n"
        return default(message, category, filename, lineno, line)

    formatwarning._deeplab = True
    return formatwarning


def drop_wandb_anonymous(logger: Any) -> None:
    """Remove the ``anonymous=None`` Lightning's ``WandbLogger`` passes to ``wandb.init`` (wandb warns that
    the setting has no effect); other loggers are left alone."""
    init = wandb_init_kwargs(logger)
    if init is not None and init.get("anonymous") is None:
        init.pop("anonymous", None)
