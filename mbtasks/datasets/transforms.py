"""Detection pipelines: torchvision's SSD and SSDLite training presets (albumentations; SSDLite's by hand, in
iou_crop.py), and evaluation."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch
from albumentations.augmentations.crops.transforms import BaseCropAndPad
from albumentations.core.transforms_interface import BaseTransformInitSchema
from albumentations.pytorch import ToTensorV2

from mbtasks.datasets.iou_crop import IoUCropFlipResize, RandomIoUCrop
from mbtasks.datasets.pipeline import Pipeline
from mbtasks.errors import MbtasksError

# torchvision's references fill the zoom-out canvas with the ImageNet mean in pixels.
_ZOOM_OUT_FILL = (123.0, 117.0, 104.0)


class RandomZoomOut(BaseCropAndPad):
    """SSD's zoom out: place the image at a random spot of a canvas 1 to 4 times its size, filled with `fill`.

    Albumentations' padding transforms pad to fixed sizes: this follows torchvision.transforms.v2.RandomZoomOut.
    """

    class InitSchema(BaseTransformInitSchema):
        fill: tuple[float, ...] | float
        side_range: tuple[float, float]

    def __init__(
        self,
        fill: tuple[float, ...] | float = _ZOOM_OUT_FILL,
        side_range: tuple[float, float] = (1.0, 4.0),
        p: float = 0.5,
    ):
        super().__init__(
            pad_if_needed=True, border_mode=cv2.BORDER_CONSTANT, fill=fill, fill_mask=0, pad_position="random", p=p
        )
        self.side_range = side_range

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        height, width = params["shape"][:2]
        ratio = self.py_random.uniform(*self.side_range)
        canvas_w, canvas_h = int(width * ratio), int(height * ratio)
        left = int((canvas_w - width) * self.py_random.random())
        top = int((canvas_h - height) * self.py_random.random())
        pad = {
            "pad_top": top,
            "pad_bottom": canvas_h - height - top,
            "pad_left": left,
            "pad_right": canvas_w - width - left,
        }
        return {"crop_coords": (0, 0, canvas_w, canvas_h), "pad_params": pad}

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("fill", "side_range")


def _photometric_distort() -> A.BasicTransform:
    # torchvision's RandomPhotometricDistort: each adjustment on its own coin flip, then a channel shuffle.
    # (torchvision applies contrast before or after saturation/hue at random; here it is always before.)
    return A.Sequential(
        [
            A.ColorJitter(brightness=(0.875, 1.125), contrast=(1, 1), saturation=(1, 1), hue=(0, 0), p=0.5),
            A.ColorJitter(brightness=(1, 1), contrast=(0.5, 1.5), saturation=(1, 1), hue=(0, 0), p=0.5),
            A.ColorJitter(brightness=(1, 1), contrast=(1, 1), saturation=(0.5, 1.5), hue=(0, 0), p=0.5),
            A.ColorJitter(brightness=(1, 1), contrast=(1, 1), saturation=(1, 1), hue=(-0.05, 0.05), p=0.5),
            A.ChannelShuffle(p=0.5),
        ]
    )


def _shortest_sides(size: tuple[int, int]) -> list[int]:
    """torchvision's multiscale shortest sides, 480 to 800 in steps of 32 at min_size 800, scaled to `size`'s
    shorter side (at 320: 192 to 320)."""
    side = min(size)
    return sorted({round(side * (480 + 32 * step) / 800) for step in range(11)})


# A preset takes the input size (height, width). SSD's and SSDLite's end in a resize to that size; Faster R-CNN's
# (torchvision's "hflip", its default, and "multiscale") keep each image's aspect ratio: the model resizes it
# (min_size, max_size), so a batch holds images of several sizes. torchvision's multiscale resize is followed by the
# model's own to min_size, as here: what it varies is the detail the image keeps.
PRESETS: dict[str, Callable[[tuple[int, int]], list[A.BasicTransform]]] = {
    "ssdlite": lambda size: [RandomIoUCrop(), A.HorizontalFlip(p=0.5)],
    "ssd": lambda size: [_photometric_distort(), RandomZoomOut(), RandomIoUCrop(), A.HorizontalFlip(p=0.5)],
    "hflip": lambda size: [A.HorizontalFlip(p=0.5)],
    "multiscale": lambda size: [A.SmallestMaxSize(max_size=_shortest_sides(size), p=1.0), A.HorizontalFlip(p=0.5)],
}
MODEL_RESIZED = ("hflip", "multiscale")  # presets that leave the size to the model


def detection_transforms(
    preset: str,
    size: tuple[int, int],
    train: bool,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    seed: int | None = None,
) -> Pipeline | IoUCropFlipResize:
    """Training: the preset's augmentation, then resize to size (height, width) unless the model resizes
    (MODEL_RESIZED); evaluation: no resize.

    Call as `t(image=hwc_uint8, bboxes=xyxy_pixels, labels=..., iscrowd=...)`, or `t(hwc_uint8)` for the image
    alone (datasets/pipeline.py). Training images come out as HWC
    uint8 arrays (`collate_training` batches them, `images_to_float` makes floats of them where the batch lands, on
    the device); evaluation's as float CHW tensors in [0, 1]; with mean/std, normalised float CHW tensors in [0, 1]
    units ((0.5,)*3 -> [-1, 1]) in both.
    Evaluation leaves the size alone because the detection models resize internally and return boxes in the
    pixels of their input.
    """
    if preset not in PRESETS:
        raise MbtasksError(f"unknown detection augmentation preset; valid presets: {', '.join(PRESETS)}", preset)
    if (mean is None) != (std is None):
        raise MbtasksError("detection_transforms: give both mean and std, or neither")
    if train and preset == "ssdlite" and mean is None:
        # the same augmentation by hand: measured faster than albumentations' RandomIoUCrop + HorizontalFlip +
        # Resize + ToFloat (whose float conversion now happens on the device); bench/data.py
        return IoUCropFlipResize(size, seed=seed)
    steps: list[A.BasicTransform] = []
    if train:
        steps += PRESETS[preset](size)
        if preset not in MODEL_RESIZED:
            steps.append(A.Resize(height=size[0], width=size[1]))
    if mean is not None:
        steps += [A.Normalize(mean=tuple(mean), std=tuple(std), max_pixel_value=255.0), ToTensorV2()]
    elif not train:
        steps += [A.ToFloat(max_value=255.0), ToTensorV2()]
    if not train:
        # Nothing here moves a box, and a box processor with no box transform only warns: boxes pass through.
        return Pipeline(steps, seed=seed)
    # Boxes under a pixel are dropped, as torchvision's SanitizeBoundingBoxes does after RandomIoUCrop.
    bbox_params = A.BboxParams(
        format="pascal_voc", label_fields=["labels", "iscrowd"], clip=True, min_width=1.0, min_height=1.0
    )
    return Pipeline(steps, bbox_params=bbox_params, seed=seed)


def collate_training(batch: list) -> tuple[torch.Tensor | list[torch.Tensor], tuple]:
    """A training batch: the HWC uint8 images (resized to one size) copied once, as they are, into one NHWC
    uint8 tensor (images of several sizes, which a Faster R-CNN resizes itself: a list of HWC uint8 tensors); the
    targets as a tuple, their boxes, labels and iscrowd views of one tensor each."""
    images, targets = zip(*batch)
    targets = [dict(target) for target in targets]
    # A loader worker hands a batch over in shared memory, a segment per tensor: three per batch instead of three
    # per image gave 1.3x the images/s through one worker (CocoDetection, batch 24).
    for key in ("boxes", "labels", "iscrowd"):
        parts = [target[key] for target in targets]
        for target, view in zip(targets, torch.cat(parts).split([len(part) for part in parts])):
            target[key] = view
    if len({image.shape for image in images}) > 1:
        return [torch.from_numpy(image) for image in images], tuple(targets)
    return torch.from_numpy(np.stack(images)), tuple(targets)


def images_to_float(batch: tuple, dtype: torch.dtype = torch.float32) -> tuple:
    """A batch where it lands (the GPU), images as the detection models take them: NHWC uint8 -> NCHW floats of
    `dtype` (the model's) in [0, 1] (a quarter of the bytes crossed the loader, the pinned memory and the bus, and the
    transposition is the GPU's). Other batches (evaluation's, float images) pass unchanged."""
    images, targets = batch
    if isinstance(images, torch.Tensor) and images.dtype == torch.uint8:
        images = images.permute(0, 3, 1, 2).to(dtype).div_(255).contiguous()
    elif isinstance(images, list) and images and images[0].dtype == torch.uint8:  # HWC images of several sizes
        images = [image.permute(2, 0, 1).to(dtype).div_(255).contiguous() for image in images]
    return images, targets
