"""The training pipelines on real photos: what they give is what the albumentations pipelines they replace gave
(given the same random draws), their random draws follow the same rules (torchvision's IoU crop), and their outputs
are what the models and losses take."""

from __future__ import annotations

import albumentations as A
import cv2
import numpy as np
import pytest
import skimage
import torch
import torchvision
from photo_sets import write_cityscapes_photos, write_coco_photos
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2

from mbtasks.config import load_config
from mbtasks.datasets.cityscapes import TRAIN_ID_COLORS, CityscapesSegmentation, label_ids_to_train_ids
from mbtasks.datasets.coco import CocoDetection
from mbtasks.datasets.image_transforms import eval_transform, train_transform
from mbtasks.datasets.iou_crop import IoUCropFlipResize, RandomIoUCrop, sample_iou_crop
from mbtasks.datasets.samplers import SeededAugmentation
from mbtasks.datasets.segmentation_transforms import (
    ScaleCropFlip,
    normalise_batch,
    segmentation_eval_transforms,
    segmentation_train_transforms,
)
from mbtasks.datasets.transforms import collate_training, detection_transforms, images_to_float
from mbtasks.io.images import read_label_png, read_rgb_image
from mbtasks.tasks.base import loader_worker_setup, one_thread_opencv_with
from mbtasks.tasks.detection import DetectionDataModule

SIZE = (320, 320)


@pytest.fixture(scope="module")
def coco(tmp_path_factory) -> CocoDetection:
    """The photos at 640x480 with their COCO boxes, as the training reader gives them (crowds left out)."""
    root = write_coco_photos(tmp_path_factory.mktemp("coco"))
    return CocoDetection(root / "train2017", root / "annotations" / "instances_train2017.json", None, train=True)


@pytest.fixture(scope="module")
def photos(coco) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """(image, boxes xyxy, labels, iscrowd) per photo."""
    return [(coco.load_image(i), *coco._targets[i]) for i in coco.image_ids]


class WindowCrop(RandomIoUCrop):
    """RandomIoUCrop with its window given: albumentations' crop and box rule, without the draw."""

    def __init__(self, window):
        super().__init__()
        self.window = window

    def get_params_dependent_on_data(self, params, data):
        return {"crop_coords": self.window}


def test_ssdlite_pipeline_gives_albumentations_output_for_the_same_draw(photos) -> None:
    pipeline = IoUCropFlipResize(SIZE)
    bbox_params = A.BboxParams(
        format="pascal_voc", label_fields=["labels", "iscrowd"], clip=True, min_width=1.0, min_height=1.0
    )
    flipped = cropped = 0
    for seed in range(8):
        for image, boxes, labels, iscrowd in photos:
            pipeline.set_random_seed(seed)
            window, flip = pipeline.sample(boxes.astype(np.float64), *image.shape[:2])
            ours = pipeline.apply(image, boxes.astype(np.float64), labels, iscrowd, window, flip)
            reference = A.Compose(
                [WindowCrop(window), A.HorizontalFlip(p=float(flip)), A.Resize(*SIZE)], bbox_params=bbox_params
            )(image=image, bboxes=boxes, labels=labels, iscrowd=iscrowd)
            assert ours["image"].dtype == np.uint8 and ours["image"].shape == (*SIZE, 3)
            assert np.abs(ours["image"].astype(int) - reference["image"]).max() <= 1  # flip before or after resizing
            assert np.allclose(ours["bboxes"], np.asarray(reference["bboxes"]).reshape(-1, 4), atol=1e-3)
            assert ours["labels"].tolist() == list(reference["labels"])
            assert ours["iscrowd"].tolist() == list(reference["iscrowd"])
            flipped += flip
            cropped += window != (0, 0, 640, 480)
    assert flipped > 8 and cropped > 15


def _box_iou(boxes: np.ndarray, window) -> np.ndarray:
    return torchvision.ops.box_iou(torch.from_numpy(boxes).double(), torch.tensor([window]).double())[:, 0].numpy()


