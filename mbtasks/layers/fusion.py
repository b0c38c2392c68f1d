"""Inference copies of models: batch norm folded into the preceding convolutions, channels-last weights."""

import copy

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """An eval-mode copy where every conv followed by batch norm is one conv (same outputs, fewer layers)."""
    model = copy.deepcopy(model).eval()
    for module in model.modules():
        if isinstance(module, nn.Sequential):
            layers = list(module)
            folded, i = [], 0
            while i < len(layers):
                if (
                    i + 1 < len(layers)
                    and isinstance(layers[i], nn.Conv2d)
                    and isinstance(layers[i + 1], nn.BatchNorm2d)
                ):
                    folded.append(fuse_conv_bn_eval(layers[i], layers[i + 1]))
                    i += 2
                else:
                    folded.append(layers[i])
                    i += 1
            if len(folded) != len(layers):
                # Rebuilding the Sequential drops the BN layers outright: an Identity left behind still costs a call.
                for name in list(module._modules):
                    del module._modules[name]
                for index, layer in enumerate(folded):
                    module.add_module(str(index), layer)
    return model


def for_inference(model: nn.Module) -> nn.Module:
    """What evaluate, predict and export run: batch norm folded, weights channels-last, and without the submodules
    that only train (those a module names in its `training_only`: a segmenter's aux head). Measured on this 2-core CPU
    (bench/segmentation.py, bench/deploy.py): channels-last runs depthwise convs 1.3-1.6x faster than NCHW, and the
    conv output follows the weights' layout, so inputs need no conversion."""
    import torch

    model = fold_batchnorm(model)
    for module in list(model.modules()):
        for name in getattr(module, "training_only", ()):
            setattr(module, name, None)
    return model.to(memory_format=torch.channels_last)
