"""Samplers that make data order and augmentation a pure function of (seed, epoch, position).

That is what lets a run killed mid-epoch resume exactly, and lets the same seed give the same batches
whatever the number of data-loader workers. Both samplers shard across processes themselves (they subclass
``DistributedSampler``, so Lightning does not replace them under DDP).
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import DistributedSampler


def derive_seed(*parts: int) -> int:
    """A 63-bit seed mixed from integers, e.g. (seed, epoch, index) for one training item's augmentation."""
    value = 0
    for part in parts:
        value = (value * 2_147_483_647 + int(part) + 1) % (2**63 - 1)
    return value


class TrainSampler(DistributedSampler):
    """Shuffled training order, a fresh permutation per epoch, ``drop_last`` across processes.

    Yields ``(index, seed)`` pairs: :class:`SegmentationDataset` seeds the random transforms of that
    item with the second value. ``skip_batches(n, batch_size)`` drops the first ``n`` batches of the next
    iteration only, which is how a resumed run continues mid-epoch without repeating data.

    Args:
        num_samples: dataset length.
        num_replicas, rank: the process group (1 and 0 without DDP).
        seed: base seed, the same on every process.
    """

    def __init__(self, num_samples: int, num_replicas: int = 1, rank: int = 0, seed: int = 0) -> None:
        super().__init__(range(num_samples), num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed,
                         drop_last=True)
        self._skip = 0

    def skip_batches(self, batches: int, batch_size: int) -> None:
        self._skip = batches * batch_size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.dataset), generator=generator)[: self.total_size]
        mine = order[self.rank :: self.num_replicas].tolist()[self._skip :]
        self._skip = 0
        return iter([(i, derive_seed(self.seed, self.epoch, i)) for i in mine])


class EvalSampler(DistributedSampler):
    """Dataset order (or ``order``), split across processes **without** padding (``DistributedSampler`` repeats
    samples to even out the shards, which would count them twice in the metric). Processes may get one item more
    or less; the metrics are summed across processes once at the end of the epoch."""

    def __init__(self, num_samples: int, num_replicas: int = 1, rank: int = 0,
                 order: Sequence[int] | None = None) -> None:
        super().__init__(range(num_samples), num_replicas=num_replicas, rank=rank, shuffle=False)
        self.num_samples = len(range(rank, num_samples, num_replicas))
        self.total_size = num_samples
        self.order = list(order) if order is not None else None  # e.g. images grouped by evaluation canvas

    def __iter__(self) -> Iterator[int]:
        indices = self.order if self.order is not None else range(len(self.dataset))
        return iter(indices[self.rank :: self.num_replicas])


def per_process_batch(batch_size: int, world_size: int) -> int:
    """The per-process share of a global ``batch_size``; raises when it does not divide evenly."""
    if batch_size % world_size:
        raise ValueError(
            f"data.batch_size={batch_size} is the global batch (as in the papers) and must be divisible by the "
            f"number of processes ({world_size} = devices x nodes); choose a batch size that is a multiple "
            f"of {world_size}, or another number of devices")
    return batch_size // world_size


__all__ = ["EvalSampler", "TrainSampler", "derive_seed", "per_process_batch"]
