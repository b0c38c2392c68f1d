"""mbtasks: detection, segmentation and image-level tasks on MobileNet v1/v2/v3 backbones."""
from .errors import MbtasksError
from .models import build_backbone, build_model, list_models

__all__ = ["MbtasksError", "build_backbone", "build_model", "list_models"]
__version__ = "0.1.0"
