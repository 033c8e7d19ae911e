"""Datasets and LightningDataModules."""
from .base import SegmentationDataModule
from .cityscapes import CityscapesDataModule
from .classes import CITYSCAPES_CLASSES, VOC_CLASSES, voc_palette
from .colour_masks import convert_colour_masks
from .dataset import SegmentationDataset, pad_collate
from .folder import FolderDataModule, ImageFolderDataModule
from .toy import TOY_CLASSES, ToyVOCDataModule, generate_toy_voc
from .voc import VOCDataModule

__all__ = [
    "SegmentationDataModule", "SegmentationDataset", "pad_collate", "VOCDataModule", "ToyVOCDataModule",
    "ImageFolderDataModule", "FolderDataModule",
    "generate_toy_voc", "CityscapesDataModule", "VOC_CLASSES", "TOY_CLASSES", "CITYSCAPES_CLASSES", "voc_palette",
    "convert_colour_masks",
]
