"""Shared test helpers."""

import contextlib
import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import safetensors.torch
import torch
from PIL import Image

MBTASKS = str(Path(sys.executable).with_name("mbtasks"))


def in_process(args: list[str]) -> subprocess.CompletedProcess:
    """`mbtasks ARGS` by mbtasks.cli.main in this process, torch on one thread as in the suite's subprocesses: what
    subprocess.run would give (exit status, stdout, stderr) without a process's 5 s of imports, for tests about what
    a command does rather than about its process."""
    from mbtasks.cli import main

    out, err, threads = io.StringIO(), io.StringIO(), torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(args)
            except SystemExit as exit:  # argparse's
                code = exit.code
    finally:
        torch.set_num_threads(threads)
    return subprocess.CompletedProcess(["mbtasks", *args], code, out.getvalue(), err.getvalue())


# A part of a `python -c` script that runs `mbtasks` with the script's Lightning callback: every trainer mbtasks
# builds gets CALLBACK() appended.
CALLBACK_ADDED = """
import mbtasks.tasks.trainer as trainer
from mbtasks.cli import main

build = trainer.build_trainer
def build_with_callback(*args, **kwargs):
    built = build(*args, **kwargs)
    built.callbacks.append(CALLBACK())
    return built
trainer.build_trainer = build_with_callback
"""
# The end of such a script that runs one command: main(argv from ARGS_FROM).
WITH_CALLBACK = CALLBACK_ADDED + "sys.exit(main(sys.argv[ARGS_FROM:]))\n"
# The image tasks' embedded sets, kept tiny (--set settings); the classification set has 9 validation images (odd,
# for the DDP tests).
TINY_IMAGE_DATA = {
    "attr": ["data.size=[40, 32]", "data.synth={seed: 1, num_images: 30, size: [54, 44]}"],
    "embed": [
        "data.size=32",
        "data.synth={seed: 1, num_identities: 4, images_per_identity: 3, num_pair_identities: 20, "
        "pair_images_per_identity: 3, matched_per_fold: 2, size: [40, 40]}",
    ],
    "cls": ["data.size=32", "data.synth={seed: 1, num_classes: 3, train_per_class: 4, val_per_class: 3, size: 32}"],
}


def randomised(model: torch.nn.Module) -> torch.nn.Module:
    """Random batch-norm statistics and affine parameters (eval mode), so a mis-mapped tensor shows in outputs."""
    torch.manual_seed(0)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


def task_module(task: str, settings: list[str]):
    """The task's LightningModule (untrained, seed 0) for these --set settings, on its data set's classes."""
    from mbtasks.config import load_config
    from mbtasks.tasks import TASKS

    config = load_config(None, settings, task=task)
    data = TASKS.get(task).data_module(config)
    data.prepare_data()
    data.setup("validate")
    torch.manual_seed(0)
    return TASKS.get(task)(config.to_dict(), data.class_names, data.category_ids)


def save_checkpoint(module, path: Path) -> Path:
    """The module saved as a training checkpoint: its state and its record, as `mbtasks train` writes them."""
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, path)
    return path


def evaluate_with_one_and_two_processes(
    checkpoint: Path, out_dir: Path, val_batch_size: int, images: int
) -> list[dict]:
    """The checkpoint's figures from `mbtasks evaluate` on one process (this one) and on two (DDP, gloo: the console
    script, which starts the second). Each run must report `images` evaluated images: with an odd count the sampler
    pads a duplicate, which must not be counted twice."""
    figures = []
    for devices in (1, 2):
        out = out_dir / f"ddp{devices}.json"
        args = [
            "evaluate",
            "--checkpoint",
            str(checkpoint),
            "--json",
            str(out),
            "--set",
            "train.accelerator=cpu",
            "--set",
            f"train.devices={devices}",
            "--set",
            f"train.strategy={'ddp' if devices > 1 else 'auto'}",
            "--set",
            f"data.val_batch_size={val_batch_size}",
            "--set",
            "data.num_workers=0",
        ]
        if devices == 1:
            result = in_process(args)
        else:
            result = subprocess.run(
                [MBTASKS, *args],
                capture_output=True,
                text=True,
                timeout=300,
                env={**os.environ, "OMP_NUM_THREADS": "1"},
            )
        assert result.returncode == 0, result.stderr[-2000:]
        assert f"evaluated {images} images" in result.stdout
        figures.append(json.loads(out.read_text()))
    return figures


