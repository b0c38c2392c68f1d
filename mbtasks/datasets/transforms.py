"""Albumentations pipelines for detection: torchvision's SSD and SSDLite training presets, and evaluation."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import albumentations as A
import cv2
import numpy as np
from albumentations.augmentations.crops.transforms import BaseCrop, BaseCropAndPad
from albumentations.core.transforms_interface import BaseTransformInitSchema
from albumentations.pytorch import ToTensorV2

from mbtasks.errors import MbtasksError

# torchvision's references fill the zoom-out canvas with the ImageNet mean in pixels.
_ZOOM_OUT_FILL = (123.0, 117.0, 104.0)


class RandomIoUCrop(BaseCrop):
    """SSD's random crop whose IoU with some box reaches a sampled minimum; boxes centred outside it are dropped.

    Albumentations has none: this follows torchvision.transforms.v2.RandomIoUCrop.
    """

    class InitSchema(BaseTransformInitSchema):
        min_scale: float
        max_scale: float
        min_aspect_ratio: float
        max_aspect_ratio: float
        sampler_options: Sequence[float]
        trials: int

    def __init__(
        self,
        min_scale: float = 0.3,
        max_scale: float = 1.0,
        min_aspect_ratio: float = 0.5,
        max_aspect_ratio: float = 2.0,
        sampler_options: Sequence[float] = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0),
        trials: int = 40,
        p: float = 1.0,
    ):
        super().__init__(p=p)
        self.min_scale, self.max_scale = min_scale, max_scale
        self.min_aspect_ratio, self.max_aspect_ratio = min_aspect_ratio, max_aspect_ratio
        self.sampler_options = tuple(sampler_options)
        self.trials = trials

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        height, width = params["shape"][:2]
        keep_all = {"crop_coords": (0, 0, width, height)}
        boxes = np.asarray(data.get("bboxes", []), dtype=np.float64)
        if boxes.size == 0:
            return keep_all  # torchvision would sample until it draws the "leave as is" option
        # Boxes arrive normalised to [0, 1]; the sampling works in pixels.
        xyxy = boxes[:, :4] * np.array([width, height, width, height])
        cx, cy = (xyxy[:, 0] + xyxy[:, 2]) / 2, (xyxy[:, 1] + xyxy[:, 3]) / 2
        # torchvision loops until it succeeds; a bound keeps a pathological sample from hanging a worker.
        for _ in range(100):
            min_iou = self.py_random.choice(self.sampler_options)
            if min_iou >= 1.0:
                return keep_all
            for _ in range(self.trials):
                new_w = int(width * self.py_random.uniform(self.min_scale, self.max_scale))
                new_h = int(height * self.py_random.uniform(self.min_scale, self.max_scale))
                if new_h == 0 or not self.min_aspect_ratio <= new_w / new_h <= self.max_aspect_ratio:
                    continue
                left = int((width - new_w) * self.py_random.random())
                top = int((height - new_h) * self.py_random.random())
                right, bottom = left + new_w, top + new_h
                if left == right or top == bottom:
                    continue
                inside = (left < cx) & (cx < right) & (top < cy) & (cy < bottom)
                if not inside.any():
                    continue
                ious = _iou_with_window(xyxy[inside], (left, top, right, bottom))
                if ious.max() < min_iou:
                    continue
                return {"crop_coords": (left, top, right, bottom)}
        return keep_all

    def apply_to_bboxes(self, bboxes: np.ndarray, crop_coords: tuple[int, int, int, int], **params: Any) -> np.ndarray:
        height, width = params["shape"][:2]
        left, top, right, bottom = crop_coords
        cx = (bboxes[:, 0] + bboxes[:, 2]) / 2 * width
        cy = (bboxes[:, 1] + bboxes[:, 3]) / 2 * height
        inside = (left < cx) & (cx < right) & (top < cy) & (cy < bottom)
        return super().apply_to_bboxes(bboxes[inside], crop_coords, **params)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("min_scale", "max_scale", "min_aspect_ratio", "max_aspect_ratio", "sampler_options", "trials")


def _iou_with_window(xyxy: np.ndarray, window: tuple[int, int, int, int]) -> np.ndarray:
    # A few boxes against one window: numpy here spares a tensor round trip through torchvision.ops.box_iou.
    left, top, right, bottom = window
    iw = np.clip(np.minimum(xyxy[:, 2], right) - np.maximum(xyxy[:, 0], left), 0, None)
    ih = np.clip(np.minimum(xyxy[:, 3], bottom) - np.maximum(xyxy[:, 1], top), 0, None)
    inter = iw * ih
    areas = (xyxy[:, 2] - xyxy[:, 0]) * (xyxy[:, 3] - xyxy[:, 1])
    return inter / (areas + (right - left) * (bottom - top) - inter)


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


PRESETS: dict[str, Callable[[], list[A.BasicTransform]]] = {
    "ssdlite": lambda: [RandomIoUCrop(), A.HorizontalFlip(p=0.5)],
    "ssd": lambda: [_photometric_distort(), RandomZoomOut(), RandomIoUCrop(), A.HorizontalFlip(p=0.5)],
}


def detection_transforms(
    preset: str,
    size: tuple[int, int],
    train: bool,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    seed: int | None = None,
) -> A.Compose:
    """Training: the preset's augmentation, then resize to size (height, width); evaluation: no resize.

    Images come out as float CHW tensors, in [0, 1] or normalised by mean/std in [0, 1] units ((0.5,)*3 -> [-1, 1]).
    Call as `t(image=hwc_uint8, bboxes=xyxy_pixels, labels=..., iscrowd=...)`. Evaluation leaves the size alone
    because the detection models resize internally and return boxes in the pixels of their input.
    """
    if preset not in PRESETS:
        raise MbtasksError(f"unknown detection augmentation preset; valid presets: {', '.join(PRESETS)}", preset)
    if (mean is None) != (std is None):
        raise MbtasksError("detection_transforms: give both mean and std, or neither")
    steps: list[A.BasicTransform] = []
    if train:
        steps += PRESETS[preset]()
        steps.append(A.Resize(height=size[0], width=size[1]))
    if mean is None:
        steps.append(A.ToFloat(max_value=255.0))
    else:
        steps.append(A.Normalize(mean=tuple(mean), std=tuple(std), max_pixel_value=255.0))
    steps.append(ToTensorV2())
    if not train:
        # Nothing here moves a box, and a box processor with no box transform only warns: boxes pass through.
        return A.Compose(steps, seed=seed)
    # Boxes under a pixel are dropped, as torchvision's SanitizeBoundingBoxes does after RandomIoUCrop.
    bbox_params = A.BboxParams(
        format="pascal_voc", label_fields=["labels", "iscrowd"], clip=True, min_width=1.0, min_height=1.0
    )
    return A.Compose(steps, bbox_params=bbox_params, seed=seed)
