"""deeplab_lightning: DeepLab V1, V2, V3 and V3+ for semantic segmentation, on PyTorch Lightning."""
__version__ = "0.1.0"


def load(checkpoint: str, map_location: str = "cpu"):
    """A trained model from a checkpoint, ready to predict: ``deeplab_lightning.load("runs/x/checkpoints/best.ckpt")
    .predict("photo.jpg")`` -> class indices [H, W] (see ``SegmentationModule.predict``)."""
    from .module import SegmentationModule

    return SegmentationModule.from_checkpoint(checkpoint, map_location)
