"""deeplab_lightning: DeepLab V1, V2, V3 and V3+ for semantic segmentation, on PyTorch Lightning."""
__version__ = "0.1.0"