@pytest.mark.parametrize("minimum", [0.1, 0.3, 0.5, 0.7, 0.9])
def test_iou_crop_windows_meet_the_sampled_minimum(photos, minimum: float) -> None:
    rng = np.random.default_rng(int(minimum * 10))
    for _, boxes, _, _ in photos:
        boxes = boxes.astype(np.float64)
        for _ in range(40):
            window = sample_iou_crop(rng, boxes, 640, 480, sampler_options=[minimum])
            left, top, right, bottom = window
            if window == (0, 0, 640, 480):
                continue  # the bounded search gave up (torchvision would go on): the image is left whole
            assert 0.5 <= (right - left) / (bottom - top) <= 2.0
            assert 0.3 * 640 - 1 <= right - left <= 640 and 0.3 * 480 - 1 <= bottom - top <= 480
            cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
            inside = (left < cx) & (cx < right) & (top < cy) & (cy < bottom)
            assert inside.any() and _box_iou(boxes[inside], window).max() >= minimum - 1e-9


def test_iou_crop_windows_follow_torchvisions_distribution(photos) -> None:
    """Windows drawn 400 times for two photos by sample_iou_crop and by torchvision's RandomIoUCrop: the same share
    of whole images, and the same mean size and place (within 4 standard errors)."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    reference = v2.RandomIoUCrop()
    canvas = tv_tensors.Image(torch.zeros(3, 480, 640, dtype=torch.uint8))
    draws = 400
    for _, boxes, _, _ in (photos[0], photos[3]):  # the astronaut (2 boxes), the motorcycle (4)
        tv_boxes = tv_tensors.BoundingBoxes(torch.from_numpy(boxes), format="XYXY", canvas_size=(480, 640))
        ours, theirs = [], []
        for _ in range(draws):
            left, top, right, bottom = sample_iou_crop(rng, boxes.astype(np.float64), 640, 480)
            ours.append(
                (
                    left == 0 and top == 0 and right == 640 and bottom == 480,
                    (right - left) * (bottom - top) / (640 * 480),
                    (left + right) / 1280,
                    (top + bottom) / 960,
                )
            )
            params = reference.make_params([canvas, tv_boxes])
            if not params:
                theirs.append((True, 1.0, 0.5, 0.5))
            else:
                theirs.append(
                    (
                        False,
                        params["width"] * params["height"] / (640 * 480),
                        (params["left"] + params["width"] / 2) / 640,
                        (params["top"] + params["height"] / 2) / 480,
                    )
                )
        ours, theirs = np.array(ours, dtype=float), np.array(theirs, dtype=float)
        error = np.sqrt((ours.var(0) + theirs.var(0)) / draws)
        assert (np.abs(ours.mean(0) - theirs.mean(0)) <= 4 * error + 1e-9).all(), (ours.mean(0), theirs.mean(0))


def test_ssdlite_training_items_on_real_photos(coco, photos) -> None:
    """The training reader with the recipe's pipeline, many seeded samples: uint8 320x320 images (NCHW floats in
    [0, 1] once on the device), every box inside the image, at least a pixel wide, on its object with its label."""
    transform = detection_transforms("ssdlite", SIZE, train=True, seed=0)
    items = SeededAugmentation(
        CocoDetection(coco.image_dir, coco.annotation_file, transform, train=True), transform, seed=3
    )
    replay = IoUCropFlipResize(SIZE)
    kept = dropped = 0
    for epoch in range(8):
        batch = [items[(epoch, index)] for index in range(len(photos))]
        images, targets = images_to_float(collate_training(batch))
        assert images.shape == (len(photos), 3, *SIZE) and images.dtype == torch.float32
        assert 0 <= images.min() and images.max() <= 1
        for index, target in enumerate(targets):
            image, boxes, labels, _ = photos[index]
            # the same draw again, and where the boxes must be for it
            replay.set_random_seed(hash((3, epoch, index)) % 2**32)
            (left, top, right, bottom), flip = replay.sample(boxes.astype(np.float64), 480, 640)
            centre_x, centre_y = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
            inside = (left < centre_x) & (centre_x < right) & (top < centre_y) & (centre_y < bottom)
            width, height = right - left, bottom - top
            expected = np.clip(boxes[inside] - [left, top, left, top], 0, [width, height, width, height])
            expected = expected * [320 / width, 320 / height, 320 / width, 320 / height]
            if flip:
                expected = np.stack([320 - expected[:, 2], expected[:, 1], 320 - expected[:, 0], expected[:, 3]], 1)
            big = (expected[:, 2] - expected[:, 0] >= 1) & (expected[:, 3] - expected[:, 1] >= 1)
            out = target["boxes"].numpy()
            assert np.allclose(out, expected[big], atol=1e-3)
            assert target["labels"].tolist() == labels[inside][big].tolist()
            assert (out >= 0).all() and (out <= 320).all()
            kept += len(out)
            dropped += len(boxes) - len(out)
    assert kept > 50 and dropped > 5


def test_detection_training_batch_is_one_uint8_tensor_and_floats_on_the_device() -> None:
    images = [np.random.default_rng(i).integers(0, 256, (4, 5, 3), dtype=np.uint8) for i in range(2)]
    given = [
        {
            "boxes": torch.rand(n, 4),
            "labels": torch.arange(n),
            "iscrowd": torch.zeros(n, dtype=torch.int64),
            "image_id": n,
        }
        for n in (2, 0)
    ]
    stacked, targets = collate_training([(images[0], given[0]), (images[1], given[1])])
    assert stacked.dtype == torch.uint8 and stacked.shape == (2, 4, 5, 3)
    for target, expected in zip(targets, given):
        assert target.keys() == expected.keys() and target["image_id"] == expected["image_id"]
        assert all(torch.equal(target[key], expected[key]) for key in ("boxes", "labels", "iscrowd"))
    floats, _ = images_to_float((stacked, targets))
    expected = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255
    assert floats.shape == (2, 3, 4, 5) and floats.is_contiguous() and torch.equal(floats, expected)
    evaluation = (tuple(torch.from_numpy(image).permute(2, 0, 1).float() for image in images), targets)
    assert images_to_float(evaluation)[0] is evaluation[0]


# ---- segmentation ----


@pytest.fixture(scope="module")
def streets(tmp_path_factory):
    """One Cityscapes scene of photos (2048x1024) and its labelIds, read back as they are on disk."""
    root = write_cityscapes_photos(tmp_path_factory.mktemp("cityscapes"), images=1)
    image = read_rgb_image(next(root.glob("leftImg8bit/train/*/*.png")))
    label_ids = read_label_png(next(root.glob("gtFine/train/*/*_labelIds.png")))
    return root, image, label_ids


def _old_geometry(image, mask, crop, scale, top, left, flip):
    """What albumentations' RandomScale + RandomCrop (padded top-left) + HorizontalFlip gave for these draws."""
    height, width = int(image.shape[0] * scale), int(image.shape[1] * scale)
    steps = [
        A.Resize(height, width),
        A.PadIfNeeded(*crop, position="top_left", border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=255),
        A.Crop(left, top, left + crop[1], top + crop[0]),
        A.HorizontalFlip(p=float(flip)),
    ]
    out = A.Compose(steps)(image=image, mask=mask)
    return out["image"], out["mask"]


