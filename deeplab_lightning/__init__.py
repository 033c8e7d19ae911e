"""deeplab_lightning: DeepLab V1, V2, V3 and V3+ for semantic segmentation, on PyTorch Lightning."""
__version__ = "0.1.0"


def load(checkpoint: str, map_location: str = "cpu"):
    """A trained model from a checkpoint, ready to predict: ``deeplab_lightning.load("runs/x/checkpoints/best.ckpt")
    .predict("photo.jpg")`` -> class indices [H, W] (a :class:`~deeplab_lightning.predictor.Predictor`)."""
    from .predictor import Predictor

    return Predictor.load(checkpoint, map_location)
