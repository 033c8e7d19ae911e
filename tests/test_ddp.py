"""Two-process DDP on CPU (gloo): global batch split across processes, metrics reduced exactly."""
import csv
import math
import os
import subprocess
import sys

import torch
import yaml

from deeplab_lightning.commands.cli import main
from deeplab_lightning.data import generate_toy_voc


SETTINGS = {"num_train": 16, "num_val": 5, "size_range": (64, 80), "seed": 2}  # 5 val images: shards of 3 + 2


def test_two_process_ddp_fit_matches_single_process_metric(tmp_path, write_config):
    toy = tmp_path / "toy"
    generate_toy_voc(toy, **SETTINGS)
    path = write_config(tmp_path, toy, SETTINGS, max_steps=5)
    config = yaml.safe_load(path.read_text())
    config["trainer"].update(devices=2, strategy="ddp")
    config["trainer"]["logger"] = {"class_path": "lightning.pytorch.loggers.CSVLogger",
                                   "init_args": {"save_dir": str(tmp_path / "csv")}}  # every logged metric
    config["data"]["init_args"]["batch_size"] = 4  # global: 2 per process
    path.write_text(yaml.safe_dump(config))

    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-m", "deeplab_lightning", "fit", "--config", str(path)], env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    ckpt = torch.load(tmp_path / "ckpt" / "last.ckpt", map_location="cpu", weights_only=False)
    # 16 images / global batch 4 = 4 steps per epoch: step 5 is in the second epoch. (Had each process
    # loaded the whole batch of 4, an epoch would be 2 steps and step 5 would be in the third.)
    assert ckpt["global_step"] == 5 and ckpt["epoch"] == 1
    ddp_miou = next(v for k, v in ckpt["callbacks"].items() if k.startswith("ModelCheckpoint"))["best_model_score"]

    config["trainer"].update(devices=1, strategy="auto")
    path.write_text(yaml.safe_dump(config))
    config["trainer"]["logger"] = False
    path.write_text(yaml.safe_dump(config))
    single = main(["validate", "--config", str(path), "--ckpt_path", str(tmp_path / "ckpt" / "last.ckpt")])
    assert single.trainer.callback_metrics["val/mIoU"].item() == ddp_miou.item()
    # Every split metric, boundary metrics included (trimap, Boundary IoU, boundary F1: integer counts summed
    # over the processes), equals the single-process one; the loss is a mean of per-process means.
    (log,) = (tmp_path / "csv").rglob("metrics.csv")
    ddp = [row for row in csv.DictReader(log.open()) if row.get("val/mIoU")][-1]
    expected = {k: v.item() for k, v in single.trainer.callback_metrics.items() if k.startswith("val/")}
    assert {"val/boundary_mIoU", "val/boundary_mF1", "val/trimap_void/mIoU_2px"} <= set(expected)
    for key, value in expected.items():
        if key != "val/loss":
            assert float(ddp[key]) == value or math.isnan(value) and math.isnan(float(ddp[key])), key
