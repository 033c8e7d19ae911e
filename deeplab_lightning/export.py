"""``deeplab-lightning export``: a trained network as ONNX, TorchScript or a ``torch.export`` program.

The exported graph is the whole network of :class:`~deeplab_lightning.models.deeplab.DeepLab`: it takes RGB
images [N, 3, H, W] as uint8 (0-255), normalises them for its backbone, and returns logits [N, C, H, W] at the
input size, for any batch size, height and width. A deployer feeds decoded images and takes the argmax over C.
"""
from __future__ import annotations

import argparse
import os
import warnings
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from .evaluation.crf_rnn import TrainableDenseCRF

FORMATS = {"onnx": ".onnx", "torchscript": ".pt", "exported_program": ".pt2"}
Format = Literal["onnx", "torchscript", "exported_program"]


def example_images(height: int = 129, width: int = 161, batch: int = 2) -> torch.Tensor:
    """uint8 RGB images [batch, 3, height, width] to trace the network with (sizes unlike each other, so no
    size is mistaken for a constant)."""
    return torch.randint(0, 256, (batch, 3, height, width), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(0))


def export_network(net: nn.Module, path: str | Path, fmt: Format, *, overwrite: bool = False) -> Path:
    """Write ``net`` (eval mode, on the CPU) to ``path`` in ``fmt`` with dynamic batch, height and width,
    atomically (a failed export leaves no file); refuses an existing ``path`` unless ``overwrite``, and a suffix
    that is not the format's."""
    path = Path(path)
    if any(isinstance(m, TrainableDenseCRF) for m in net.modules()):
        raise ValueError("A network with the trainable CRF (model.crf_rnn) cannot be exported: its mean field "
                         "builds a sparse lattice per image, which ONNX and torch.export cannot express. Export "
                         "the network alone (a checkpoint trained without model.crf_rnn)")
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if path.suffix != FORMATS[fmt]:
        raise ValueError(f"--output {path}: a {fmt} file is named *{FORMATS[fmt]} (readers go by the suffix); "
                         f"name it {path.with_suffix(FORMATS[fmt]).name} or choose the format of {path.suffix}")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; choose another --output or pass --overwrite true")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # renamed over path once complete
    try:
        _write(net.eval().cpu().to(memory_format=torch.contiguous_format), tmp, fmt)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _write(net: nn.Module, path: Path, fmt: Format) -> None:
    images = example_images()
    if fmt == "onnx":
        batch, height, width = (torch.export.Dim.DYNAMIC,) * 3
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's notes on its own translation steps
            program = torch.onnx.export(net, (images,), dynamo=True, input_names=["images"],
                                        output_names=["logits"], verbose=False,
                                        dynamic_shapes={"images": {0: batch, 2: height, 3: width}})
        program.save(str(path))
    elif fmt == "torchscript":
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TorchScript's deprecation notice; the input check traced as constant
            torch.jit.trace(net, images, check_trace=False).save(str(path))
    elif fmt == "exported_program":
        dims = {"images": {0: torch.export.Dim.DYNAMIC, 2: torch.export.Dim.DYNAMIC, 3: torch.export.Dim.DYNAMIC}}
        torch.export.save(torch.export.export(net, (images,), dynamic_shapes=dims), str(path))


def _boolean(text: str) -> bool:
    value = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}.get(text.lower())
    if value is None:
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return value


def main(args: list[str] | None = None) -> int:
    """``deeplab-lightning export --ckpt_path X --format onnx [--output PATH]``."""
    parser = argparse.ArgumentParser(prog="deeplab-lightning export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt_path", required=True, help="a checkpoint written by deeplab-lightning fit")
    parser.add_argument("--format", choices=list(FORMATS), default="onnx")
    parser.add_argument("--output", help="the file to write (default: beside the checkpoint, <name><suffix>)")
    parser.add_argument("--overwrite", type=_boolean, default=False,
                        help="replace an existing output file (default: refuse)")
    parsed = parser.parse_args(args)
    from .predictor import load_module

    ckpt = Path(parsed.ckpt_path)
    output = Path(parsed.output) if parsed.output else ckpt.with_suffix(FORMATS[parsed.format])
    if output.resolve() == ckpt.resolve():
        parser.error(f"--output {output} is the checkpoint being exported; choose another file")
    module = load_module(parsed.ckpt_path)
    path = export_network(module.net, output, parsed.format, overwrite=parsed.overwrite)
    names = ", ".join(module.class_names) if module.class_names else f"{module.hparams.num_classes} classes"
    print(f"Wrote {path} ({parsed.format}): uint8 RGB images [N, 3, H, W] -> logits [N, "
          f"{module.hparams.num_classes}, H, W]; classes: {names}")
    return 0
