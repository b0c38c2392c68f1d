"""`mbtasks predict` for every task on real photos (scikit-image's), its inputs (folders, globs, odd formats, files
that are not images), streaming, ONNX files, devices, and one-line errors."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TINY_IMAGE_DATA, write_checkpoint
from PIL import Image
from skimage import data

from mbtasks.cli import main
from mbtasks.datasets.cityscapes import CLASS_NAMES as CITYSCAPES_CLASSES
from mbtasks.datasets.cityscapes import train_ids_to_label_ids
from mbtasks.datasets.image_transforms import eval_transform
from mbtasks.datasets.segmentation_transforms import segmentation_eval_transforms
from mbtasks.io.images import read_label_png, read_rgb_image
from mbtasks.io.records import read_checkpoint
from mbtasks.models import build_from_record

ASTRONAUT, COFFEE, CHELSEA = data.astronaut(), data.coffee(), data.chelsea()
CLASSES = {
    "det": (["__background__", "circle", "square", "triangle"], [0, 1, 2, 3]),
    "seg": (CITYSCAPES_CLASSES, []),
    "attr": (["Smiling", "Eyeglasses", "Wearing_Hat", "Bald"], []),
    "embed": ([], []),
    "cls": (["circle", "square", "triangle"], []),
}
# input size of each image task's tiny recipe (helpers.TINY_MODELS); their demo presets resize the whole photo
SIZES = {"attr": (40, 32), "embed": (32, 32), "cls": (32, 32)}
# the photos under photos/ by output name (JPEG in, JPEG out); chelsea twice with one stem, so that only the whole
# name tells them apart
PHOTOS = {
    "people/astronaut.jpg": ("people/astronaut.jpg", ASTRONAUT),
    "coffee.png": ("coffee.png", COFFEE),
    "cats/chelsea.jpg.jpg": ("cats/chelsea.jpg", CHELSEA),
    "cats/chelsea.png.png": ("cats/chelsea.png", CHELSEA),
}


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    for file, image in PHOTOS.values():
        (folder / file).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / file, quality=95)
    return folder


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("checkpoints")
    return {
        task: write_checkpoint(
            folder / f"{task}.ckpt", task, *CLASSES[task], metrics={"threshold": 0.2} if task == "embed" else None
        )
        for task in CLASSES
    }


def _predict(checkpoint: Path, inputs: list, out: Path, *options: str) -> int:
    return main(
        [
            "predict",
            "--checkpoint",
            str(checkpoint),
            *map(str, inputs),
            "--out",
            str(out),
            "--workers",
            "0",
            "--batch-size",
            "3",
            *map(str, options),
        ]
    )


def _network(checkpoint: Path):
    """The checkpoint's network as trained (not the inference copy predict runs), for expected answers."""
    return build_from_record(read_checkpoint(checkpoint)).eval()


def _files(photos: Path) -> dict[str, str]:
    """Output name -> the input file as predict reports it."""
    return {name: str(photos / file) for name, (file, _) in PHOTOS.items()}


@torch.no_grad()
def _image_outputs(task: str, checkpoint: Path, photos: Path) -> dict[str, np.ndarray]:
    network, transform = _network(checkpoint), eval_transform(SIZES[task], None)
    return {
        str(photos / file): network(transform(image=read_rgb_image(photos / file))["image"][None])[0].numpy()
        for file, _ in PHOTOS.values()
    }


def test_detection_draws_boxes_and_writes_their_json(photos, checkpoints, tmp_path, capsys):
    assert _predict(checkpoints["det"], [photos], tmp_path, "--score-threshold", "0.05") == 0
    assert (
        f"predicted 4 images with det model ssdlite320_mobilenet_v3_small (torch, cpu) into {tmp_path}"
        in capsys.readouterr().out
    )
    report = {entry["file"]: entry for entry in json.loads((tmp_path / "detections.json").read_text())}
    assert set(report) == set(_files(photos).values())
    network = _network(checkpoints["det"])
    for name, file in _files(photos).items():
        photo = read_rgb_image(file)
        with torch.no_grad():
            expected = network([torch.from_numpy(photo).permute(2, 0, 1).float() / 255])[0]
        keep = expected["scores"] >= 0.05
        detections = report[file]["detections"]
        assert len(detections) == int(keep.sum()) > 0
        # each detection is an expected one of its class and the other way round (near ties may swap places)
        names = np.array(CLASSES["det"][0])[expected["labels"][keep].numpy()]
        gap = np.abs(np.array([d["box_xyxy"] for d in detections])[:, None] - expected["boxes"][keep].numpy()).max(-1)
        gap[np.array([d["label"] for d in detections])[:, None] != names] = np.inf
        assert (gap.min(1) < 0.02).all() and (gap.min(0) < 0.02).all()
        drawn = np.asarray(Image.open(tmp_path / name))
        assert drawn.shape == photo.shape and not np.array_equal(drawn, photo)  # the boxes are on it


