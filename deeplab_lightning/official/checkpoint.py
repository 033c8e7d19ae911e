"""An official DeepLab checkpoint (TF model zoo, released Caffe model) as a project checkpoint: what
``deeplab_lightning.load``, ``validate``, ``test``, ``predict``, ``export`` and ``model.init_checkpoint`` read.

The written file is a Lightning checkpoint of :class:`~deeplab_lightning.training.SegmentationModule` (weights
only, step 0) whose ``hyper_parameters`` rebuild the converted network (``arch``, ``num_classes``,
``output_stride``, ``model_kwargs`` with the input range and BatchNorm epsilon the weights need, ``class_names``)
and whose ``converted_from`` entry says what it came from: the source file, its format and model, how many
variables were converted and which were skipped (``global_step``, optimizer slots), the input range and the
evaluation protocol of the source's published numbers.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning
import torch

from ..runs.checkpoints import AtomicCheckpointIO
from ..data.classes import CITYSCAPES_CLASSES, CITYSCAPES_PALETTE, VOC_CLASSES, voc_palette
from ..models import architectures_only
from . import caffe_deeplab, tf_deeplab
from .caffe_reader import read_caffemodel
from .mapping import MappingError, fill
from .tf_reader import read_tf_checkpoint

CONVERTED_FROM = "converted_from"  # the checkpoint key of the conversion's record


@dataclass
class Converted:
    """A converted network: its ``SegmentationModule`` settings (``module_kwargs``: others than the network's,
    e.g. V2's ``msc_scales``), weights (``net`` keys without the prefix) and the record of the conversion."""

    arch: str
    num_classes: int
    output_stride: int
    model_kwargs: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    record: dict[str, Any]
    module_kwargs: dict[str, Any] = field(default_factory=dict)


def _skipped(entries: dict[str, Any]) -> dict[str, int]:
    skipped = [name for name in entries if not tf_deeplab.is_model_variable(name)]
    return {"global_step": sum(n == "global_step" for n in skipped),
            "optimizer slots": sum(n != "global_step" for n in skipped)}


def convert_tf(source: str | Path, output_stride: int = 16) -> Converted:
    """A TF DeepLab checkpoint (prefix, ``.index``, folder or model-zoo ``.tar.gz``) as the project's network at
    ``output_stride`` (the zoo trained at 16; rates follow as the zoo's flags set them)."""
    tensors, entries, where = read_tf_checkpoint(source, keep=tf_deeplab.is_model_variable)
    spec = tf_deeplab.describe(tensors, where)
    net, arch, kwargs = tf_deeplab.build(spec, output_stride)
    state = tf_deeplab.tf_state_dict(spec, net, tensors, where)
    record = {"format": "TensorFlow checkpoint (tensorflow/models research/deeplab)", "source": where,
              "model_variant": spec.variant, "variables_converted": len(tensors), "skipped": _skipped(entries),
              "input_range": "RGB x / 127.5 - 1, in [-1, 1] (TF preprocess_zero_mean_unit_range)",
              "padding_value": 127.5}
    if spec.variant == "mobilenet_v2":
        record["depth_multiplier"] = spec.depth_multiplier
    return Converted(arch, spec.num_classes, output_stride, kwargs, state, record)


def convert_caffe(source: str | Path) -> Converted:
    """A released DeepLab Caffe model (``.caffemodel``: DeepLab-LargeFOV, or DeepLab v2 ResNet-101 with or without
    MSC) as the project's network (output stride 8). MSC's scaled copies of the layers must hold the same weights
    (they do: the prototxt shares them) and make the module evaluate at scales 1, 0.75 and 0.5 with max fusion."""
    where = str(source)
    layers = read_caffemodel(source)
    tensors, by_name, copies = caffe_deeplab.blob_tensors(layers, where)
    kind, num_classes, classifier = caffe_deeplab.describe(by_name, where)
    eps = {round(layer.params["eps"], 9) for layer in layers if layer.type == "BatchNorm" and "eps" in layer.params}
    if len(eps) > 1:
        raise MappingError(f"{where}: its BatchNorm layers use several epsilons ({sorted(eps)}); one is expected")
    net, arch, kwargs = caffe_deeplab.build(kind, num_classes, eps.pop() if eps else None)
    rules, conv_layers = (caffe_deeplab.v1_rules(classifier) if kind == "v1_largefov"
                          else caffe_deeplab.v2_rules(net, classifier))
    state = fill(net, rules, tensors, where)
    checked = caffe_deeplab.check_geometry(net, conv_layers, by_name, where)
    msc = any(name.endswith(caffe_deeplab.MSC_SUFFIXES) for name in by_name)
    record = {"format": "Caffe .caffemodel (DeepLab's released models)", "source": where, "model": kind,
              "blobs_converted": len(tensors), "msc_copies_checked_equal": copies,
              "layers_with_geometry_checked": checked,
              "input_range": "RGB minus the mean pixel (122.675, 116.669, 104.008), in [0, 255] (Caffe: BGR minus "
                             "(104.008, 116.669, 122.675); the first convolution's channels are reversed)",
              "padding_value": list(caffe_deeplab.CAFFE_MEAN_BGR[::-1])}
    module_kwargs = {"msc_scales": [1.0, 0.75, 0.5]} if msc else {}
    return Converted(arch, num_classes, 8, kwargs, state, record, module_kwargs)


def default_class_names(num_classes: int) -> tuple[list[str] | None, list[list[int]] | None]:
    """Class names and palette for the zoo's datasets by their number of classes (21: PASCAL VOC, 19:
    Cityscapes), else none."""
    if num_classes == len(VOC_CLASSES):
        return list(VOC_CLASSES), [list(c) for c in voc_palette(num_classes)]
    if num_classes == len(CITYSCAPES_CLASSES):
        return list(CITYSCAPES_CLASSES), [list(c) for c in CITYSCAPES_PALETTE]
    return None, None


def write_checkpoint(converted: Converted, output: str | Path, *, class_names: list[str] | None = None,
                     overwrite: bool = False) -> Path:
    """Write ``converted`` as a project checkpoint at ``output`` (atomically; an existing file is refused unless
    ``overwrite``). The module is built and loaded strictly from the weights before anything is written."""
    from ..training import SegmentationModule

    output = Path(output)
    if output.exists() and not overwrite:
        raise FileExistsError(f"{output} exists; choose another --output or pass --overwrite true")
    names, palette = default_class_names(converted.num_classes)
    names = list(class_names) if class_names is not None else names
    with architectures_only():
        module = SegmentationModule(converted.arch, converted.num_classes, output_stride=converted.output_stride,
                                    model_kwargs=converted.model_kwargs, class_names=names,
                                    **converted.module_kwargs)
    module.net.load_state_dict(converted.state_dict, strict=True)
    checkpoint = {
        "state_dict": module.state_dict(),
        "hyper_parameters": dict(module.hparams),
        "pytorch-lightning_version": lightning.__version__,
        "epoch": 0,
        "global_step": 0,
        CONVERTED_FROM: {**converted.record, "arch": converted.arch, "num_classes": converted.num_classes,
                         "output_stride": converted.output_stride, "model_kwargs": converted.model_kwargs,
                         **converted.module_kwargs},
    }
    if palette is not None:
        checkpoint["palette"] = palette
    AtomicCheckpointIO().save_checkpoint(checkpoint, output)
    return output


def convert(source: str | Path, output_stride: int | None = None) -> Converted:
    """An official checkpoint as the project's network: a ``.caffemodel`` (output stride 8, its only one), else a
    TF DeepLab checkpoint (prefix, ``.index``, folder or the model zoo's ``.tar.gz``; output stride 16 unless
    given)."""
    if str(source).endswith(".caffemodel"):
        if output_stride not in (None, 8):
            raise ValueError(f"--output_stride {output_stride}: the released Caffe models have output stride 8 only")
        return convert_caffe(source)
    return convert_tf(source, output_stride or 16)


def convert_checkpoint(source: str | Path, output: str | Path, *, output_stride: int | None = None,
                       class_names: list[str] | None = None, overwrite: bool = False) -> Path:
    """Convert an official checkpoint into a project checkpoint at ``output`` (returned).

    ``source``: a TF DeepLab checkpoint (prefix, ``.index``, folder, or the model zoo's ``.tar.gz``) or a released
    DeepLab ``.caffemodel``. ``output_stride``: recorded in the checkpoint (None: 16 for TF, the zoo's training
    stride; 8 for Caffe); ``validate`` / ``test`` with ``--model.output_stride`` evaluate a TF model at another
    one from the same weights. ``class_names``: default the dataset's (PASCAL VOC for 21 classes, Cityscapes for
    19)."""
    converted = convert(source, output_stride)
    return write_checkpoint(converted, output, class_names=class_names, overwrite=overwrite)
