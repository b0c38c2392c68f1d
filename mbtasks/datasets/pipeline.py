"""The call every mbtasks pipeline answers, training's and evaluation's alike: albumentations' by name,
`t(image=..., mask=..., bboxes=..., ...)` -> a dict of what was given, transformed (what the data sets call), or
torchvision's on one image, `t(image)` -> the transformed image (albumentations' own Compose raises KeyError there)."""

from __future__ import annotations

from typing import Any

import albumentations as A
import numpy as np

# What a box or keypoint pipeline is given for an image alone: none of them (x_min, y_min, x_max, y_max / x, y).
_NONE = {"bboxes": np.zeros((0, 4)), "keypoints": np.zeros((0, 2))}


class ImageCall:
    """Both calls over a subclass's `transform_targets(**targets) -> dict` and `image_targets(image)`, the targets of
    an image alone."""

    def __call__(self, *image: Any, **targets: Any) -> Any:
        if not image:
            return self.transform_targets(**targets)
        if len(image) > 1 or targets:
            raise TypeError(
                f"{type(self).__name__} takes one image, t(image), or its targets by name, t(image=..., mask=...)"
            )
        return self.transform_targets(**self.image_targets(image[0]))["image"]

    def transform_targets(self, **targets: Any) -> dict[str, Any]:
        raise NotImplementedError

    def image_targets(self, image: Any) -> dict[str, Any]:
        return {"image": image}


class Pipeline(ImageCall, A.Compose):
    """albumentations' Compose, also called on one image."""

    def transform_targets(self, **targets: Any) -> dict[str, Any]:
        return A.Compose.__call__(self, **targets)

    def image_targets(self, image: Any) -> dict[str, Any]:
        """The image, and no boxes or keypoints (with their label fields) where the pipeline moves them."""
        targets = {"image": image}
        for name, processor in self.processors.items():
            targets[name] = _NONE[name]
            targets.update({field: [] for field in processor.params.label_fields or ()})
        return targets