def test_segmentation_writes_overlays_and_cityscapes_label_ids(photos, checkpoints, tmp_path):
    assert _predict(checkpoints["seg"], [photos], tmp_path, "--scales", "0.5", "--flip") == 0
    network, normalise = _network(checkpoints["seg"]), segmentation_eval_transforms()
    report = {entry["file"]: entry["pixels"] for entry in json.loads((tmp_path / "segmentation.json").read_text())}
    for name, file in _files(photos).items():
        photo = read_rgb_image(file)
        image = normalise(image=photo)["image"][None]
        with torch.no_grad():  # the mean softmax at half size, flipped and not: what evaluate --scales --flip does
            half = torch.nn.functional.interpolate(
                image, size=(round(photo.shape[0] / 2), round(photo.shape[1] / 2)), mode="bilinear"
            )
            total = 0
            for flip in (False, True):
                logits = network(half.flip(-1) if flip else half)["out"]
                logits = logits.flip(-1) if flip else logits
                total = total + torch.nn.functional.interpolate(
                    logits, size=photo.shape[:2], mode="bilinear", align_corners=False
                ).softmax(1)
        expected = total.argmax(1)[0].numpy().astype(np.uint8)
        label_ids = read_label_png(tmp_path / "labels/labelIds" / Path(name).with_suffix(".png"))
        agree = (label_ids == train_ids_to_label_ids(expected)).mean()
        assert agree > 0.999, agree  # the inference copy (folded batch norm) may flip a pixel at a tie
        assert np.asarray(Image.open(tmp_path / "labels/color" / Path(name).with_suffix(".png"))).shape == photo.shape
        overlay = np.asarray(Image.open(tmp_path / "overlay" / name))
        assert overlay.shape == photo.shape and not np.array_equal(overlay, photo)
        assert math.isclose(sum(report[file].values()), 1.0, abs_tol=1e-3)
        assert set(report[file]) <= set(CITYSCAPES_CLASSES)


def test_attributes_json_and_picture(photos, checkpoints, tmp_path):
    assert _predict(checkpoints["attr"], [photos], tmp_path, "--threshold", "0.0") == 0
    expected = _image_outputs("attr", checkpoints["attr"], photos)
    report = json.loads((tmp_path / "attributes.json").read_text())
    assert [entry["file"] for entry in report] == sorted(expected)
    for entry in report:
        assert list(entry["attributes"]) == CLASSES["attr"][0]
        assert np.allclose(list(entry["attributes"].values()), 1 / (1 + np.exp(-expected[entry["file"]])), atol=1e-4)
    for name, file in _files(photos).items():
        picture, photo = np.asarray(Image.open(tmp_path / name)), read_rgb_image(file)
        assert picture.shape == photo.shape and not np.array_equal(picture, photo)  # the attributes are written on it


def test_classification_top5_json_and_picture(photos, checkpoints, tmp_path):
    assert _predict(checkpoints["cls"], [photos], tmp_path) == 0
    expected = _image_outputs("cls", checkpoints["cls"], photos)
    for entry in json.loads((tmp_path / "classes.json").read_text()):
        logits = expected[entry["file"]]
        probabilities = np.exp(logits) / np.exp(logits).sum()
        order = np.argsort(-probabilities)
        assert [top["class"] for top in entry["top5"]] == [CLASSES["cls"][0][i] for i in order]
        assert np.allclose([top["probability"] for top in entry["top5"]], probabilities[order], atol=1e-4)
    assert all((tmp_path / name).is_file() for name in PHOTOS)


