"""`mbtasks.load`: a checkpoint's network, what a photo goes through to become its input and its meta, as
torchvision's weights give them: on a real photo (scikit-image's), every task's answer is `mbtasks predict`'s; the
transforms take a PIL image, an array or a tensor alike; weights by name load through torchvision's cache."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from helpers import TINY_IMAGE_DATA, randomised, save_checkpoint, task_module
from PIL import Image
from skimage import data
from torchvision.models.detection import SSDLite320_MobileNet_V3_Large_Weights
from torchvision.transforms.functional import pil_to_tensor, to_tensor

import mbtasks
from mbtasks.cli import main
from mbtasks.config import config_from_dict
from mbtasks.datasets.cityscapes import train_ids_to_label_ids
from mbtasks.io.images import read_label_png
from mbtasks.io.records import read_checkpoint, save_weights
from mbtasks.profiling import count_parameters
from mbtasks.tasks import TASKS

# Tiny random models on tiny embedded data sets (tests/test_export.py's), and what their validation "recorded" (the
# figures are the test's, the keys each task's own); seg is the demo segmenter, trained: a random one answers one
# class everywhere on a photo.
TINY = {
    "det": [
        "model.name=ssdlite320_mobilenet_v3_small",
        "model.options={width_mult: 0.5}",
        "data.size=96",
        "data.synth={seed: 1, num_train: 2, num_val: 2, image_size: 96}",
    ],
    "attr": ["model.name=mobilenet_v1", "model.options={width_mult: 0.25}", *TINY_IMAGE_DATA["attr"]],
    "embed": [
        "model.name=mobilenet_v1",
        "model.options={width_mult: 0.25, embedding_dim: 16}",
        *TINY_IMAGE_DATA["embed"],
    ],
    "cls": ["model.name=mobilenet_v1", "model.options={width_mult: 0.25}", *TINY_IMAGE_DATA["cls"]],
}
METRICS = {
    "det": {"AP": 0.25, "AP50": 0.5},
    "attr": {"mean_ap": 0.5},
    "embed": {"accuracy": 0.75, "threshold": 0.2},
    "cls": {"top1": 0.5, "top5": 1.0},
}
TASK_NAMES = ["det", "seg", "attr", "embed", "cls"]


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    """scikit-image's astronaut as a PNG: PIL and predict's reader decode the same pixels."""
    path = tmp_path_factory.mktemp("photo") / "astronaut.png"
    Image.fromarray(data.astronaut()).resize((160, 128)).save(path)
    return path


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, demo_segmenter) -> dict[str, Path]:
    """Each task's training checkpoint: the demo segmenter's, and a tiny random model (random batch-norm statistics)
    of each other task."""
    result = {"seg": Path(demo_segmenter)}
    for task, settings in TINY.items():
        folder = tmp_path_factory.mktemp(task)
        module = task_module(task, ["data.num_workers=0", *settings, f"data.synth_dir={folder / 'data'}"])
        randomised(module.model)
        if task == "det":  # spread the class scores, which tie in a random detector
            for layer in module.model.head.classification_head.modules():
                if isinstance(layer, torch.nn.Conv2d) and layer.groups == 1:
                    layer.weight.data *= 30
        module.metrics = METRICS[task]
        result[task] = save_checkpoint(module, folder / f"{task}.ckpt")
    return result


@pytest.fixture(scope="module")
def loaded(checkpoints) -> dict:
    return {task: mbtasks.load(path) for task, path in checkpoints.items()}


@pytest.mark.parametrize("task", TASK_NAMES)
def test_the_loaded_model_on_its_transforms_answers_as_predict(checkpoints, loaded, photo, task, tmp_path):
    model, transforms, meta = loaded[task].model, loaded[task].transforms, loaded[task].meta
    assert not model.training
    image = Image.open(photo)
    x = transforms(image)
    # PIL, an HWC uint8 array and CHW tensors (uint8, or floats as torchvision's to_tensor): one input
    for same in (np.asarray(image), pil_to_tensor(image), to_tensor(image)):
        assert torch.equal(transforms(same), x)
    command = ["predict", "--checkpoint", str(checkpoints[task]), str(photo), "--out", str(tmp_path), "--workers", "0"]
    assert main([*command, *(["--score-threshold", "0.05"] if task == "det" else [])]) == 0
    with torch.no_grad():
        answer = model([x])[0] if task == "det" else model(x[None])
    # predict runs the inference copy (batch norm folded): the same answers within float rounding
    if task == "det":
        keep = answer["scores"] >= 0.05
        (entry,) = json.loads((tmp_path / "detections.json").read_text())
        found = entry["detections"]
        assert len(found) == int(keep.sum()) > 0
        names = np.array(meta["categories"])[answer["labels"][keep].numpy()]
        gap = np.abs(np.array([d["box_xyxy"] for d in found])[:, None] - answer["boxes"][keep].numpy()).max(-1)
        gap[np.array([d["label"] for d in found])[:, None] != names] = np.inf
        assert (gap.min(1) < 0.02).all() and (gap.min(0) < 0.02).all()  # near ties may swap places
        assert np.allclose(sorted(d["score"] for d in found), sorted(answer["scores"][keep].tolist()), atol=1e-4)
    elif task == "seg":
        assert answer.keys() == {"out"}  # the segmenter contract, torchvision's
        logits = answer["out"][0]
        labels = read_label_png(tmp_path / "labels/labelIds/astronaut.png")
        top = logits.topk(2, dim=0).values
        clear = (top[0] - top[1] > 1e-3).numpy()  # where no rounding can change the class
        assert clear.mean() > 0.99 and len(np.unique(labels)) > 1
        expected = train_ids_to_label_ids(logits.argmax(0).numpy().astype(np.uint8))
        assert np.array_equal(labels[clear], expected[clear])
    elif task == "attr":
        (entry,) = json.loads((tmp_path / "attributes.json").read_text())
        assert list(entry["attributes"]) == meta["categories"]
        assert np.allclose(list(entry["attributes"].values()), answer[0].sigmoid().numpy(), atol=2e-4)
    elif task == "cls":
        (entry,) = json.loads((tmp_path / "classes.json").read_text())
        probabilities, order = answer[0].softmax(0).sort(descending=True)
        assert [top["class"] for top in entry["top5"]] == [meta["categories"][i] for i in order.tolist()]
        assert np.allclose([top["probability"] for top in entry["top5"]], probabilities.numpy(), atol=2e-4)
    else:
        assert np.allclose(np.load(tmp_path / "embeddings.npy"), answer.numpy(), atol=1e-4)


@pytest.mark.parametrize("task", TASK_NAMES)
def test_meta_holds_the_data_sets_classes_and_the_recorded_figures(checkpoints, loaded, task):
    meta, record = loaded[task].meta, read_checkpoint(checkpoints[task])
    # the classes of the data set the recipe names, read again from it
    config = config_from_dict(meta["recipe"])
    data_module = TASKS.get(task).data_module(config)
    data_module.setup("validate")
    assert meta["categories"] == list(data_module.class_names)
    assert meta["category_ids"] == list(data_module.category_ids)
    assert (meta["task"], meta["model"], meta["options"]) == (task, record.model, record.options)
    # the figures its last validation recorded (the demo's, trained: class mIoU, nan for classes never seen)
    assert json.dumps(meta["metrics"]) == json.dumps(record.metrics) and meta["recipe"] == record.config
    assert meta["metrics"] == METRICS[task] if task in METRICS else "mean_class_iou" in meta["metrics"]
    split = config.data.val_split or data_module.format.splits[1]  # what every data module validates on
    assert meta["data"] == {"format": data_module.format.name, "root": None, "synth": config.data.synth, "split": split}
    assert meta["num_params"] == count_parameters(loaded[task].model) and meta["madds"] > 0
    if task == "seg":
        assert meta["metrics"]["num_images"] == len(data_module.val_set) and "mean_class_iou" in meta["metrics"]
        assert meta["input_size"] == config.data.size  # multiply-adds counted at the recipe's input size
    assert repr(loaded[task]).startswith(f"Loaded({record.model}, task {task!r}")


def test_torchvision_weights_by_name_load_as_torchvisions_model_and_transforms(photo, tmp_path, monkeypatch):
    """torchvision's SSDLite COCO weights from torch.hub's cache (a seeded file, no network): its detector and its
    `weights.transforms()`; the task follows from the network (a detector: det)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    weights = SSDLite320_MobileNet_V3_Large_Weights.COCO_V1
    (tmp_path / "torch/hub/checkpoints").mkdir(parents=True)
    torch.manual_seed(0)
    reference = randomised(
        torchvision.models.detection.ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None)
    )
    for block in reference.head.classification_head.module_list:  # few candidates above 0.001, as trained weights
        block[-1].weight.data *= 30
        block[-1].bias.data[0::91] += 14
    torch.save(reference.state_dict(), tmp_path / "torch/hub/checkpoints" / Path(weights.url).name)
    loaded = mbtasks.load("torchvision:SSDLite320_MobileNet_V3_Large_Weights.COCO_V1")
    assert loaded.meta["task"] == "det" and loaded.meta["categories"] == weights.meta["categories"]
    assert loaded.meta["num_params"] == weights.meta["num_params"] and loaded.meta["recipe"] is None
    image = Image.open(photo)
    x = loaded.transforms(image)
    assert torch.equal(x, weights.transforms()(image))
    with torch.no_grad():
        ours, theirs = loaded.model([x])[0], reference([x])[0]
    assert len(ours["scores"]) == len(theirs["scores"]) > 0
    assert torch.allclose(ours["scores"].sort().values, theirs["scores"].sort().values, atol=1e-5)


def test_a_checkpoint_loads_under_its_own_task_and_weights_without_one_need_it(checkpoints, tmp_path):
    with pytest.raises(mbtasks.MbtasksError, match=r"cls\.ckpt: is a checkpoint of a cls model, not det$"):
        mbtasks.load(checkpoints["cls"], task="det")
    record = read_checkpoint(checkpoints["cls"])
    save_weights(tmp_path / "cls.pth", record)  # a weights file: no task, no recipe
    with pytest.raises(mbtasks.MbtasksError, match=r"mobilenet_v1 without a task: give load\(\.\.\., task=\.\.\.\)"):
        mbtasks.load(tmp_path / "cls.pth")  # a classifier's weights: cls, attr and embed run MobileNet classifiers
    loaded = mbtasks.load(tmp_path / "cls.pth", task="cls")  # the task's default recipe, the file's network
    assert loaded.meta["categories"] == record.class_names and loaded.meta["data"] is None
    assert all(torch.equal(v, record.state_dict[k]) for k, v in loaded.model.state_dict().items())
