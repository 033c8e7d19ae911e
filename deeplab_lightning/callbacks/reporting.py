"""What a run prints: the network's size at the start of a fit (NetworkSummary), per-class IoU tables with the
Boundary IoU and boundary F1 columns, and the trimap table (IoUTable)."""
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


def _percent(value: float) -> str:
    return "n/a" if value != value else f"{100 * value:.2f}"


def iou_table(class_names: Sequence[str], results: EvaluationResults, title: str) -> Table:
    """A rich table of per-class IoU with the mIoU and pixel accuracy in the footer, and, when measured, each
    class's Boundary IoU and boundary F1 with their means."""
    table = Table(title=title, show_footer=True, min_width=len(title))  # the title on one line
    table.add_column("class", footer="mean IoU / pixel acc.")
    table.add_column("IoU (%)", justify="right",
                     footer=f"{100 * results.mIoU:.2f} / {100 * results.pixel_acc:.2f}")
    boundary = results.boundary
    columns = [results.iou.tolist()]
    if boundary is not None:
        table.add_column("Boundary IoU (%)", justify="right", footer=_percent(boundary.boundary_mIoU))
        table.add_column("boundary F1 (%)", justify="right", footer=_percent(boundary.boundary_mF1))
        columns += [boundary.boundary_iou.tolist(), boundary.boundary_f1.tolist()]
    for name, *values in zip(class_names, *columns):
        table.add_row(name, *map(_percent, values))
    if boundary is not None:
        table.caption = f"{boundary.settings.describe()}; n/a: the class is neither in the targets nor predicted"
    return table


def trimap_table(results: EvaluationResults, title: str, before: EvaluationResults | None = None) -> Table | None:
    """The trimap's mIoU and pixel accuracy at each band width (V1 Fig. 5, V3+ Fig. 5a), with the seeds of its
    bands in the caption; with ``before`` (the scores before the dense CRF) also those and the CRF's gain in mIoU.
    None when the boundary metrics are off."""
    after = results.boundary
    if after is None:
        return None
    table = Table(title=title, min_width=len(title), caption=f"Trimap: {after.describe_trimap()}")
    table.add_column("band width (px)", justify="right")
    columns = [after.trimap_mIoU.tolist(), after.trimap_pixel_acc.tolist()]
    if before is not None and before.boundary is not None:
        table.add_column("mIoU before CRF (%)", justify="right")
        table.add_column("mIoU after CRF (%)", justify="right")
        table.add_column("gain (points)", justify="right")
        table.add_column("pixel acc. (%)", justify="right")
        gains = (after.trimap_mIoU - before.boundary.trimap_mIoU).tolist()
        columns = [before.boundary.trimap_mIoU.tolist(), columns[0], gains, columns[1]]
        formats = [_percent, _percent, lambda v: "n/a" if v != v else f"{100 * v:+.2f}", _percent]
    else:
        table.add_column("mIoU (%)", justify="right")
        table.add_column("pixel acc. (%)", justify="right")
        formats = [_percent, _percent]
    for width, *values in zip(after.trimap_widths, *columns):
        table.add_row(str(width), *(f(v) for f, v in zip(formats, values)))
    return table


class IoUTable(L.Callback):
    """Prints the per-class IoU table of the last validation after ``fit`` (titled with the step of the
    weights it measured) and of the test after ``test``."""

    @rank_zero_only
    def _print(self, pl_module: L.LightningModule, stage: str, title: str, unrefined: bool = False) -> None:
        results = pl_module.evaluation_results(stage, unrefined=unrefined)
        if results is not None:
            Console().print(iou_table(pl_module.class_names, results, title.format(step=results.step)))

    @rank_zero_only
    def _print_trimap(self, pl_module: L.LightningModule, stage: str, title: str) -> None:
        results = pl_module.evaluation_results(stage)
        table = results and trimap_table(results, title.format(step=results.step),
                                         before=pl_module.evaluation_results(stage, unrefined=True))
        if table is not None:
            Console().print(table)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._print(pl_module, "val", "Validation of the weights after step {step}")
        self._print_trimap(pl_module, "val", "Trimap, validation of the weights after step {step}")

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "validate":
            self._print(pl_module, "val", "Validation of the checkpoint of step {step}")
            self._print_trimap(pl_module, "val", "Trimap, validation of the checkpoint of step {step}")

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        settings = pl_module.pipeline.settings
        split = getattr(trainer.datamodule, "test_split", None)
        title = "Test (step {step}" + (f", {split!r} split" if split else "") + "): "
        self._print(pl_module, "test", title + settings.replace(crf=None).describe() + ", before the dense CRF",
                    unrefined=True)
        self._print(pl_module, "test", title + settings.describe())
        self._print_trimap(pl_module, "test", "Trimap, " + title[0].lower() + title[1:] + settings.describe())