def test_embeddings_npy_index_and_pairs_at_the_validation_threshold(photos, checkpoints, tmp_path, capsys):
    pairs = tmp_path / "pairs.txt"
    pairs.write_text(
        f"# same photo, two files\n{photos}/cats/chelsea.jpg\t{photos}/cats/chelsea.png\n"
        f"{photos}/coffee.png {photos}/people/astronaut.jpg\n"
    )
    assert _predict(checkpoints["embed"], [photos], tmp_path / "out", "--pairs", pairs) == 0
    printed = capsys.readouterr().out.splitlines()
    embeddings = np.load(tmp_path / "out/embeddings.npy")
    files = json.loads((tmp_path / "out/embeddings.json").read_text())["files"]
    expected = _image_outputs("embed", checkpoints["embed"], photos)
    assert files == sorted(expected) and embeddings.shape == (4, 16)
    assert np.allclose(embeddings, [expected[f] for f in files], atol=1e-4)
    assert np.allclose(np.linalg.norm(embeddings, axis=1), 1, atol=1e-5)
    threshold = math.sqrt(2 - 2 * 0.2)  # the checkpoint's validation chose cosine similarity 0.2
    assert (
        f"same person below distance {threshold:.4f} (the checkpoint's validation: cosine similarity 0.2000)" in printed
    )
    for first, second in [("cats/chelsea.jpg", "cats/chelsea.png"), ("coffee.png", "people/astronaut.jpg")]:
        distance = np.linalg.norm(
            embeddings[files.index(str(photos / first))] - embeddings[files.index(str(photos / second))]
        )
        line = next(line for line in printed if line.startswith(f"{photos / first}\t{photos / second}\t"))
        assert line.endswith(f"distance {distance:.4f}\t{'same' if distance < threshold else 'different'}")
    assert "\tsame" in printed[-2]  # one photo saved twice is one face
    assert _predict(checkpoints["embed"], [photos], tmp_path / "out") == 2  # its two files, none per photo
    assert capsys.readouterr().err.strip().splitlines() == [
        f"mbtasks: error: {tmp_path / 'out'}: holds 2 of the files this run would write (first: embeddings.npy): "
        "pass --overwrite to replace them, or choose another --out"
    ]


def test_odd_formats_become_rgb_and_exif_turns_photos_upright(checkpoints, tmp_path):
    folder = tmp_path / "odd"
    folder.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: stored pixels are to be turned 90 degrees clockwise
    Image.fromarray(COFFEE).save(folder / "rotated.jpg", exif=exif, quality=95)
    Image.fromarray(ASTRONAUT).convert("CMYK").save(folder / "cmyk.jpg", quality=95)
    Image.fromarray(np.dstack([CHELSEA, np.full(CHELSEA.shape[:2], 128, np.uint8)])).save(folder / "rgba.png")
    Image.fromarray(CHELSEA[..., 0].astype(np.uint16) * 257).save(folder / "grey16.png")
    assert _predict(checkpoints["seg"], [folder], tmp_path / "out") == 0
    assert len(json.loads((tmp_path / "out/segmentation.json").read_text())) == 4
    sizes = {
        "rotated.jpg": COFFEE.shape[1::-1],
        "cmyk.jpg": ASTRONAUT.shape[:2],
        "rgba.png": CHELSEA.shape[:2],
        "grey16.png": CHELSEA.shape[:2],
    }
    for name, size in sizes.items():
        assert np.asarray(Image.open(tmp_path / "out/overlay" / name)).shape == (*size, 3), name
    # the overlay is blended on the upright photo: its top left is the stored image's bottom left
    overlay = np.asarray(Image.open(tmp_path / "out/overlay/rotated.jpg")).astype(int)
    upright = np.rot90(COFFEE, -1).astype(int)
    assert np.abs(overlay - upright).mean() < np.abs(overlay - np.rot90(COFFEE, 1)).mean()


