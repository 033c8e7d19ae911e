"""One ablation run: fit it through the command line, then evaluate its final weights (what the papers report;
the best checkpoint is chosen on this very split) plainly at the trained output stride and, where the ablation
file's ``evaluate`` names another one, plainly, with multi-scale + flip and with the dense CRF at that one."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import WandbLogger

from ..callbacks import DenseCRFRefinement, MultiScaleInference, PerImageConfusion, ProgressBar, Throughput
from ..training.module import SegmentationModule
from .spec import STATUS_FILE, Ablation
from .state import read_json


def at_output_stride(model: SegmentationModule, output_stride: int) -> SegmentationModule:
    """The trained ``model`` rebuilt at another output stride with the same weights (dilation and stride hold no
    parameters), as ``test --model.output_stride 8`` evaluates a model trained at 16 (V3 section 4.3). Atrous
    rates the run set explicitly are scaled with the stride, as the defaults are (6, 12, 18 at 16: 12, 24, 36
    at 8)."""
    settings = {k: v for k, v in model.hparams.items() if not k.startswith("_")}  # not LightningCLI's entries
    trained = model.net.output_stride
    kwargs = dict(settings.get("model_kwargs") or {})
    if kwargs.get("atrous_rates") is not None:
        kwargs["atrous_rates"] = [rate * trained // output_stride for rate in kwargs["atrous_rates"]]
    settings.update(output_stride=output_stride, model_kwargs=kwargs, pretrained_backbone=False, weights=None,
                    init_checkpoint=None, freeze_bn=False, compile=False)
    rebuilt = type(model)(**settings)
    rebuilt.load_state_dict(model.state_dict())
    return rebuilt


@dataclass
class Evaluated:
    """One evaluation of a run: mIoU ("final" and, with the CRF, "unrefined"), seconds, and the per-image
    confusion-matrix files it saved ("final", "unrefined", "gallery": paths relative to the run folder)."""

    miou: dict[str, float]
    seconds: float
    files: dict[str, str] = field(default_factory=dict)
    boundary: dict[str, Any] = field(default_factory=dict)  # "final"/"unrefined" -> BoundaryResults


def _validate(cli: Any, model: SegmentationModule, callbacks: list[L.Callback], label: str, run_dir: Path,
              name: str) -> Evaluated:
    """Validate ``model`` with ``callbacks`` (progress shown as ``label``), saving its per-image confusion
    matrices as ``<run_dir>/evaluations/<name>.npz`` (numbered when taken)."""
    on_gpu = cli.trainer.strategy.root_device.type == "cuda"
    per_image = PerImageConfusion(folder=str(run_dir / "evaluations"), label=name, stages=("validate",))
    trainer = L.Trainer(accelerator="gpu" if on_gpu else "cpu", devices=1, precision=cli.trainer.precision,
                        logger=False, callbacks=[*callbacks, per_image, ProgressBar(leave=False, label=label)],
                        enable_model_summary=False)
    start = time.perf_counter()
    trainer.validate(model, datamodule=cli.datamodule, verbose=False)
    seconds = time.perf_counter() - start
    results = {"final": model.evaluation_results("val"),
               "unrefined": model.evaluation_results("val", unrefined=True)}
    files = {kind: str(Path(path).relative_to(run_dir)) for kind, path in
             (per_image.written[-1] if per_image.written else {}).items()}
    return Evaluated({kind: r.mIoU for kind, r in results.items() if r is not None}, seconds, files,
                     {kind: r.boundary for kind, r in results.items() if r is not None and r.boundary is not None})


def boundary_fields(boundary: Any, suffix: str = "") -> dict[str, Any]:
    """The report row's boundary measurements of one evaluation: trimap mIoU at the narrowest band (the V3+
    Fig. 5a reading), the whole trimap curve, mean Boundary IoU and mean boundary F1."""
    curve = [[int(w), float(v)] for w, v in zip(boundary.trimap_widths, boundary.trimap_mIoU.tolist())]
    return {f"trimap_mIoU{suffix}": curve[0][1], f"trimap_curve{suffix}": curve, "trimap_width": curve[0][0],
            "trimap_band": boundary.trimap_band, f"boundary_mIoU{suffix}": boundary.boundary_mIoU,
            f"boundary_mF1{suffix}": boundary.boundary_mF1}


def train_and_evaluate(ablation: Ablation, config_path: Path, resume: Path | None = None) -> dict[str, Any]:
    """Fit one run through the command line (continuing from checkpoint ``resume``), then evaluate its final
    weights on this process's device alone; returns the report row's measurements."""
    from ..commands.cli import main

    cli = main(["fit", "--config", str(config_path), *(["--ckpt_path", str(resume)] if resume else [])])
    if torch.distributed.is_initialized():  # the other DDP ranks have ended: evaluate here alone
        torch.distributed.destroy_process_group()
    checkpointing = cli.trainer.checkpoint_callback
    ckpt = getattr(checkpointing, "last_model_path", None) or None
    model = cli.model
    if isinstance(cli.trainer.logger, WandbLogger):
        cli.trainer.logger.experiment.finish()  # the next run starts its own wandb run
    throughput = next((c for c in cli.trainer.callbacks if isinstance(c, Throughput)), None)
    run_dir = config_path.parent
    run = run_dir.name
    status = read_json(run_dir / STATUS_FILE) or {}  # the fit's wall time over its attempts
    plain = _validate(cli, model, [], f"{run}: single scale", run_dir, "single_scale")
    evaluations = [plain]
    num_val = len(cli.datamodule.dataset(cli.datamodule.val_split))
    row: dict[str, Any] = {
        "params_M": sum(p.numel() for p in cli.model.net.parameters()) / 1e6,
        "train_img_s": throughput.img_per_s if throughput else None,
        "train_img_s_steps": throughput.steps if throughput else None,
        "eval_img_s": num_val / plain.seconds,
        "mIoU": plain.miou["final"],
        # classes the network predicts anywhere in the split (1: a degenerate run, marked in the report)
        "predicted_classes": int((model.evaluation_results("val").confmat.sum(0) > 0).sum()),
        "steps": cli.trainer.global_step,
        "checkpoint": ckpt,
    }
    per_image = {"mIoU": plain.files.get("final")}
    if "final" in plain.boundary:
        row.update(boundary_fields(plain.boundary["final"]))
    if ablation.output_stride is not None and ablation.output_stride != model.net.output_stride:
        model = at_output_stride(model, ablation.output_stride)
        key = f"mIoU_os{ablation.output_stride}"
        evaluations.append(_validate(cli, model, [], f"{run}: output stride {ablation.output_stride}", run_dir,
                                     f"os{ablation.output_stride}"))
        row[key], per_image[key] = evaluations[-1].miou["final"], evaluations[-1].files.get("final")
    row["eval_output_stride"] = model.net.output_stride
    crf = [DenseCRFRefinement(stages=["validate"], **ablation.crf)] if ablation.crf is not None else []
    if crf:
        evaluations.append(_validate(cli, model, crf, f"{run}: dense CRF", run_dir, "crf"))
        row["mIoU_crf"], per_image["mIoU_crf"] = evaluations[-1].miou["final"], evaluations[-1].files.get("final")
        if "final" in evaluations[-1].boundary:
            row.update(boundary_fields(evaluations[-1].boundary["final"], "_crf"))
    if ablation.ms_flip is not None:
        ms = [MultiScaleInference(stages=["validate"], **ablation.ms_flip)]
        evaluations.append(_validate(cli, model, ms + crf, f"{run}: multi-scale + flip" + (" + CRF" if crf else ""),
                                     run_dir, "ms_flip_crf" if crf else "ms_flip"))
        kind = "unrefined" if crf else "final"
        row["mIoU_ms_flip"], per_image["mIoU_ms_flip"] = evaluations[-1].miou[kind], evaluations[-1].files.get(kind)
        if crf:
            row["mIoU_ms_flip_crf"] = evaluations[-1].miou["final"]
            per_image["mIoU_ms_flip_crf"] = evaluations[-1].files.get("final")
    row["per_image"] = {key: path for key, path in per_image.items() if path is not None}
    row["worst_images"] = plain.files.get("gallery")
    evaluating_s = sum(e.seconds for e in evaluations)
    # cost: devices x wall time of the fit (every attempt) and of these evaluations (one device)
    devices = int(status.get("devices") or cli.trainer.world_size)
    train_s = status.get("train_s")
    row.update(devices=devices, train_s=train_s, eval_s=evaluating_s, first_batch=status.get("first_batch"),
               train_device_h=devices * train_s / 3600 if train_s is not None else None,
               eval_device_h=evaluating_s / 3600)
    return row
