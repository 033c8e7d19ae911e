"""SegmentationModule: the LightningModule that trains and evaluates any DeepLab variant."""
from __future__ import annotations

import inspect
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn
from PIL import Image
from torch import nn

from .crf_rnn import TrainableDenseCRF, WithCRF
from .data.dataset import image_tensor, pad_collate
from .data.sampling import derive_seed
from .data.transforms import crop_pair
from .evaluation import CRFSettings, EvaluationResults, Inference, smallest_eval_size
from .inference import msc_max_fusion
from .metrics import SegmentationMetrics
from .models import ModelName, architectures_only, convert_sync_batchnorm, create_model
from .models.convert import loading_weights
from .models.heads.largefov import FCHead
from .run_info import run_info


def parameter_groups(model: nn.Module, lr: float, weight_decay: float, head_lr_mult: float) -> list[dict]:
    """SGD parameter groups: backbone at ``lr``, everything else (the head) at ``lr * head_lr_mult``.

    DeepLab V1/V2 train the newly added classifier at 10x the learning rate (V1 section 4.1: 0.001, "0.01 for
    the final classifier layer"); fc6/fc7 of their VGG heads, converted from VGG-16's ImageNet fc layers, train
    at ``lr`` with the backbone (group ``backbone``), as in the released Caffe models. Weight decay applies
    to conv/linear weights only, not to BatchNorm parameters and biases, nor to depthwise conv weights
    (``regularize_depthwise=False`` in the TF reference's Xception and MobileNet scopes), nor to a trainable
    CRF's kernel weights and compatibility (it would pull them towards no CRF).
    Each group carries a ``name``; schedulers scale each group's initial lr, so the ratio is kept.
    """
    backbone, crf = getattr(model, "backbone", None), getattr(model, "crf", None)
    backbone_ids = {id(p) for p in backbone.parameters()} if isinstance(backbone, nn.Module) else set()
    backbone_ids |= {id(p) for head in model.modules() if isinstance(head, FCHead)
                     for p in (*head.fc6.parameters(), *head.fc7.parameters())}
    no_decay = {id(p) for p in crf.parameters()} if isinstance(crf, nn.Module) else set()
    no_decay |= {id(m.weight) for m in model.modules()
                 if isinstance(m, nn.Conv2d) and 1 < m.groups == m.in_channels}  # depthwise
    groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for p in model.parameters():
        if not p.requires_grad:
            continue
        part = "backbone" if id(p) in backbone_ids else "head"
        groups.setdefault((part, p.ndim > 1 and id(p) not in no_decay), []).append(p)
    result = []
    for (part, decay), params in sorted(groups.items()):
        mult = 1.0 if part == "backbone" else head_lr_mult
        result.append({
            "params": params, "name": f"{part}{'' if decay else '_no_decay'}", "lr": lr * mult,
            "weight_decay": weight_decay if decay else 0.0,
        })
    return result


class _LossCheck:
    """Whether a training loss is finite, copied to the host without waiting for the GPU.

    ``bool(torch.isfinite(loss))`` in the step would make the CPU wait for the forward pass every step, so it
    could not prepare the next batch meanwhile (with the progress bar's per-step read of the loss, such syncs
    cost V3+ 28 % of its images/s in ``benchmarks/bench.py``'s Lightning fit on an H100). The flag is copied
    asynchronously and read at the next hook, by when it has arrived.
    """

    def __init__(self, loss: torch.Tensor, where: Callable[[], str]) -> None:
        self.loss, self.where = loss.detach(), where  # where() describes the step, formatted only on failure
        flag = torch.isfinite(self.loss)
        self.event = None
        if flag.is_cuda:
            self.flag = torch.empty((), dtype=torch.bool, pin_memory=True)
            self.flag.copy_(flag, non_blocking=True)
            self.event = torch.cuda.Event()
            self.event.record()
        else:
            self.flag = flag

    def finite(self) -> bool:
        if self.event is not None:
            self.event.synchronize()  # waits for this loss only, not for the work queued after it
        return bool(self.flag)