def test_an_earlier_runs_files_are_replaced_only_with_overwrite(photos, checkpoints, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("the user's own file, which predict leaves alone\n")
    assert _predict(checkpoints["seg"], [photos], out) == 0
    written = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    capsys.readouterr()
    refusal = (
        "mbtasks: error: {}: holds {} of the files this run would write (first: {}): pass --overwrite to "
        "replace them, or choose another --out"
    )
    # 4 photos: overlay/, labels/labelIds/ and labels/color/ (Cityscapes classes), and segmentation.json
    assert _predict(checkpoints["seg"], [photos], out) == 2
    assert capsys.readouterr().err.strip().splitlines() == [refusal.format(out, 13, "overlay/cats/chelsea.jpg.jpg")]
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == written
    stale = out / "labels/color/coffee.png"
    for path in written:
        if path not in (stale, out / "mine.txt"):
            path.unlink()
    stale.write_bytes(b"stale")
    assert _predict(checkpoints["seg"], [photos], out) == 2
    assert capsys.readouterr().err.strip().splitlines() == [refusal.format(out, 1, "labels/color/coffee.png")]
    assert _predict(checkpoints["seg"], [photos], out, "--overwrite") == 0
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == written  # the same answers, no temporary
    # --overwrite never lets an answer replace the photo it was read from (here where its Cityscapes labelIds go)
    read_here = out / "labels/labelIds/coffee.png"
    assert _predict(checkpoints["seg"], [read_here], out, "--overwrite") == 2
    assert (
        capsys.readouterr().err.strip().splitlines()[-1]
        == f"mbtasks: error: {read_here}: its drawing would replace an input image (choose another --out)"
    )


def test_files_globs_and_folders_keep_relative_names(photos, checkpoints, tmp_path, monkeypatch):
    monkeypatch.chdir(photos)
    assert _predict(checkpoints["cls"], ["people/astronaut.jpg", "cats/*.jpg", "cats", "coffee.png"], tmp_path) == 0
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.*g"))
    assert written == sorted(PHOTOS)  # cats/chelsea.jpg matched twice is read once
    assert [e["file"] for e in json.loads((tmp_path / "classes.json").read_text())] == [
        "people/astronaut.jpg",
        "cats/chelsea.jpg",
        "cats/chelsea.png",
        "coffee.png",
    ]


def test_photos_stream_through_the_loader_batch_by_batch(photos, checkpoints, tmp_path, monkeypatch):
    import mbtasks.predict.inputs as inputs
    from mbtasks.tasks.classification import ClassificationTask

    events, read, write = [], inputs.read_rgb_image, ClassificationTask.write_prediction
    monkeypatch.setattr(inputs, "read_rgb_image", lambda *a, **k: events.append("read") or read(*a, **k))
    monkeypatch.setattr(ClassificationTask, "write_prediction", lambda *a: events.append("write") or write(*a))
    assert (
        main(
            [
                "predict",
                "--checkpoint",
                str(checkpoints["cls"]),
                str(photos),
                "--out",
                str(tmp_path),
                "--workers",
                "0",
                "--batch-size",
                "2",
            ]
        )
        == 0
    )
    assert events == ["read", "read", "write", "write"] * 2  # no photo is read before the batch ahead is written


def test_files_that_are_not_images_are_skipped_or_stop_a_strict_run(photos, checkpoints, tmp_path, capsys):
    (tmp_path / "notes.jpg").write_text("a shopping list")
    inputs = [photos / "coffee.png", tmp_path / "notes.jpg", photos / "cats/chelsea.jpg"]
    assert _predict(checkpoints["attr"], inputs, tmp_path / "out") == 0
    captured = capsys.readouterr()
    assert captured.err.strip().splitlines() == [
        f"mbtasks: warning: {tmp_path / 'notes.jpg'}: cannot decode image (not an image, or a format neither cv2 "
        "nor PIL reads); skipped"
    ]
    assert "predicted 2 images, 1 skipped (not images)" in captured.out
    assert len(json.loads((tmp_path / "out/attributes.json").read_text())) == 2
    assert _predict(checkpoints["attr"], inputs, tmp_path / "strict", "--strict") == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"mbtasks: error: {tmp_path / 'notes.jpg'}: cannot decode image (not an image, or a format neither cv2 "
        "nor PIL reads)"
    ]


