"""Per-image confusion matrices of every evaluation, saved with the run, and a gallery of its worst images."""
from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info

from ..data.classes import voc_palette
from ..evaluation.per_image import per_image_miou
from ..evaluation.gallery import GalleryImage, gallery_figure, save_gallery, thumbnail, worst_images
from ..runs.folder import numbered_candidates

STAGES = ("fit", "validate", "test")


def image_confusion_matrices(predictions: Sequence[torch.Tensor], targets: Sequence[torch.Tensor],
                             num_classes: int, ignore_index: int) -> torch.Tensor:
    """Each image's confusion matrix (rows: target, columns: prediction), counted on their device without a host
    sync: predictions and targets [h_i, w_i] -> [N, C, C] int64. Pixels labelled ``ignore_index`` (or outside
    [0, C)) are left out, as :class:`~deeplab_lightning.evaluation.SegmentationMetrics` leaves them out."""
    n, cells = len(predictions), num_classes * num_classes
    if n == 0:
        return torch.zeros(0, num_classes, num_classes, dtype=torch.long)
    index = []
    for i, (pred, target) in enumerate(zip(predictions, targets)):
        if pred.shape != target.shape:
            raise ValueError(f"prediction {list(pred.shape)} and target {list(target.shape)} of image {i} differ")
        target = target.long()
        valid = (target != ignore_index) & (target >= 0) & (target < num_classes)
        index.append(torch.where(valid, i * cells + target * num_classes + pred.long(), n * cells).flatten())
    flat = torch.cat(index)
    counts = torch.zeros(n * cells + 1, dtype=torch.long, device=flat.device)
    counts.index_add_(0, flat, torch.ones_like(flat))
    return counts[:n * cells].view(n, num_classes, num_classes)


