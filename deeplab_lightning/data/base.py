"""Shared LightningDataModule logic: splits -> datasets -> loaders."""
from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Literal

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from ..compat import loop_position
from .cache import open_split
from .dataset import (IGNORE_INDEX, Sample, SegmentationDataset, image_size, pad_collate, pad_collate_own_canvas,
                      smallest_eval_size)
from .sampling import EvalSampler, TrainSampler, per_process_batch
from .transforms import RandomScaleCrop, size_pair

# Lightning warns that a mid-epoch resume is unreliable unless the loader has a state_dict; the training
# sampler here continues exactly from the restored loop progress instead (see TrainSampler).
warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch ended")


class SegmentationDataModule(L.LightningDataModule):
    """The dataset: VOCDataModule, CityscapesDataModule, FolderDataModule, ImageFolderDataModule, ToyVOCDataModule

    Subclasses define ``class_names``, ``palette`` and ``samples(split)``, and may declare another
    ``ignore_index`` (the void label, 255 here), which the command links into the model: loss, metrics, padding
    and reports use this one value.

    Training crops are random-scaled, cropped and flipped (:class:`~.transforms.RandomScaleCrop`, which computes
    only the crop's pixels) and padded to the crop size (mask with the ignore label; the module fills the image
    padding with the network's mean pixel); validation and test use full
    images at their original resolution (no crop, no resize of the labels). Images reach the model as uint8
    RGB: the network normalises them for its backbone.

    Under DDP each process reads its own shard: training by :class:`TrainSampler` (order and augmentation
    a function of seed, epoch and position, so a run resumed mid-epoch continues with the very batches it
    would have seen), evaluation by :class:`EvalSampler` (no sample repeated, so metrics stay exact).

    Args:
        train_split, val_split, test_split: split names understood by ``samples``.
        crop_size: training crop, an int or (H, W).
        scale_range: random scale range of training images.
        scale_step: draw the scale from ``low, low + step, ..., high`` (the TF reference: 0.25); ``null`` draws
            it uniformly from the range.
        batch_size: the **global** training batch (the papers' number); each of the N processes loads
            ``batch_size / N``.
        val_batch_size: evaluation batch per process (the metric does not depend on it).
        eval_size: the one canvas (H, W) every validation, test and predict image is padded to (image with
            the network's mean pixel, mask with the ignore label), so the network sees one input shape (one
            per scale) and cuDNN autotuning and ``torch.compile`` tune once, as in the TF reference.
            ``"auto"`` (the default but for VOC, 513, and Cityscapes, 1025 x 2049, the TF reference's eval crops):
            each image on its own smallest ``16k + 1`` canvas, read from its header, batches grouped by canvas, so
            an image's scores depend on nothing else in the split (and equal ``load(...).predict(image)``); an int
            or [H, W] sets one canvas (larger images then run alone, window by window at that size); ``null`` runs
            each image alone at its own size.
        cache_dir: where ``deeplab-lightning cache`` writes each split decoded (:mod:`~.cache`) and where it is
            looked for; default ``<data_dir>/decoded``.
        use_cache: read a split from its decoded store when there is one (an out-of-date store is an error
            that names the changed file); false reads the image files always.
        num_workers, pin_memory, persistent_workers, prefetch_factor: DataLoader settings (``pin_memory`` only
            where CUDA is available; ``prefetch_factor`` batches loaded ahead by each worker).
    """

    class_names: Sequence[str] = ()
    palette: Sequence[tuple[int, int, int]] = ()
    label_map: np.ndarray | None = None  # raw label id -> train id lookup table (Cityscapes)
    ignore_index: int = IGNORE_INDEX
    # Whether the void label marks object boundaries (a thin band along every object edge, as in VOC): then the
    # trimap of the boundary metrics (model.boundary_metrics.trimap_band: auto) is the papers' band around void
    # pixels, else the band around label boundaries.
    void_marks_boundaries: bool = False

    def __init__(
        self,
        *,
        train_split: str = "train",
        val_split: str = "val",
        test_split: str = "val",
        crop_size: int | tuple[int, int] = 513,
        scale_range: tuple[float, float] = (0.5, 2.0),
        scale_step: float | None = None,
        batch_size: int = 16,
        val_batch_size: int = 1,
        eval_size: int | tuple[int, int] | Literal["auto"] | None = "auto",
        cache_dir: str | None = None,
        use_cache: bool = True,
        num_workers: int = 4,
        pin_memory: bool = True,
        persistent_workers: bool = True,
        prefetch_factor: int = 2,
    ) -> None:
        super().__init__()
        self.train_split, self.val_split, self.test_split = train_split, val_split, test_split
        self.crop_size = size_pair(crop_size)
        self.scale_range = scale_range
        self.scale_step = scale_step
        RandomScaleCrop(self.crop_size, scale_range, scale_step)  # a bad range or step is named here, not in a worker
        for name, value in (("batch_size", batch_size), ("val_batch_size", val_batch_size)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"data.{name} must be a positive number of images, got {value!r}")
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size
        self.eval_size = eval_size if eval_size in ("auto", None) else size_pair(eval_size, "eval_size")
        self.cache_dir = cache_dir
        self.use_cache = use_cache
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers
        if not isinstance(prefetch_factor, int) or prefetch_factor < 1:
            raise ValueError(f"data.prefetch_factor must be a positive number of batches, got {prefetch_factor!r}")
        self.prefetch_factor = prefetch_factor

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def samples(self, split: str) -> list[Sample]:  # pragma: no cover - abstract
        raise NotImplementedError

    def decoded_dir(self, split: str) -> Path | None:
        """The folder of ``split``'s decoded store (see ``cache_dir``); None without a data_dir or cache_dir."""
        if self.cache_dir is not None:
            return Path(self.cache_dir) / split
        data_dir = getattr(self, "data_dir", None)
        return Path(data_dir) / "decoded" / split if data_dir is not None else None

    def dataset(self, split: str, train: bool = False, cached: bool = True) -> SegmentationDataset:
        """The dataset of ``split``, with the training augmentation when ``train``, read from its decoded store
        when there is one (unless ``cached`` or ``use_cache`` is false)."""
        transform = RandomScaleCrop(self.crop_size, self.scale_range, self.scale_step) if train else None
        dataset = SegmentationDataset(self.samples(split), self.num_classes, transform, self.label_map,
                                      self.ignore_index)
        folder = self.decoded_dir(split)
        if cached and self.use_cache and folder is not None:
            dataset.cache = open_split(folder, dataset)
        return dataset

    def state_dict(self) -> dict[str, int]:
        """Saved in checkpoints: the global training batch, which a resumed fit must keep."""
        return {"batch_size": self.batch_size}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        """Refuse to resume a fit with another global batch size: the learning-rate schedule's meaning and the
        resumed sample order (which skips the batches already seen) depend on it."""
        saved = state_dict.get("batch_size")
        resuming = self.trainer is not None and self.trainer.state.fn == "fit"
        if resuming and saved is not None and saved != self.batch_size:
            raise ValueError(f"The checkpoint was trained with data.batch_size={saved} but this fit has "
                             f"{self.batch_size}; resume with --data.init_args.batch_size {saved} and the same "
                             f"number of devices, or start a new run from the weights")

    def _process_group(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def _train_sampler(self, dataset: SegmentationDataset, batch_size: int) -> TrainSampler:
        world_size, rank = self._process_group()
        sampler = TrainSampler(len(dataset), world_size, rank, seed=int(os.environ.get("PL_GLOBAL_SEED", 0)))
        trainer = self.trainer
        if trainer is not None:
            # Lightning creates the first iterator before it calls set_epoch, and a resumed run starts
            # mid-epoch: take both from the (restored) loop state, and skip the batches already trained on.
            epoch, done = loop_position(trainer)
            sampler.set_epoch(epoch)
            per_epoch = len(sampler) // batch_size
            sampler.skip_batches(done if done < per_epoch else 0, batch_size)
        return sampler

    def _loader(self, split: str, train: bool) -> DataLoader:
        """The loader of ``split``: training crops, or evaluation images on ``eval_size`` (``auto``: each image on
        its own smallest canvas, batches grouped by canvas)."""
        dataset = self.dataset(split, train=train)
        world_size, rank = self._process_group()
        batching: dict = {"drop_last": train}
        if train:
            batch_size = per_process_batch(self.batch_size, world_size)
            if len(dataset) < self.batch_size:  # every batch is full (drop_last): not one step would train
                raise ValueError(f"The {split} split has {len(dataset)} images, fewer than one batch "
                                 f"(data.batch_size {self.batch_size}): nothing would train. Lower "
                                 f"data.batch_size to at most {len(dataset)}, or add images")
            batching.update(batch_size=batch_size, sampler=self._train_sampler(dataset, batch_size))
            collate = partial(pad_collate, size=self.crop_size, ignore_index=self.ignore_index)
        elif self.eval_size == "auto":  # images grouped by canvas, so that a batch mostly shares one
            canvases = [smallest_eval_size([image_size(s.image)]) for s in dataset.samples]
            order = sorted(range(len(dataset)), key=lambda i: canvases[i])
            sampler = EvalSampler(len(dataset), world_size, rank, order)
            batching.update(batch_size=self.val_batch_size, sampler=sampler)
            collate = partial(pad_collate_own_canvas, ignore_index=self.ignore_index)
        else:
            batching.update(batch_size=self.val_batch_size, sampler=EvalSampler(len(dataset), world_size, rank))
            collate = partial(pad_collate, size=self.eval_size, ignore_index=self.ignore_index, fixed=True)
        return DataLoader(
            dataset,
            **batching,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.persistent_workers and self.num_workers > 0,
            prefetch_factor=self.prefetch_factor if self.num_workers > 0 else None,
            collate_fn=collate,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_split, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_split, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_split, train=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test_split, train=False)