class SegmentationModule(L.LightningModule):
    """Trains any net mapping images [N,3,H,W] to logits [N,C,H,W] with pixel-wise cross-entropy.

    Args:
        arch: a model name from :func:`deeplab_lightning.models.list_models` (the command line lists them in
            ``--help`` and refuses others when parsing), or, from Python, any ``nn.Module``.
        num_classes: number of classes (linked from the data module by the command line).
        output_stride: passed to :func:`create_model` when ``arch`` is a name (None: the paper's value).
        pretrained_backbone: load ImageNet weights into the backbone when ``arch`` is a name.
        weights: ``"torchvision"``: start from torchvision's trained DeepLabV3 of that name (its architecture,
            COCO-trained on the 21 VOC classes; ``deeplabv3_resnet50``, ``deeplabv3_resnet101``,
            ``deeplabv3_mobilenet_v3_large``) instead of building the paper's network.
        model_kwargs: further keyword arguments for :func:`create_model`.
        crf_rnn: append a trainable dense CRF (CRF-as-RNN, :class:`~deeplab_lightning.crf_rnn.TrainableDenseCRF`)
            to the network, trained end to end with it: a dict of :class:`~deeplab_lightning.evaluation.
            CRFSettings` fields (iterations, initial kernel weights, kernel widths), ``{}`` for the defaults.
            Not in the DeepLab papers (V1/V2 apply a fixed CRF after the network).
        init_checkpoint: start from the network weights of this checkpoint (e.g. one trained without
            ``crf_rnn``, to fine-tune the CRF after the network); unlike ``--ckpt_path`` no training state
            (step, optimizer) is taken.
        lr: base learning rate (backbone group); the head group uses ``lr * head_lr_mult``.
        momentum, weight_decay: SGD settings.
        head_lr_mult: learning-rate multiplier of the head (10 in DeepLab V1/V2).
        optimizer: ``"sgd"`` (the papers') or ``"adamw"`` (not in the papers; converges faster from scratch,
            used by the CPU quickstart, which has no pretrained backbone).
        channels_last: run the network in channels-last memory format (faster convolutions, GPU and CPU).
        compile: ``torch.compile`` the network in place (``True``, or a dict of ``torch.compile`` arguments such
            as ``{"mode": "max-autotune"}``); parameter names and checkpoints are unchanged.
        fused_optimizer: the optimizer's fused implementation (one kernel for all parameters). None: fused on
            GPU and CPU (the quickstart's AdamW step on a 2-core CPU: 19 instead of 39 ms), PyTorch's default
            elsewhere.
        msc_scales: DeepLab V2's multi-scale inputs with max fusion (MSC, V2 section 4.1), e.g. ``[1.0, 0.75,
            0.5]``: the network runs at every scale in training and evaluation, and training sums the losses
            of the fused and of each scale's logits (:func:`~deeplab_lightning.inference.msc_max_fusion`).
            Parameters are unchanged, so a checkpoint evaluates with or without it.
        bn_momentum: BatchNorm momentum of every layer (PyTorch convention: V3's TF decay 0.9997 is 0.0003);
            None keeps PyTorch's 0.1.
        freeze_bn: keep the backbone's BatchNorm statistics and affine parameters as loaded (ImageNet's), as DeepLab
            V2's released Caffe models train ResNet-101 (``use_global_stats``, ``lr_mult: 0``) with batches of
            10 that could not estimate them; V3 (section 4.1) trains BN with batch 16 instead.
        nonfinite_loss: what a NaN or Inf training loss does: ``raise`` (stop before the next step, checkpoint
            or validation, naming the step and the batch's sample ids; no host sync in the step), ``skip``
            (warn and skip that optimizer step; the step waits for the loss on the host) or ``ignore``.
            Whatever the choice, no checkpoint is written from non-finite weights, and a non-finite
            evaluation loss stops the run (before the checkpoint of that validation).
        max_skipped_share: with ``nonfinite_loss: skip``, the run fails once the skipped steps exceed this
            share of the run's steps (``max_steps``): a run that skips most steps has not trained.
        sync_batchnorm: synchronise BatchNorm statistics across processes. None (default): on when training
            on more than one GPU, off otherwise (PyTorch's SyncBatchNorm runs on GPUs only). The papers compute
            BN statistics over the whole batch (V3 section 4.1); under DDP only SyncBN does that.
        ignore_index: label excluded from the loss and the metrics (linked from the data module's
            ``ignore_index`` by the command line; 255 in VOC and Cityscapes).
        class_weights: per-class weights of the cross-entropy (one per class; e.g. inverse frequencies from
            ``deeplab-lightning check-data``), for imbalanced data. Not in the papers; None: unweighted.
        top_k_percent_pixels: online hard example mining as in the TF reference's loss
            (``top_k_percent_pixels``): only the hardest fraction of the batch's pixels count (the papers and
            the default: 1.0, every pixel; 0.25 keeps the hardest quarter). Ignored pixels count as zero loss.
        class_names: names used for the per-class IoU logs (linked from the data module).

    With ``seed_everything`` the global random state is re-seeded from (seed, rank, step) before every
    training step, so dropout draws the same masks in a run resumed from a checkpoint.

    Batches are dicts with ``"image"`` [N,3,H,W] RGB in [0, 255] (uint8 from the data modules; the network
    normalises it) and ``"mask"`` long [N,H,W]; padded batches give each image's own (H, W) in ``"size"`` (a
    list of ints, read on the host without a GPU sync), set ``"padded"`` (see :meth:`fill_padding`) and, for
    fixed-shape evaluation, ``"canvas"`` (see :meth:`predict_scores`).
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
        optimizer: Literal["sgd", "adamw"] = "sgd",
        channels_last: bool = False,
        compile: bool | dict[str, Any] = False,
        fused_optimizer: bool | None = None,
        msc_scales: Sequence[float] | None = None,
        bn_momentum: float | None = None,
        freeze_bn: bool = False,
        nonfinite_loss: Literal["raise", "skip", "ignore"] = "raise",
        max_skipped_share: float = 0.01,
        sync_batchnorm: bool | None = None,
        ignore_index: int = 255,
        class_names: Sequence[str] | None = None,
        class_weights: Sequence[float] | None = None,
        top_k_percent_pixels: float = 1.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["arch"] if isinstance(arch, nn.Module) else None)
        if isinstance(arch, nn.Module):
            self.net = arch
        else:
            self.net = create_model(arch, num_classes, output_stride=output_stride,
                                    pretrained_backbone=pretrained_backbone, weights=weights,
                                    **(model_kwargs or {}))
        if crf_rnn is not None:
            self.net = WithCRF(self.net, TrainableDenseCRF(num_classes, CRFSettings(**crf_rnn)))
        if init_checkpoint is not None and loading_weights():
            self._load_network_weights(init_checkpoint)
        if optimizer not in ("sgd", "adamw"):
            raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {optimizer!r}")
        if nonfinite_loss not in ("raise", "skip", "ignore"):
            raise ValueError(f"nonfinite_loss must be 'raise', 'skip' or 'ignore', got {nonfinite_loss!r}")
        loads_weights = pretrained_backbone or weights is not None or init_checkpoint is not None
        if freeze_bn and not (loads_weights or isinstance(arch, nn.Module)):
            raise ValueError("model.freeze_bn keeps the backbone's BatchNorm statistics as loaded, but this config "
                             "loads no weights (model.pretrained_backbone false, no model.weights or "
                             "model.init_checkpoint): the initial statistics would let the activations diverge. "
                             "Set model.freeze_bn false, or load pretrained weights")
        self.freeze_bn = freeze_bn
        for m in self.net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and bn_momentum is not None:
                m.momentum = bn_momentum
        for m in self._frozen_batch_norms():
            m.requires_grad_(False)
            m.eval()  # Lightning's loops restore each module's own mode flag, so eval here is kept in training
        if freeze_bn:  # Lightning's notice about those eval-mode modules: they are meant to be
            warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.net.to(memory_format=self.memory_format)
        if compile:
            self.net.compile(**(compile if isinstance(compile, dict) else {}))
        if class_weights is not None and (len(class_weights) != num_classes or min(class_weights) < 0):
            raise ValueError(f"model.class_weights needs {num_classes} non-negative weights (one per class), got "
                             f"{list(class_weights)}")
        if not 0 < top_k_percent_pixels <= 1:
            raise ValueError(f"model.top_k_percent_pixels must be in (0, 1], got {top_k_percent_pixels}")
        self.register_buffer("class_weights", None if class_weights is None else torch.tensor(
            class_weights, dtype=torch.float32), persistent=False)
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"class_names has {len(class_names)} entries but num_classes is {num_classes}")
        self.num_classes = num_classes
        default_names = getattr(self.net, "class_names", None) or [str(i) for i in range(num_classes)]
        self.class_names = list(class_names) if class_names is not None else list(default_names)
        self.val_metrics = SegmentationMetrics(num_classes, ignore_index)
        self.test_metrics = SegmentationMetrics(num_classes, ignore_index)
        self.inference = Inference()  # how validation, test and predict run the network: configure_inference
        self._results: dict[str, EvaluationResults] = {}  # the last whole-split metrics per stage
        self.unrefined_metrics = nn.ModuleDict(
            {stage: SegmentationMetrics(num_classes, ignore_index) for stage in ("val", "test")})
        self._loss_check: _LossCheck | None = None  # the last step's loss, checked at the next hook
        self.skipped_steps = 0  # optimizer steps skipped for a non-finite loss (nonfinite_loss: skip)
        self._checkpoint_step: int | None = None  # the step of the last checkpoint loaded
        self._eval_nonfinite: torch.Tensor | None = None  # whether any evaluation loss was NaN/Inf (on device)

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

    def _load_network_weights(self, path: str) -> None:
        """The network weights of a checkpoint; those of a network without the trainable CRF go into the
        network under it (the CRF keeps its initial parameters)."""
        from .checkpoint_io import AtomicCheckpointIO

        state = AtomicCheckpointIO().load_checkpoint(path, map_location="cpu", weights_only=False)["state_dict"]
        weights = {k[len("net."):]: v for k, v in state.items() if k.startswith("net.")}
        has_crf = any(k.startswith("crf.") for k in weights)
        target = self.net.net if isinstance(self.net, WithCRF) and not has_crf else self.net
        try:
            target.load_state_dict(weights)
        except RuntimeError as err:
            raise ValueError(f"model.init_checkpoint {path} holds another network than this config builds "
                             f"(arch, num_classes, model_kwargs must match): {str(err).splitlines()[0]}") from err

    def on_train_batch_start(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._raise_if_loss_was_nonfinite()
        seed = os.environ.get("PL_GLOBAL_SEED")
        if seed is not None:
            torch.manual_seed(derive_seed(int(seed), self.global_rank, self.global_step))

    def _net(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images.contiguous(memory_format=self.memory_format))

    @property
    def weights_step(self) -> int:
        """The training step of the current weights: the global step while fitting, else the step of the
        checkpoint loaded for validate / test / predict (Lightning restores no loop there, so its global step
        reads 0)."""
        fitting = self._trainer is not None and self.trainer.state.fn == "fit"
        return self.global_step if fitting or self._checkpoint_step is None else self._checkpoint_step

    @property
    def align_corners(self) -> bool:
        """The network's resizing geometry, used by every resize around it (multi-scale, MSC)."""
        return getattr(self.net, "align_corners", False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits [N,C,H,W] of RGB images in [0, 255] (max-fused over ``msc_scales`` when set)."""
        if self.hparams.msc_scales:
            return msc_max_fusion(self._net, images, self.hparams.msc_scales, align_corners=self.align_corners)[0]
        return self._net(images)

    def fill_padding(self, batch: dict[str, Any]) -> torch.Tensor:
        """The batch's images [N,3,H,W], with the canvas beyond each image's ``size`` filled with the
        network's mean pixel (``net.pixel_mean``, which it normalises to zero), as the TF reference pads.
        Sizes are host-side integers, so this never waits for the GPU."""
        images = batch["image"]
        mean = getattr(self.net, "pixel_mean", None)
        if not batch.get("padded", False) or mean is None:
            return images
        images = images.float()  # a copy: the batch keeps its uint8 image
        for i, (h, w) in enumerate(batch["size"]):
            images[i, :, h:, :] = mean[0]
            images[i, :, :h, w:] = mean[0]
        return images

    def loss(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of logits [N,C,H,W] against mask [N,H,W]: the (class-weighted) mean over the
        non-ignored pixels (0, not NaN, when all are ignored), or with ``top_k_percent_pixels < 1`` the mean of
        the hardest pixels' losses as the TF reference computes it. No host sync."""
        ignore, weights = self.hparams.ignore_index, self.class_weights
        per_pixel = F.cross_entropy(logits, mask, weight=weights, ignore_index=ignore, reduction="none")
        if self.hparams.top_k_percent_pixels < 1:
            k = max(1, int(self.hparams.top_k_percent_pixels * per_pixel.numel()))
            hardest = per_pixel.flatten().topk(k).values
            return hardest.sum() / (hardest > 0).sum().clamp_min(1)
        valid = mask != ignore
        if weights is None:
            return per_pixel.sum() / valid.sum().clamp_min(1)
        pixel_weights = weights[mask.clamp(0, len(weights) - 1)] * valid
        return per_pixel.sum() / pixel_weights.sum().clamp_min(1e-12)

    def _frozen_batch_norms(self) -> list[nn.modules.batchnorm._BatchNorm]:
        """The backbone's BatchNorms when ``freeze_bn`` (the heads' new BatchNorms train), else none."""
        if not getattr(self, "freeze_bn", False):
            return []
        backbone = getattr(self.net, "backbone", self.net)
        return [m for m in backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    def train(self, mode: bool = True) -> SegmentationModule:
        super().train(mode)
        for m in self._frozen_batch_norms():  # they normalise with their stored statistics in training too
            m.eval()
        return self

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        images = self.fill_padding(batch)
        if self.hparams.msc_scales:
            outputs = msc_max_fusion(self._net, images, self.hparams.msc_scales, align_corners=self.align_corners)
            loss = sum(self.loss(logits, batch["mask"]) for logits in outputs)
        else:
            loss = self.loss(self(images), batch["mask"])
        step = self.global_step

        def where() -> str:
            return f"step {step} (batch {batch_idx}, samples {batch.get('id', '?')})"

        if self.hparams.nonfinite_loss == "skip" and not bool(torch.isfinite(loss)):  # the step waits for this
            self._skip_step(loss, where())
            return None
        if self.hparams.nonfinite_loss == "raise":
            self._loss_check = _LossCheck(loss, where)
        # Not prog_bar=True: Lightning would copy it to the host after every step (callbacks.ProgressBar shows it).
        self.log("train/loss", loss, batch_size=batch["image"].shape[0])
        return loss

    def _skip_step(self, loss: torch.Tensor, where: str) -> None:
        """Count a skipped step; fail once more than ``max_skipped_share`` of the run's steps were skipped."""
        self.skipped_steps += 1
        total = self.trainer.max_steps if self.trainer.max_steps > 0 else self.trainer.estimated_stepping_batches
        limit = self.hparams.max_skipped_share * total
        if self.skipped_steps > limit:
            raise FloatingPointError(
                f"{self.skipped_steps} optimizer steps were skipped for a non-finite training loss (the last at "
                f"{where}), more than model.max_skipped_share={self.hparams.max_skipped_share} of {total} steps: "
                f"the run is not training. Lower model.lr or check the data (deeplab-lightning check-data)")
        rank_zero_warn(f"Skipping the optimizer step: training loss is {loss.item()} at {where} "
                       f"({self.skipped_steps} skipped, at most {int(limit)} allowed)")

    def _raise_if_loss_was_nonfinite(self) -> None:
        """Raise if the last checked training loss was NaN or Inf (``nonfinite_loss: raise``)."""
        check, self._loss_check = self._loss_check, None
        if check is not None and not check.finite():
            raise FloatingPointError(f"Training loss is {check.loss.item()} at {check.where()}; lower model.lr, "
                                     f"check these samples, or set model.nonfinite_loss: skip")

    def on_train_epoch_end(self) -> None:
        self._raise_if_loss_was_nonfinite()

    def on_train_end(self) -> None:
        self._raise_if_loss_was_nonfinite()

    def on_validation_start(self) -> None:
        self._raise_if_loss_was_nonfinite()

    def configure_inference(self, inference: Inference | None = None, **changes: Any) -> Inference:
        """Set how validation, test and predict run the network: ``inference`` replaces the settings, then
        ``changes`` (``scales``, ``flip``, ``window``, ``overlap``, ``crf``; see :class:`Inference`) apply.
        Returns the previous settings, so a caller can restore them."""
        previous = self.inference
        self.inference = (inference or previous).replace(**changes)
        return previous

    def evaluation_results(self, stage: str = "val") -> EvaluationResults | None:
        """The metrics of the last whole ``stage`` (``val``, ``test``, ``val/unrefined``, ``test/unrefined``)."""
        return self._results.get(stage)

    def predict_scores(self, batch: dict[str, Any]) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
        """Class scores [C, h_i, w_i] of each image at its own size, after the dense CRF when configured, and
        the scores before it (None without CRF).

        Fixed-shape batches (``batch["canvas"]`` set by the data module) run whole: every image sits on one
        canvas, its padding filled with the mean pixel, as the TF reference evaluates. Otherwise each image
        runs alone at its own size. Either way a prediction does not depend on the batch size.
        """
        inference, sizes = self.inference, batch["size"]
        run = lambda x: inference.scores(self, x, align_corners=self.align_corners,  # noqa: E731
                                         eval_size=batch.get("canvas"))
        if batch.get("canvas") is not None:
            scores = run(self.fill_padding(batch))
            per_image = [s[:, :h, :w] for s, (h, w) in zip(scores, sizes)]
        else:
            per_image = [run(batch["image"][i:i + 1, :, :h, :w])[0] for i, (h, w) in enumerate(sizes)]
        if inference.crf is None:
            return per_image, None
        refined = [inference.refine(batch["image"][i, :, :h, :w], s) for i, (s, (h, w)) in
                   enumerate(zip(per_image, sizes))]
        return refined, per_image

    @torch.no_grad()
    def predict(self, image: str | Path | Image.Image | np.ndarray | torch.Tensor, *,
                eval_size: int | tuple[int, int] | Literal["auto"] | None = "auto", **inference: Any) -> np.ndarray:
        """Class indices uint8 [H, W] of one RGB image (a path, PIL image, uint8 array [H, W, 3] or tensor
        [3, H, W]; values 0-255) at its own size.

        ``eval_size``: the canvas the image is padded to with the mean pixel (``"auto"``: the smallest 16k+1
        holding it; ``None``: the image's own size). ``deeplab-lightning predict`` pads every image of a folder
        to the canvas of the folder's largest height and width (its data module's ``eval_size``, e.g. 513 for
        VOC, as the TF reference evaluates): pass that canvas to get its predictions exactly (the image
        pooling of V3/V3+ averages over the padding too). ``inference``: changes to
        :class:`~deeplab_lightning.evaluation.Inference` for this call, e.g. ``scales=(0.75, 1.0, 1.25),
        flip=True`` or ``crf=CRFSettings()`` (``crf=True`` for DeepLab V2's parameters).
        """
        pixels = image_tensor(image).to(self.device)
        size = tuple(pixels.shape[-2:])
        if eval_size == "auto":
            eval_size = smallest_eval_size([size])
        canvas = None if eval_size is None else crop_pair(eval_size)
        if inference.get("crf") is True:
            inference["crf"] = CRFSettings()
        batch = pad_collate([{"image": pixels, "mask": torch.zeros(size, dtype=torch.long, device=self.device),
                              "id": "image", "size": size}], size=canvas, fixed=canvas is not None)
        previous, training = self.configure_inference(**inference), self.training
        self.eval()
        try:
            scores, _ = self.predict_scores(batch)
        finally:
            self.configure_inference(previous)
            self.train(training)
        return scores[0].argmax(0).to(torch.uint8).cpu().numpy()

    def _eval_step(self, batch: dict[str, Any], metrics: SegmentationMetrics, stage: str) -> list[torch.Tensor]:
        """Updates the metrics; returns the predicted labels [h_i, w_i] of each image (for callbacks)."""
        scores, unrefined = self.predict_scores(batch)
        masks = batch["mask"]
        targets = [masks[i, :h, :w] for i, (h, w) in enumerate(batch["size"])]
        if unrefined is not None:
            for lg, target in zip(unrefined, targets):
                self.unrefined_metrics[stage].update(lg.argmax(0)[None], target[None])
        preds = [lg.argmax(0) for lg in scores]
        for pred, target in zip(preds, targets):
            metrics.update(pred[None], target[None])
        loss = sum(self.loss(lg[None], target[None]) for lg, target in zip(scores, targets)) / len(scores)
        self.log(f"{stage}/loss", loss, batch_size=len(scores), sync_dist=True)
        nonfinite = ~torch.isfinite(loss.detach())  # read once per evaluation, in _raise_if_eval_was_nonfinite
        self._eval_nonfinite = nonfinite if self._eval_nonfinite is None else self._eval_nonfinite | nonfinite
        return preds

    def _raise_if_eval_was_nonfinite(self, stage: str) -> None:
        """Raise if any evaluation loss of this epoch (on any process) was NaN or Inf: the weights are broken
        and the metrics meaningless; in ``fit`` this stops the run before the validation's checkpoint."""
        flag, self._eval_nonfinite = self._eval_nonfinite, None
        broken = flag is not None and bool(flag)
        if self.trainer.world_size > 1:
            broken = self.trainer.strategy.reduce_boolean_decision(broken, all=False)
        if broken:
            raise FloatingPointError(
                f"The {stage} loss is non-finite (NaN or Inf) at step {self.global_step}: the weights produce "
                f"non-finite scores, so no metric or checkpoint is written from them. Lower model.lr (training), "
                f"or use another checkpoint (evaluation)")

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> list[torch.Tensor]:
        return self._eval_step(batch, self.val_metrics, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> list[torch.Tensor]:
        return self._eval_step(batch, self.test_metrics, "test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[torch.Tensor]:
        """Predicted labels per image, [h_i, w_i] each (refined when the CRF is configured)."""
        return [lg.argmax(0) for lg in self.predict_scores(batch)[0]]

    def _log_epoch(self, metrics: SegmentationMetrics, stage: str) -> None:
        results = metrics.compute()
        metrics.reset()
        if self.trainer.sanity_checking:  # the untrained network's numbers: never reported as results
            return
        self._results[stage] = EvaluationResults(
            mIoU=float(results["mIoU"]), pixel_acc=float(results["pixel_acc"]), iou=results["iou"].cpu(),
            confmat=results["confmat"].cpu(), step=self.weights_step)
        self.log(f"{stage}/mIoU", results["mIoU"])
        self.log(f"{stage}/pixel_acc", results["pixel_acc"])
        for name, iou in zip(self.class_names, results["iou"]):
            self.log(f"{stage}/iou/{name}", iou)

    def _end_evaluation(self, metrics: SegmentationMetrics, stage: str) -> None:
        self._raise_if_eval_was_nonfinite("validation" if stage == "val" else stage)
        self._log_epoch(metrics, stage)
        if self.inference.crf is not None:
            self._log_epoch(self.unrefined_metrics[stage], f"{stage}/unrefined")
        else:  # an earlier evaluation's numbers before refinement are not this one's
            self._results.pop(f"{stage}/unrefined", None)

    def on_validation_epoch_end(self) -> None:
        self._end_evaluation(self.val_metrics, "val")

    def on_test_epoch_end(self) -> None:
        self._end_evaluation(self.test_metrics, "test")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._raise_if_loss_was_nonfinite()  # never overwrite a good checkpoint with weights a NaN step broke
        floats = [(name, t) for name, t in checkpoint["state_dict"].items() if t.is_floating_point()]
        finite = torch.stack([t.isfinite().all() for _, t in floats]).cpu()  # one host sync per checkpoint
        if not finite.all():
            broken = [name for (name, _), ok in zip(floats, finite.tolist()) if not ok]
            raise FloatingPointError(f"Not saving the checkpoint of step {self.global_step}: {len(broken)} weight "
                                     f"tensors are non-finite ({', '.join(broken[:3])}...). Lower model.lr; the "
                                     f"run's earlier checkpoints are unchanged")
        checkpoint["run_info"] = run_info()
        checkpoint["skipped_steps"] = self.skipped_steps

    @classmethod
    def from_checkpoint(cls, path: str | Path, map_location: str | torch.device = "cpu") -> SegmentationModule:
        """The trained module of a checkpoint, in eval mode, without downloading anything (no pretrained
        weights are fetched: the checkpoint holds every weight). Errors name the file."""
        from .checkpoint_io import AtomicCheckpointIO

        checkpoint = AtomicCheckpointIO().load_checkpoint(path, map_location=map_location, weights_only=False)
        accepted = inspect.signature(cls).parameters  # LightningCLI also saves its own keys (_instantiator)
        hparams = {k: v for k, v in checkpoint.get("hyper_parameters", {}).items() if k in accepted}
        with architectures_only():
            module = cls(**{**hparams, "compile": False})
        module.load_state_dict(checkpoint["state_dict"])
        return module.to(map_location).eval()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint of another architecture or number of classes, naming both."""
        self.skipped_steps = checkpoint.get("skipped_steps", 0)
        self._checkpoint_step = checkpoint.get("global_step")
        saved = checkpoint.get("hyper_parameters", {})
        for key in ("arch", "num_classes"):
            if key in saved and key in self.hparams and saved[key] != self.hparams[key]:
                raise ValueError(f"The checkpoint was trained with {key}={saved[key]!r} but the config builds "
                                 f"{key}={self.hparams[key]!r}; use the checkpoint's {key} or another checkpoint")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        hp = self.hparams
        groups = parameter_groups(self.net, hp.lr, hp.weight_decay, hp.head_lr_mult)
        fused = hp.fused_optimizer if hp.fused_optimizer is not None else self.device.type in ("cuda", "cpu")
        implementation = {"fused": True} if fused else {}
        if hp.optimizer == "adamw":
            return torch.optim.AdamW(groups, lr=hp.lr, **implementation)
        return torch.optim.SGD(groups, lr=hp.lr, momentum=hp.momentum, **implementation)