@pytest.mark.parametrize("crop", [(256, 512), (800, 1280)])  # the second pads whenever the scale is under 0.8
def test_scale_crop_flip_gives_albumentations_output_for_the_same_draw(streets, crop) -> None:
    _, image, label_ids = streets
    image, label_ids = image[::2, ::2].copy(), label_ids[::2, ::2].copy()  # 512x1024: quicker, the same rules
    geometry = ScaleCropFlip(crop, (0.5, 2.0), 255, A.Compose([]))
    padded = 0
    for seed in range(10):
        geometry.set_random_seed(seed)
        draw = geometry.sample(*image.shape[:2])
        ours_image, ours_mask = geometry.apply(image, label_ids, *draw)
        old_image, old_mask = _old_geometry(image, label_ids, crop, *draw)
        assert np.array_equal(ours_mask, old_mask)
        assert np.abs(ours_image.astype(int) - old_image).max() <= 1  # fixed-point rounding of the warp
        padded += (ours_mask == 255).all(axis=1).any()
    assert padded > 0 if crop[0] > 512 else padded == 0


def test_segmentation_labels_stay_valid_and_on_their_pixels(streets, tmp_path) -> None:
    """A scene whose colours are its labels' (Cityscapes' train-id colours, black where ignored), through the
    training reader and geometry: labels stay train ids or 255, and away from label edges each pixel's colour is
    its label's (padding: black and 255)."""
    _, _, label_ids = streets
    # the scene's labels in 16x16 blocks (512x1024): no region thinner than the pixels a downscale skips
    label_ids = np.repeat(np.repeat(label_ids[16::32, 16::32], 16, axis=0), 16, axis=1)
    root = tmp_path / "cs"
    (root / "leftImg8bit/train/x").mkdir(parents=True)
    (root / "gtFine/train/x").mkdir(parents=True)
    colours = np.concatenate([TRAIN_ID_COLORS, np.zeros((256 - len(TRAIN_ID_COLORS), 3), np.uint8)])
    Image.fromarray(label_ids).save(root / "gtFine/train/x/x_000000_000000_gtFine_labelIds.png")
    Image.fromarray(colours[label_ids_to_train_ids(label_ids)]).save(
        root / "leftImg8bit/train/x/x_000000_000000_leftImg8bit.png"
    )
    geometry = ScaleCropFlip((384, 768), (0.5, 2.0), 255, A.Compose([]))
    items = SeededAugmentation(CityscapesSegmentation(root, "train", geometry), geometry, seed=0)
    valid = set(range(19)) | {255}
    checked = 0
    for index in range(12):
        item = items[(index, 0)]
        image, mask = item["image"], item["mask"]
        assert image.dtype == mask.dtype == np.uint8 and image.shape == (384, 768, 3) and mask.shape == (384, 768)
        assert set(np.unique(mask).tolist()) <= valid
        # interior: the 7x7 neighbourhood has one label, so linear and nearest sampling agree on it
        interior = cv2.erode(mask, np.ones((7, 7), np.uint8)) == cv2.dilate(mask, np.ones((7, 7), np.uint8))
        interior[:3], interior[-3:], interior[:, :3], interior[:, -3:] = False, False, False, False
        assert np.abs(image[interior].astype(int) - colours[mask[interior]]).max() <= 1
        checked += interior.sum()
    assert checked > 12 * 384 * 768 // 2


