"""MobileNet backbones by name (BACKBONES): each returns named feature maps C1..C5 and C4_expand."""

from . import mobilenet_v1, mobilenet_v2, mobilenet_v3  # noqa: F401  (each registers its versions)
from .base import BACKBONES, Backbone

__all__ = ["BACKBONES", "Backbone"]
