"""SSD's IoU crop: the window sampler, as an albumentations transform (the SSD preset), and SSDLite's whole training
pipeline (IoU crop, flip, resize, float) in one pass over the pixels."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
from albumentations.augmentations.crops.transforms import BaseCrop
from albumentations.core.transforms_interface import BaseTransformInitSchema

from mbtasks.datasets.pipeline import ImageCall

SAMPLER_OPTIONS = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0)
_EPSILON = 1e-7  # albumentations' tolerance in its box filter, kept so both pipelines drop the same boxes


def sample_iou_crop(
    rng: np.random.Generator,
    xyxy: np.ndarray,
    width: int,
    height: int,
    min_scale: float = 0.3,
    max_scale: float = 1.0,
    min_aspect_ratio: float = 0.5,
    max_aspect_ratio: float = 2.0,
    sampler_options: Sequence[float] = SAMPLER_OPTIONS,
    trials: int = 40,
) -> tuple[int, int, int, int]:
    """A crop window (left, top, right, bottom) of a width x height image whose IoU with some box (xyxy pixels)
    centred inside it reaches a minimum drawn from sampler_options; the whole image when 1.0 (or no box) is drawn.

    torchvision.transforms.v2.RandomIoUCrop's rule: per minimum drawn, up to `trials` windows, the first that passes
    wins. The trials are drawn and checked together (2-3x faster than one by one in Python), and the first that
    passes is the same draw from the same distribution. It needs only the boxes and the image size.
    """
    keep_all = (0, 0, width, height)
    if len(xyxy) == 0:
        return keep_all  # torchvision would sample until it draws the "leave as is" option
    x0, y0, x1, y1 = xyxy[:, 0], xyxy[:, 1], xyxy[:, 2], xyxy[:, 3]
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    areas = (x1 - x0) * (y1 - y0)
    # torchvision loops until it succeeds; a bound keeps a pathological sample from hanging a worker.
    for _ in range(100):
        u = rng.random(4 * trials + 1)
        min_iou = sampler_options[int(u[0] * len(sampler_options))]
        if min_iou >= 1.0:
            return keep_all
        scales = min_scale + (max_scale - min_scale) * u[1 : 2 * trials + 1]
        new_w = (width * scales[:trials]).astype(np.int64)
        new_h = (height * scales[trials:]).astype(np.int64)
        left = ((width - new_w) * u[2 * trials + 1 : 3 * trials + 1]).astype(np.int64)[:, None]
        top = ((height - new_h) * u[3 * trials + 1 :]).astype(np.int64)[:, None]
        right, bottom = left + new_w[:, None], top + new_h[:, None]
        # trials x boxes: which boxes each window keeps, and their IoU with it
        inside = (left < cx) & (cx < right) & (top < cy) & (cy < bottom)
        inter = np.maximum(np.minimum(x1, right) - np.maximum(x0, left), 0) * np.maximum(
            np.minimum(y1, bottom) - np.maximum(y0, top), 0
        )
        union = areas + (new_w * new_h)[:, None] - inter
        iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        best = np.where(inside, iou, -1.0).max(axis=1)  # -1: no box centred inside, which fails any minimum
        # the aspect test as torchvision's new_w / new_h, multiplied out (new_h may be 0)
        passes = (
            (best >= min_iou)
            & (new_w > 0)
            & (new_h > 0)
            & (new_w >= min_aspect_ratio * new_h)
            & (new_w <= max_aspect_ratio * new_h)
        )
        first = np.flatnonzero(passes)
        if first.size:
            i = first[0]
            return int(left[i, 0]), int(top[i, 0]), int(right[i, 0]), int(bottom[i, 0])
    return keep_all


def centred_inside(xyxy: np.ndarray, window: tuple[int, int, int, int]) -> np.ndarray:
    """Which boxes have their centre strictly inside the window: the ones the crop keeps."""
    left, top, right, bottom = window
    cx, cy = (xyxy[:, 0] + xyxy[:, 2]) / 2, (xyxy[:, 1] + xyxy[:, 3]) / 2
    return (left < cx) & (cx < right) & (top < cy) & (cy < bottom)


class RandomIoUCrop(BaseCrop):
    """SSD's random crop whose IoU with some box reaches a sampled minimum; boxes centred outside it are dropped.

    Albumentations has none: the window comes from `sample_iou_crop` (torchvision.transforms.v2.RandomIoUCrop's rule).
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
        sampler_options: Sequence[float] = SAMPLER_OPTIONS,
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
        boxes = np.asarray(data.get("bboxes", []), dtype=np.float64)
        # Boxes arrive normalised to [0, 1] (label columns after them); the sampling works in pixels.
        xyxy = boxes[:, :4] * np.array([width, height, width, height]) if boxes.size else np.zeros((0, 4))
        window = sample_iou_crop(
            self.random_generator,
            xyxy,
            width,
            height,
            self.min_scale,
            self.max_scale,
            self.min_aspect_ratio,
            self.max_aspect_ratio,
            self.sampler_options,
            self.trials,
        )
        return {"crop_coords": window}

    def apply_to_bboxes(self, bboxes: np.ndarray, crop_coords: tuple[int, int, int, int], **params: Any) -> np.ndarray:
        height, width = params["shape"][:2]
        inside = centred_inside(bboxes[:, :4] * np.array([width, height, width, height]), crop_coords)
        return super().apply_to_bboxes(bboxes[inside], crop_coords, **params)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("min_scale", "max_scale", "min_aspect_ratio", "max_aspect_ratio", "sampler_options", "trials")


class IoUCropFlipResize(ImageCall):
    """SSDLite's training pipeline (torchvision's "ssdlite" preset, then the model's resize): IoU crop, horizontal
    flip (p=0.5), resize to size (height, width); boxes under a pixel wide or high dropped. Images come out as they
    went in, HWC uint8 arrays: collate_training copies them once into the batch, images_to_float makes floats of
    them on the device.

    Called as albumentations pipelines are, `t(image=hwc_uint8, bboxes=xyxy_pixels, labels=..., iscrowd=...)`, or
    on the image alone, `t(hwc_uint8)` -> the image (datasets/pipeline.py). It
    gives the images and boxes of albumentations' RandomIoUCrop + HorizontalFlip + Resize with the same window and
    flip (tests/test_pipelines.py) in a quarter of their time: one resize reads the window in place, the flip and
    the boxes' arithmetic run on the small output, without albumentations' per-transform bookkeeping.
    """

    def __init__(self, size: tuple[int, int], seed: int | None = None, **crop_options: Any):
        self.size = (int(size[0]), int(size[1]))
        self.crop_options = crop_options
        self.rng = np.random.default_rng(seed)

    def set_random_seed(self, seed: int) -> None:
        """Reseed, as albumentations' Compose.set_random_seed does (SeededAugmentation calls it per sample)."""
        self.rng = np.random.default_rng(seed)

    def sample(self, boxes: np.ndarray, height: int, width: int) -> tuple[tuple[int, int, int, int], bool]:
        """The crop window and whether to flip: all the randomness, drawn from the boxes and the image size alone."""
        window = sample_iou_crop(self.rng, boxes, width, height, **self.crop_options)
        return window, bool(self.rng.random() < 0.5)

    def transform_targets(
        self, image: np.ndarray, bboxes: Any = (), labels: Any = (), iscrowd: Any = ()
    ) -> dict[str, Any]:
        boxes = np.asarray(bboxes, dtype=np.float64).reshape(-1, 4)
        window, flip = self.sample(boxes, *image.shape[:2])
        return self.apply(image, boxes, np.asarray(labels), np.asarray(iscrowd), window, flip)

    def apply(
        self,
        image: np.ndarray,
        boxes: np.ndarray,
        labels: np.ndarray,
        iscrowd: np.ndarray,
        window: tuple[int, int, int, int],
        flip: bool,
    ) -> dict[str, Any]:
        """The pipeline with its window and flip given."""
        left, top, right, bottom = window
        out_h, out_w = self.size
        pixels = cv2.resize(image[top:bottom, left:right], (out_w, out_h), interpolation=cv2.INTER_LINEAR)
        if flip:
            pixels = cv2.flip(pixels, 1)

        crop_w, crop_h = right - left, bottom - top
        chosen = np.flatnonzero(centred_inside(boxes, window))
        kept = np.clip(boxes[chosen] - (left, top, left, top), 0, (crop_w, crop_h, crop_w, crop_h))
        # dropped where albumentations drops them: under a pixel in the window, or after the resize
        sx, sy = out_w / crop_w, out_h / crop_h
        widths, heights = kept[:, 2] - kept[:, 0], kept[:, 3] - kept[:, 1]
        big = np.minimum(widths, widths * sx) >= 1 - _EPSILON
        big &= np.minimum(heights, heights * sy) >= 1 - _EPSILON
        kept = kept[big] * (sx, sy, sx, sy)
        if flip:
            kept = kept[:, [2, 1, 0, 3]] * (-1, 1, -1, 1) + (out_w, 0, out_w, 0)
        chosen = chosen[big]
        return {
            "image": pixels,
            "bboxes": kept.astype(np.float32),
            "labels": labels[chosen],
            "iscrowd": iscrowd[chosen],
        }