def test_segmentation_training_batch_normalised_on_the_device(streets) -> None:
    root, _, _ = streets
    transform = segmentation_train_transforms((256, 512), seed=0)
    items = SeededAugmentation(CityscapesSegmentation(root, "train", transform), transform, seed=0)
    batch = torch.utils.data.default_collate([items[(0, 0)], items[(1, 0)]])
    assert batch["image"].dtype == torch.uint8 and batch["image"].shape == (2, 256, 512, 3)
    normalised = normalise_batch(batch)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    expected = ((batch["image"].float() / 255 - mean) / std).permute(0, 3, 1, 2)
    assert normalised["image"].shape == (2, 3, 256, 512) and normalised["image"].is_contiguous()
    assert torch.allclose(normalised["image"], expected, atol=1e-5) and normalised["mask"].dtype == torch.int64
    assert normalise_batch(normalised)["image"] is normalised["image"]  # float batches pass


# ---- decoding and loader workers ----


def test_png_decoding_gives_the_pixels_cv2_gives(streets, tmp_path) -> None:
    root, image, label_ids = streets
    for writer in ("PIL", "cv2"):
        path, label_path = tmp_path / f"{writer}.png", tmp_path / f"{writer}_label.png"
        if writer == "PIL":
            Image.fromarray(image).save(path)
            Image.fromarray(label_ids).save(label_path)
        else:
            cv2.imwrite(str(path), image[..., ::-1])
            cv2.imwrite(str(label_path), label_ids)
        assert np.array_equal(read_rgb_image(path), cv2.imread(str(path), cv2.IMREAD_COLOR_RGB))
        assert np.array_equal(read_label_png(label_path), cv2.imread(str(label_path), cv2.IMREAD_UNCHANGED))


