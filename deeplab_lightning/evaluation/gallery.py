"""The worst-images gallery of an evaluation: thumbnails of image, ground truth and prediction, kept in bounded
memory while the evaluation runs, drawn side by side with the class legend and palette."""
from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Patch

IGNORE_COLOUR = (255, 255, 255)  # the void label drawn white, as in the notebook


@dataclass(frozen=True, eq=False)
class GalleryImage:
    """One image of the gallery as thumbnails: ``image`` [h, w, 3] uint8, ``mask`` and ``prediction`` [h, w] uint8
    class indices (``mask`` may hold the ignore index), with its id and per-image mIoU."""

    id: str
    miou: float
    image: np.ndarray
    mask: np.ndarray
    prediction: np.ndarray


def thumbnail(sample_id: str, miou: float, image: torch.Tensor, mask: torch.Tensor, prediction: torch.Tensor,
              size: int = 160) -> GalleryImage:
    """A :class:`GalleryImage` of an image [3, h, w] in [0, 255], its labels [h, w] and prediction [h, w], every
    ``s``-th pixel kept (nearest neighbour, so labels stay labels) with ``s`` the smallest stride that brings
    the longer side to at most ``size``."""
    step = max(1, math.ceil(max(image.shape[-2:]) / size))
    image = image[:, ::step, ::step].detach().float().clamp(0, 255).round().to(torch.uint8)
    return GalleryImage(str(sample_id), float(miou), image.permute(1, 2, 0).cpu().numpy(),
                        mask[::step, ::step].to(torch.uint8).cpu().numpy(),
                        prediction[::step, ::step].to(torch.uint8).cpu().numpy())


def worst_images(candidates: Iterable[GalleryImage], k: int) -> list[GalleryImage]:
    """The ``k`` images of lowest mIoU (ties by id), images without a labelled pixel (NaN) left out."""
    return sorted((c for c in candidates if c.miou == c.miou), key=lambda c: (c.miou, c.id))[:k]


def colour_table(palette: Sequence[Sequence[int]], num_classes: int) -> np.ndarray:
    """A [256, 3] uint8 lookup: the palette's colour for each class, white for every other value (void)."""
    table = np.tile(np.array(IGNORE_COLOUR, np.uint8), (256, 1))
    colours = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)[:num_classes]
    table[:len(colours)] = colours
    return table


def gallery_figure(images: Sequence[GalleryImage], class_names: Sequence[str],
                   palette: Sequence[Sequence[int]], title: str) -> Figure:
    """One row per image: the image (titled with its id), the ground truth and the prediction (titled with the
    per-image mIoU) in the palette's colours, and a legend of the classes shown (void: white)."""
    if not images:
        raise ValueError("no images to draw: every image of the evaluation lacks a labelled pixel")
    table = colour_table(palette, len(class_names))
    shown = np.unique(np.concatenate([np.concatenate([g.mask.ravel(), g.prediction.ravel()]) for g in images]))
    present = [int(c) for c in shown if c < len(class_names)]
    handles = [Patch(facecolor=table[c] / 255, edgecolor="k", label=class_names[c]) for c in present]
    if any(c >= len(class_names) for c in shown):
        handles.append(Patch(facecolor=np.array(IGNORE_COLOUR) / 255, edgecolor="k", label="ignored"))
    ncol = min(len(handles), 5)
    legend_in = 0.3 + 0.25 * math.ceil(len(handles) / ncol)
    height = 0.5 + 2.4 * len(images) + legend_in
    fig = Figure(figsize=(8, height))
    axes = fig.subplots(len(images), 3, squeeze=False)
    for row, item in zip(axes, images):
        panels = ((item.image, item.id), (table[item.mask], "ground truth"),
                  (table[item.prediction], f"prediction: mIoU {100 * item.miou:.1f} %"))
        for ax, (pixels, heading) in zip(row, panels):
            ax.imshow(pixels, interpolation="nearest")
            ax.set_title(heading, fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(title, fontsize=10, y=1 - 0.12 / height, va="top")
    fig.legend(handles=handles, loc="lower center", ncol=ncol, frameon=False, fontsize=9)
    # fixed margins (tight_layout would draw the figure once more): title on top, legend below
    fig.subplots_adjust(left=0.02, right=0.98, top=1 - 0.6 / height, bottom=legend_in / height, wspace=0.05,
                        hspace=0.3)
    return fig


def save_gallery(fig: Figure, path: str, images: Sequence[GalleryImage]) -> None:
    """Save ``fig`` as a PNG whose ``Description`` text chunk lists the images shown as ``[[id, mIoU], ...]``
    (machine-readable: ``PIL.Image.open(path).text["Description"]``)."""
    description = json.dumps([[g.id, g.miou] for g in images])
    fig.savefig(path, format="png", dpi=100, metadata={"Description": description})
