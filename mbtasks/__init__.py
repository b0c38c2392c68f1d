"""mbtasks: detection, segmentation and image-level tasks on MobileNet v1/v2/v3 backbones."""

from .errors import MbtasksError

__all__ = ["MbtasksError", "build_backbone", "build_model", "from_recipe", "list_models", "load"]
__version__ = "0.1.0"


def __getattr__(name: str):
    # The builders import torch and torchvision (seconds): loaded on first use, so that `mbtasks --help` and the
    # command line's own mistakes answer at once.
    if name in ("build_backbone", "build_model", "list_models"):
        from . import models

        return getattr(models, name)
    if name == "from_recipe":
        from .tasks.build import from_recipe

        return from_recipe
    if name == "load":
        from .loading import load

        return load
    raise AttributeError(f"module 'mbtasks' has no attribute {name!r}")
