"""albumentations pipelines for image-level tasks (attributes, face embeddings, classification).

Both end in ImageNet normalisation and a CHW float tensor, the input the pretrained backbones expect; both are called
as `t(image=hwc_uint8)` -> {"image": tensor} or `t(hwc_uint8)` -> tensor (datasets/pipeline.py).
Face recipes use a light crop (scale near 1) and keep the whole face at evaluation (crop_fraction=None);
ImageNet-style recipes use the defaults.
"""

from __future__ import annotations

import albumentations as A
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2

from ..sizes import height_width
from .pipeline import Pipeline

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def train_transform(
    size: int | tuple[int, int],
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    hflip: bool = True,
    color_jitter: float = 0.4,
    seed: int | None = None,
) -> Pipeline:
    """Random resized crop to `size` (int or (height, width)), optional flip, colour jitter, normalise."""
    height, width = height_width(size)
    steps = [A.RandomResizedCrop(size=(height, width), scale=scale, ratio=ratio)]
    # Flipping suits faces and most classes; turn it off where left and right carry meaning.
    if hflip:
        steps.append(A.HorizontalFlip(p=0.5))
    if color_jitter > 0:
        steps.append(
            A.ColorJitter(brightness=color_jitter, contrast=color_jitter, saturation=color_jitter, hue=0.0, p=0.8)
        )
    return Pipeline([*steps, A.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD), ToTensorV2()], seed=seed)


def eval_transform(size: int | tuple[int, int], crop_fraction: float | None = 0.875) -> Pipeline:
    """Resize the short side to size / crop_fraction and centre-crop `size`; None resizes the whole image."""
    height, width = height_width(size)
    if crop_fraction is None:
        steps = [A.Resize(height=height, width=width)]
    else:
        if not 0 < crop_fraction <= 1:
            raise ValueError(f"crop_fraction must lie in (0, 1], got {crop_fraction}")
        short_side = round(max(height, width) / crop_fraction)
        steps = [A.SmallestMaxSize(max_size=short_side), A.CenterCrop(height=height, width=width)]
    return Pipeline([*steps, A.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD), ToTensorV2()])


def displayable(image: np.ndarray | torch.Tensor, normalised: bool, zoom: int = 1) -> np.ndarray:
    """An image as a pipeline gives it (HWC uint8, or a CHW float tensor in [0, 1], or ImageNet-normalised where
    `normalised`) as an HxWx3 uint8 RGB picture: what the network sees, before its normalisation; enlarged `zoom`
    times, each pixel a square."""
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu()
        if image.dtype == torch.uint8:
            picture = image.numpy()
        else:
            values = image.float().permute(1, 2, 0).numpy()
            if normalised:
                values = values * np.array(IMAGENET_STD, np.float32) + np.array(IMAGENET_MEAN, np.float32)
            picture = np.clip(np.rint(values * 255), 0, 255).astype(np.uint8)
    else:
        picture = np.asarray(image)
    return np.ascontiguousarray(enlarged(picture, zoom))


def enlarged(array: np.ndarray, zoom: int) -> np.ndarray:
    """An image or a label map (H x W [x C]) with each pixel repeated `zoom` times down and across."""
    return array if zoom == 1 else array.repeat(zoom, axis=0).repeat(zoom, axis=1)
