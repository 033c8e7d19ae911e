"""Decoded splits: every image and label map of a split decoded once into two flat uint8 files that training
memory-maps, so a sample costs no decoding and a crop reads only the rows and columns its window needs.

A 2048x1024 Cityscapes PNG takes ~40 ms to decode and a 769 crop from the store ~3 ms
(``benchmarks/data_path.py``); the price is disk: 8 MB an image (Cityscapes train, 2,975 images: 25 GB).

Layout of ``<root>/<split>/``: ``images.u8`` (each image as [H, W, 3], one after another), ``labels.u8`` (each
label map as [H, W], train ids, already checked), ``index.json`` (format, the settings that decide the labels,
and per sample its id, source files with their size and modification time, shape and offsets). The store is
written to a temporary folder and renamed into place, so a reader never sees half of one. It is used only when
it holds exactly the split's samples, from unchanged files (same size and modification time) and under the same
labelling; otherwise :class:`DecodedSplit` raises, naming the difference (or the damaged index) and the command
that rebuilds it. The files' disk space is allocated before they are memory-mapped and written, so a full disk is
a problem that names the folder, not a SIGBUS.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from .dataset import Sample, SegmentationDataset, image_size

FORMAT = 1
INDEX, IMAGES, LABELS = "index.json", "images.u8", "labels.u8"
REBUILD = "rebuild it with `deeplab-lightning cache --config <your config>`, or set data.init_args.use_cache false"
ENTRY_KEYS = ("id", "image", "mask", "image_stamp", "mask_stamp", "shape", "image_offset", "label_offset")


def source_stamp(path: Path | None) -> list[int] | None:
    """[size in bytes, modification time in ns] of a source file (None for a missing label file)."""
    if path is None:
        return None
    stat = os.stat(path)
    return [stat.st_size, stat.st_mtime_ns]


def labelling(dataset: SegmentationDataset) -> dict[str, Any]:
    """The settings that decide the stored labels: number of classes, ignore label, raw-id lookup table."""
    table = dataset.label_map
    return {"num_classes": dataset.num_classes, "ignore_index": dataset.ignore_index,
            "label_map": None if table is None else hashlib.sha256(np.asarray(table).tobytes()).hexdigest()}


def _path(path: Path | None) -> str | None:
    return None if path is None else str(Path(path).resolve())


def read_index(path: Path) -> dict[str, Any]:
    """A store's parsed ``index.json``; ValueError naming the file and the rebuild command where it is cut short
    or, in this version's format, lacks the samples' entries."""
    try:
        index = json.loads(path.read_text())
    except ValueError as err:  # JSONDecodeError (cut short, empty), UnicodeDecodeError (not text)
        raise ValueError(f"The decoded cache index {path} is damaged ({err}): it may have been cut short; "
                         f"{REBUILD}") from None
    if isinstance(index, dict) and index.get("format") != FORMAT:
        return index  # another version's store: DecodedSplit names its format
    samples = index.get("samples") if isinstance(index, dict) else None
    if not samples or not isinstance(samples, list) or not all(
            isinstance(entry, dict) and all(key in entry for key in ENTRY_KEYS) for entry in samples):
        raise ValueError(f"The decoded cache index {path} is damaged: it lacks the samples' entries; {REBUILD}")
    return index


class DecodedSplit:
    """The decoded store of ``samples`` in ``folder``: :meth:`read` gives (image [H, W, 3], labels [H, W]) as
    read-only uint8 views of memory-mapped files. Raises ValueError when the store does not match the
    samples, their files or the labelling (see the module docstring)."""

    def __init__(self, folder: Path, dataset: SegmentationDataset) -> None:
        self.folder = Path(folder)
        index = read_index(self.folder / INDEX)
        stale = self._difference(index, dataset.samples, labelling(dataset))
        if stale:
            raise ValueError(f"The decoded cache {self.folder} is out of date: {stale}; {REBUILD}")
        self.entries = index["samples"]
        last = self.entries[-1]
        h, w = last["shape"]
        expected = {IMAGES: last["image_offset"] + 3 * h * w, LABELS: last["label_offset"] + h * w}
        self.identity = {}
        for name, size in expected.items():
            stat = os.stat(self.folder / name)
            if stat.st_size != size:
                raise ValueError(f"The decoded cache {self.folder} is damaged: {name} holds {stat.st_size:,} bytes, "
                                 f"its index {size:,}; {REBUILD}")
            self.identity[name] = (stat.st_dev, stat.st_ino, stat.st_mtime_ns)
        self._images: np.memmap | None = None
        self._labels: np.memmap | None = None

    @staticmethod
    def _difference(index: dict, samples: Sequence[Sample], settings: dict[str, Any]) -> str | None:
        if index.get("format") != FORMAT:
            return f"it was written in format {index.get('format')}, this version reads {FORMAT}"
        if index.get("labelling") != settings:
            return f"it was written with {index.get('labelling')}, the data module has {settings}"
        entries = index["samples"]
        if len(entries) != len(samples):
            return f"it holds {len(entries)} images, the split {len(samples)}"
        for entry, sample in zip(entries, samples):
            for key, path in (("image", sample.image), ("mask", sample.mask)):
                if entry["id"] != sample.id or entry[key] != _path(path):
                    return f"it holds {entry[key]} (id {entry['id']!r}) where the split has {path} (id {sample.id!r})"
                if path is not None and not Path(path).is_file():
                    return f"{path} no longer exists"
                if entry[f"{key}_stamp"] != source_stamp(path):
                    return f"{path} changed after the cache was written (size or modification time)"
        return None

    def _open(self) -> None:
        """Map the files (per process: memory maps are not sent to data-loader workers), refusing files other
        than those the index was checked against (a store rewritten meanwhile has other offsets)."""
        maps = {}
        for name in (IMAGES, LABELS):
            with open(self.folder / name, "rb") as f:
                stat = os.fstat(f.fileno())
                if (stat.st_dev, stat.st_ino, stat.st_mtime_ns) != self.identity[name]:
                    raise ValueError(f"The decoded cache {self.folder} was rewritten while this run used it; start "
                                     f"the run again")
                maps[name] = np.memmap(f, dtype=np.uint8, mode="r")
        self._images, self._labels = maps[IMAGES], maps[LABELS]

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_images": None, "_labels": None}

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if self._images is None:
            self._open()
        entry = self.entries[index]
        h, w = entry["shape"]
        image = self._images[entry["image_offset"]: entry["image_offset"] + h * w * 3].reshape(h, w, 3)
        labels = self._labels[entry["label_offset"]: entry["label_offset"] + h * w].reshape(h, w)
        return image, labels


def open_split(folder: Path, dataset: SegmentationDataset) -> DecodedSplit | None:
    """The store in ``folder`` for ``dataset``'s samples, None when there is none; raises when it is stale."""
    return DecodedSplit(folder, dataset) if (Path(folder) / INDEX).is_file() else None


