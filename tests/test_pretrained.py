"""Weights by name (`torchvision:<Enum>.<NAME>`, `timm:<name>`) through torchvision's and timm's own loaders: the
files are placed where those loaders look (torch.hub's cache, the Hugging Face cache), or only the download call is
replaced; the loading and conversion that run are the real ones. No network."""

import json
import urllib.error
from pathlib import Path

import huggingface_hub
import pytest
import timm
import torch
import torchvision
from helpers import place_timm, place_torchvision, randomised
from PIL import Image
from skimage import data
from torchvision.models import MobileNet_V3_Small_Weights
from torchvision.models.detection import SSDLite320_MobileNet_V3_Large_Weights, ssdlite320_mobilenet_v3_large

from mbtasks import build_model
from mbtasks.cli import main
from mbtasks.datasets.transforms import detection_transforms
from mbtasks.evaluation.coco import coco_metrics
from mbtasks.io.images import read_rgb_image
from mbtasks.io.records import read_weights
from mbtasks.layers.fusion import for_inference

SMALL = "torchvision:MobileNet_V3_Small_Weights.IMAGENET1K_V1"
TIMM_SMALL = "timm:mobilenetv3_small_100.lamb_in1k"


@pytest.fixture
def torch_cache(tmp_path, monkeypatch) -> Path:
    """torch.hub's cache (TORCH_HOME) in a fresh folder: where torchvision's get_state_dict looks first."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch/hub/checkpoints"


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    """The Hugging Face cache in a fresh folder, offline: where timm's download looks first."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return tmp_path / "hf"


def test_torchvision_weights_by_name_load_through_its_cache(torch_cache, tmp_path, capsys):
    place_torchvision(
        torch_cache,
        MobileNet_V3_Small_Weights.IMAGENET1K_V1,
        randomised(torchvision.models.mobilenet_v3_small()).state_dict(),
    )
    reference = torchvision.models.mobilenet_v3_small(weights="IMAGENET1K_V1").eval()  # its own loader, same file
    x = torch.rand(2, 3, 224, 224)
    for name in (SMALL, "torchvision:MobileNet_V3_Small_Weights.DEFAULT"):
        model = build_model("mobilenet_v3_small", weights=name).eval()
        with torch.no_grad():
            assert (model(x) - reference(x)).abs().max() < 1e-5
    assert main(["weights", "import", SMALL, "--out", str(tmp_path / "v3s.pth")]) == 0
    assert capsys.readouterr().out.startswith(f"wrote {tmp_path / 'v3s.pth'}: mobilenet_v3_small (")
    saved = read_weights(tmp_path / "v3s.pth")
    assert saved.model == "mobilenet_v3_small" and saved.options["num_classes"] == 1000
    assert saved.class_names == MobileNet_V3_Small_Weights.IMAGENET1K_V1.meta["categories"]  # ImageNet's names


def test_timm_weights_by_name_load_through_the_hub_cache(hub_cache, tmp_path):
    place_timm(
        hub_cache,
        "timm/mobilenetv3_small_100.lamb_in1k",
        randomised(timm.create_model("mobilenetv3_small_100")).state_dict(),
    )
    reference = timm.create_model("mobilenetv3_small_100.lamb_in1k", pretrained=True).eval()  # the same cache
    model = build_model("mobilenet_v3_small", weights=TIMM_SMALL).eval()
    x = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        assert (model(x) - reference(x)).abs().max() < 1e-5
    assert model.backbone.layers[0][1].eps == 1e-5  # timm's batch-norm eps, carried by the conversion


def test_backbone_weights_by_name_in_a_recipe(torch_cache):
    from mbtasks.config import load_config
    from mbtasks.models import find_backbone
    from mbtasks.tasks.detection import DetectionTask

    reference = randomised(torchvision.models.mobilenet_v3_small())
    place_torchvision(torch_cache, MobileNet_V3_Small_Weights.IMAGENET1K_V1, reference.state_dict())
    config = load_config(
        None,
        [
            "model.name=ssdlite320_mobilenet_v3_small",
            f"model.backbone_weights={SMALL}",
            "model.options={reduced_tail: false}",
            "data.size=128",
        ],
        task="det",
    )
    task = DetectionTask(config.to_dict(), ["__background__", "a", "b"], [0, 1, 2])
    stem = find_backbone(task.model).layers[0][0].weight  # the detector's backbone: torchvision's first conv
    assert torch.equal(stem, reference.features[0][0].weight)
    assert task.record().options["bn_eps"] == 1e-3


