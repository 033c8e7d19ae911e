"""Class names and colour palettes of the supported datasets."""
from __future__ import annotations

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)


def voc_palette(n: int = 256) -> list[tuple[int, int, int]]:
    """The PASCAL VOC colour map (devkit's ``labelcolormap``): label ``i`` gets its bits spread over RGB.

    Entry 255 (the void label) is (224, 224, 192), as in VOC's ground-truth PNGs.
    """
    palette = []
    for label in range(n):
        r = g = b = 0
        c = label
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette.append((r, g, b))
    return palette


def flat_palette(colors: list[tuple[int, int, int]]) -> list[int]:
    """A 768-entry list for ``PIL.Image.putpalette`` (missing entries black)."""
    flat = [v for rgb in colors[:256] for v in rgb]
    return flat + [0] * (768 - len(flat))
