"""MobileNet backbones by name: each returns named feature maps C1..C5 and C4_expand."""
from .backbone import Backbone
from .mobilenet_v1 import mobilenet_v1
from .mobilenet_v2 import mobilenet_v2
from .mobilenet_v3 import mobilenet_v3_large, mobilenet_v3_small

BACKBONES = {
    "mobilenet_v1": mobilenet_v1,
    "mobilenet_v2": mobilenet_v2,
    "mobilenet_v3_large": mobilenet_v3_large,
    "mobilenet_v3_small": mobilenet_v3_small,
}

__all__ = ["Backbone", "BACKBONES"]
