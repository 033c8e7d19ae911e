"""Filling a network's state dict from another framework's named tensors, every tensor used exactly once.

A converter names, for each tensor of the state dict, the source tensor(s) it comes from and how their layout
changes (:data:`Rule`); :func:`fill` applies the rules and refuses, naming them, source tensors no rule used,
tensors used twice, state tensors no rule fills and shapes that do not fit.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

Transform = Callable[..., np.ndarray]


@dataclass(frozen=True)
class Rule:
    """One state-dict tensor from the source tensors ``names`` through ``transform`` (their arrays, in order,
    then those of ``shared``: tensors that several rules read, e.g. Caffe's BatchNorm normaliser, which divides
    both the stored mean and variance)."""

    names: tuple[str, ...]
    transform: Transform = lambda x: x
    shared: tuple[str, ...] = ()


class MappingError(ValueError):
    """The source's tensors do not make the network (missing, unused, twice used or misshapen tensors)."""


def _listed(items: Sequence[str], limit: int = 8) -> str:
    items = list(items)
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def fill(net: nn.Module, rules: dict[str, Rule], tensors: dict[str, np.ndarray], where: str) -> dict[str, torch.Tensor]:
    """``net``'s state dict with every tensor that ``rules`` names taken from ``tensors`` (``where``: the source,
    for the errors). BatchNorm's ``num_batches_tracked`` counters, which no framework stores, are 0; every other
    state tensor needs a rule and every source tensor must be used exactly once. ``net`` may live on the meta
    device (only its tensors' names, shapes and dtypes are read)."""
    state = net.state_dict()
    unfilled = [k for k in state if k not in rules and not k.endswith("num_batches_tracked")]
    if unfilled:
        raise MappingError(f"{where}: no source tensor for {len(unfilled)} of the network's tensors "
                           f"({_listed(unfilled)}): the checkpoint is of another architecture")
    used = Counter(name for rule in rules.values() for name in rule.names)
    read = set(used) | {name for rule in rules.values() for name in rule.shared}
    missing = sorted(name for name in read if name not in tensors)
    if missing:
        raise MappingError(f"{where} lacks {len(missing)} tensor(s) the network needs ({_listed(missing)}): the "
                           f"checkpoint is of another architecture or incomplete")
    twice = sorted(name for name, count in used.items() if count > 1)
    if twice:
        raise MappingError(f"the conversion would use {_listed(twice)} of {where} more than once")
    unused = sorted(name for name in tensors if name not in read)
    if unused:
        raise MappingError(f"{where} holds {len(unused)} model tensor(s) the network has no place for "
                           f"({_listed(unused)}): the checkpoint is of another architecture than the one built")
    out = {k: torch.zeros_like(v, device="cpu") for k, v in state.items() if k.endswith("num_batches_tracked")}
    for key, rule in rules.items():
        if key not in state:
            raise MappingError(f"internal: a rule fills {key}, which the network does not have")
        value = np.ascontiguousarray(rule.transform(*(tensors[name] for name in (*rule.names, *rule.shared))))
        if tuple(value.shape) != tuple(state[key].shape):
            raise MappingError(f"{where}: {' + '.join(rule.names)} has shape {list(value.shape)} after conversion, "
                               f"the network's {key} {list(state[key].shape)}")
        out[key] = torch.from_numpy(value).to(state[key].dtype)
    return out


def conv_hwio(weight: np.ndarray) -> np.ndarray:
    """A TF convolution [kh, kw, in, out] as PyTorch's [out, in, kh, kw]."""
    return weight.transpose(3, 2, 0, 1)


def depthwise_hwcm(weight: np.ndarray) -> np.ndarray:
    """A TF depthwise convolution [kh, kw, in, multiplier] as PyTorch's grouped [in * multiplier, 1, kh, kw]
    (TF's output channel ``c * multiplier + m`` is group ``c``'s ``m``-th filter, as in PyTorch)."""
    kh, kw, channels, mult = weight.shape
    return weight.reshape(kh, kw, channels * mult, 1).transpose(2, 3, 0, 1)


def then(first: Transform, second: Callable[[np.ndarray], np.ndarray]) -> Transform:
    """``second`` applied to ``first``'s result."""
    return lambda *arrays: second(first(*arrays))
