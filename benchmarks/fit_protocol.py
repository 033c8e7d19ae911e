"""Training throughput as a user gets it: ``deeplab-lightning fit`` with the V3+ ResNet-101 paper config (crop 513,
batch 16, bf16, channels-last) on generated VOC-size JPEGs (375-500 px; decode, random scale 0.5-2.0, crop,
flip in the data workers), for a fixed number of steps, images/s measured by the ``Throughput`` callback
after its warm-up steps. Compare with ``benchmarks/bench.py``'s plain loop on in-memory batches (same call).

    python benchmarks/fit_protocol.py --steps 60 [--workers 14] [--json out.json]     # on a GPU
    python benchmarks/fit_protocol.py --steps 60 --profile                              # + where the time goes
    python benchmarks/fit_protocol.py --steps 60 -- --model.compile true                # + any fit argument
    python benchmarks/fit_protocol.py --cpu                                             # a smoke run

``--profile`` adds Lightning's simple profiler: its table shows the time spent waiting for the data workers
(``train_dataloader_next``) next to the training step, i.e. whether the data path or the loop limits the fit.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from paper_config import without_logger


PAPER_CONFIG = "v3plus_r101_os16_mg124_voc_513_30k_bs16.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--images", type=int, default=200, help="generated training images")
    parser.add_argument("--workers", type=int, default=min(14, os.cpu_count() or 1))
    parser.add_argument("--cpu", action="store_true", help="smoke run on the CPU with a small model and crop")
    parser.add_argument("--json", help="also write the result here")
    parser.add_argument("--profile", action="store_true", help="Lightning's simple profiler (data wait vs step)")
    parser.add_argument("fit_args", nargs="*", help="after --: further deeplab-lightning fit arguments")
    args = parser.parse_args()
    os.environ.setdefault("WANDB_MODE", "disabled")
    from deeplab_lightning.callbacks import Throughput
    from deeplab_lightning.commands.cli import main as cli_main
    from deeplab_lightning.data import generate_toy_voc

    size_range = (60, 90) if args.cpu else (375, 500)
    with tempfile.TemporaryDirectory() as tmp:
        generate_toy_voc(Path(tmp) / "voc", num_train=args.images, num_val=2, size_range=size_range, seed=0)
        cli_args = [
            "fit", "--config", str(without_logger(PAPER_CONFIG, Path(tmp))),
            "--model.pretrained_backbone", "false",
            "--trainer.logger", "lightning.pytorch.loggers.CSVLogger", "--trainer.logger.save_dir", tmp,
            "--trainer.max_steps", str(args.steps), "--trainer.limit_val_batches", "0",
            "--trainer.default_root_dir", tmp, "--trainer.callbacks+=deeplab_lightning.callbacks.Throughput",
            "--trainer.callbacks.warmup_steps", str(min(10, args.steps // 3)),
            "--data", "deeplab_lightning.data.ToyVOCDataModule", "--data.init_args.data_dir", str(Path(tmp) / "voc"),
            "--data.init_args.num_train", str(args.images), "--data.init_args.num_val", "2",
            "--data.init_args.size_range", json.dumps(list(size_range)), "--data.init_args.train_split", "train",
            "--data.init_args.num_workers", str(args.workers)]
        if args.cpu:
            cli_args += ["--trainer.accelerator", "cpu", "--trainer.precision", "32-true", "--model.arch",
                         "deeplabv3plus_resnet18", "--data.init_args.crop_size", "64", "--data.init_args.batch_size",
                         "2"]
        if args.profile:
            cli_args += ["--trainer.profiler", "simple"]
        cli = cli_main(cli_args + args.fit_args)
    throughput = next(c for c in cli.trainer.callbacks if isinstance(c, Throughput))
    result = {"argv": sys.argv, "steps": cli.trainer.global_step, "workers": args.workers,
              "img_per_s": throughput.img_per_s}
    if args.profile:
        recorded = cli.trainer.profiler.recorded_durations
        result["profile_s"] = {name: sum(times) for name, times in recorded.items()}
        wait, epoch = result["profile_s"]["[_TrainingEpochLoop].train_dataloader_next"], result["profile_s"][
            "run_training_epoch"]
        print(f"waiting for the data workers: {wait:.2f} s of {epoch:.2f} s of training ({wait / epoch:.0%})")
    print(f"deeplab-lightning fit, {PAPER_CONFIG}: {throughput.img_per_s:.1f} img/s over steps "
          f"{throughput.warmup_steps}-{cli.trainer.global_step} ({args.workers} workers)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
