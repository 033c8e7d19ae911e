"""Prediction from Python: a trained module from a checkpoint, and one image's class indices at its own size."""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image

from .runs.checkpoints import AtomicCheckpointIO
from .data.dataset import image_tensor, pad_collate, smallest_eval_size
from .data.transforms import size_pair
from .evaluation import CRFSettings, EvaluationPipeline
from .models import architectures_only
from .training.module import SegmentationModule


def load_module(path: str | Path, map_location: str | torch.device = "cpu") -> SegmentationModule:
    """The trained module of a checkpoint, in eval mode, without downloading anything (no pretrained weights are
    fetched: the checkpoint holds every weight). Errors name the file."""
    checkpoint = AtomicCheckpointIO().load_checkpoint(path, map_location=map_location)
    accepted = inspect.signature(SegmentationModule).parameters  # LightningCLI also saves its own keys
    hparams = {k: v for k, v in checkpoint.get("hyper_parameters", {}).items() if k in accepted}
    with architectures_only():
        module = SegmentationModule(**{**hparams, "compile": False})
    module.load_state_dict(checkpoint["state_dict"])
    module.palette = checkpoint.get("palette")
    return module.to(map_location).eval()


class Predictor:
    """A trained network that predicts one image at a time, as ``deeplab-lightning predict`` does:
    ``Predictor.load("runs/x/checkpoints/best.ckpt").predict("photo.jpg")`` -> class indices [H, W]."""

    def __init__(self, module: SegmentationModule) -> None:
        self.module = module

    @classmethod
    def load(cls, checkpoint: str | Path, map_location: str | torch.device = "cpu") -> Predictor:
        """The predictor of a checkpoint (see :func:`load_module`)."""
        return cls(load_module(checkpoint, map_location))

    @property
    def net(self) -> torch.nn.Module:
        """The network: images uint8 [N,3,H,W] -> logits [N,C,H,W] (what ``export`` writes)."""
        return self.module.net

    @property
    def class_names(self) -> list[str]:
        return self.module.class_names

    def to(self, device: str | torch.device) -> Predictor:
        self.module.to(device)
        return self

    @torch.no_grad()
    def predict(self, image: str | Path | Image.Image | np.ndarray | torch.Tensor, *,
                eval_size: int | tuple[int, int] | Literal["auto"] | None = "auto", **inference: Any) -> np.ndarray:
        """Class indices uint8 [H, W] of one RGB image (a path, PIL image, array [H, W, 3] or tensor [3, H, W];
        uint8 0-255, or values whose scale is unambiguous: see :func:`~deeplab_lightning.data.dataset.to_uint8`)
        at its own size.

        ``eval_size``: the canvas the image is padded to with the mean pixel (``"auto"``: the smallest 16k+1
        holding it, as ``deeplab-lightning predict`` pads each image of a folder; ``None``: the image's own size;
        the image pooling of V3/V3+ averages over the padding too).
        ``inference``: changes to :class:`~deeplab_lightning.evaluation.Inference` for this call, e.g.
        ``scales=(0.75, 1.0, 1.25), flip=True`` or ``crf=CRFSettings()`` (``crf=True`` for DeepLab V2's).
        """
        module = self.module
        pixels = image_tensor(image).to(module.device)
        size = tuple(pixels.shape[-2:])
        if eval_size == "auto":
            eval_size = smallest_eval_size([size])
        canvas = None if eval_size is None else size_pair(eval_size, "eval_size")
        if inference.get("crf") is True:
            inference["crf"] = CRFSettings()
        batch = pad_collate([{"image": pixels, "mask": torch.zeros(size, dtype=torch.long, device=module.device),
                              "id": "image", "size": size}], size=canvas, fixed=canvas is not None)
        settings = module.pipeline.settings.replace(**inference)
        training = module.training
        module.eval()
        try:
            labels = EvaluationPipeline(settings)(module, batch).labels[0]
        finally:
            module.train(training)
        return labels.to(torch.uint8).cpu().numpy()
