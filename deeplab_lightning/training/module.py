"""SegmentationModule: the LightningModule that trains and evaluates any DeepLab variant.

It wires the parts, each in its own file: the network (:mod:`.network`), the loss (:mod:`.loss`), the optimizer
over the network's parameter groups (:mod:`.optim`), the non-finite checks (:mod:`.nonfinite`), and for
evaluation the pipeline and the evaluator (:mod:`deeplab_lightning.evaluation`). The learning-rate schedule is
a callback (``deeplab_lightning.callbacks.PolyLR``); prediction from Python is :mod:`deeplab_lightning.predictor`.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.loggers import WandbLogger
from torch import nn

from ..data.dataset import fill_padding
from ..data.sampling import derive_seed
from ..evaluation import (BoundarySettings, EvaluationPipeline, EvaluationResults, Evaluator, Inference,
                          msc_max_fusion)
from ..evaluation.pipeline import PredictedLabels, per_image
from ..models import ModelName, convert_sync_batchnorm
from ..runs.info import run_info
from .loss import SegmentationLoss
from .network import build_network, check_numeric_model_kwargs, frozen_batch_norms
from .nonfinite import NonFiniteGuard
from .optim import build_optimizer


# Restored with the optimizer on resume, so a resumed fit may not change them.
OPTIMIZER_SETTINGS = ("lr", "momentum", "weight_decay", "head_lr_mult", "bias_lr_mult", "optimizer")
WANDB_RUN_ID = "wandb_run_id"  # checkpoint key: the wandb run a resumed fit continues
SETTING_DEFAULTS = {"bias_lr_mult": 1.0}  # settings added later: what checkpoints without them were trained with

class SegmentationModule(L.LightningModule):
    """Trains any net mapping images [N,3,H,W] to logits [N,C,H,W] with pixel-wise cross-entropy.

    Args:
        arch: a model name from :func:`deeplab_lightning.models.list_models` (the command line lists them in
            ``--help`` and refuses others when parsing), or, from Python, any ``nn.Module``.
        num_classes: number of classes (linked from the data module by the command line).
        output_stride: passed to :func:`create_model` when ``arch`` is a name (None: the paper's value).
        pretrained_backbone: load ImageNet weights into the backbone when ``arch`` is a name.
        weights: ``"torchvision"``: start from torchvision's trained DeepLabV3 of that name (COCO-trained on the
            21 VOC classes: ``deeplabv3_resnet50``, ``deeplabv3_resnet101``, ``deeplabv3_mobilenet_v3_large``).
        model_kwargs: further keyword arguments for :func:`create_model`.
        crf_rnn: append a trainable dense CRF (CRF-as-RNN), trained end to end with the network: a dict of
            ``CRFSettings`` fields, ``{}`` for the defaults. Not in the DeepLab papers.
        init_checkpoint: start from the network weights of this checkpoint (no training state is taken).
        lr: base learning rate (backbone group); the head group uses ``lr * head_lr_mult``.
        momentum, weight_decay, head_lr_mult: SGD settings; the head's learning-rate multiplier (10 in V1/V2).
        bias_lr_mult: the learning-rate multiplier of convolution and linear biases (2 in the papers' Caffe and TF
            code, see :func:`~deeplab_lightning.training.optim.parameter_groups`).
        optimizer: ``"sgd"`` (the papers') or ``"adamw"`` (not in the papers; the CPU quickstart's, from scratch).
        channels_last: run the network in channels-last memory format (faster convolutions, GPU and CPU).
        compile: ``torch.compile`` the network in place (``True``, or a dict of ``torch.compile`` arguments).
        fused_optimizer: the optimizer's fused implementation; None: fused on GPU and CPU.
        msc_scales: DeepLab V2's multi-scale inputs with max fusion (V2 section 4.1), e.g. ``[1.0, 0.75, 0.5]``,
            in training (the losses of the fused and of each scale's logits are summed) and evaluation.
        bn_momentum: BatchNorm momentum of every layer (PyTorch convention: V3's TF decay 0.9997 is 0.0003);
            None keeps PyTorch's 0.1.
        freeze_bn: ``true`` keeps the backbone's BatchNorm statistics and affine parameters as loaded, as DeepLab
            V2's released Caffe ResNet-101 trains (``use_global_stats``, ``lr_mult: 0``); ``statistics`` runs every
            BatchNorm on its stored statistics while its affine parameters train (TF ``fine_tune_batch_norm=
            False``: V3's OS 8 fine-tuning, section 4.1); V3 trains BN (``false``).
        nonfinite_loss: a NaN or Inf training loss: ``raise`` (stop before the next step, checkpoint or
            validation, naming the step and samples; no host sync in the step), ``skip`` (skip that optimizer
            step) or ``ignore``. Whatever the choice, no checkpoint is written from non-finite weights, and a
            non-finite evaluation loss stops the run.
        max_skipped_share: with ``skip``, the run fails once skipped steps exceed this share of its steps.
        sync_batchnorm: synchronise BatchNorm statistics across processes; None: on when training on more than
            one GPU (the papers compute BN statistics over the whole batch, V3 section 4.1).
        ignore_index: label excluded from the loss and the metrics (linked from the data module).
        class_weights: per-class weights of the cross-entropy (e.g. inverse frequencies from ``check-data``).
            Not in the papers; None: unweighted.
        top_k_percent_pixels: the TF reference's online hard example mining: only the hardest fraction of the
            batch's pixels count (1.0, the papers': every pixel).
        class_names: names used for the per-class IoU logs (linked from the data module).
        boundary_metrics: trimap mIoU and pixel accuracy (V1 section 5, V3+ section 4.4), Boundary IoU (Cheng et
            al. 2021) and the boundary F1 score (Csurka et al. 2013) in every validation and test, before and after
            the dense CRF: ``true`` (the defaults), ``false`` (off) or a dict of
            :class:`~deeplab_lightning.evaluation.BoundarySettings` fields (``trimap_widths``, ``trimap_band``,
            ``boundary_distance``, ``f1_tolerance`` ...). Read with ``evaluation_results(stage).boundary``.

    With ``seed_everything`` the random state is re-seeded from (seed, rank, step) before every training step,
    so dropout draws the same masks after a resume. Batches are :func:`~deeplab_lightning.data.dataset.
    pad_collate`'s (``image`` [N,3,H,W] uint8 RGB, ``mask`` [N,H,W] uint8, int64 once on the device, each image's ``size``, ``canvas``).
    """

    def __init__(
        self,
        arch: ModelName = "deeplabv3plus_resnet101",
        num_classes: int = 21,
        *,
        output_stride: int | None = None,
        pretrained_backbone: bool = False,
        weights: Literal["torchvision"] | None = None,
        model_kwargs: dict[str, Any] | None = None,
        crf_rnn: dict[str, Any] | None = None,
        init_checkpoint: str | None = None,
        lr: float = 0.007,
        momentum: float = 0.9,
        weight_decay: float = 1e-4,
        head_lr_mult: float = 10.0,
        bias_lr_mult: float = 1.0,
        optimizer: Literal["sgd", "adamw"] = "sgd",
        channels_last: bool = False,
        compile: bool | dict[str, Any] = False,
        fused_optimizer: bool | None = None,
        msc_scales: Sequence[float] | None = None,
        bn_momentum: float | None = None,
        freeze_bn: bool | Literal["statistics"] = False,
        nonfinite_loss: Literal["raise", "skip", "ignore"] = "raise",
        max_skipped_share: float = 0.01,
        sync_batchnorm: bool | None = None,
        ignore_index: int = 255,
        class_names: Sequence[str] | None = None,
        class_weights: Sequence[float] | None = None,
        top_k_percent_pixels: float = 1.0,
        boundary_metrics: bool | dict[str, Any] = True,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["arch"] if isinstance(arch, nn.Module) else None)
        if optimizer not in ("sgd", "adamw"):
            raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {optimizer!r}")
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.net = build_network(arch, num_classes, output_stride=output_stride,
                                 pretrained_backbone=pretrained_backbone, weights=weights, model_kwargs=model_kwargs,
                                 crf_rnn=crf_rnn, init_checkpoint=init_checkpoint, bn_momentum=bn_momentum,
                                 freeze_bn=freeze_bn, memory_format=self.memory_format, compile=compile)
        self.guard = NonFiniteGuard(nonfinite_loss, max_skipped_share)
        self.loss = SegmentationLoss(num_classes, ignore_index, class_weights, top_k_percent_pixels)
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"class_names has {len(class_names)} entries but num_classes is {num_classes}")
        default_names = getattr(self.net, "class_names", None) or [str(i) for i in range(num_classes)]
        self.class_names = list(class_names) if class_names is not None else list(default_names)
        self.palette: list[list[int]] | None = None  # [r, g, b] per class, restored from a checkpoint that saved it
        self.num_classes = num_classes
        self.pipeline = EvaluationPipeline()  # how validation, test and predict run the network
        self.evaluator = Evaluator(num_classes, ignore_index, self.class_names,
                                   BoundarySettings.from_config(boundary_metrics))
        self._checkpoint_step: int | None = None  # the step of the last checkpoint loaded

    # The network as training and evaluation see it.

    @property
    def align_corners(self) -> bool:
        """The network's resizing geometry, used by every resize around it (multi-scale, MSC)."""
        return getattr(self.net, "align_corners", False)

    @property
    def pixel_mean(self) -> torch.Tensor | None:
        """The network's mean pixel [1,3,1,1] in [0, 255], which padding is filled with (None: fill with 0)."""
        return getattr(self.net, "pixel_mean", None)

    @property
    def stride_logits(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """The network's logits at :attr:`logit_stride`, before upsampling, for TF's merge of scales in multi-scale
        evaluation; None with ``msc_scales`` (V2's fusion works on upsampled logits), for Caffe's ``zoom``
        upsampling (features placed by the stride, not on TF's grid) or a network without them."""
        if (self.hparams.msc_scales or not hasattr(self.net, "stride_logits")
                or getattr(self.net, "upsampling", "input_size") != "input_size"):
            return None
        return lambda images: self.net.stride_logits(images.contiguous(memory_format=self.memory_format))

    @property
    def logit_stride(self) -> int | None:
        return getattr(self.net, "logit_stride", None)

    def _net(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images.contiguous(memory_format=self.memory_format))

    def _outputs(self, images: torch.Tensor) -> list[torch.Tensor]:
        """``[logits]``, or with ``msc_scales`` ``[fused, logits at each scale]`` (V2 trains on all of them)."""
        if self.hparams.msc_scales:
            return msc_max_fusion(self._net, images, self.hparams.msc_scales, align_corners=self.align_corners)
        return [self._net(images)]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits [N,C,H,W] of RGB images in [0, 255] (max-fused over ``msc_scales`` when set)."""
        return self._outputs(images)[0]

    def _frozen_batch_norms(self) -> list[nn.modules.batchnorm._BatchNorm]:
        return frozen_batch_norms(self.net, self.hparams.get("freeze_bn", False))

    def train(self, mode: bool = True) -> SegmentationModule:
        super().train(mode)
        for m in self._frozen_batch_norms():  # they normalise with their stored statistics in training too
            m.eval()
        return self

    def setup(self, stage: str) -> None:
        """Switch BatchNorm to SyncBatchNorm for a multi-GPU fit (see ``sync_batchnorm``)."""
        if stage != "fit" or self.trainer.world_size == 1:
            return
        on_gpu = self.trainer.strategy.root_device.type == "cuda"
        use = on_gpu if self.hparams.sync_batchnorm is None else self.hparams.sync_batchnorm
        if use and not on_gpu:
            raise ValueError("model.sync_batchnorm: true needs GPUs (PyTorch's SyncBatchNorm does not run on "
                             "CPU); leave it unset (auto) or false")
        if use and not any(isinstance(m, nn.SyncBatchNorm) for m in self.net.modules()):
            self.net = convert_sync_batchnorm(self.net)

    # Training.

    def on_train_batch_start(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.guard.raise_if_training_loss_was_nonfinite()
        seed = os.environ.get("PL_GLOBAL_SEED")
        if seed is not None:
            torch.manual_seed(derive_seed(int(seed), self.global_rank, self.global_step))

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        images = batch["image"]
        if batch.get("padded"):
            images = fill_padding(images, batch["size"], self.pixel_mean)
        targets = batch["mask"].long()  # uint8 from the loader (1 byte a pixel to copy), int64 for the loss
        loss = sum(self.loss(logits, targets) for logits in self._outputs(images))
        step = self.global_step

        def where() -> str:
            return f"step {step} (batch {batch_idx}, samples {batch.get('id', '?')})"

        def total_steps() -> int:
            trainer = self.trainer
            return trainer.max_steps if trainer.max_steps > 0 else int(trainer.estimated_stepping_batches)

        if not self.guard.training_loss(loss, where, total_steps):
            return None
        # Not prog_bar=True: Lightning would copy it to the host after every step (callbacks.ProgressBar shows it).
        self.log("train/loss", loss, batch_size=batch["image"].shape[0])
        return loss

    def on_train_epoch_end(self) -> None:
        self.guard.raise_if_training_loss_was_nonfinite()

    def on_train_end(self) -> None:
        self.guard.raise_if_training_loss_was_nonfinite()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        hp = self.hparams
        fused = hp.fused_optimizer if hp.fused_optimizer is not None else self.device.type in ("cuda", "cpu")
        return build_optimizer(self.net, hp.optimizer, lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay,
                               head_lr_mult=hp.head_lr_mult, fused=fused,
                               bias_lr_mult=hp.get("bias_lr_mult", 1.0))

    # Evaluation: the pipeline runs the network, the evaluator counts.

    def configure_inference(self, inference: Inference | None = None, **changes: Any) -> Inference:
        """Set how validation, test and predict run the network (see :class:`~deeplab_lightning.evaluation.
        Inference`); returns the previous settings, so a caller can restore them."""
        return self.pipeline.configure(inference, **changes)

    def evaluation_results(self, stage: str = "val", unrefined: bool = False) -> EvaluationResults | None:
        """The metrics of the last whole ``stage`` (``val`` or ``test``); ``unrefined``: before the dense CRF."""
        return self.evaluator.results(stage, unrefined)

    @property
    def weights_step(self) -> int:
        """The training step of the current weights: the global step while fitting, else the step of the
        checkpoint loaded for validate / test / predict (Lightning restores no loop there, so its global step
        reads 0)."""
        fitting = self._trainer is not None and self.trainer.state.fn == "fit"
        return self.global_step if fitting or self._checkpoint_step is None else self._checkpoint_step

    def on_validation_start(self) -> None:
        self.guard.raise_if_training_loss_was_nonfinite()

    def _evaluation_step(self, batch: dict[str, Any], stage: str) -> PredictedLabels:
        """Counts the batch in the stage's metrics; returns the predicted labels [h_i, w_i] (for callbacks; with the
        dense CRF, ``.unrefined`` holds those before it)."""
        scores = self.pipeline(self, batch)
        targets = per_image(batch["mask"].long(), batch["size"])
        self.evaluator.update(stage, scores, targets)
        loss = sum(self.loss(s[None], t[None]) for s, t in zip(scores.final, targets)) / len(targets)
        self.log(f"{stage}/loss", loss, batch_size=len(targets), sync_dist=True)
        self.guard.evaluation_loss(loss)
        return PredictedLabels(scores)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> PredictedLabels:
        return self._evaluation_step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> PredictedLabels:
        return self._evaluation_step(batch, "test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[torch.Tensor]:
        """Predicted labels per image, [h_i, w_i] each (refined when the CRF is configured)."""
        return self.pipeline(self, batch).labels

    def _begin_evaluation(self, stage: str) -> None:
        """The trimap's seeds for this split: ``model.boundary_metrics.trimap_band``, ``auto`` resolved by the data
        module's ``void_marks_boundaries`` (no data module: label boundaries)."""
        data = self._trainer.datamodule if self._trainer is not None else None
        self.evaluator.begin(stage, bool(getattr(data, "void_marks_boundaries", False)))

    def on_validation_epoch_start(self) -> None:
        self._begin_evaluation("val")

    def on_test_epoch_start(self) -> None:
        self._begin_evaluation("test")

    def _end_evaluation(self, stage: str) -> None:
        strategy = self.trainer.strategy
        self.guard.raise_if_evaluation_was_nonfinite(
            "validation" if stage == "val" else stage, self.global_step,
            lambda broken: strategy.reduce_boolean_decision(broken, all=False))
        record = not self.trainer.sanity_checking  # the untrained network's numbers are never results
        logged = self.evaluator.finish(stage, self.weights_step, self.pipeline.settings.crf is not None, record)
        prefix = self.metric_prefix(stage)
        for name, value in logged.items():
            self.log(prefix + name[len(stage):], value)

    def metric_prefix(self, stage: str) -> str:
        """``test_on_<split>`` for a test of the validation split (so that no chart calls validation numbers
        test numbers), else the stage."""
        data = self.trainer.datamodule
        split = getattr(data, "test_split", None)
        return f"test_on_{split}" if stage == "test" and split is not None and split == getattr(
            data, "val_split", None) else stage

    def on_validation_epoch_end(self) -> None:
        self._end_evaluation("val")

    def on_test_epoch_end(self) -> None:
        self._end_evaluation("test")

    # Checkpoints.

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.guard.check_checkpoint(checkpoint, self.global_step)
        checkpoint["run_info"] = run_info()
        wandb = [lg for lg in (self._trainer.loggers if self._trainer else []) if isinstance(lg, WandbLogger)]
        if wandb:  # a fit resumed from this checkpoint continues this wandb run
            checkpoint[WANDB_RUN_ID] = wandb[0].version
        checkpoint["skipped_steps"] = self.guard.skipped_steps
        palette = getattr(self._trainer and self._trainer.datamodule, "palette", None) or self.palette
        if palette:  # the data's class colours, for exported files and predictions outside a data module
            checkpoint["palette"] = [[int(v) for v in colour] for colour in palette[:self.hparams.num_classes]]

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        """``nn.Module.load_state_dict``, whose key or shape mismatch is told in a few lines with its likely cause
        (:func:`state_dict_mismatch`) instead of one line per tensor."""
        try:
            return super().load_state_dict(state_dict, strict=strict, assign=assign)
        except RuntimeError as err:
            if "Error(s) in loading state_dict" not in str(err):
                raise
            raise ValueError(state_dict_mismatch(self.state_dict(), state_dict)) from None

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint of another architecture or number of classes, and a resumed fit whose optimizer
        settings differ from the saved ones (the restored optimizer would silently keep the saved ones), naming
        both values."""
        self.guard.skipped_steps = checkpoint.get("skipped_steps", 0)
        self.palette = checkpoint.get("palette", self.palette)
        self._checkpoint_step = checkpoint.get("global_step")
        saved = checkpoint.get("hyper_parameters", {})
        for key in ("arch", "num_classes"):
            if key in saved and key in self.hparams and saved[key] != self.hparams[key]:
                raise ValueError(f"The checkpoint was trained with {key}={saved[key]!r} but the config builds "
                                 f"{key}={self.hparams[key]!r}; use the checkpoint's {key} or another checkpoint")
        # Settings that change what the same tensors compute (input range, BatchNorm epsilon, padding, upsampling): a
        # mismatch would load and evaluate silently wrong (a converted TF or Caffe model needs its own, see convert).
        if "hyper_parameters" in checkpoint:
            check_numeric_model_kwargs(saved.get("model_kwargs"), self.hparams.get("model_kwargs"),
                                       "The checkpoint's network")
        if self._trainer is not None and self.trainer.state.fn == "fit":  # a resumed fit restores its optimizer
            for key in OPTIMIZER_SETTINGS:
                if key not in saved and key in SETTING_DEFAULTS:
                    saved = {**saved, key: SETTING_DEFAULTS[key]}
                if key in saved and key in self.hparams and saved[key] != self.hparams[key]:
                    raise ValueError(
                        f"A resumed fit continues the saved optimizer and learning-rate schedule (model.{key}="
                        f"{saved[key]!r}), but the config sets model.{key}={self.hparams[key]!r}. Resume with "
                        f"model.{key} {saved[key]!r}, or start a new fit from these weights with "
                        f"--model.init_checkpoint instead of --ckpt_path")


def state_dict_mismatch(expected: dict[str, Any], found: dict[str, Any]) -> str:
    """What differs between this model's state dict and a checkpoint's (counts and first examples: tensors of
    other shapes, missing and unknown keys), and the likely cause."""
    resized = [(k, tuple(found[k].shape), tuple(v.shape)) for k, v in expected.items()
               if k in found and hasattr(found[k], "shape") and tuple(found[k].shape) != tuple(v.shape)]
    missing = [k for k in expected if k not in found]
    unknown = [k for k in found if k not in expected]
    parts = []
    if resized:
        key, theirs, ours = resized[0]
        parts.append(f"{len(resized)} tensor(s) of another shape (e.g. {key}: {list(theirs)} in the checkpoint, "
                     f"{list(ours)} in this model)")
    if missing:
        parts.append(f"{len(missing)} of this model's tensors missing (e.g. {', '.join(missing[:3])})")
    if unknown:
        parts.append(f"{len(unknown)} unknown tensor(s) (e.g. {', '.join(unknown[:3])})")
    if unknown and all(f"net.{k}" in expected for k in unknown):
        cause = ("its keys lack the 'net.' prefix: it holds the bare network's weights, not a checkpoint of "
                 "deeplab-lightning fit; start a fit from them with --model.init_checkpoint")
    else:
        cause = ("it was trained with other model settings (model.arch, model.model_kwargs, the classes): use the "
                 "config it was trained with, saved as config.yaml in its run folder")
    return f"The checkpoint does not fit this model: {'; '.join(parts)}. Likely cause: {cause}"
