"""deeplab-lightning convert: an official DeepLab checkpoint as a checkpoint of this project.

Reads, without TensorFlow or Caffe, a TF DeepLab model-zoo checkpoint (the .tar.gz the zoo ships, or the
checkpoint prefix model.ckpt beside its .index and .data-* files: MobileNetV2 x1.0 / x0.5 and Xception-65 models,
ResNet-v1-101-beta DeepLabV3+) or a released DeepLab Caffe model (.caffemodel: V1 DeepLab-LargeFOV, V2 ResNet-101
with MSC), and writes a checkpoint that load, validate, test, predict, export and model.init_checkpoint read. The
network, classes, output stride and input range are recorded in it; every variable of the source is used once
(optimizer slots and global_step are skipped), or the conversion stops naming it.

    deeplab-lightning convert deeplabv3_pascal_train_aug_2018_01_04.tar.gz --output zoo/x65_voc.ckpt
    deeplab-lightning test --config experiments/zoo/xception65_coco_voc_trainaug.yaml --ckpt_path zoo/x65_voc.ckpt
"""
from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from .options import CommandParser, boolean_option

# The experiment config that evaluates a converted model as its source published it, by (model, depth multiplier,
# classes).
ZOO_CONFIGS = {
    ("mobilenet_v2", 1.0, 21): "mobilenetv2_coco_voc_trainaug",
    ("mobilenet_v2", 0.5, 21): "mobilenetv2_dm05_coco_voc_trainaug",
    ("xception_65", None, 21): "xception65_coco_voc_trainaug",
    ("mobilenet_v2", 1.0, 19): "mobilenetv2_coco_cityscapes_trainfine",
    ("xception_65", None, 19): "xception65_cityscapes_trainfine",
    ("v1_largefov", None, 21): "deeplab_largefov_caffe_voc",
    ("v2_resnet101", None, 21): "deeplabv2_resnet101_msc_caffe_voc",
}


def zoo_config(record: dict) -> str | None:
    """The ``experiments/zoo`` config that tests a converted model the way its source was evaluated, if any."""
    model = record.get("model_variant") or record.get("model")
    key = (model, record.get("depth_multiplier"), record.get("num_classes"))
    name = ZOO_CONFIGS.get(key)
    if not name:
        return None
    config = Path("experiments") / "zoo" / f"{name}.yaml"
    in_repository = Path(__file__).resolve().parents[2] / config  # from another folder: the repository's file
    return str(config if config.is_file() or not in_repository.is_file() else in_repository)


def main(args: list[str] | None = None) -> int:
    """``deeplab-lightning convert SOURCE --output FILE.ckpt [--output_stride N] [--overwrite true]``."""
    parser = CommandParser(prog="deeplab-lightning convert", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="a TF DeepLab checkpoint (.tar.gz, prefix, .index or folder) or a .caffemodel")
    parser.add_argument("--output", required=True, help="the project checkpoint to write (*.ckpt)")
    parser.add_argument("--output_stride", type=int, choices=[8, 16, 32], default=None,
                        help="recorded in the checkpoint (default: 16 for TF, the zoo's training stride; 8 for Caffe); "
                             "test --model.output_stride evaluates a TF model at another one")
    parser.add_argument("--overwrite", type=boolean_option, nargs="?", const=True, default=False,
                        help="replace an existing output file (default: refuse); --overwrite alone means true")
    parsed = parser.parse_args(args)
    output = Path(parsed.output)
    if output.suffix != ".ckpt":
        parser.error(f"--output {output}: a project checkpoint is named *.ckpt; name it {output.with_suffix('.ckpt')}")
    if output.exists() and not parsed.overwrite:
        raise FileExistsError(f"--output {output} exists; choose another file or pass --overwrite true")
    from ..official import CONVERTED_FROM, convert_checkpoint
    from ..runs.checkpoints import AtomicCheckpointIO

    path = convert_checkpoint(parsed.source, output, output_stride=parsed.output_stride, overwrite=parsed.overwrite)
    record = AtomicCheckpointIO().load_checkpoint(path, map_location="cpu", mmap=True)[CONVERTED_FROM]
    count = record.get("variables_converted", record.get("blobs_converted"))
    skipped = ", ".join(f"{n} {what}" for what, n in record.get("skipped", {}).items() if n)
    print(f"Wrote {path}: {record['arch']} ({record.get('model_variant') or record.get('model')}), "
          f"{record['num_classes']} classes, output stride {record['output_stride']}"
          + (f", MSC scales {record['msc_scales']}" if record.get("msc_scales") else "")
          + f"; input {record['input_range']}; {count} tensors converted"
          + (f" ({skipped} skipped)" if skipped else ""))
    config = zoo_config(record)
    if config:
        print(f"Evaluate it as its source did: deeplab-lightning validate --config {shlex.quote(config)} --ckpt_path "
              f"{shlex.quote(str(path))} (single scale; test: the config's multi-scale protocol, with "
              f"--model.output_stride 8 for the zoo's OS-8 rows)")
    else:
        print(f"Evaluate it with a config whose model section is the checkpoint's (arch {record['arch']}, "
              f"model_kwargs {record['model_kwargs']}): deeplab-lightning validate --config <config> --ckpt_path "
              f"{shlex.quote(str(path))}")
    return 0
