"""Test-time inference as in DeepLab V3 section 4.3 / V3+ section 4.4: multi-scale inputs, left-right flips
and (for images larger than a training crop) sliding windows. Pure functions over any ``model(images) ->
logits``, composed by :mod:`.pipeline`; also DeepLab V2's multi-scale inputs with max fusion (MSC), which the
network applies in training too.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

Model = Callable[[torch.Tensor], torch.Tensor]


def _starts(length: int, window: int, stride: int) -> list[int]:
    """Window offsets covering [0, length): every ``stride``, plus one flush with the end."""
    if length <= window:
        return [0]
    starts = list(range(0, length - window + 1, stride))
    if starts[-1] != length - window:
        starts.append(length - window)
    return starts


def check_overlap(overlap: float) -> None:
    """Raise unless neighbouring windows overlap by a fraction in [0, 1)."""
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")


def sliding_window(model: Model, images: torch.Tensor, window: int | Sequence[int],
                   overlap: float = 1 / 3) -> torch.Tensor:
    """Logits [N,C,H,W] from ``window``-sized crops whose overlaps are averaged.

    Windows step by ``window * (1 - overlap)``; the last one is flush with the border. An image no larger
    than the window in both directions runs whole. Memory stays that of one window, whatever the image size
    (Cityscapes' 1024x2048 frames with 769 or 513 windows).
    """
    wh, ww = (window, window) if isinstance(window, int) else tuple(window)
    n, _, h, w = images.shape
    if h <= wh and w <= ww:
        return model(images)
    check_overlap(overlap)
    sh, sw = max(1, int(wh * (1 - overlap))), max(1, int(ww * (1 - overlap)))
    total, count = None, images.new_zeros(1, 1, h, w)
    for top in _starts(h, wh, sh):
        for left in _starts(w, ww, sw):
            crop = images[:, :, top:top + wh, left:left + ww]
            logits = model(crop)
            if total is None:
                dtype = torch.promote_types(logits.dtype, torch.float32)
                total = logits.new_zeros(n, logits.shape[1], h, w, dtype=dtype)
            total[:, :, top:top + crop.shape[2], left:left + crop.shape[3]] += logits
            count[:, :, top:top + crop.shape[2], left:left + crop.shape[3]] += 1
    return total / count


def scaled_size(size: Sequence[int], scale: float, align_corners: bool) -> tuple[int, int]:
    """(H, W) of an image of ``size`` resized by ``scale``. With ``align_corners`` the TF reference's
    ``(dim - 1) * scale + 1`` (a 513 = 16 * 32 + 1 image at 0.5 gives 257 = 16 * 16 + 1, still corner-aligned
    with the network's features), else ``round(dim * scale)``."""
    if align_corners:
        return tuple(max(1, int((d - 1) * scale + 1)) for d in size)  # type: ignore[return-value]
    return tuple(max(1, round(d * scale)) for d in size)  # type: ignore[return-value]


def resize(x: torch.Tensor, size: Sequence[int], align_corners: bool) -> torch.Tensor:
    """Bilinear resize of [N,C,H,W] to ``size`` (a no-op at the same size; integer images become float)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    x = x if x.is_floating_point() else x.float()
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=align_corners)


def predict_multiscale(model: Model, images: torch.Tensor,
                       scales: Sequence[float] = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75), flip: bool = True, *,
                       window: int | Sequence[int] | None = None, overlap: float = 1 / 3,
                       align_corners: bool = False, logit_stride: int | None = None) -> torch.Tensor:
    """Softmax probabilities [N,C,H,W] averaged over ``scales`` (and their left-right flips) at the input size.

    As the TF reference's eval (``predict_labels_multi_scale``): each scale's logits are resized to the input
    size, then turned into probabilities, which are averaged (V3 section 4.3). Each scaled batch is resized
    bilinearly (with the network's ``align_corners`` geometry, see :func:`scaled_size`); with ``flip`` the
    mirrored copy runs in the same forward batch as the original (one forward per scale). With ``window`` each
    forward is a :func:`sliding_window`. With ``logit_stride``, ``model`` returns its logits at that stride, not
    upsampled (``DeepLab.stride_logits``), and each scale's logits are resized onto the grid TF merges scales on
    (``multi_scale_logits``: the logit grid of the image at ``max(1, scale)``, corners aligned), then to the
    input: the TF reference's evaluation exactly, at any input size.
    ``scales=(1.0,), flip=False`` equals ``softmax(model(images))``.
    """
    if not scales:
        raise ValueError("scales must name at least one scale")
    if logit_stride is not None and window is not None:
        raise ValueError("logit_stride (TF's merge of whole-image logits) does not combine with a sliding window")
    n, _, h, w = images.shape
    forward = model if window is None else (lambda x: sliding_window(model, x, window, overlap))
    total = None
    for scale in scales:
        x = resize(images, scaled_size((h, w), scale, align_corners), align_corners)
        if flip:
            x = torch.cat([x, x.flip(-1)])
        logits = forward(x).float()
        if logit_stride is not None:
            logits = resize(logits, scaled_size((h, w), max(1.0, scale) / logit_stride, True), True)
        probs = resize(logits, (h, w), align_corners).softmax(dim=1)
        if flip:
            probs = probs[:n] + probs[n:].flip(-1)
        total = probs if total is None else total + probs
    return total / (len(scales) * (2 if flip else 1))


def msc_max_fusion(model: Model, images: torch.Tensor, scales: Sequence[float] = (1.0, 0.75, 0.5), *,
                   align_corners: bool = False) -> list[torch.Tensor]:
    """DeepLab V2's multi-scale inputs with max fusion ("MSC", V2 section 4.1), in training and test.

    The shared network runs on the images at each scale; its logits are resized to the input size and fused by
    an element-wise max. Returns ``[fused, logits at scales[0], logits at scales[1], ...]``, each [N,C,H,W]:
    V2 trains on the sum of the losses of all of them. Deviation: V2 fuses the stride-8 score maps and
    downsamples the labels; here every map is first upsampled to the input size, like every output of this
    project, and the labels keep their resolution.
    """
    h, w = images.shape[-2:]
    outputs = []
    for scale in scales:
        logits = model(resize(images, scaled_size((h, w), scale, align_corners), align_corners))
        outputs.append(resize(logits, (h, w), align_corners))
    return [torch.stack(outputs).amax(0), *outputs]