def is_current(folder: Path, dataset: SegmentationDataset) -> bool:
    """Whether ``folder`` holds an up-to-date store of ``dataset``."""
    try:
        return open_split(folder, dataset) is not None
    except (ValueError, OSError, KeyError):
        return False


_worker: dict[str, Any] = {}


def _init_worker(dataset: SegmentationDataset, folder: Path) -> None:
    _worker["dataset"] = dataset
    _worker["images"] = np.memmap(folder / IMAGES, dtype=np.uint8, mode="r+")
    _worker["labels"] = np.memmap(folder / LABELS, dtype=np.uint8, mode="r+")


def _decode_into(task: tuple[int, dict[str, Any]]) -> str | None:
    """Decode sample ``i`` into the store at its entry's offsets; a problem as one line, or None."""
    i, entry = task
    dataset = _worker["dataset"]
    try:
        image, labels = dataset.read(i)
    except (OSError, ValueError) as err:
        return str(err)
    h, w = entry["shape"]
    if labels.shape != (h, w):
        return f"{entry['image']}: decoded as {labels.shape[0]}x{labels.shape[1]}, its header says {h}x{w}"
    _worker["images"][entry["image_offset"]: entry["image_offset"] + h * w * 3] = image.reshape(-1)
    _worker["labels"][entry["label_offset"]: entry["label_offset"] + h * w] = labels.reshape(-1)
    return None


