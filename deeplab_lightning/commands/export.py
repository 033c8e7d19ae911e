"""``deeplab-lightning export``: a trained network as ONNX, TorchScript or a ``torch.export`` program.

The exported graph is the whole network of :class:`~deeplab_lightning.models.deeplab.DeepLab`: it takes RGB
images [N, 3, H, W] as uint8 (0-255), normalises them for its backbone, and returns logits [N, C, H, W] at the
input size, for any batch size, height and width. A deployer feeds decoded images and takes the argmax over C.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from .options import CommandParser, boolean_option, help_text
from ..evaluation.crf_rnn import TrainableDenseCRF

FORMATS = {"onnx": ".onnx", "torchscript": ".pt", "exported_program": ".pt2"}
METADATA_FILE = "deeplab_lightning.json"
Format = Literal["onnx", "torchscript", "exported_program"]


def example_images(height: int = 129, width: int = 161, batch: int = 2) -> torch.Tensor:
    """uint8 RGB images [batch, 3, height, width] to trace the network with (sizes unlike each other, so no
    size is mistaken for a constant)."""
    return torch.randint(0, 256, (batch, 3, height, width), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(0))


def export_network(net: nn.Module, path: str | Path, fmt: Format, *, overwrite: bool = False,
                   metadata: dict[str, Any] | None = None) -> Path:
    """Write ``net`` (eval mode, on the CPU) to ``path`` in ``fmt`` with dynamic batch, height and width,
    atomically (a failed export leaves no file, nor one that does not load); refuses an existing ``path`` unless
    ``overwrite``, and a suffix that is not the format's. ``metadata`` (e.g. ``class_names``, ``palette``) goes
    into the file as JSON: ONNX ``metadata_props`` (one entry per key), the extra file ``deeplab_lightning.json``
    of a TorchScript archive or an exported program."""
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
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")  # renamed over path once complete
    try:
        with integer_same_padding():
            _write(net.eval().cpu().to(memory_format=torch.contiguous_format), tmp, fmt, metadata or {})
        _check_loads(tmp, fmt)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


@contextlib.contextmanager
def integer_same_padding() -> Iterator[None]:
    """timm's TF-style "same" padding (e.g. the average-pool shortcut of ``timm/resnet10t``) rounds up with
    ``math.ceil``, which ``torch.export`` traces on a dynamic size but cannot save; within this context it is
    ``ceil(x / s) = (x + s - 1) // s``, the same integers in operations a saved program holds."""
    from timm.layers import padding

    original = padding.get_same_padding

    def get_same_padding(x: Any, kernel_size: int, stride: int, dilation: int) -> Any:
        if isinstance(x, torch.Tensor):
            return original(x, kernel_size, stride, dilation)
        return torch.sym_max(((x + stride - 1) // stride - 1) * stride + (kernel_size - 1) * dilation + 1 - x, 0)

    padding.get_same_padding = get_same_padding
    try:
        yield
    finally:
        padding.get_same_padding = original


def _write(net: nn.Module, path: Path, fmt: Format, metadata: dict[str, Any]) -> None:
    images = example_images()
    extra = {METADATA_FILE: json.dumps(metadata)}
    dims = {"images": {axis: torch.export.Dim.DYNAMIC for axis in (0, 2, 3)}}  # batch, height, width
    if fmt == "onnx":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's notes on its own translation steps
            program = torch.onnx.export(net, (images,), dynamo=True, input_names=["images"],
                                        output_names=["logits"], verbose=False, dynamic_shapes=dims)
        program.save(str(path))
        _describe_onnx(path, metadata)
    elif fmt == "torchscript":
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TorchScript's deprecation notice; the input check traced as constant
            torch.jit.trace(net, images, check_trace=False).save(str(path), _extra_files=extra)
    elif fmt == "exported_program":
        torch.export.save(torch.export.export(net, (images,), dynamic_shapes=dims), str(path), extra_files=extra)


def _describe_onnx(path: Path, metadata: dict[str, Any]) -> None:
    """Name the dynamic axes of ``images`` [batch, 3, height, width] and ``logits`` [batch, C, height, width]
    everywhere in the graph (the exporter calls them s0, s1, ...), and add ``metadata`` to ``metadata_props``."""
    import onnx

    model = onnx.load(str(path))
    names = {}
    for dim, name in zip(model.graph.input[0].type.tensor_type.shape.dim, ("batch", "", "height", "width")):
        if name and dim.dim_param:
            names[dim.dim_param] = name
    for value in [*model.graph.input, *model.graph.output, *model.graph.value_info]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in names:
                dim.dim_param = names[dim.dim_param]
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=json.dumps(value))
    onnx.save(model, str(path))


def _check_loads(path: Path, fmt: Format) -> None:
    """Load the written file as a deployer would; one that does not load is an error, not a file."""
    try:
        if fmt == "onnx":
            import onnx

            onnx.checker.check_model(str(path))
        elif fmt == "torchscript":
            torch.jit.load(str(path))
        else:
            torch.export.load(str(path))
    except Exception as err:
        raise RuntimeError(f"The {fmt} file written does not load ({type(err).__name__}: {err}); nothing was "
                           f"written. Try another format") from err


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The ``metadata`` an exported file holds (see :func:`export_network`)."""
    path = Path(path)
    if path.suffix == FORMATS["onnx"]:
        import onnx

        model = onnx.load(str(path), load_external_data=False)
        return {p.key: json.loads(p.value) for p in model.metadata_props}
    extra = {METADATA_FILE: ""}
    if path.suffix == FORMATS["torchscript"]:
        torch.jit.load(str(path), _extra_files=extra)
    else:
        torch.export.load(str(path), extra_files=extra)
    return json.loads(extra[METADATA_FILE] or "{}")


def main(args: list[str] | None = None) -> int:
    """``deeplab-lightning export --ckpt_path X --format onnx [--output PATH]``."""
    parser = CommandParser(prog="deeplab-lightning export", description=help_text(__doc__),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt_path", required=True, help="a checkpoint written by deeplab-lightning fit")
    parser.add_argument("--format", choices=list(FORMATS), default="onnx")
    parser.add_argument("--output", help="the file to write (default: beside the checkpoint, <name><suffix>)")
    parser.add_argument("--overwrite", type=boolean_option, nargs="?", const=True, default=False,
                        help="replace an existing output file (default: refuse); --overwrite alone means true")
    parsed = parser.parse_args(args)
    from ..predictor import load_module

    ckpt = Path(parsed.ckpt_path)
    output = Path(parsed.output) if parsed.output else ckpt.with_suffix(FORMATS[parsed.format])
    if output.resolve() == ckpt.resolve():
        parser.error(f"--output {output} is the checkpoint being exported; choose another file")
    module = load_module(parsed.ckpt_path)
    metadata = {"class_names": module.class_names, "num_classes": module.hparams.num_classes,
                "input": "images: uint8 RGB [batch, 3, height, width], any size",
                "output": "logits: float [batch, num_classes, height, width]; the class is the argmax over dim 1"}
    if module.palette:
        metadata["palette"] = module.palette
    path = export_network(module.net, output, parsed.format, overwrite=parsed.overwrite, metadata=metadata)
    names = ", ".join(module.class_names) if module.class_names else f"{module.hparams.num_classes} classes"
    print(f"Wrote {path} ({parsed.format}): uint8 RGB images [N, 3, H, W] -> logits [N, "
          f"{module.hparams.num_classes}, H, W]; classes: {names}")
    return 0
