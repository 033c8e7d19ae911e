"""Datasets and LightningDataModules."""
from .base import SegmentationDataModule
from .classes import VOC_CLASSES, voc_palette
from .dataset import SegmentationDataset, pad_collate
from .toy import TOY_CLASSES, ToyVOCDataModule, generate_toy_voc
from .voc import VOCDataModule

__all__ = [
    "SegmentationDataModule", "SegmentationDataset", "pad_collate", "VOCDataModule", "ToyVOCDataModule",
    "generate_toy_voc", "VOC_CLASSES", "TOY_CLASSES", "voc_palette",
]
