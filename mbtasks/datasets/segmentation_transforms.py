"""Albumentations pipelines for semantic segmentation: mmsegmentation's training recipe, and evaluation."""

from __future__ import annotations

from collections.abc import Callable

import albumentations as A
import cv2
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2

from mbtasks.datasets.image_transforms import IMAGENET_MEAN, IMAGENET_STD


def _photometric_distortion() -> A.BasicTransform:
    # mmseg's PhotoMetricDistortion, each step on its own coin flip: brightness +-32, contrast and saturation
    # x0.5..1.5, hue +-18 in OpenCV's 0..180 units (= +-0.1 of the hue circle)
    return A.Sequential(
        [
            A.RandomBrightnessContrast(brightness_limit=32 / 255, contrast_limit=0, p=0.5),
            A.RandomBrightnessContrast(brightness_limit=0, contrast_limit=0.5, p=0.5),
            A.ColorJitter(brightness=(1, 1), contrast=(1, 1), saturation=(0.5, 1.5), hue=(0, 0), p=0.5),
            A.ColorJitter(brightness=(1, 1), contrast=(1, 1), saturation=(1, 1), hue=(-0.1, 0.1), p=0.5),
        ]
    )


def segmentation_train_transforms(
    crop_size: tuple[int, int] = (512, 1024),
    scale_range: tuple[float, float] = (0.5, 2.0),
    ignore_index: int = 255,
    seed: int | None = None,
) -> A.Compose:
    """Random scale, random crop (height, width) padded with 0 / ignore_index, flip, photometric distortion,
    ImageNet normalisation, CHW tensor."""
    height, width = crop_size
    return A.Compose(
        [
            # RandomScale samples the factor as 1 + U(limits); the mask is resized with nearest neighbours
            A.RandomScale(scale_limit=(scale_range[0] - 1, scale_range[1] - 1), p=1.0),
            A.RandomCrop(
                height=height,
                width=width,
                pad_if_needed=True,
                border_mode=cv2.BORDER_CONSTANT,
                fill=0,
                fill_mask=ignore_index,  # padding is never scored
                pad_position="top_left",
            ),
            A.HorizontalFlip(p=0.5),
            _photometric_distortion(),
            A.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD),
            ToTensorV2(),
        ],
        seed=seed,
    )


def segmentation_eval_transforms() -> A.Compose:
    """Normalise only: evaluation runs on the whole image at its own resolution."""
    return A.Compose([A.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD), ToTensorV2()])


def segmentation_item(transform: Callable | None, image: np.ndarray, mask: np.ndarray, image_path: str,
                      label_path: str) -> dict:
    """A data set item: image and mask through `transform` (an albumentations pipeline), with their files."""
    if transform is not None:
        out = transform(image=image, mask=mask)
        image, mask = out["image"], out["mask"]
        if isinstance(mask, torch.Tensor):
            mask = mask.long()  # what cross-entropy with ignore_index expects
    return {"image": image, "mask": mask, "image_path": image_path, "label_path": label_path}