# Tiny settings of each task's demo recipe for checkpoints written without training (write_checkpoint).
TINY_MODELS = {
    "det": ["model.name=ssdlite320_mobilenet_v3_small", "model.options={width_mult: 0.5}", "data.size=128"],
    "seg": ["model.name=lraspp_mobilenet_v3_small", "model.options={width_mult: 0.5}"],
    "attr": ["model.options={width_mult: 0.5}", "data.size=[40, 32]"],
    "embed": ["model.options={width_mult: 0.5, embedding_dim: 16}", "data.size=32"],
    "cls": ["model.options={width_mult: 0.5}", "data.size=32"],
}


def write_checkpoint(
    path: Path,
    task: str,
    class_names: list,
    category_ids: list = (),
    settings: list[str] = (),
    metrics: dict | None = None,
) -> Path:
    """A checkpoint as training writes it (the record, the task's `model.` weights), of an untrained tiny network on
    the task's demo recipe, with random batch-norm statistics so that a wrong input shows in the outputs."""
    from mbtasks.config import load_config
    from mbtasks.io.records import RECORD_KEY
    from mbtasks.tasks import TASKS

    spec = TASKS.get(task)
    config = load_config(spec.demo_recipe, [*TINY_MODELS[task], *settings])
    module = spec(config.to_dict(), list(class_names), list(category_ids))
    randomised(module.model)
    module.metrics = metrics or {}
    torch.save(
        {
            RECORD_KEY: module.record().to_dict(),
            "state_dict": {f"model.{k}": v for k, v in module.model.state_dict().items()},
        },
        path,
    )
    return path


