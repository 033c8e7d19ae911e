"""The optimizer: SGD (the papers') or AdamW over the network's declared parameter groups."""
from __future__ import annotations

import torch
from torch import nn

from ..models.deeplab import parameter_groups_of


def parameter_groups(model: nn.Module, lr: float, weight_decay: float, head_lr_mult: float) -> list[dict]:
    """Optimizer parameter groups from the groups the network declares (``backbone`` at ``lr``, ``head`` at
    ``lr * head_lr_mult``; see :func:`~deeplab_lightning.models.deeplab.parameter_groups_of`). DeepLab V1/V2
    train the new classifier at 10x (V1 section 4.1: 0.001, "0.01 for the final classifier layer").

    Weight decay applies to conv/linear weights only: not to BatchNorm parameters and biases, nor to depthwise
    conv weights (``regularize_depthwise=False`` in the TF reference's Xception and MobileNet scopes), nor to what
    the network lists in ``parameters_without_weight_decay()`` (a trainable CRF's kernel weights and
    compatibility). Each group carries a ``name`` (``backbone``, ``backbone_no_decay``, ``head``,
    ``head_no_decay``); schedules scale each group's initial lr, so the ratio is kept.
    """
    declared = parameter_groups_of(model)
    no_decay = {id(p) for p in getattr(model, "parameters_without_weight_decay", list)()}
    no_decay |= {id(m.weight) for m in model.modules()
                 if isinstance(m, nn.Conv2d) and 1 < m.groups == m.in_channels}  # depthwise
    result = []
    for part in sorted(declared):
        trainable = [p for p in declared[part] if p.requires_grad]
        for decay in (False, True):
            params = [p for p in trainable if (p.ndim > 1 and id(p) not in no_decay) == decay]
            if params:
                result.append({"params": params, "name": f"{part}{'' if decay else '_no_decay'}",
                               "lr": lr * (1.0 if part == "backbone" else head_lr_mult),
                               "weight_decay": weight_decay if decay else 0.0})
    return result


def build_optimizer(model: nn.Module, kind: str, *, lr: float, momentum: float, weight_decay: float,
                    head_lr_mult: float, fused: bool) -> torch.optim.Optimizer:
    """``kind`` ``"sgd"`` (with ``momentum``) or ``"adamw"`` over :func:`parameter_groups`; ``fused``: one kernel
    for all parameters."""
    groups = parameter_groups(model, lr, weight_decay, head_lr_mult)
    implementation = {"fused": True} if fused else {}
    if kind == "adamw":
        return torch.optim.AdamW(groups, lr=lr, **implementation)
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, **implementation)
