"""Building the network a module trains: a DeepLab variant by name (or any ``nn.Module``), optionally followed by
the trainable CRF, started from a checkpoint's weights, with the BatchNorm settings applied."""
from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any, Literal

import torch
from torch import nn

from ..runs.checkpoints import AtomicCheckpointIO
from ..evaluation.crf import CRFSettings
from ..evaluation.crf_rnn import TrainableDenseCRF, WithCRF
from ..models import create_model
from ..models.convert import loading_weights

BatchNorm = nn.modules.batchnorm._BatchNorm


def build_network(arch: str | nn.Module, num_classes: int, *, output_stride: int | None = None,
                  pretrained_backbone: bool = False, weights: str | None = None,
                  model_kwargs: dict[str, Any] | None = None, crf_rnn: dict[str, Any] | None = None,
                  init_checkpoint: str | None = None, bn_momentum: float | None = None,
                  freeze_bn: bool | Literal["statistics"] = False,
                  memory_format: torch.memory_format = torch.contiguous_format,
                  compile: bool | dict[str, Any] = False) -> nn.Module:
    """The network of ``SegmentationModule`` (its arguments of the same names), in ``memory_format``."""
    loads_weights = pretrained_backbone or weights is not None or init_checkpoint is not None
    if freeze_bn and not (loads_weights or isinstance(arch, nn.Module)):
        raise ValueError("model.freeze_bn keeps BatchNorm statistics as loaded, but this config "
                         "loads no weights (model.pretrained_backbone false, no model.weights or "
                         "model.init_checkpoint): the initial statistics would let the activations diverge. "
                         "Set model.freeze_bn false, or load pretrained weights")
    net = _network(arch, num_classes, output_stride, pretrained_backbone, weights, model_kwargs, crf_rnn,
                   init_checkpoint)
    if bn_momentum is not None:
        for m in batch_norms(net):
            m.momentum = bn_momentum
    if freeze_bn not in (False, True, "statistics"):
        raise ValueError(f"model.freeze_bn must be false, true or statistics, got {freeze_bn!r}")
    if freeze_bn:
        for m in frozen_batch_norms(net, freeze_bn):
            if freeze_bn is True:
                m.requires_grad_(False)
            m.eval()  # Lightning's loops restore each module's own mode flag, so eval here is kept in training
        # Lightning's notice about those eval-mode modules: they are meant to be.
        warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")
    net.to(memory_format=memory_format)
    if compile:
        net.compile(**(compile if isinstance(compile, dict) else {}))
    return net


def _network(arch: str | nn.Module, num_classes: int, output_stride: int | None, pretrained_backbone: bool,
             weights: str | None, model_kwargs: dict[str, Any] | None, crf_rnn: dict[str, Any] | None,
             init_checkpoint: str | None) -> nn.Module:
    if isinstance(arch, nn.Module):
        net = arch
    else:
        net = create_model(arch, num_classes, output_stride=output_stride, pretrained_backbone=pretrained_backbone,
                           weights=weights, **(model_kwargs or {}))
    if crf_rnn is not None:
        net = WithCRF(net, TrainableDenseCRF(num_classes, CRFSettings(**crf_rnn)))
    if init_checkpoint is not None and loading_weights():
        load_network_weights(net, init_checkpoint, model_kwargs)
    return net


# model_kwargs that change what the same weights compute (input range, BatchNorm epsilon, layout, upsampling),
# with their defaults.
NUMERIC_MODEL_KWARGS = {"backbone_kwargs": {}, "upsampling": "input_size"}


def check_numeric_model_kwargs(theirs: dict[str, Any] | None, ours: dict[str, Any] | None, source: str) -> None:
    """Raise, naming ``source`` (a checkpoint), unless its ``model_kwargs`` (``theirs``) and the config's (``ours``)
    set the same :data:`NUMERIC_MODEL_KWARGS` (a key left out is its default)."""
    for key, default in NUMERIC_MODEL_KWARGS.items():
        saved, built = [default if (kwargs or {}).get(key) is None else kwargs[key] for kwargs in (theirs, ours)]
        if saved != built:
            raise ValueError(f"{source} was built with model.model_kwargs.{key}={saved!r} but the config builds "
                             f"{built!r}; it sets what the weights compute (input range, BatchNorm epsilon, backbone "
                             f"layout, upsampling): use the checkpoint's")


def load_network_weights(net: nn.Module, path: str, model_kwargs: dict[str, Any] | None = None) -> None:
    """The network weights of a checkpoint (``net.`` keys of its state dict); those of a network without the
    trainable CRF go into the network under it (the CRF keeps its initial parameters). A checkpoint whose network
    was built with other :data:`NUMERIC_MODEL_KWARGS` than ``model_kwargs`` (what the same tensors compute: a
    converted TF or Caffe model's input range, BatchNorm epsilon, layout) is refused."""
    checkpoint = AtomicCheckpointIO().load_checkpoint(path, map_location="cpu")
    saved = checkpoint.get("hyper_parameters")
    if saved is not None:
        check_numeric_model_kwargs(saved.get("model_kwargs"), model_kwargs, f"model.init_checkpoint {path}")
    state = checkpoint["state_dict"]
    weights = {k[len("net."):]: v for k, v in state.items() if k.startswith("net.")}
    has_crf = any(k.startswith("crf.") for k in weights)
    target = net.net if isinstance(net, WithCRF) and not has_crf else net
    try:
        target.load_state_dict(weights)
    except RuntimeError as err:
        raise ValueError(f"model.init_checkpoint {path} holds another network than this config builds "
                         f"(arch, num_classes, model_kwargs must match): {str(err).splitlines()[0]}") from err


def batch_norms(module: nn.Module) -> Iterator[BatchNorm]:
    """Every BatchNorm layer of ``module``."""
    return (m for m in module.modules() if isinstance(m, BatchNorm))


def backbone_batch_norms(net: nn.Module) -> list[BatchNorm]:
    """The BatchNorms of the network's backbone (the whole network when it has none)."""
    return list(batch_norms(getattr(net, "backbone", net)))


def frozen_batch_norms(net: nn.Module, freeze_bn: bool | str) -> list[BatchNorm]:
    """The BatchNorms that normalise with their stored statistics in training too: none (``False``), the
    backbone's (``True``, with their affine parameters, as V2's Caffe ResNet: ``use_global_stats``, ``lr_mult:
    0``; the heads' new BatchNorms train), or every one (``"statistics"``, affine parameters still trained: the
    TF reference's ``fine_tune_batch_norm=False``, V3's OS 8 fine-tuning on trainval, section 4.1)."""
    if not freeze_bn:
        return []
    return list(batch_norms(net)) if freeze_bn == "statistics" else backbone_batch_norms(net)