def write_voc_folder(root: Path, count: int = 6, size: tuple[int, int] = (48, 64)) -> None:
    """A tiny VOC 2012 layout: JPEG images and palette masks with a background, a box of one class and a boundary."""
    from mbtasks.datasets.voc import voc_palette

    palette = voc_palette()
    rng = np.random.default_rng(0)
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / folder).mkdir(parents=True)
    names = [f"2007_{i:06d}" for i in range(count)]
    for name in names:
        mask = np.zeros(size, np.uint8)
        cls = int(rng.integers(1, 21))
        y, x = int(rng.integers(0, size[0] // 2)), int(rng.integers(0, size[1] // 2))
        mask[y : y + size[0] // 2, x : x + size[1] // 2] = cls
        mask[y, x : x + size[1] // 2] = 255
        image = palette[mask] // 2 + rng.integers(0, 60, (*size, 3)).astype(np.uint8)
        Image.fromarray(image).save(root / "JPEGImages" / f"{name}.jpg")
        label = Image.fromarray(mask)
        label.putpalette(palette.ravel().tolist())
        label.save(root / "SegmentationClass" / f"{name}.png")
    (root / "ImageSets/Segmentation/train.txt").write_text("\n".join(names[:4]) + "\n")
    (root / "ImageSets/Segmentation/val.txt").write_text("\n".join(names[4:]) + "\n")


def coco_category_names() -> list[str]:
    """COCO's names by category id (0: background, "N/A" at the 10 unused ids), as torchvision's weights list them."""
    from torchvision.models.detection import SSDLite320_MobileNet_V3_Large_Weights

    return list(SSDLite320_MobileNet_V3_Large_Weights.COCO_V1.meta["categories"])


def write_coco_folder(root: Path, splits: dict[str, int] | None = None) -> Path:
    """A COCO 2017 layout of real photos (scikit-image's, as 640x480 JPEGs): annotations/instances_{split}.json with
    COCO's 80 categories under their real ids (1..90 with gaps), boxes of ids 1, 17, 18, 62 and 90, and a crowd
    region stored as compressed RLE (as instances_val2017.json stores them)."""
    from pycocotools import mask as coco_mask
    from skimage import data

    names = coco_category_names()
    categories = [{"id": i, "name": n, "supercategory": ""} for i, n in enumerate(names) if i and n != "N/A"]
    photos = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket(), data.immunohistochemistry()]
    annotation_id = 0
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for split, count in (splits or {"train2017": 4, "val2017": 2}).items():
        (root / split).mkdir(exist_ok=True)
        images, annotations = [], []
        for index in range(count):
            image_id = 139 + 1000 * index + (split == "val2017")
            name = f"{image_id:012d}.jpg"
            Image.fromarray(photos[index % len(photos)]).convert("RGB").resize((640, 480)).save(
                root / split / name, quality=90
            )
            images.append({"id": image_id, "file_name": name, "width": 640, "height": 480})
            for j, (category, box) in enumerate(
                (
                    (1, [120, 40, 260, 420]),
                    (17, [400, 220, 180, 200]),
                    (18, [30, 300, 90, 120]),
                    (62, [500, 20, 100, 90]),
                    (90, [300, 400, 60, 40]),
                )
            ):
                if (index + j) % 3 == 2:
                    continue
                annotation_id += 1
                annotations.append(
                    {
                        "id": annotation_id,
                        "image_id": image_id,
                        "category_id": category,
                        "bbox": box,
                        "area": float(box[2] * box[3]),
                        "iscrowd": 0,
                        "segmentation": [],
                    }
                )
            crowd = np.zeros((480, 640), np.uint8, order="F")
            crowd[10:110, 10:200] = 1
            rle = coco_mask.encode(crowd)
            annotation_id += 1
            annotations.append(
                {
                    "id": annotation_id,
                    "image_id": image_id,
                    "category_id": 1,
                    "iscrowd": 1,
                    "bbox": [10.0, 10.0, 190.0, 100.0],
                    "area": float(coco_mask.area(rle)),
                    "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()},
                }
            )
        (root / "annotations" / f"instances_{split}.json").write_text(
            json.dumps({"images": images, "annotations": annotations, "categories": categories})
        )
    return root


def spy_on_coco_backends(monkeypatch) -> list[str]:
    """The names of the COCO backends that run from now on, in order."""
    import mbtasks.evaluation.coco as coco

    calls = []
    for name, backend in list(coco.BACKENDS.items()):
        monkeypatch.setitem(
            coco.BACKENDS, name, lambda *args, name=name, backend=backend: calls.append(name) or backend(*args)
        )
    return calls


def install_plugin(folder: Path, distribution: str, modules: dict[str, str], entry_points: str, threads: int) -> dict:
    """`modules` and a `<distribution>-0.1.dist-info` with `entry_points` in `folder`, as pip would install them;
    the environment that puts `folder` on the path, torch on `threads` threads."""
    folder.mkdir()
    for module, text in modules.items():
        (folder / f"{module}.py").write_text(text)
    info = folder / f"{distribution}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))
    path = [str(folder), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(path), "OMP_NUM_THREADS": str(threads)}


# The commit a placed timm download claims (any 40 hex digits: the cache only needs refs/main to name it).
HF_COMMIT = "0123456789abcdef0123456789abcdef01234567"


def place_torchvision(cache: Path, weights, state: dict) -> Path:
    """A state dict saved under the file name torchvision downloads the weights to."""
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / Path(weights.url).name
    torch.save(state, path)
    return path


def place_timm(cache: Path, repo: str, state: dict) -> None:
    """A state dict in the cache layout `hf download` writes (refs/main -> snapshots/<commit>/model.safetensors)."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    (folder / "snapshots" / HF_COMMIT).mkdir(parents=True)
    (folder / "refs").mkdir()
    (folder / "refs/main").write_text(HF_COMMIT)
    safetensors.torch.save_file(state, folder / "snapshots" / HF_COMMIT / "model.safetensors")


def browser_dom(page: Path, timeout: float = 120) -> str:
    """The page's DOM as headless Chromium (Debian's `chromium`, which .ci/run installs) shows it once loaded, its
    scripts run: the page's own, nothing injected."""
    command = ["chromium", "--headless", "--disable-gpu", "--no-sandbox", "--dump-dom", page.resolve().as_uri()]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=True)
    return done.stdout
