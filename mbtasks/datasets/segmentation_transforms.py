"""Semantic segmentation pipelines: mmsegmentation's training recipe (geometry by hand, colour by albumentations),
and evaluation (albumentations)."""

from __future__ import annotations

from collections.abc import Callable

import albumentations as A
import cv2
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2

from mbtasks.datasets.image_transforms import IMAGENET_MEAN, IMAGENET_STD
from mbtasks.datasets.pipeline import ImageCall, Pipeline


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


class ScaleCropFlip(ImageCall):
    """mmseg's training geometry and photometric distortion: scale by a factor drawn from scale_range, a random
    crop_size (height, width) window (the scaled image padded at the bottom and right with 0 / ignore_index where it
    is smaller), a horizontal flip (p=0.5), then `photometric` (an albumentations pipeline) on the crop.

    Albumentations' RandomScale + RandomCrop + HorizontalFlip resample the whole scaled image (up to 4x the pixels at
    scale 2) and copy it twice more; here one affine warp reads only the window's source pixels and writes the crop
    flipped, so its cost is the crop's size (tests/test_pipelines.py holds it to albumentations' output: the mask
    exactly, the image within one grey level). Images come
    out as uint8 CHW tensors and masks as uint8 tensors: `normalise_batch` finishes them on the device. Called as
    `t(image=hwc_uint8, mask=hw_uint8)` -> {"image", "mask"}, or `t(hwc_uint8)` -> the image (datasets/pipeline.py).
    """

    def __init__(
        self,
        crop_size: tuple[int, int],
        scale_range: tuple[float, float],
        ignore_index: int,
        photometric: A.Compose,
        seed: int | None = None,
    ):
        self.crop_size = (int(crop_size[0]), int(crop_size[1]))
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))
        self.ignore_index = ignore_index
        self.photometric = photometric
        self.set_random_seed(seed)

    def set_random_seed(self, seed: int | None) -> None:
        """Reseed this and the photometric pipeline (SeededAugmentation calls it per sample)."""
        # a stream of its own: albumentations seeds its generator from the same number
        self.rng = np.random.default_rng(None if seed is None else [seed, 1])
        if seed is not None:
            self.photometric.set_random_seed(seed)

    def sample(self, height: int, width: int) -> tuple[float, int, int, bool]:
        """(scale, top, left, flip): all the geometry's randomness, from the image size alone."""
        scale = self.rng.uniform(*self.scale_range)
        h_start, w_start, flip = self.rng.random(3)
        crop_h, crop_w = self.crop_size
        # albumentations' rules: sizes truncated; the window's corner drawn over the padded image, ends included
        scaled_h, scaled_w = int(height * scale), int(width * scale)
        top = int((max(scaled_h, crop_h) - crop_h + 1) * h_start)
        left = int((max(scaled_w, crop_w) - crop_w + 1) * w_start)
        return scale, top, left, bool(flip < 0.5)

    def transform_targets(self, image: np.ndarray, mask: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """The image and its mask (None: an image alone) through the geometry, then the image through photometric."""
        scale, top, left, flip = self.sample(*image.shape[:2])
        labels = np.zeros(image.shape[:2], np.uint8) if mask is None else mask
        image, labels = self.apply(image, labels, scale, top, left, flip)
        image = self.photometric(image=image)["image"]
        return {"image": image} if mask is None else {"image": image, "mask": labels}

    def apply(
        self, image: np.ndarray, mask: np.ndarray, scale: float, top: int, left: int, flip: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        """The geometry with its parameters given: HWC uint8 image and HW mask of crop_size."""
        height, width = image.shape[:2]
        scaled_h, scaled_w = int(height * scale), int(width * scale)
        crop_h, crop_w = self.crop_size
        # The source pixel of each crop pixel as cv2.resize to the scaled size maps it. Image: linear at pixel
        # centres, through the warp's inverse map. Mask: cv2's nearest, floor(x / scale), as two index lookups
        # (exactly cv2.resize's choice; the warp's nearest rounds in fixed point and moves some boundary pixels).
        # cv2's factors, 1 / (new / old) in double precision, so that exact multiples floor alike
        rx, ry = 1.0 / (scaled_w / width), 1.0 / (scaled_h / height)
        first = left + (crop_w - 1 if flip else 0)  # the scaled-image column of the crop's column 0
        to_image = np.array([[-rx if flip else rx, 0, (first + 0.5) * rx - 0.5], [0, ry, (top + 0.5) * ry - 0.5]])
        # replicate: at the last row and column cv2.resize clamps to the edge pixel
        out = cv2.warpAffine(
            image,
            to_image,
            (crop_w, crop_h),
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_REPLICATE,
        )
        columns = np.arange(left, left + crop_w)[:: -1 if flip else 1]
        rows = np.arange(top, top + crop_h)
        source_rows = np.minimum(np.floor(rows * ry).astype(np.intp), height - 1)
        source_columns = np.minimum(np.floor(columns * rx).astype(np.intp), width - 1)
        labels = mask.take(source_rows, axis=0).take(source_columns, axis=1)
        # the padding: rows and columns of the window beyond the scaled image
        pad_rows, pad_cols = max(top + crop_h - scaled_h, 0), max(left + crop_w - scaled_w, 0)
        if pad_rows:
            out[crop_h - pad_rows :], labels[crop_h - pad_rows :] = 0, self.ignore_index
        if pad_cols:
            columns = slice(0, pad_cols) if flip else slice(crop_w - pad_cols, crop_w)
            out[:, columns], labels[:, columns] = 0, self.ignore_index
        return out, labels


def segmentation_train_transforms(
    crop_size: tuple[int, int] = (512, 1024),
    scale_range: tuple[float, float] = (0.5, 2.0),
    ignore_index: int = 255,
    seed: int | None = None,
) -> ScaleCropFlip:
    """Random scale, random crop (height, width) padded with 0 / ignore_index, flip, photometric distortion; the
    image as an HWC uint8 array, the mask as a uint8 array (`normalise_batch` finishes them on the device)."""
    photometric = A.Compose([_photometric_distortion()], seed=seed)
    return ScaleCropFlip(crop_size, scale_range, ignore_index, photometric, seed=seed)


def normalise_batch(batch: dict, dtype: torch.dtype = torch.float32) -> dict:
    """A training batch from the loader (NHWC uint8 images, uint8 masks), where it is (the GPU), as the model and
    loss take it: NCHW ImageNet-normalised floats of `dtype` (the model's), int64 masks. Float batches (evaluation's)
    pass unchanged."""
    images = batch["image"]
    if images.dtype == torch.uint8:
        mean = torch.tensor(IMAGENET_MEAN, device=images.device, dtype=dtype) * 255
        std = torch.tensor(IMAGENET_STD, device=images.device, dtype=dtype) * 255
        images = ((images.to(dtype) - mean) / std).permute(0, 3, 1, 2).contiguous()
        batch = {**batch, "image": images, "mask": batch["mask"].long()}
    return batch


def segmentation_eval_transforms() -> Pipeline:
    """Normalise only: evaluation runs on the whole image at its own resolution."""
    return Pipeline([A.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD), ToTensorV2()])


def segmentation_item(
    transform: Callable | None, image: np.ndarray, mask: np.ndarray, image_path: str, label_path: str
) -> dict:
    """A data set item: image and mask through `transform` (an albumentations pipeline), with their files."""
    if transform is not None:
        out = transform(image=image, mask=mask)
        image, mask = out["image"], out["mask"]
    return {"image": image, "mask": mask, "image_path": image_path, "label_path": label_path}