def write_split(dataset: SegmentationDataset, folder: Path, workers: int = 1,
                progress: Callable[[int, int], None] | None = None) -> tuple[int, list[str]]:
    """Decode every sample of ``dataset`` (from its files) into a store at ``folder``: (bytes written, problems).

    Nothing is published unless every file decodes: with problems the temporary folder is removed and the
    problems (one line per file) returned. An existing store at ``folder`` is replaced only once the new one
    is complete. ``progress(done, total)`` is called as samples finish.
    """
    folder = Path(folder)
    tasks, image_bytes, label_bytes, problems = [], 0, 0, []
    for i, sample in enumerate(dataset.samples):
        try:
            h, w = image_size(sample.image)
        except ValueError as err:
            problems.append(str(err))
            continue
        tasks.append((i, {"id": sample.id, "image": _path(sample.image), "mask": _path(sample.mask),
                          "image_stamp": source_stamp(sample.image), "mask_stamp": source_stamp(sample.mask),
                          "shape": [h, w], "image_offset": image_bytes, "label_offset": label_bytes}))
        image_bytes += h * w * 3
        label_bytes += h * w
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{folder.name}.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return 0, [f"another `deeplab-lightning cache` is writing {folder}; wait for it to finish"]
        for leftover in folder.parent.glob(f".{folder.name}.partial-*"):  # of a writer killed before it finished
            shutil.rmtree(leftover, ignore_errors=True)
        return _write_locked(dataset, folder, tasks, (image_bytes, label_bytes), problems, workers, progress)


def _write_locked(dataset: SegmentationDataset, folder: Path, tasks: list[tuple[int, dict[str, Any]]],
                  sizes: tuple[int, int], problems: list[str], workers: int,
                  progress: Callable[[int, int], None] | None) -> tuple[int, list[str]]:
    """:func:`write_split` once it holds the split's lock: (bytes written, problems)."""
    image_bytes, label_bytes = sizes
    if image_bytes + label_bytes > shutil.disk_usage(folder.parent).free:
        return 0, [_no_space(folder, image_bytes + label_bytes)]
    partial = folder.parent / f".{folder.name}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    try:
        if (full := _allocate_store(partial, sizes, folder)) is not None:
            return 0, [full]
        if workers > 1:
            with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(dataset, partial)) as pool:
                problems += _collect(pool.map(_decode_into, tasks, chunksize=4), len(tasks), progress)
        else:
            _init_worker(dataset, partial)
            problems += _collect(map(_decode_into, tasks), len(tasks), progress)
            _worker.clear()
        if problems:  # every problem is reported, and nothing is published
            return 0, problems
        for name in (IMAGES, LABELS):
            with open(partial / name, "rb+") as f:
                os.fsync(f.fileno())
        index = {"format": FORMAT, "labelling": labelling(dataset), "samples": [entry for _, entry in tasks]}
        (partial / INDEX).write_text(json.dumps(index))
        _publish(partial, folder)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return image_bytes + label_bytes, []


def allocate(path: Path, size: int) -> None:
    """Create ``path`` with ``size`` bytes of disk space allocated (zeros): writing through a memory map of a
    sparse file on a full disk kills the process with SIGBUS, whereas allocating fails with ENOSPC."""
    with open(path, "wb") as f:
        if size and hasattr(os, "posix_fallocate"):
            os.posix_fallocate(f.fileno(), 0, size)
        else:  # nothing to allocate, or no posix_fallocate (macOS): a sparse file
            f.truncate(size)


def _allocate_store(partial: Path, sizes: tuple[int, int], folder: Path) -> str | None:
    """Allocate the images and labels files of the store in ``partial``; the problem where its disk is full."""
    try:
        for name, size in zip((IMAGES, LABELS), sizes):
            allocate(partial / name, size)
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        shutil.rmtree(partial, ignore_errors=True)  # what it allocated counts as free in the message
        return _no_space(folder, sum(sizes))
    return None


def _no_space(folder: Path, needed: int) -> str:
    """The problem of a store of ``needed`` bytes at ``folder`` that its disk cannot hold."""
    free = shutil.disk_usage(folder.parent).free
    return (f"the decoded cache {folder} needs {needed:,} bytes but its disk ({folder.parent}) has {free:,} free: "
            f"free space or set data.init_args.cache_dir to another disk")


def _collect(results: Any, total: int, progress: Callable[[int, int], None] | None) -> list[str]:
    problems = []
    for done, problem in enumerate(results, start=1):
        if problem is not None:
            problems.append(problem)
        if progress is not None:
            progress(done, total)
    return problems


def _publish(partial: Path, folder: Path) -> None:
    """Rename ``partial`` to ``folder``; an older store there is moved aside first and removed after."""
    old = folder.parent / f".{folder.name}.old-{os.getpid()}"
    if folder.exists():
        os.replace(folder, old)
    os.replace(partial, folder)
    shutil.rmtree(old, ignore_errors=True)
