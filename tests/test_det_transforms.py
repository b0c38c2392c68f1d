"""Detection pipelines: boxes stay valid, inside the image and on the object; SSD's crop and zoom out behave."""

from __future__ import annotations

import albumentations as A
import numpy as np
import pytest
import torch

from mbtasks.datasets.transforms import (
    PRESETS,
    RandomIoUCrop,
    RandomZoomOut,
    collate_training,
    detection_transforms,
    images_to_float,
)
from mbtasks.errors import MbtasksError

RED = np.array([230, 20, 20])


def scene(rng: np.random.Generator, count: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A grey image with count (default 1 to 3) red rectangles, and their boxes (xyxy pixels)."""
    height, width = 120, 160
    image = np.full((height, width, 3), 90, dtype=np.uint8)
    boxes = []
    for _ in range(count or rng.integers(1, 4)):
        w, h = rng.integers(12, 50, size=2)
        x, y = rng.integers(0, width - w), rng.integers(0, height - h)
        image[y : y + h, x : x + w] = RED
        boxes.append([x, y, x + w, y + h])
    return image, np.asarray(boxes, dtype=np.float32)


def test_unknown_preset_lists_the_valid_ones() -> None:
    expected = "ssd300: unknown detection augmentation preset; valid presets: ssdlite, ssd, hflip, multiscale$"
    with pytest.raises(MbtasksError, match=expected):
        detection_transforms("ssd300", (64, 64), train=True)
    assert set(PRESETS) == {"ssdlite", "ssd", "hflip", "multiscale"}


def test_faster_rcnn_presets_keep_the_aspect_ratio_and_batch_as_a_list() -> None:
    """torchvision's multiscale at min_size 800 takes shortest sides 480..800 (here scaled to 80: 48..80); "hflip"
    keeps the size. Images of several sizes batch as a list, made floats where the batch lands."""
    rng = np.random.default_rng(0)
    multiscale, flip = (detection_transforms(p, (80, 80), train=True, seed=0) for p in ("multiscale", "hflip"))
    shapes, batch = set(), []
    for _ in range(20):
        image, boxes = scene(rng)
        labels, iscrowd = np.arange(1, len(boxes) + 1), np.zeros(len(boxes), dtype=np.int64)
        out = multiscale(image=image, bboxes=boxes, labels=labels, iscrowd=iscrowd)
        height, width = out["image"].shape[:2]
        assert height in range(48, 81) and abs(width * 3 - height * 4) < 4  # 120 x 160 kept at 3:4
        shapes.add(out["image"].shape)
        same = flip(image=image, bboxes=boxes, labels=labels, iscrowd=iscrowd)
        assert same["image"].shape == image.shape
        batch.append((out["image"], {k: torch.as_tensor(np.asarray(out[k])) for k in ("labels", "iscrowd")}))
        batch[-1][1]["boxes"] = torch.as_tensor(np.asarray(out["bboxes"], dtype=np.float32)).reshape(-1, 4)
    assert len(shapes) > 3
    images, _ = images_to_float(collate_training(batch[:3]))
    assert [tuple(x.shape) for x in images] == [(3, *b[0].shape[:2]) for b in batch[:3]]


@pytest.mark.parametrize("preset", ["ssdlite", "ssd"])
def test_training_boxes_stay_valid_and_inside_the_image(preset: str) -> None:
    transform = detection_transforms(preset, (96, 128), train=True, seed=0)
    rng = np.random.default_rng(0)
    kept = dropped = 0
    for _ in range(150):
        image, boxes = scene(rng)
        labels, iscrowd = np.arange(1, len(boxes) + 1), np.zeros(len(boxes), dtype=np.int64)
        out = transform(image=image, bboxes=boxes, labels=labels, iscrowd=iscrowd)
        # training images stay HWC uint8 (the data module makes floats of the batch on the device)
        assert out["image"].shape == (96, 128, 3) and out["image"].dtype == np.uint8
        result = np.asarray(out["bboxes"], dtype=np.float64).reshape(-1, 4)
        assert len(result) == len(out["labels"]) == len(out["iscrowd"])
        assert set(np.asarray(out["labels"]).tolist()) <= set(labels.tolist())
        assert (result[:, :2] >= 0).all() and (result[:, 2] <= 128).all() and (result[:, 3] <= 96).all()
        assert (result[:, 2] - result[:, 0] >= 1).all() and (result[:, 3] - result[:, 1] >= 1).all()
        kept += len(result)
        dropped += len(boxes) - len(result)
    assert kept > 0 and dropped > 0  # the crop really crops


def test_training_boxes_follow_the_object() -> None:
    """After crop, flip and resize, each red rectangle's box is where the red pixels are."""
    transform = detection_transforms("ssdlite", (120, 160), train=True, seed=1)
    rng = np.random.default_rng(1)
    flipped_or_cropped = 0
    for _ in range(60):
        image, box = scene(rng, count=1)
        out = transform(image=image, bboxes=box, labels=np.array([1]), iscrowd=np.array([0]))
        if len(out["bboxes"]) == 0:
            continue
        red = torch.from_numpy((out["image"][..., 0] > 153) & (out["image"][..., 1] < 77))
        rows, cols = torch.nonzero(red.any(dim=1)).flatten(), torch.nonzero(red.any(dim=0)).flatten()
        found = [cols[0].item(), rows[0].item(), cols[-1].item() + 1, rows[-1].item() + 1]
        assert np.allclose(out["bboxes"][0], found, atol=2.5), (out["bboxes"][0], found)
        flipped_or_cropped += not np.allclose(out["bboxes"][0], box[0], atol=2.5)
    assert flipped_or_cropped > 10


def test_evaluation_leaves_size_and_boxes_alone() -> None:
    rng = np.random.default_rng(2)
    image, boxes = scene(rng)
    out = detection_transforms("ssd", (300, 300), train=False)(
        image=image, bboxes=boxes, labels=np.arange(len(boxes)), iscrowd=np.zeros(len(boxes))
    )
    assert out["image"].shape == (3, 120, 160)
    assert torch.allclose(out["image"], torch.from_numpy(image.copy()).permute(2, 0, 1).float() / 255)
    assert np.array_equal(np.asarray(out["bboxes"]), boxes)


def test_mean_and_std_normalise() -> None:
    image = np.array([[[0, 255, 128]]], dtype=np.uint8)
    out = detection_transforms("ssdlite", (1, 1), train=False, mean=(0.5,) * 3, std=(0.5,) * 3)(
        image=image, bboxes=np.zeros((0, 4)), labels=np.zeros(0), iscrowd=np.zeros(0)
    )
    assert out["image"].flatten().tolist() == pytest.approx([-1.0, 1.0, 128 / 127.5 - 1])
    with pytest.raises(MbtasksError, match="both mean and std"):
        detection_transforms("ssdlite", (1, 1), train=False, mean=(0.5,) * 3)


def test_same_seed_same_augmentations() -> None:
    image, boxes = scene(np.random.default_rng(3))
    kwargs = {"image": image, "bboxes": boxes, "labels": np.arange(len(boxes)), "iscrowd": np.zeros(len(boxes))}
    first, second = (detection_transforms("ssd", (64, 64), train=True, seed=7) for _ in range(2))
    for _ in range(5):
        a, b = first(**kwargs), second(**kwargs)
        assert np.array_equal(a["image"], b["image"]) and np.array_equal(a["bboxes"], b["bboxes"])


def test_iou_crop_drops_boxes_centred_outside_the_crop() -> None:
    # Normalised boxes on a 100x100 image; the crop keeps x in [0, 50).
    boxes = np.array([[0.10, 0.10, 0.30, 0.30], [0.40, 0.10, 0.70, 0.30], [0.30, 0.60, 0.60, 0.90]])
    out = RandomIoUCrop().apply_to_bboxes(boxes, crop_coords=(0, 0, 50, 100), shape=(100, 100))
    # The middle box is centred at x = 55: dropped although it overlaps the crop; the last is centred at x = 45.
    assert len(out) == 2
    assert np.allclose(out[0], [0.2, 0.1, 0.6, 0.3]) and np.allclose(out[1, [0, 1, 3]], [0.6, 0.6, 0.9])


def test_iou_crop_reaches_the_sampled_overlap() -> None:
    crop = A.Compose([RandomIoUCrop(sampler_options=[0.7])], bbox_params=A.BboxParams("pascal_voc", ["labels"]), seed=0)
    image = np.zeros((200, 200, 3), dtype=np.uint8)
    for _ in range(20):
        out = crop(image=image, bboxes=np.array([[50.0, 50.0, 150.0, 150.0]]), labels=[1])
        h, w = out["image"].shape[:2]
        # The box (100x100) overlaps the crop window with IoU >= 0.7: the window cannot be much bigger than it.
        x0, y0, x1, y1 = out["bboxes"][0]
        assert (x1 - x0) * (y1 - y0) / (h * w + 100 * 100 - (x1 - x0) * (y1 - y0)) >= 0.7 - 1e-6


def test_zoom_out_places_the_image_intact_on_a_larger_canvas() -> None:
    zoom = A.Compose([RandomZoomOut(p=1.0)], bbox_params=A.BboxParams("pascal_voc", ["labels"]), seed=0)
    image, boxes = scene(np.random.default_rng(4))
    sizes = []
    for _ in range(20):
        out = zoom(image=image, bboxes=boxes, labels=list(range(len(boxes))))
        canvas, shifted = out["image"], np.asarray(out["bboxes"])
        dx, dy = shifted[0, 0] - boxes[0, 0], shifted[0, 1] - boxes[0, 1]
        assert np.allclose(shifted - boxes, [dx, dy, dx, dy], atol=1e-3)
        top, left = int(round(dy)), int(round(dx))
        assert np.array_equal(canvas[top : top + 120, left : left + 160], image)
        assert (canvas[0, 0] == image[0, 0]).all() or (canvas[0, 0] == [123, 117, 104]).all()
        sizes.append(canvas.shape[1] / 160)
    assert 1.0 <= min(sizes) and max(sizes) <= 4.0 and max(sizes) > 2.0
