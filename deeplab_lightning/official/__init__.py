"""The official DeepLab checkpoints (the TF model zoo, the released Caffe models) read without TensorFlow or
Caffe and converted into this project's checkpoints (``deeplab-lightning convert``)."""
from .caffe_reader import read_caffemodel
from .checkpoint import (CONVERTED_FROM, Converted, convert, convert_caffe, convert_checkpoint, convert_tf,
                         write_checkpoint)
from .tf_reader import read_tf_checkpoint

__all__ = ["CONVERTED_FROM", "Converted", "convert", "convert_caffe", "convert_checkpoint", "convert_tf",
           "read_caffemodel", "read_tf_checkpoint", "write_checkpoint"]
