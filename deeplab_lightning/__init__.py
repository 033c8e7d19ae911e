"""deeplab_lightning: DeepLab V1, V2, V3 and V3+ for semantic segmentation, on PyTorch Lightning."""
import importlib
import importlib.abc
import importlib.util
import sys
import warnings

__version__ = "0.1.0"


def load(checkpoint: str, map_location: str = "cpu"):
    """A trained model from a checkpoint, ready to predict: ``deeplab_lightning.load("runs/x/checkpoints/best.ckpt")
    .predict("photo.jpg")`` -> class indices [H, W] (a :class:`~deeplab_lightning.predictor.Predictor`)."""
    from .predictor import Predictor

    return Predictor.load(checkpoint, map_location)


# Modules of version 0.1's first layout, now in the commands/, runs/ and evaluation/ packages: importing an old
# name gives the module at its new place, with a DeprecationWarning naming it.
MOVED = {"console": "commands", "cli": "commands.cli", "export": "commands.export", "check_data": "commands.check_data",
         "cache_data": "commands.cache", "convert": "commands.convert", "errors": "commands.errors",
         "quiet": "commands.quiet", "experiment": "commands.experiment", "run_folder": "runs.folder",
         "run_info": "runs.info", "checkpoint_io": "runs.checkpoints", "processes": "runs.processes",
         "plots": "evaluation.plots", "gallery": "evaluation.gallery"}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):  # noqa: ANN001, ANN201 - the import system's API
        old = fullname.removeprefix(f"{__name__}.")
        return importlib.util.spec_from_loader(fullname, self) if old in MOVED and old != fullname else None

    def create_module(self, spec):  # noqa: ANN001, ANN201
        new = f"{__name__}.{MOVED[spec.name.removeprefix(f'{__name__}.')]}"
        warnings.warn(f"{spec.name} is now {new}; import it from there", DeprecationWarning, stacklevel=2)
        return importlib.import_module(new)

    def exec_module(self, module):  # noqa: ANN001, ANN201 - the module it returned is already executed
        pass


sys.meta_path.append(_MovedModules())
