"""What a run prints: the network's size at the start of a fit (NetworkSummary), per-class IoU tables (IoUTable)."""
from __future__ import annotations

from collections.abc import Sequence

import lightning as L
from lightning.pytorch.utilities import rank_zero_only
from rich.console import Console
from rich.table import Table

from ..evaluation import EvaluationResults


class NetworkSummary(L.Callback):
    """One line at the start of a fit: the network, its output stride and its parameter count (instead of
    Lightning's table, which lists the metric modules and ``Total FLOPs: 0``). The command adds it."""

    @rank_zero_only
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        net = getattr(pl_module, "net", pl_module)
        total = sum(p.numel() for p in net.parameters())
        trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
        arch = pl_module.hparams.get("arch", type(net).__name__)
        stride = getattr(net, "output_stride", None)
        Console().print(f"{arch} ({type(net).__name__}{f', output stride {stride}' if stride else ''}): "
                        f"{total / 1e6:.1f} M parameters ({trainable / 1e6:.1f} M trainable)", highlight=False,
                        soft_wrap=True)


def iou_table(class_names: Sequence[str], results: EvaluationResults, title: str) -> Table:
    """A rich table of per-class IoU with the mIoU and pixel accuracy in the footer."""
    table = Table(title=title, show_footer=True, min_width=len(title))  # the title on one line
    table.add_column("class", footer="mean IoU / pixel acc.")
    table.add_column("IoU (%)", justify="right",
                     footer=f"{100 * results.mIoU:.2f} / {100 * results.pixel_acc:.2f}")
    for name, iou in zip(class_names, results.iou.tolist()):
        table.add_row(name, "n/a" if iou != iou else f"{100 * iou:.2f}")
    return table


class IoUTable(L.Callback):
    """Prints the per-class IoU table of the last validation after ``fit`` (titled with the step of the
    weights it measured) and of the test after ``test``."""

    @rank_zero_only
    def _print(self, pl_module: L.LightningModule, stage: str, title: str, unrefined: bool = False) -> None:
        results = pl_module.evaluation_results(stage, unrefined=unrefined)
        if results is not None:
            Console().print(iou_table(pl_module.class_names, results, title.format(step=results.step)))

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._print(pl_module, "val", "Validation of the weights after step {step}")

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "validate":
            self._print(pl_module, "val", "Validation of the checkpoint of step {step}")

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        settings = pl_module.pipeline.settings
        split = getattr(trainer.datamodule, "test_split", None)
        title = "Test (step {step}" + (f", {split!r} split" if split else "") + "): "
        self._print(pl_module, "test", title + settings.replace(crf=None).describe() + ", before the dense CRF",
                    unrefined=True)
        self._print(pl_module, "test", title + settings.describe())
