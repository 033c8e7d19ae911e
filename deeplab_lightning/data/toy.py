"""A procedural toy dataset written in the PASCAL VOC 2012 layout, so the VOC code path reads it.

Objects of five shapes (disk, square, triangle, cross, star) in random colours, sizes and rotations, often
overlapping, over textured backgrounds cluttered with lines and dots of the same colours: a class can only be
told by its shape and context, not by a colour lookup. As in VOC, a thin band of void (255) marks object
boundaries. With ``colour_cue`` (the quickstart's data) each shape class has its own hue band, which a CPU
learns in minutes instead of half an hour; the clutter keeps every hue, so context still matters.
"""
from __future__ import annotations

import colorsys
import json
import math
import os
import shutil
from pathlib import Path
from typing import Literal

import numpy as np
import yaml
from PIL import Image, ImageDraw, ImageFilter
from rich.progress import Progress

from ..runs.processes import process_alive
from .classes import flat_palette, voc_palette
from .voc import VOCDataModule

TOY_CLASSES = ("background", "disk", "square", "triangle", "cross", "star")


def _polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if kind == "square":
        pts = [(r, a) for a in (math.pi / 4 + k * math.pi / 2 for k in range(4))]
    elif kind == "triangle":
        pts = [(r, a) for a in (k * 2 * math.pi / 3 for k in range(3))]
    elif kind == "star":
        pts = [(r if k % 2 == 0 else 0.45 * r, k * math.pi / 5) for k in range(10)]
    elif kind == "cross":
        w = 0.35 * r
        xy = [(w, r), (w, w), (r, w), (r, -w), (w, -w), (w, -r), (-w, -r), (-w, -w), (-r, -w), (-r, w), (-w, w),
              (-w, r)]
        pts = [(math.hypot(x, y), math.atan2(y, x)) for x, y in xy]
    else:
        raise ValueError(kind)
    return [(cx + rad * math.cos(a + angle), cy + rad * math.sin(a + angle)) for rad, a in pts]


def _random_color(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(0, 256, size=3))


