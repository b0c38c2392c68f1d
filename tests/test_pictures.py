"""The pictures people judge a model by: `mbtasks predict`'s drawings on real photos (scikit-image's) by the demo
detector and segmenter (a colour per class, captions inside the image, a legend, JPEG kept JPEG), its detections
JSON below the drawing threshold and its summary line."""

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data
from tensorboard.backend.event_processing.event_accumulator import IMAGES, EventAccumulator

from mbtasks.cli import main
from mbtasks.drawing import caption_rectangle, class_colours, font_size, line_width
from mbtasks.io.records import read_checkpoint
from mbtasks.tasks import TASKS

ASTRONAUT, COFFEE = data.astronaut(), data.coffee()


def _task(checkpoint: str, name: str):
    return TASKS.get(name).from_record(read_checkpoint(checkpoint), source=checkpoint)


def test_predict_draws_jpeg_for_jpeg_keeps_detections_below_the_drawing_threshold_and_sums_up(
    demo_detector, tmp_path, capsys
):
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(ASTRONAUT).save(photos / "astronaut.jpg", quality=90)
    Image.fromarray(COFFEE).save(photos / "coffee.png")
    Image.fromarray(np.full((120, 160, 3), 128, np.uint8)).save(photos / "grey.png")  # nothing to detect
    out = tmp_path / "out"
    assert main(["predict", "--checkpoint", demo_detector, str(photos), "--out", str(out), "--workers", "0"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert (out / "astronaut.jpg").read_bytes()[:3] == b"\xff\xd8\xff"  # JPEG in, JPEG out
    assert (out / "coffee.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "astronaut.jpg").stat().st_size < (photos / "astronaut.jpg").stat().st_size * 2
    entries = {Path(e["file"]).name: e["detections"] for e in json.loads((out / "detections.json").read_text())}
    scores = [d["score"] for detections in entries.values() for d in detections]
    # the JSON keeps what scores 0.05 or more, the pictures show what scores 0.3 or more
    assert min(scores) >= 0.05 and any(score < 0.3 for score in scores)
    drawn = {name: sum(d["score"] >= 0.3 for d in detections) for name, detections in entries.items()}
    none = sorted(str(photos / name) for name, count in drawn.items() if count == 0)
    assert str(photos / "grey.png") in none
    assert printed[-1] == (
        f"3 images, {sum(drawn.values())} detections drawn (score 0.3 or more), {len(none)} images with none above "
        f"the threshold: {', '.join(none)}"
    )
    single = ["predict", "--checkpoint", demo_detector, str(photos / "astronaut.jpg"), "--out", str(tmp_path / "png")]
    assert main([*single, "--picture-format", "png", "--workers", "0"]) == 0
    assert (tmp_path / "png/astronaut.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_two_classes_get_their_own_colours_and_captions_stay_inside_the_photo(demo_detector):
    task = _task(demo_detector, "det")
    height, width = ASTRONAUT.shape[:2]
    # class 1 touching the top edge (no room above: the caption goes inside), class 2 at the right edge
    answer = {
        "boxes": np.array([[40, 0, 200, 150], [430, 300, 511, 400]], np.float32),
        "labels": np.array([1, 2]),
        "scores": np.array([0.9, 0.8]),
    }
    picture = task.draw_answer(ASTRONAUT, answer)
    colours = class_colours(len(task.class_names))
    assert not np.array_equal(colours[1], colours[2])
    assert np.array_equal(picture[100, 40], colours[1]) and np.array_equal(picture[350, 430], colours[2])
    # each caption band is filled with its class's colour, inside the image
    size = font_size(ASTRONAUT.shape)
    assert (picture[2 : size // 2, 45:60] == colours[1]).all(axis=-1).mean() > 0.5
    assert (picture[300 - size : 300, width - 20 : width - 5] == colours[2]).all(axis=-1).mean() > 0.5
    assert line_width(ASTRONAUT.shape) == 2 and line_width((2048, 1024)) > line_width((512, 512))
    for box in [(-5, -5, 40, 40), (500, 10, 512, 60), (10, 500, 60, 512)]:
        left, top, right, bottom = caption_rectangle(box, (80, 20), (width, height))
        assert 0 <= left < right <= width and 0 <= top < bottom <= height and right - left == 80
    # ground truth (no scores): captions are the class names alone; no answer drawn leaves the photo as it was
    truth = task.draw_answer(ASTRONAUT, {"boxes": answer["boxes"], "labels": answer["labels"]})
    assert np.array_equal(truth[100, 40], colours[1])
    task.prediction_options["score_threshold"] = 0.95
    assert np.array_equal(task.draw_answer(ASTRONAUT, answer), ASTRONAUT)


def test_segmentation_overlay_in_the_data_sets_colours_with_a_legend_of_the_classes_present(demo_segmenter):
    task = _task(demo_segmenter, "seg")
    answer = np.zeros(ASTRONAUT.shape[:2], np.uint8)  # road
    answer[:, 256:] = 13  # car
    answer[400:] = 255  # a ground truth's unlabelled pixels keep the photo's colours
    picture = task.draw_answer(ASTRONAUT, answer)
    palette = task.format.palette()
    assert np.array_equal(picture[450], ASTRONAUT[450])
    blended = (ASTRONAUT[300, 100].astype(int) + palette[0]) / 2
    assert np.abs(picture[300, 100] - blended).max() <= 1
    # the legend at the top right: a swatch of each class present, the larger first, and no other
    size, margin = font_size(ASTRONAUT.shape), font_size(ASTRONAUT.shape) // 4
    swatches = [picture[2 * margin + row * (size + margin) + size // 2] for row in range(3)]
    found = [
        [i for i, colour in enumerate(palette[:19]) if (line[256:] == colour).all(-1).sum() >= size - 2]
        for line in swatches
    ]
    assert found[:2] == [[0], [13]] and found[2] == []


def test_segmentation_labels_stay_png_when_the_overlay_is_jpeg(demo_segmenter, tmp_path):
    Image.fromarray(COFFEE).save(tmp_path / "coffee.png")
    out = tmp_path / "out"
    args = ["predict", "--checkpoint", demo_segmenter, str(tmp_path / "coffee.png"), "--out", str(out)]
    assert main([*args, "--workers", "0", "--picture-format", "jpg"]) == 0
    assert (out / "overlay/coffee.jpg").read_bytes()[:3] == b"\xff\xd8\xff"
    assert (out / "labels/labelIds/coffee.png").is_file() and (out / "labels/color/coffee.png").is_file()


def test_demo_training_logs_validation_images_to_tensorboard(demo_detector, demo_segmenter):
    """The demo recipes log 4 fixed validation images (log_images_every: 1), ground truth beside the answer, at
    each validation's step: read back from the event files of the demo runs conftest trained."""
    for checkpoint, validations in ((demo_detector, 1), (demo_segmenter, 8)):
        events = sorted((Path(checkpoint).parents[1] / "tensorboard").rglob("events.out.tfevents.*"))
        logged = EventAccumulator(str(events[-1].parent), size_guidance={IMAGES: 0}).Reload()
        assert logged.Tags()["images"] == [f"val_images/{number}" for number in range(4)]
        validated, differ = len(logged.Scalars("val/images")), []
        for number in range(4):
            images = logged.Images(f"val_images/{number}")
            assert len(images) == validated == validations
            picture = np.asarray(Image.open(io.BytesIO(images[-1].encoded_image_string)))
            # two drawings of one validation image side by side, with the grid's 4-pixel gaps: truth, then answer
            height, width = picture.shape[0] - 8, (picture.shape[1] - 12) // 2
            truth, answer = picture[4 : 4 + height, 4 : 4 + width], picture[4 : 4 + height, 8 + width : 8 + 2 * width]
            differ.append(not np.array_equal(truth, answer))  # equal where nothing is there, nor answered
        assert any(differ)