@pytest.mark.parametrize("form", ["baseline 4:2:0", "progressive", "grey", "CMYK"])
def test_jpeg_decoding_gives_the_pixels_cv2_gives(photos, form, tmp_path) -> None:
    """The reader decodes JPEGs with simplejpeg (faster); the pixels are OpenCV's, whatever the JPEG's form."""
    image = Image.fromarray(photos[0][0])
    path = tmp_path / "photo.jpg"
    {
        "baseline 4:2:0": lambda: image.save(path, quality=90),
        "progressive": lambda: image.save(path, quality=90, progressive=True),
        "grey": lambda: image.convert("L").save(path, quality=90),
        "CMYK": lambda: image.convert("CMYK").save(path, quality=90),
    }[form]()
    flags = cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION
    assert np.array_equal(read_rgb_image(path), cv2.imread(str(path), flags))


class _Threads(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int) -> int:
        return cv2.getNumThreads()


def test_loader_workers_run_opencv_on_one_thread(coco) -> None:
    """What the task loaders do: pin the main process before the workers fork (a forked worker that pins OpenCV
    itself while the main process's pool is alive hangs), and pin each worker (loader_worker_setup, which also ends
    the worker with its parent)."""
    threads = cv2.getNumThreads()
    try:
        cv2.setNumThreads(2)
        cv2.resize(np.zeros((2000, 2000, 3), np.uint8), (1000, 1000))  # the main process's pool is alive
        one_thread_opencv_with(workers=1)
        loader = torch.utils.data.DataLoader(_Threads(), num_workers=1, worker_init_fn=loader_worker_setup)
        assert [int(n) for n in loader] == [1, 1] and cv2.getNumThreads() == 1
    finally:
        cv2.setNumThreads(threads)
    config = load_config(
        None,
        [
            f"data.root={coco.image_dir.parent}",
            "data.num_workers=1",
            "data.train_split=train2017",
            "data.val_split=train2017",
        ],
        task="det",
    )
    data = DetectionDataModule(config)
    data.setup("fit")
    assert data.train_dataloader().worker_init_fn is data.val_dataloader().worker_init_fn is loader_worker_setup


# ---- one call for every pipeline: albumentations' by name, torchvision's on one image ----

NO_BOXES = {"bboxes": np.zeros((0, 4)), "labels": [], "iscrowd": []}


@pytest.mark.parametrize(
    "make, targets",
    [
        (lambda: detection_transforms("ssdlite", (96, 128), train=True, seed=0), NO_BOXES),
        (lambda: detection_transforms("ssd", (96, 128), train=True, seed=0), NO_BOXES),
        (lambda: detection_transforms("ssdlite", (96, 128), train=False), {}),
        (lambda: segmentation_train_transforms((64, 96), seed=0), {"mask": np.zeros((120, 160), np.uint8)}),
        (segmentation_eval_transforms, {}),
        (lambda: train_transform(48, seed=0), {}),
        (lambda: eval_transform(48), {}),
    ],
    ids=["ssdlite-train", "ssd-train", "det-eval", "seg-train", "seg-eval", "image-train", "image-eval"],
)
def test_every_pipeline_takes_one_image_as_torchvisions_transforms_do(make, targets):
    image = np.asarray(Image.fromarray(skimage.data.astronaut()).resize((160, 120)))
    alone = make()(image)  # albumentations' own Compose raises KeyError here
    by_name = make()(image=image, **targets)["image"]  # the data sets' call, seeded alike: the same draws
    assert type(alone) is type(by_name) and np.array_equal(np.asarray(alone), np.asarray(by_name))
    with pytest.raises(TypeError, match="takes one image"):
        make()(image, mask=image[..., 0])
