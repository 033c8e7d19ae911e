"""One ablation run: fit it through the command line, then evaluate its best checkpoint plainly, with
multi-scale + flip and with the dense CRF."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import WandbLogger

from ..callbacks import DenseCRFRefinement, MultiScaleInference, ProgressBar, Throughput
from ..checkpoint_io import AtomicCheckpointIO
from .spec import Ablation


def _validate(cli: Any, callbacks: list[L.Callback]) -> tuple[dict[str, float], float]:
    """Validate the trained model with ``callbacks``; returns ({"final" and, with the CRF, "unrefined": mIoU},
    seconds)."""
    on_gpu = cli.trainer.strategy.root_device.type == "cuda"
    trainer = L.Trainer(accelerator="gpu" if on_gpu else "cpu", devices=1, precision=cli.trainer.precision,
                        logger=False, callbacks=[*callbacks, ProgressBar(leave=False)], enable_model_summary=False)
    start = time.perf_counter()
    trainer.validate(cli.model, datamodule=cli.datamodule, verbose=False)
    seconds = time.perf_counter() - start
    results = {"final": cli.model.evaluation_results("val"),
               "unrefined": cli.model.evaluation_results("val", unrefined=True)}
    return {kind: r.mIoU for kind, r in results.items() if r is not None}, seconds


def train_and_evaluate(ablation: Ablation, config_path: Path, resume: Path | None = None) -> dict[str, Any]:
    """Fit one run through the command line (continuing from checkpoint ``resume``), then evaluate its best
    checkpoint on this process's device alone; returns the report row's measurements."""
    from ..cli import main

    cli = main(["fit", "--config", str(config_path), *(["--ckpt_path", str(resume)] if resume else [])])
    if torch.distributed.is_initialized():  # the other DDP ranks have ended: evaluate here alone
        torch.distributed.destroy_process_group()
    ckpt = cli.trainer.checkpoint_callback.best_model_path if cli.trainer.checkpoint_callback else None
    if ckpt:  # evaluate the best checkpoint, not the last weights
        checkpoint = AtomicCheckpointIO().load_checkpoint(ckpt, map_location=cli.model.device)
        cli.model.load_state_dict(checkpoint["state_dict"])
    if isinstance(cli.trainer.logger, WandbLogger):
        cli.trainer.logger.experiment.finish()  # the next run starts its own wandb run
    throughput = next((c for c in cli.trainer.callbacks if isinstance(c, Throughput)), None)
    plain, seconds = _validate(cli, [])
    num_val = len(cli.datamodule.dataset(cli.datamodule.val_split))
    row: dict[str, Any] = {
        "params_M": sum(p.numel() for p in cli.model.net.parameters()) / 1e6,
        "train_img_s": throughput.img_per_s if throughput else None,
        "train_img_s_steps": throughput.steps if throughput else None,
        "eval_img_s": num_val / seconds,
        "mIoU": plain["final"],
        "steps": cli.trainer.global_step,
        "checkpoint": ckpt or None,
    }
    crf = [DenseCRFRefinement(stages=["validate"], **ablation.crf)] if ablation.crf is not None else []
    if crf:
        row["mIoU_crf"] = _validate(cli, crf)[0]["final"]
    if ablation.ms_flip is not None:
        ms = [MultiScaleInference(stages=["validate"], **ablation.ms_flip)]
        results = _validate(cli, ms + crf)[0]
        row["mIoU_ms_flip"] = results["unrefined"] if crf else results["final"]
        if crf:
            row["mIoU_ms_flip_crf"] = results["final"]
    return row
