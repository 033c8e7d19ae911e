"""What the default boundary metrics (trimap at 8 widths, Boundary IoU, boundary F1; ``model.boundary_metrics``)
add to an evaluation: ``trainer.validate`` of generated VOC-size images (375-500 px, JPEG, the toy generator) on
VOC's fixed 513 x 513 canvas, with the metrics on and off, interleaved (off, on, on, off, ...) so that the load
of a shared machine falls on both alike. The ratio of each adjacent pair is reported, with the median.

    python benchmarks/boundary_cost.py                                   # CPU, V3+ ResNet-18 (the quickstart's)
    python benchmarks/boundary_cost.py --arch deeplabv3_resnet101 --images 4 --rounds 2
    python benchmarks/boundary_cost.py --device cuda --arch deeplabv3plus_resnet101 --images 32

Random weights (timings only). The cheaper the network, the larger the metrics' share: the quickstart's
network is the hardest case on a CPU. On a shared machine the pairs' ratios carry its load's noise; the
validations with the metrics on therefore also time every ``BoundaryMetrics.update`` inside the loop (the
device synchronised around it), whose share of that same loop is immune to the load's drift.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import lightning as L
import torch
from rich.console import Console
from rich.table import Table

from deeplab_lightning.data import ToyVOCDataModule
from deeplab_lightning.evaluation import BoundarySettings
from deeplab_lightning.module import SegmentationModule


class LoopTimer(L.Callback):
    """Seconds from the first to the last batch of the validation loop (the device synchronised)."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def _sync(self, module: L.LightningModule) -> None:
        if module.device.type == "cuda":
            torch.cuda.synchronize()

    def on_validation_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._sync(module)
        self._start = time.perf_counter()

    def on_validation_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._sync(module)
        self.seconds = time.perf_counter() - self._start


def validate_seconds(module: SegmentationModule, data: ToyVOCDataModule, device: str,
                     on: bool) -> tuple[float, float]:
    """One timed validation with the boundary metrics on or off (the same weights either way): seconds of the
    loop and of the ``BoundaryMetrics.update`` calls inside it."""
    module.evaluator.boundary = BoundarySettings() if on else None
    timer = LoopTimer()
    trainer = L.Trainer(accelerator=device, devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[timer])
    inside = [0.0]

    def timed(update: Callable[..., None]) -> Callable[..., None]:
        def run(pred: torch.Tensor, target: torch.Tensor) -> None:
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            update(pred, target)
            if device == "cuda":
                torch.cuda.synchronize()
            inside[0] += time.perf_counter() - start
        return run

    # torchmetrics wraps each instance's update when it is built: time the instances the module holds
    metrics = [*module.evaluator.final_boundary.values(), *module.evaluator.unrefined_boundary.values()]
    updates = [m.update for m in metrics]
    for metric, update in zip(metrics, updates):
        metric.update = timed(update)
    try:
        trainer.validate(module, datamodule=data, verbose=False)
    finally:
        for metric, update in zip(metrics, updates):
            metric.update = update
    return timer.seconds, inside[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="deeplabv3plus_resnet18")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3, help="pairs of (off, on) validations, order alternating")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=None, help="torch threads on the CPU (default: torch's)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    L.seed_everything(0, verbose=False)
    root = Path(tempfile.mkdtemp())
    data = ToyVOCDataModule(str(root / "toy"), num_train=2, num_val=args.images, size_range=(375, 500),
                            eval_size=513, val_batch_size=1, num_workers=0)
    kwargs = {"model_kwargs": {"aspp_channels": 128, "decoder_channels": 128}} if "resnet18" in args.arch else {}
    module = SegmentationModule(args.arch, num_classes=data.num_classes, class_names=data.class_names, **kwargs)
    validate_seconds(module, data, args.device, on=True)  # warm-up: data, allocator, kernels
    seconds: dict[bool, list[float]] = {False: [], True: []}
    inside: list[float] = []
    for r in range(args.rounds):
        for on in ((False, True) if r % 2 == 0 else (True, False)):
            loop, metrics = validate_seconds(module, data, args.device, on)
            seconds[on].append(loop)
            if on:
                inside.append(metrics)
    ratios = [with_ / without for with_, without in zip(seconds[True], seconds[False])]
    # the metrics' time over the same loop without it: what they add to an evaluation, measured in one run
    added = [metrics / (loop - metrics) for metrics, loop in zip(inside, seconds[True])]
    table = Table(title=f"Boundary metrics' cost: {args.arch}, {args.images} VOC-size images on 513 x 513, "
                        f"{args.device} ({torch.get_num_threads()} threads)")
    for column in ("validate, off (s/image)", "validate, on (s/image)", "on / off, each pair", "median",
                   "metrics in the on runs (ms/image)", "added share, each run", "median"):
        table.add_column(column, justify="right")
    table.add_row(", ".join(f"{s / args.images:.3f}" for s in seconds[False]),
                  ", ".join(f"{s / args.images:.3f}" for s in seconds[True]),
                  ", ".join(f"{r:.3f}" for r in ratios), f"{statistics.median(ratios):.3f}",
                  ", ".join(f"{1000 * m / args.images:.0f}" for m in inside),
                  ", ".join(f"{a:.3f}" for a in added), f"{statistics.median(added):.3f}")
    Console(width=200).print(table)
    if args.json:
        args.json.write_text(json.dumps({
            "arch": args.arch, "images": args.images, "device": args.device, "threads": torch.get_num_threads(),
            "torch": torch.__version__, "seconds_off": seconds[False], "seconds_on": seconds[True],
            "metrics_seconds_in_on_runs": inside, "ratios": ratios, "median_ratio": statistics.median(ratios),
            "added_share": added, "median_added_share": statistics.median(added)}, indent=1))


if __name__ == "__main__":
    main()