def _class_color(rng: np.random.Generator, cls: int) -> tuple[int, int, int]:
    """A random colour in the hue band of shape class ``cls`` (1..5; bands 72 degrees apart, +-20 degrees)."""
    hue = ((cls - 1) / (len(TOY_CLASSES) - 1) + rng.uniform(-20, 20) / 360) % 1.0
    rgb = colorsys.hsv_to_rgb(hue, rng.uniform(0.6, 1.0), rng.uniform(0.55, 1.0))
    return tuple(int(round(255 * v)) for v in rgb)


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A smooth two-colour gradient overlaid with a random texture (stripes, checks or noise)."""
    c0, c1 = np.array(_random_color(rng), float), np.array(_random_color(rng), float)
    yy, xx = np.mgrid[0:h, 0:w].astype(float)
    theta = rng.uniform(0, math.pi)
    t = (np.cos(theta) * xx + np.sin(theta) * yy) / max(h, w)
    t = (t - t.min()) / max(t.max() - t.min(), 1e-6)
    img = c0 * (1 - t[..., None]) + c1 * t[..., None]
    kind = rng.integers(3)
    if kind == 0:  # stripes
        period, phi = rng.uniform(4, 16), rng.uniform(0, math.pi)
        tex = np.sin(2 * math.pi * (np.cos(phi) * xx + np.sin(phi) * yy) / period)
    elif kind == 1:  # checks
        cell = rng.integers(4, 12)
        tex = ((xx // cell + yy // cell) % 2) * 2 - 1
    else:  # coarse noise
        small = rng.normal(size=(h // 8 + 1, w // 8 + 1))
        tex = np.kron(small, np.ones((8, 8)))[:h, :w]
    img += rng.uniform(15, 45) * tex[..., None]
    return np.clip(img + rng.normal(0, 6, size=img.shape), 0, 255).astype(np.uint8)


def _boundary(labels: np.ndarray) -> np.ndarray:
    """Pixels with a 4-neighbour of another label (a 2-pixel band along every edge)."""
    band = np.zeros_like(labels, dtype=bool)
    band[1:] |= labels[1:] != labels[:-1]
    band[:-1] |= labels[1:] != labels[:-1]
    band[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    band[:, :-1] |= labels[:, 1:] != labels[:, :-1]
    return band


def render_toy_sample(rng: np.random.Generator, size_range: tuple[int, int] = (120, 160),
                      max_objects: int = 3, colour_cue: bool = False) -> tuple[Image.Image, Image.Image]:
    """One RGB image and its palette label map (values in [0, 6) and 255). ``colour_cue``: each shape class is
    drawn in its own hue band (backgrounds and clutter keep random colours)."""
    h, w = (int(v) for v in rng.integers(size_range[0], size_range[1] + 1, size=2))
    image = Image.fromarray(_background(rng, h, w))
    labels = Image.new("L", (w, h), 0)
    draw, draw_labels = ImageDraw.Draw(image), ImageDraw.Draw(labels)
    for _ in range(rng.integers(3, 9)):  # clutter: background-class lines and dots in object colours
        x0, y0 = rng.uniform(0, w), rng.uniform(0, h)
        if rng.random() < 0.5:
            draw.line([(x0, y0), (x0 + rng.uniform(-40, 40), y0 + rng.uniform(-40, 40))],
                      fill=_random_color(rng), width=int(rng.integers(1, 4)))
        else:
            r = rng.uniform(1.5, 4)
            draw.ellipse([x0 - r, y0 - r, x0 + r, y0 + r], fill=_random_color(rng))
    scale = min(h, w)
    for _ in range(rng.integers(1, max_objects + 1)):
        cls = int(rng.integers(1, len(TOY_CLASSES)))
        r = rng.uniform(0.18, 0.35) * scale
        cx, cy = rng.uniform(0.1 * w, 0.9 * w), rng.uniform(0.1 * h, 0.9 * h)
        color = _class_color(rng, cls) if colour_cue else _random_color(rng)
        if TOY_CLASSES[cls] == "disk":
            box = [cx - r, cy - r, cx + r, cy + r]
            draw.ellipse(box, fill=color)
            draw_labels.ellipse(box, fill=cls)
        else:
            pts = _polygon(TOY_CLASSES[cls], cx, cy, r, rng.uniform(0, 2 * math.pi))
            draw.polygon(pts, fill=color)
            draw_labels.polygon(pts, fill=cls)
    pixels = np.array(image).astype(float) + rng.normal(0, 8, size=(h, w, 3))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.6))
    lab = np.array(labels)
    lab[_boundary(lab)] = 255
    mask = Image.fromarray(lab, mode="L").convert("P")
    mask.putpalette(flat_palette(voc_palette()))
    return image, mask


def generate_toy_voc(data_dir: str | Path, *, num_train: int = 1000, num_val: int = 100,
                     size_range: tuple[int, int] = (120, 160), seed: int = 0, colour_cue: bool = False) -> Path:
    """Write the toy dataset under ``data_dir/VOCdevkit/VOC2012`` unless it is already there.

    Writes into a temporary folder of this process renamed at the end, so an interrupted run never leaves a
    partial dataset and two processes generating at once both succeed (the second rename finds the first's
    dataset and discards its own copy). Returns the VOC2012 folder. Raises if ``data_dir`` holds another dataset
    or a toy set with other settings. ``colour_cue``: see :func:`render_toy_sample`.
    """
    data_dir = Path(data_dir)
    params = {"num_train": num_train, "num_val": num_val, "size_range": list(size_range), "seed": seed,
              "classes": list(TOY_CLASSES)}
    if colour_cue:  # recorded only when set, so datasets written before the option still match
        params["colour_cue"] = True
    final = data_dir / "VOCdevkit"
    stamp = final / "toy.json"

    def existing() -> Path | None:
        if not final.exists():
            return None
        if not stamp.is_file():
            raise FileExistsError(f"{final} exists but is not a toy dataset (no toy.json); use another data_dir")
        if json.loads(stamp.read_text()) != params:
            raise FileExistsError(f"{final} holds a toy dataset made with other settings ({stamp}); delete it "
                                  f"or choose another data_dir")
        return final / "VOC2012"

    if (done := existing()) is not None:
        return done
    for partial in data_dir.glob("VOCdevkit.partial.*"):  # left by killed generators
        pid = partial.suffix[1:]
        if not pid.isdigit() or not process_alive(int(pid)):
            shutil.rmtree(partial, ignore_errors=True)
    tmp = data_dir / f"VOCdevkit.partial.{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    root = tmp / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True)
    rng = np.random.default_rng(seed)
    splits = {"train": [f"toy_train_{i:05d}" for i in range(num_train)],
              "val": [f"toy_val_{i:05d}" for i in range(num_val)]}
    with Progress(transient=True) as progress:
        task = progress.add_task(f"Writing toy VOC dataset to {data_dir}", total=num_train + num_val)
        for ids in splits.values():
            for sample_id in ids:
                image, mask = render_toy_sample(rng, size_range, colour_cue=colour_cue)
                image.save(root / "JPEGImages" / f"{sample_id}.jpg", quality=90)
                mask.save(root / "SegmentationClass" / f"{sample_id}.png")
                progress.advance(task)
    splits["trainval"] = splits["train"] + splits["val"]
    for name, ids in splits.items():
        (root / "ImageSets" / "Segmentation" / f"{name}.txt").write_text("\n".join(ids) + "\n")
    (tmp / "toy.json").write_text(json.dumps(params))
    try:
        tmp.rename(final)
    except OSError:  # another process finished first: keep its dataset if it has these settings
        shutil.rmtree(tmp, ignore_errors=True)
        if (done := existing()) is None:
            raise
        return done
    return final / "VOC2012"


def write_toy_folder(data_dir: str | Path, *, num_train: int = 200, num_val: int = 20, num_test: int = 5,
                     size_range: tuple[int, int] = (80, 112), seed: int = 0) -> Path:
    """Write toy images in :class:`~deeplab_lightning.data.folder.FolderDataModule`'s layout, as a stand-in for
    your own data: ``images/{train,val,test}/``, ``masks/{train,val}/`` (test is unlabelled) and
    ``classes.yaml`` (names and palette). Refuses a folder that is not empty. Returns ``data_dir``."""
    data_dir = Path(data_dir)
    if data_dir.exists() and any(data_dir.iterdir()):
        raise FileExistsError(f"{data_dir} is not empty; choose a new folder for the example data")
    rng = np.random.default_rng(seed)
    palette = voc_palette()
    for split, count in (("train", num_train), ("val", num_val), ("test", num_test)):
        (data_dir / "images" / split).mkdir(parents=True)
        if split != "test":
            (data_dir / "masks" / split).mkdir(parents=True)
        for i in range(count):
            image, mask = render_toy_sample(rng, size_range)
            image.save(data_dir / "images" / split / f"{split}_{i:04d}.jpg", quality=90)
            if split != "test":
                mask.save(data_dir / "masks" / split / f"{split}_{i:04d}.png")
    classes = {"names": list(TOY_CLASSES), "palette": [list(palette[i]) for i in range(len(TOY_CLASSES))]}
    (data_dir / "classes.yaml").write_text(yaml.safe_dump(classes, default_flow_style=None, sort_keys=False))
    return data_dir


class ToyVOCDataModule(VOCDataModule):
    """:class:`VOCDataModule` over the toy dataset, generated into ``data_dir`` on first use.

    Args:
        data_dir: where ``VOCdevkit`` is (or will be) written.
        num_train, num_val: number of images per split.
        size_range: min and max image side (H and W drawn independently).
        seed: generator seed (the same seed writes the same files).
        colour_cue: draw each shape class in its own hue band (the quickstart's easier task); by default
            objects have random colours and only their shape tells the class.
        eval_size: each image on its own canvas (``"auto"``), not VOC's 513 x 513.
        **kwargs: see :class:`SegmentationDataModule`.
    """

    class_names = TOY_CLASSES

    def __init__(self, data_dir: str = "data/toy_voc", *, num_train: int = 1000, num_val: int = 100,
                 size_range: tuple[int, int] = (120, 160), seed: int = 0, colour_cue: bool = False,
                 train_split: str = "train", eval_size: int | tuple[int, int] | Literal["auto"] | None = "auto",
                 **kwargs) -> None:
        super().__init__(data_dir, train_split=train_split, eval_size=eval_size, **kwargs)
        self.toy_settings = {"num_train": num_train, "num_val": num_val, "size_range": tuple(size_range),
                             "seed": seed, "colour_cue": colour_cue}

    def prepare_data(self) -> None:
        generate_toy_voc(self.data_dir, **self.toy_settings)

    def samples(self, split: str):
        generate_toy_voc(self.data_dir, **self.toy_settings)
        return super().samples(split)