def publish(write: Callable[[Path], None], target: Path) -> bool:
    """Write a file through ``write(temporary)`` in ``target``'s folder, then give it ``target``'s name unless that
    exists (a hard link, atomic and never overwriting; where links are unsupported, a rename after a check).
    Returns False, writing nothing, when ``target`` exists; a failed write is an ``OSError`` naming ``target``."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        try:
            os.link(tmp, target)
        except FileExistsError:
            return False
        except OSError:  # a file system without hard links
            if target.exists():
                return False
            os.replace(tmp, target)
        return True
    except OSError as err:
        raise OSError(err.errno, f"Cannot write {target} ({err.strerror or err}); free space on its disk or set "
                                 f"PerImageConfusion's folder") from err
    finally:
        tmp.unlink(missing_ok=True)


class PerImageConfusion(L.Callback):
    """Saves each evaluation's per-image confusion matrices, and a gallery of its worst images, with the run.

    From each evaluation batch's predicted labels (what the module's ``validation_step`` / ``test_step`` returns:
    one [h, w] tensor per image at its own extent, and ``.unrefined``, those before the dense CRF, when it runs)
    and ``batch["mask"][i, :h, :w]``, it counts each image's C x C confusion matrix on the device. At the end of
    the split the matrices are gathered from every process (the evaluation sampler shards the split without
    repeats; a repeated id is refused) and checked against the evaluator's split matrix (their sum must equal it),
    and rank 0 writes, in ``folder`` (default ``<trainer.default_root_dir>/evaluations``):

    - ``<label>.npz`` (default label ``<stage>_step<step>``, stage ``val`` or ``test``): ``ids`` [N] str (sorted),
      ``confmat`` [N, C, C] int64, ``class_names`` [C], ``step``, ``stage``, ``split``, ``inference`` and
      ``unrefined`` (False); read it with :func:`deeplab_lightning.evaluation.per_image.read_per_image`;
    - ``<label>_unrefined.npz``: the same before the dense CRF, when the CRF runs (``unrefined`` True);
    - ``<label>_worst.png``: the ``worst`` images of lowest per-image mIoU (image, ground truth, prediction, with
      the class legend); its PNG ``Description`` lists their ids and mIoU. ``worst=0``: no gallery.

    Files are compressed, written whole (a temporary file renamed) and never replace another evaluation's: the
    first free ``<label>``, ``<label>-2``, ``<label>-3`` ... is taken. Memory: the matrices (N x C x C int64 on
    the device, 3.6 MB for VOC val) and ``worst`` thumbnails per process; for the gallery, each batch's per-image
    mIoU is read to the host (one small transfer per batch).

    Args:
        folder: where to write (None: ``<trainer.default_root_dir>/evaluations``).
        label: the files' name (None: ``<stage>_step<step>``, the step of the weights evaluated).
        worst: how many of the worst images the gallery shows (0: none).
        thumbnail: longest side of each gallery image, in pixels.
        stages: the trainer functions it saves in: ``fit`` (every validation of a fit), ``validate``, ``test``.
    """

    def __init__(self, folder: str | None = None, label: str | None = None, worst: int = 8, thumbnail: int = 160,
                 stages: Sequence[str] = STAGES) -> None:
        unknown = set(stages) - set(STAGES)
        if unknown:
            raise ValueError(f"PerImageConfusion stages {sorted(unknown)} unknown; use {', '.join(STAGES)}")
        if worst < 0 or thumbnail < 1:
            raise ValueError(f"PerImageConfusion needs worst >= 0 and thumbnail >= 1, got worst={worst}, "
                             f"thumbnail={thumbnail}")
        if label is not None and (not label or Path(label).name != label or label.startswith(".")):
            raise ValueError(f"PerImageConfusion label {label!r} must be a plain file name (no folder, not hidden)")
        self.folder, self.label, self.worst, self.thumbnail = folder, label, worst, thumbnail
        self.stages = tuple(stages)
        self.written: list[dict[str, Path]] = []  # per evaluation: {"final", "unrefined", "gallery"} -> path
        self._reset()

    def _reset(self) -> None:
        self._ids: list[str] = []
        self._final: list[torch.Tensor] = []
        self._unrefined: list[torch.Tensor] = []
        self._gallery: list[GalleryImage] = []

    def _active(self, trainer: L.Trainer) -> bool:
        return trainer.state.fn is not None and trainer.state.fn.value in self.stages and not trainer.sanity_checking

    # Counting.

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._reset()

    on_test_epoch_start = on_validation_epoch_start

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if self._active(trainer):
            self._count(pl_module, outputs, batch)

    on_test_batch_end = on_validation_batch_end

    def _count(self, pl_module: L.LightningModule, outputs: Any, batch: dict[str, Any]) -> None:
        if not isinstance(outputs, list) or not all(isinstance(p, torch.Tensor) for p in outputs):
            raise TypeError(f"PerImageConfusion needs the evaluation step to return each image's predicted labels "
                            f"(a list of [h, w] tensors, as SegmentationModule does), got {type(outputs).__name__}")
        num_classes, ignore = pl_module.hparams.num_classes, pl_module.hparams.ignore_index
        targets = [batch["mask"][i, :p.shape[0], :p.shape[1]] for i, p in enumerate(outputs)]
        matrices = image_confusion_matrices(outputs, targets, num_classes, ignore)
        self._final.append(matrices)
        unrefined = getattr(outputs, "unrefined", None)
        if unrefined is not None:
            self._unrefined.append(image_confusion_matrices(unrefined, targets, num_classes, ignore))
        ids = [str(i) for i in batch["id"]]
        self._ids += ids
        if self.worst:
            self._keep_worst(ids, per_image_miou(matrices.cpu().numpy()), batch, outputs)

    def _keep_worst(self, ids: list[str], mious: np.ndarray, batch: dict[str, Any], outputs: list) -> None:
        """Keep the thumbnails of the ``worst`` lowest-mIoU images seen so far (only those enter: a thumbnail is
        made of an image that is among them)."""
        for i, (sample_id, miou) in enumerate(zip(ids, mious.tolist())):
            kept = self._gallery
            if miou != miou or (len(kept) >= self.worst and (miou, sample_id) >= (kept[-1].miou, kept[-1].id)):
                continue
            h, w = outputs[i].shape
            kept.append(thumbnail(sample_id, miou, batch["image"][i, :, :h, :w], batch["mask"][i, :h, :w],
                                  outputs[i], self.thumbnail))
            self._gallery = worst_images(kept, self.worst)

    # Gathering and writing.

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._active(trainer):
            self._finish(trainer, pl_module, "val")

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._active(trainer):
            self._finish(trainer, pl_module, "test")

    def _local(self, num_classes: int) -> dict[str, Any]:
        def stacked(matrices: list[torch.Tensor]) -> np.ndarray:
            if not matrices:
                return np.zeros((0, num_classes, num_classes), np.int64)
            return torch.cat([m.cpu() for m in matrices]).numpy()

        return {"ids": self._ids, "final": stacked(self._final),
                "unrefined": stacked(self._unrefined) if self._unrefined else None, "gallery": self._gallery}

    def _finish(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        num_classes = pl_module.hparams.num_classes
        local = self._local(num_classes)
        self._reset()
        if torch.distributed.is_available() and torch.distributed.is_initialized() and trainer.world_size > 1:
            parts: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(parts, local)  # every process checks what rank 0 writes
        else:
            parts = [local]
        ids = [i for part in parts for i in part["ids"]]
        if len(set(ids)) != len(ids):
            repeated = sorted(i for i, n in Counter(ids).items() if n > 1)
            raise ValueError(f"The {stage} split's images {', '.join(repeated[:5])} were evaluated more than once "
                             f"across processes: the evaluation loader repeats images (use the data module's "
                             f"evaluation sampler, deeplab_lightning.data.EvalSampler), so its metrics count them "
                             f"twice")
        order = np.argsort(np.array(ids, dtype=str), kind="stable")
        matrices = {"final": np.concatenate([p["final"] for p in parts])[order]}
        if any(p["unrefined"] is not None for p in parts):
            matrices["unrefined"] = np.concatenate(
                [p["unrefined"] if p["unrefined"] is not None else p["final"][:0] for p in parts])[order]
            if len(matrices["unrefined"]) != len(ids):
                raise RuntimeError("Some processes returned predictions before the dense CRF and others not")
        step = self._check_against_evaluator(pl_module, stage, matrices)
        if not trainer.is_global_zero or not ids:
            return
        gallery = worst_images([g for p in parts for g in p["gallery"]], self.worst)
        self._write(trainer, pl_module, stage, step, np.array(ids, dtype=str)[order], matrices, gallery)

    @staticmethod
    def _check_against_evaluator(pl_module: L.LightningModule, stage: str, matrices: dict[str, np.ndarray]) -> int:
        """The per-image matrices must sum to the evaluator's split matrix (a wrong file that looks right is worse
        than none); returns the step of the evaluated weights."""
        results = getattr(pl_module, "evaluation_results", None)
        step = getattr(pl_module, "weights_step", None)
        if results is None:
            return int(step if step is not None else pl_module.global_step)
        for kind, per_image in matrices.items():
            split = results(stage, unrefined=kind == "unrefined")
            if split is None:
                raise RuntimeError(f"The evaluator holds no {stage} results ({kind}) to check the per-image "
                                   f"matrices against")
            if not np.array_equal(per_image.sum(0), split.confmat.numpy()):
                raise RuntimeError(f"The per-image confusion matrices of the {stage} split ({kind}) sum to "
                                   f"{int(per_image.sum())} pixels but the evaluator counted "
                                   f"{int(split.confmat.sum())}, or another matrix: not saved")
            step = split.step
        return int(step)

    def _write(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str, step: int, ids: np.ndarray,
               matrices: dict[str, np.ndarray], gallery: list[GalleryImage]) -> None:
        folder = Path(self.folder) if self.folder is not None else Path(trainer.default_root_dir) / "evaluations"
        folder.mkdir(parents=True, exist_ok=True)
        names = [str(n) for n in getattr(pl_module, "class_names", None) or range(matrices["final"].shape[1])]
        data = trainer.datamodule
        split = getattr(data, "val_split" if stage == "val" else "test_split", None) or ""
        settings = getattr(getattr(pl_module, "pipeline", None), "settings", None)
        inference = {"final": settings.describe(), "unrefined": settings.replace(crf=None).describe()} \
            if settings is not None else {"final": "", "unrefined": ""}

        def npz(kind: str) -> Callable[[Path], None]:
            def write(path: Path) -> None:
                with open(path, "wb") as f:
                    np.savez_compressed(
                        f, ids=ids, confmat=matrices[kind].astype(np.int64), class_names=np.array(names, dtype=str),
                        step=np.int64(step), stage=np.str_(stage), split=np.str_(split),
                        inference=np.str_(inference[kind]),
                        unrefined=np.bool_(kind == "unrefined"))
            return write

        def png(path: Path) -> None:
            palette = getattr(data, "palette", None) or getattr(pl_module, "palette", None) or voc_palette()
            title = f"{stage} step {step}: the {len(gallery)} images of lowest mIoU ({inference['final']})"
            save_gallery(gallery_figure(gallery, names, palette, title), str(path), gallery)

        writers = {"final": npz("final")}
        if "unrefined" in matrices:
            writers["unrefined"] = npz("unrefined")
        if gallery:
            writers["gallery"] = png
        suffix = {"final": ".npz", "unrefined": "_unrefined.npz", "gallery": "_worst.png"}
        base = self.label or f"{stage}_step{step}"
        for candidate in numbered_candidates(folder / base, folder=True):
            paths = {kind: candidate.with_name(candidate.name + suffix[kind]) for kind in suffix}
            if any(p.exists() for p in paths.values()) or not publish(writers["final"], paths["final"]):
                continue  # another evaluation's files: the next number
            for kind in writers.keys() - {"final"}:
                if not publish(writers[kind], paths[kind]):  # taken meanwhile by another process
                    raise FileExistsError(f"{paths[kind]} appeared while this evaluation wrote {paths['final']}: "
                                          f"two evaluations write to {folder} at once; set PerImageConfusion's "
                                          f"label or folder")
            self.written.append({kind: paths[kind] for kind in writers})
            shown = f"; its {len(gallery)} worst images: {paths['gallery']}" if gallery else ""
            rank_zero_info(f"Per-image confusion matrices of {len(ids)} images: {paths['final']}{shown}")
            return
