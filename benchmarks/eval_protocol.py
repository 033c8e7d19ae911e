"""The papers' test protocol through the real command, timed: ``deeplab-lightning test`` with the V3 ResNet-101
paper config at output stride 8, 6 scales + flip, then the dense CRF, on generated VOC-size images (375-500 px,
JPEG, the toy generator). Each setting runs twice in one process: the first run includes cuDNN's algorithm
search for every new input shape (``trainer.benchmark: true``, as the paper configs set), the second is warm.

    python benchmarks/eval_protocol.py --images 24 [--json out.json]      # on a GPU
    python benchmarks/eval_protocol.py --images 2 --cpu                    # a smoke run (small model)

Rows: fixed-shape evaluation (every image padded to 513 x 513, the default) with and without the CRF, and
per-image evaluation at each image's own size (``--data.init_args.eval_size null``), the behaviour before
fixed shapes, on fewer images since each new shape is re-tuned.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from rich.console import Console
from rich.table import Table

from paper_config import without_logger

PAPER_CONFIG = "v3_r101_os16_mg124_voc_513_30k_bs16.yaml"


def run_test(data_dir: Path, images: int, extra: list[str], cpu: bool) -> tuple[float, float]:
    """Seconds of the first (cold) and second (warm) ``test`` over ``images`` images."""
    from deeplab_lightning.commands.cli import main
    from deeplab_lightning.data import generate_toy_voc

    size_range = (60, 90) if cpu else (375, 500)
    generate_toy_voc(data_dir, num_train=2, num_val=images, size_range=size_range, seed=0)  # not timed
    args = ["test", "--config", str(without_logger(PAPER_CONFIG, data_dir.parent)), "--model.output_stride", "8",
            "--model.pretrained_backbone", "false",
            "--trainer.logger", "false", "--trainer.default_root_dir", str(data_dir.parent),
            "--data", "deeplab_lightning.data.ToyVOCDataModule", "--data.init_args.data_dir", str(data_dir),
            "--data.init_args.num_train", "2", "--data.init_args.num_val", str(images),
            "--data.init_args.size_range", json.dumps(list(size_range)), "--data.init_args.num_workers", "4",
            *extra]
    if cpu:
        args += ["--trainer.accelerator", "cpu", "--trainer.precision", "32-true", "--model.arch",
                 "deeplabv3_resnet18"]
    seconds = []
    for _ in range(2):
        with _test_loop_timer() as marks:
            main(args)
        seconds.append(marks["end"] - marks["start"])
    return seconds[0], seconds[1]


@contextlib.contextmanager
def _test_loop_timer() -> Iterator[dict[str, float]]:
    """Times the test loop alone (first batch to last, the GPU synchronised), not building the model."""
    import torch

    from deeplab_lightning.module import SegmentationModule

    marks: dict[str, float] = {}
    hooks = {"on_test_epoch_start": "start", "on_test_epoch_end": "end"}
    originals = {name: getattr(SegmentationModule, name) for name in hooks}

    def timed(name: str):
        def hook(module: SegmentationModule) -> None:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            marks[hooks[name]] = time.perf_counter()
            originals[name](module)
        return hook

    for name in hooks:
        setattr(SegmentationModule, name, timed(name))
    try:
        yield marks
    finally:
        for name, original in originals.items():
            setattr(SegmentationModule, name, original)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=24, help="validation images (fixed-shape rows)")
    parser.add_argument("--per-image-images", type=int, default=4, help="images of the per-image rows")
    parser.add_argument("--batch", type=int, default=4, help="evaluation batch of the fixed-shape rows")
    parser.add_argument("--cpu", action="store_true", help="smoke run on the CPU with a small model")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    os.environ.setdefault("WANDB_MODE", "disabled")
    crf = ["--trainer.callbacks+=deeplab_lightning.callbacks.DenseCRFRefinement"]
    fixed = ["--data.init_args.eval_size", "513"]  # VOC's canvas (the toy data module puts each image on its own)
    rows = [
        ("fixed 513x513, MS + flip + CRF", args.images, [*fixed, "--data.init_args.val_batch_size", str(args.batch),
                                                          *crf]),
        ("fixed 513x513, MS + flip", args.images, [*fixed, "--data.init_args.val_batch_size", str(args.batch)]),
        ("per image, MS + flip + CRF", args.per_image_images,
         ["--data.init_args.val_batch_size", "1", "--data.init_args.eval_size", "null", *crf]),
    ]
    table = Table(title="deeplab-lightning test, V3 ResNet-101 OS8, 6 scales + flip (VOC-size JPEGs)")
    for column in ("setting", "images", "cold s/image", "warm s/image"):
        table.add_column(column, justify="left" if column == "setting" else "right")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, images, extra in rows:
            data_dir = Path(tmp) / f"voc{images}"
            cold, warm = run_test(data_dir, images, extra, args.cpu)
            results.append({"setting": name, "images": images, "cold_s_per_image": cold / images,
                            "warm_s_per_image": warm / images})
            table.add_row(name, str(images), f"{cold / images:.3f}", f"{warm / images:.3f}")
    Console().print(table)
    if args.json:
        Path(args.json).write_text(json.dumps({"argv": sys.argv, "results": results}, indent=2))


if __name__ == "__main__":
    main()
