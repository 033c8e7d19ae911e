"""The optimizer: SGD (the papers') or AdamW over the network's declared parameter groups."""
from __future__ import annotations

import torch
from torch import nn

from ..models.deeplab import parameter_groups_of


def parameter_groups(model: nn.Module, lr: float, weight_decay: float, head_lr_mult: float,
                     bias_lr_mult: float = 1.0) -> list[dict]:
    """Optimizer parameter groups from the groups the network declares (``backbone`` at ``lr``, ``head`` at
    ``lr * head_lr_mult``; see :func:`~deeplab_lightning.models.deeplab.parameter_groups_of`). DeepLab V1/V2
    train the new classifier at 10x (V1 section 4.1: 0.001, "0.01 for the final classifier layer").

    Weight decay applies to conv/linear weights only: not to BatchNorm parameters and biases, nor to depthwise
    conv weights (``regularize_depthwise=False`` in the TF reference's Xception and MobileNet scopes), nor to what
    the network lists in ``parameters_without_weight_decay()`` (a trainable CRF's kernel weights and
    compatibility). Each group carries a ``name`` (``backbone``, ``backbone_no_decay``, ``head``,
    ``head_no_decay``); schedules scale each group's initial lr, so the ratio is kept.

    ``bias_lr_mult`` (not 1) moves convolution and linear biases into ``backbone_bias`` / ``head_bias`` at that
    multiple of their part's lr: 2 in DeepLab's Caffe models (``lr_mult: 2`` on every bias, V1/V2) and in the TF
    reference (``get_model_gradient_multipliers`` doubles every ``biases`` variable; its ResNet and Xception
    convolutions have none, so there it is the logits' bias).
    """
    declared = parameter_groups_of(model)
    no_decay = {id(p) for p in getattr(model, "parameters_without_weight_decay", list)()}
    no_decay |= {id(m.weight) for m in model.modules()
                 if isinstance(m, nn.Conv2d) and 1 < m.groups == m.in_channels}  # depthwise
    biases = {id(m.bias) for m in model.modules()
              if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None} if bias_lr_mult != 1.0 else set()
    result = []
    for part in sorted(declared):
        part_lr = lr * (1.0 if part == "backbone" else head_lr_mult)
        trainable = [p for p in declared[part] if p.requires_grad]
        kinds = {"": [p for p in trainable if p.ndim > 1 and id(p) not in no_decay],
                 "_no_decay": [p for p in trainable if (p.ndim <= 1 or id(p) in no_decay) and id(p) not in biases],
                 "_bias": [p for p in trainable if id(p) in biases]}
        for suffix in ("_no_decay", "", "_bias"):
            if kinds[suffix]:
                result.append({"params": kinds[suffix], "name": f"{part}{suffix}",
                               "lr": part_lr * (bias_lr_mult if suffix == "_bias" else 1.0),
                               "weight_decay": weight_decay if suffix == "" else 0.0})
    return result


def build_optimizer(model: nn.Module, kind: str, *, lr: float, momentum: float, weight_decay: float,
                    head_lr_mult: float, fused: bool, bias_lr_mult: float = 1.0) -> torch.optim.Optimizer:
    """``kind`` ``"sgd"`` (with ``momentum``) or ``"adamw"`` over :func:`parameter_groups`; ``fused``: one kernel
    for all parameters."""
    groups = parameter_groups(model, lr, weight_decay, head_lr_mult, bias_lr_mult)
    implementation = {"fused": True} if fused else {}
    if kind == "adamw":
        return torch.optim.AdamW(groups, lr=lr, **implementation)
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, **implementation)