def test_device_cuda_runs_there_or_is_a_one_line_error(photos, checkpoints, tmp_path, capsys):
    assert _predict(checkpoints["cls"], [photos], tmp_path / "cpu", "--device", "cpu") == 0
    code = _predict(checkpoints["cls"], [photos], tmp_path / "cuda", "--device", "cuda")
    if torch.cuda.is_available():
        assert code == 0 and "(torch, cuda:0)" in capsys.readouterr().out
        on_cpu, on_gpu = (json.loads((tmp_path / d / "classes.json").read_text()) for d in ("cpu", "cuda"))
        assert [[t["class"] for t in e["top5"]] for e in on_cpu] == [[t["class"] for t in e["top5"]] for e in on_gpu]
    else:
        assert code == 2
        assert capsys.readouterr().err.strip().splitlines() == [
            "mbtasks: error: --device cuda: 0 CUDA devices here (torch.cuda.is_available() is False)"
        ]


def test_exported_onnx_file_predicts_as_its_checkpoint(photos, tmp_path, capsys):
    checkpoint = write_checkpoint(
        tmp_path / "cls.ckpt",
        "cls",
        ["circle", "square", "triangle"],
        settings=[*TINY_IMAGE_DATA["cls"], f"data.synth_dir={tmp_path / 'data'}", "data.num_workers=0"],
    )
    assert main(["export", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "cls.onnx"), "--samples", "1"]) == 0
    assert _predict(tmp_path / "cls.onnx", [photos], tmp_path / "onnx") == 0
    assert "with cls model mobilenet_v3_small (onnxruntime, cpu)" in capsys.readouterr().out
    assert _predict(checkpoint, [photos], tmp_path / "torch") == 0
    onnx, pytorch = (json.loads((tmp_path / d / "classes.json").read_text()) for d in ("onnx", "torch"))
    assert [e["file"] for e in onnx] == [e["file"] for e in pytorch]
    for a, b in zip(onnx, pytorch):
        assert {t["class"]: t["probability"] for t in a["top5"]} == pytest.approx(
            {t["class"]: t["probability"] for t in b["top5"]}, abs=2e-4
        )
    assert _predict(tmp_path / "cls.onnx", [photos], tmp_path / "gpu", "--device", "cuda") == 2
    assert "an exported file runs in onnxruntime on the CPU" in capsys.readouterr().err


def test_user_mistakes_are_one_line_errors(photos, checkpoints, tmp_path, capsys):
    (tmp_path / "a_file").write_text("")
    pose = write_checkpoint(tmp_path / "pose.ckpt", "cls", ["a", "b"])
    saved = torch.load(pose, weights_only=True)
    saved["mbtasks"]["task"] = "pose"
    torch.save(saved, pose)
    weights = tmp_path / "weights.pt"
    torch.save({"model": "mobilenet_v3_small", "state_dict": {}}, weights)
    (tmp_path / "pairs.txt").write_text(f"{photos}/coffee.png {tmp_path}/elsewhere.jpg\n")
    cases = {
        "output folder is a file": ([checkpoints["cls"], [photos], tmp_path / "a_file"], "a_file: is a file"),
        "unknown task": ([pose, [photos], tmp_path / "o"], "pose.ckpt: is a model of task 'pose', which predict"),
        "weights file": ([weights, [photos], tmp_path / "o"], "weights.pt: is not an mbtasks training checkpoint"),
        "missing input": ([checkpoints["cls"], [tmp_path / "nope"], tmp_path / "o"], "nope: no such file or folder"),
        "empty glob": ([checkpoints["cls"], [tmp_path / "*.tif"], tmp_path / "o"], "no file or folder matches"),
        "option of another task": (
            [checkpoints["det"], [photos], tmp_path / "o", "--pairs", "x"],
            "det.ckpt: --pairs does not apply to a det model",
        ),
        "pair not among inputs": (
            [checkpoints["embed"], [photos], tmp_path / "o", "--pairs", tmp_path / "pairs.txt"],
            "pairs.txt: line 1: " + str(tmp_path / "elsewhere.jpg") + " is not among the input",
        ),
        "bad device": ([checkpoints["cls"], [photos], tmp_path / "o", "--device", "tpu"], "--device must be auto"),
        "task of another model": (
            [checkpoints["cls"], [photos], tmp_path / "o", "--task", "det"],
            "cls.ckpt: is a checkpoint of a cls model, not det",
        ),
    }
    for name, ((checkpoint, inputs, out, *options), problem) in cases.items():
        assert _predict(checkpoint, inputs, out, *map(str, options)) == 2, name
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("mbtasks: error:") and problem in err[0], (name, err)