def test_without_network_one_line_names_the_file_and_the_folder(torch_cache, hub_cache, tmp_path, monkeypatch, capsys):
    def no_network(url, *args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    out = str(tmp_path / "w.pth")
    assert main(["weights", "import", SMALL, "--out", out]) == 2
    file = Path(MobileNet_V3_Small_Weights.IMAGENET1K_V1.url).name
    assert capsys.readouterr().err.strip().splitlines() == [
        f"mbtasks: error: {SMALL}: cannot download {MobileNet_V3_Small_Weights.IMAGENET1K_V1.url}: "
        f"place {file} in {torch_cache}"
    ]
    place_torchvision(
        torch_cache, MobileNet_V3_Small_Weights.IMAGENET1K_V1, torchvision.models.mobilenet_v3_small().state_dict()
    )
    assert main(["weights", "import", SMALL, "--out", out]) == 0  # placed there, the load works

    assert main(["weights", "import", TIMM_SMALL, "--out", out, "--overwrite"]) == 2
    repo = "timm/mobilenetv3_small_100.lamb_in1k"
    assert capsys.readouterr().err.strip().splitlines() == [
        f"mbtasks: error: {TIMM_SMALL}: cannot download {repo} from the Hugging Face Hub (no network): place "
        f"models--timm--mobilenetv3_small_100.lamb_in1k (from `hf download {repo}` on a machine with network) in "
        f"{hub_cache}"
    ]
    place_timm(hub_cache, repo, timm.create_model("mobilenetv3_small_100").state_dict())
    assert main(["weights", "import", TIMM_SMALL, "--out", out, "--overwrite"]) == 0


def test_names_the_libraries_do_not_know_are_one_line_errors_with_the_closest(tmp_path, capsys):
    cases = {
        "torchvision:MobileNet_V3_Smal_Weights.IMAGENET1K_V1": "torchvision has no weights "
        "'MobileNet_V3_Smal_Weights.IMAGENET1K_V1'; closest: MobileNet_V3_Small_Weights.IMAGENET1K_V1",
        "torchvision:MobileNet_V3_Large_Weights.IMAGENET1K_V3": "closest: MobileNet_V3_Large_Weights.IMAGENET1K_V2, "
        "MobileNet_V3_Large_Weights.IMAGENET1K_V1",
        "torchvision:ResNet50_Weights.DEFAULT": "ResNet50_Weights are weights of a network mbtasks does not import",
        "timm:mobilenetv3_large_10.ra_in1k": "timm has no pretrained weights 'mobilenetv3_large_10.ra_in1k'; "
        "closest: mobilenetv3_large_100.ra_in1k",
        "timm:resnet50.a1_in1k": "resnet50 is a network mbtasks does not import from timm",
    }
    for name, problem in cases.items():
        assert main(["weights", "import", name, "--out", str(tmp_path / "w.pth")]) == 2, name
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"mbtasks: error: {name}: ") and problem in err[0], err


def test_torchvision_ssdlite_coco_weights_scored_on_a_coco_val_folder(torch_cache, tmp_path, capsys):
    """torchvision's SSDLite COCO weights (a seeded cache) scored by `mbtasks evaluate` on a COCO val folder whose
    ground truth is what torchvision's own model finds: its labels are COCO category ids, which evaluate must keep."""
    name = "torchvision:SSDLite320_MobileNet_V3_Large_Weights.COCO_V1"
    weights = SSDLite320_MobileNet_V3_Large_Weights.COCO_V1
    torch.manual_seed(0)
    trained_like = randomised(ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None))
    for block in trained_like.head.classification_head.module_list:  # few candidates above 0.001, as trained
        block[-1].weight.data *= 30  # weights have: a fast NMS
        block[-1].bias.data[0::91] += 14
    place_torchvision(torch_cache, weights, trained_like.state_dict())
    reference = ssdlite320_mobilenet_v3_large(weights=weights).eval()  # torchvision's loader: the file above
    ours = for_inference(build_model("ssdlite320_mobilenet_v3_large", weights=name))  # what evaluate runs
    to_tensor = detection_transforms("ssdlite", (320, 320), train=False)
    names = weights.meta["categories"]
    root = tmp_path / "coco"
    (root / "val2017").mkdir(parents=True)
    (root / "annotations").mkdir()
    images, annotations, results, inputs = [], [], [], []
    for image_id, photo in enumerate((data.astronaut(), data.coffee(), data.chelsea()), 1):
        file = f"{image_id:012d}.jpg"
        Image.fromarray(photo).save(root / "val2017" / file, quality=90)
        inputs.append(to_tensor(image=read_rgb_image(root / "val2017" / file))["image"])  # as the data module does
        images.append({"id": image_id, "file_name": file, "height": photo.shape[0], "width": photo.shape[1]})
    with torch.no_grad():
        truths, founds = reference(inputs), ours(inputs)  # one batch, as evaluate runs them
    for image_id, truth, found in zip((1, 2, 3), truths, founds):
        # torchvision's four best boxes of real categories (not "N/A") are the ground truth
        for box, label in [
            (b, c) for b, c in zip(truth["boxes"].tolist(), truth["labels"].tolist()) if names[c] != "N/A"
        ][:4]:
            x0, y0, x1, y1 = box
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": label,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": (x1 - x0) * (y1 - y0),
                    "iscrowd": 0,
                }
            )
        # what COCOeval should see of our detections: label = category id, the categories of the ground truth
        results += [
            {"image_id": image_id, "category_id": label, "bbox": [x0, y0, x1 - x0, y1 - y0], "score": score}
            for (x0, y0, x1, y1), label, score in zip(
                found["boxes"].tolist(), found["labels"].tolist(), found["scores"].tolist()
            )
            if names[label] != "N/A"
        ]
    categories = [{"id": i, "name": n, "supercategory": ""} for i, n in enumerate(names) if i and n != "N/A"]
    annotation_file = root / "annotations/instances_val2017.json"
    annotation_file.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    expected = coco_metrics(annotation_file, results)

    assert (
        main(
            [
                "evaluate",
                "--task",
                "det",
                "--set",
                f"model.weights={name}",
                "--set",
                f"data.root={root}",
                "--set",
                "data.num_workers=0",
                "--set",
                "train.accelerator=cpu",
                "--set",
                "train.progress_bar=false",
                "--json",
                str(tmp_path / "m.json"),
            ]
        )
        == 0
    )
    assert "evaluated 3 images" in capsys.readouterr().out
    figures = json.loads((tmp_path / "m.json").read_text())
    assert figures == pytest.approx(expected, abs=1e-6) and figures["AP"] > 0.3
