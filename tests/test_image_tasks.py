"""The image-level tasks end to end on tiny embedded data: attributes, embeddings, classification.

Train one epoch, evaluate the checkpoint, resume, DDP; the heads and losses; configs; one-line errors.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TINY_IMAGE_DATA, evaluate_with_one_and_two_processes

from mbtasks.cli import main
from mbtasks.config import load_config
from mbtasks.datasets.synthetic import SYNTH_MARKER, write_synthetic_once
from mbtasks.errors import MbtasksError
from mbtasks.heads.image import AttributeHead, ClassifierHead, EmbeddingHead
from mbtasks.io.records import Record, save_weights
from mbtasks.models import build_backbone, build_model
from mbtasks.models.losses import ArcFaceLoss, AttributeLoss, DistillationLoss, TripletLoss, attribute_pos_weight
from mbtasks.tasks.attributes import AttributesDataModule, AttributesTask
from mbtasks.tasks.classification import ClassificationDataModule, ClassificationTask
from mbtasks.tasks.embeddings import EmbeddingsDataModule, EmbeddingsTask

CONFIGS = Path(__file__).resolve().parents[1] / "mbtasks" / "recipes"
COMMON = [
    "data.num_workers=0",
    "data.batch_size=8",
    "data.val_batch_size=4",
    "train.epochs=1",
    "train.accelerator=cpu",
    "train.progress_bar=false",
    "train.optimizer=adamw",
    "train.lr=0.001",
    "train.log_every=1",
    "train.schedule=constant",
]
SETTINGS = {
    "attr": [
        "model.name=mobilenet_v1",
        "model.options={width_mult: 0.25, pos_weight: balanced}",
        *TINY_IMAGE_DATA["attr"],
    ],
    "embed": [
        "model.name=mobilenet_v1",
        "model.options={width_mult: 0.25, embedding_dim: 16}",
        *TINY_IMAGE_DATA["embed"],
    ],
    "cls": ["model.name=mobilenet_v3_small", "model.options={width_mult: 0.5}", *TINY_IMAGE_DATA["cls"]],
}
METRIC = {"attr": "val/mean_ap", "embed": "val/accuracy", "cls": "val/top1"}


def _args(command: list[str], settings: list[str]) -> list[str]:
    return command + [a for s in settings for a in ("--set", s)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """One epoch of each task on its embedded set; the embedding run also distils from a teacher .npy file."""
    root = tmp_path_factory.mktemp("image_tasks")
    teacher = root / "teacher.npy"
    np.save(teacher, np.random.default_rng(0).standard_normal((12, 16)).astype(np.float32))  # 4 x 3 images, 16-d
    extra = {"embed": ["model.options.distillation={teacher: " + str(teacher) + ", weight: 0.5}"]}
    result = {}
    for task, settings in SETTINGS.items():
        settings = (
            COMMON
            + settings
            + extra.get(task, [])
            + [f"data.synth_dir={root / task / 'data'}", f"train.out_dir={root / task / 'run'}"]
        )
        assert main(_args(["train", "--task", task], settings)) == 0
        result[task] = (root / task, settings)
    return result


@pytest.mark.parametrize("task", list(SETTINGS))
def test_training_writes_checkpoints_and_logs(runs, task):
    root, _ = runs[task]
    assert (root / "run/checkpoints/last.ckpt").is_file() and (root / "run/checkpoints/best.ckpt").is_file()
    assert (root / "data" / SYNTH_MARKER).is_file()
    metrics = (root / "run/logs/version_0/metrics.csv").read_text()
    assert METRIC[task] in metrics and "train/loss" in metrics
    record = torch.load(root / "run/checkpoints/last.ckpt", weights_only=True)["mbtasks"]
    assert record["task"] == task and record["category_ids"] == [] and record["config"]["task"] == task
    if task == "embed":
        assert "train/distillation_loss" in metrics and "train/margin_loss" in metrics
        assert record["class_names"] == [] and record["options"]["embedding_dim"] == 16


def test_evaluate_attributes_prints_the_table(runs, tmp_path, capsys):
    root, _ = runs["attr"]
    out = tmp_path / "m.json"
    assert main(["evaluate", "--checkpoint", str(root / "run/checkpoints/best.ckpt"), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "evaluated 3 images" in printed and "Wearing_Hat" in printed and "mean (40)" in printed
    assert "mean, visible (17)" in printed
    figures = json.loads(out.read_text())
    assert {"mean_accuracy", "mean_average_precision", "per_attribute", "visible", "num_images"} <= set(figures)
    assert len(figures["per_attribute"]) == 40


def test_evaluate_embeddings_runs_the_lfw_protocol(runs, tmp_path, capsys):
    root, _ = runs["embed"]
    out = tmp_path / "m.json"
    assert main(["evaluate", "--checkpoint", str(root / "run/checkpoints/best.ckpt"), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "pairs                  : 40 (10 folds" in printed and "verification accuracy" in printed
    figures = json.loads(out.read_text())
    assert len(figures["fold_accuracies"]) == 10 and figures["num_pairs"] == 40
    assert {"accuracy_mean", "accuracy_std", "tar", "far"} <= set(figures) and figures["far"] == 1e-3


def test_evaluate_classification_prints_top1_top5(runs, tmp_path, capsys):
    root, _ = runs["cls"]
    out = tmp_path / "m.json"
    assert main(["evaluate", "--checkpoint", str(root / "run/checkpoints/best.ckpt"), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "evaluated 9 images" in printed and "top-1 accuracy" in printed
    assert set(json.loads(out.read_text())) == {"top1", "top5", "num_images"}


def test_resume_embeddings_restores_the_arcface_weights(runs, tmp_path):
    root, settings = runs["embed"]
    settings = [s for s in settings if not s.startswith(("train.epochs", "train.out_dir"))]
    args = ["train", "--task", "embed", "--resume", str(root / "run/checkpoints/last.ckpt")]
    assert main(_args(args, settings + ["train.epochs=2", f"train.out_dir={tmp_path}"])) == 0
    before = torch.load(root / "run/checkpoints/last.ckpt", weights_only=True)
    after = torch.load(tmp_path / "checkpoints/last.ckpt", weights_only=True)
    assert after["epoch"] == 1 and after["state_dict"]["margin_loss.weight"].shape == (4, 16)
    # Restored, then trained one step (a fresh initialisation would be far off).
    change = (after["state_dict"]["margin_loss.weight"] - before["state_dict"]["margin_loss.weight"]).abs().max()
    assert 0 < change < 0.01


def test_backbone_and_classifier_load_from_image_checkpoints(runs):
    attr = runs["attr"][0] / "run/checkpoints/last.ckpt"
    backbone = build_backbone("mobilenet_v1", weights=attr)  # width 0.25 comes from the checkpoint
    state = torch.load(attr, weights_only=True)["state_dict"]
    assert torch.equal(backbone.state_dict()["layers.0.0.weight"], state["model.backbone.layers.0.0.weight"])
    classifier = build_model("mobilenet_v3_small", weights=runs["cls"][0] / "run/checkpoints/last.ckpt")
    assert classifier.head.fc.out_features == 3


def test_two_processes_give_the_same_top1_as_one(runs, tmp_path):
    root, _ = runs["cls"]
    figures = evaluate_with_one_and_two_processes(root / "run/checkpoints/best.ckpt", tmp_path, 2, 9)
    assert figures[0] == figures[1]


# ---- heads and losses ----


def test_embedding_head_is_l2_normalised_with_the_requested_size():
    head = EmbeddingHead(32, embedding_dim=24).eval()
    embeddings = head(torch.randn(5, 32, 3, 3))
    assert embeddings.shape == (5, 24)
    torch.testing.assert_close(embeddings.norm(dim=1), torch.ones(5))
    task = EmbeddingsTask(load_config(None, SETTINGS["embed"][:2], task="embed").to_dict(), [], []).eval()
    assert task(torch.rand(2, 3, 32, 32)).shape == (2, 16)


def test_classifier_head_keeps_its_layer_names():
    assert list(ClassifierHead(16, 10, hidden_channels=32).state_dict()) == [
        "hidden.0.weight",
        "hidden.0.bias",
        "fc.weight",
        "fc.bias",
    ]
    assert AttributeHead(16, 40)(torch.randn(2, 16, 2, 2)).shape == (2, 40)


def test_attribute_positive_weights_change_the_loss():
    logits, targets = torch.randn(6, 3), torch.tensor([[1.0, 0, 1], [0, 0, 1], [1, 1, 0]] * 2)
    plain = AttributeLoss()(logits, targets)
    weights = attribute_pos_weight({"b": 4.0}, ["a", "b", "c"])
    assert weights.tolist() == [1.0, 4.0, 1.0]
    assert AttributeLoss(weights)(logits, targets) > plain
    assert AttributeLoss(torch.ones(3))(logits, targets) == plain
    balanced = attribute_pos_weight("balanced", ["a", "b", "c"], targets.numpy())
    assert balanced.tolist() == pytest.approx([0.5, 2.0, 0.5])  # negatives / positives
    # Through the task: a list in model.options reaches the loss.
    config = load_config(
        None, [SETTINGS["attr"][0], "model.options={width_mult: 0.25, pos_weight: [1, 4, 1]}"], task="attr"
    )
    task = AttributesTask(config.to_dict(), ["a", "b", "c"], [])
    assert task.loss(logits, targets) == AttributeLoss(weights)(logits, targets)
    with pytest.raises(MbtasksError, match="2 values for 3 attributes"):
        attribute_pos_weight([1, 2], ["a", "b", "c"])


def test_label_smoothing_changes_the_classification_loss():
    logits, labels = torch.tensor([[4.0, 0.0, -1.0], [0.0, 3.0, 0.0]]), torch.tensor([0, 1])
    losses = []
    for smoothing in (0.0, 0.2):
        config = load_config(None, [*SETTINGS["cls"][:2], f"train.label_smoothing={smoothing}"], task="cls")
        losses.append(float(ClassificationTask(config.to_dict(), ["a", "b", "c"], []).loss(logits, labels)))
    assert losses[1] > losses[0]


def test_margin_losses_prefer_separated_identities():
    labels = torch.tensor([0, 0, 1, 1])
    apart = torch.nn.functional.normalize(torch.tensor([[1.0, 0.1], [1.0, -0.1], [-1.0, 0.1], [-1.0, -0.1]]), dim=1)
    mixed = apart[[0, 2, 1, 3]]
    assert TripletLoss(0.2)(apart, labels) < TripletLoss(0.2)(mixed, labels)
    arcface = ArcFaceLoss(2, 2, scale=10.0, margin=0.3)
    arcface.weight.data = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    assert arcface(apart, labels) < arcface(mixed, labels)


def test_distillation_reads_npy_and_pt_teachers(tmp_path):
    teacher = torch.randn(4, 8)
    np.save(tmp_path / "t.npy", teacher.numpy())
    torch.save({"embeddings": teacher}, tmp_path / "t.pt")
    for name in ("t.npy", "t.pt"):
        loss = DistillationLoss.from_file(tmp_path / name, num_images=4, embedding_dim=8)
        assert float(loss(teacher[[2, 0]], torch.tensor([2, 0]))) == pytest.approx(0.0, abs=1e-6)
        assert float(loss(teacher[[2, 0]], torch.tensor([0, 2]))) > 0.0


def test_wrong_teacher_file_is_a_one_line_error(runs, tmp_path, capsys):
    root, settings = runs["embed"]
    np.save(tmp_path / "teacher.npy", np.zeros((12, 7), np.float32))  # 7-d for a 16-d embedding
    torch.save({"weights": torch.zeros(3)}, tmp_path / "teacher.pt")
    for name in ("teacher.npy", "teacher.pt", "missing.npy"):
        wrong = [s for s in settings if not s.startswith("train.out_dir")] + [
            f"train.out_dir={tmp_path / 'run'}",
            "model.options.distillation={teacher: " + str(tmp_path / name) + "}",
        ]
        assert main(_args(["train", "--task", "embed"], wrong)) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("mbtasks: error: ") and str(tmp_path / name) in err[0], err


# ---- models, weights, data, configs ----


def test_backbone_weights_load_into_the_backbone_and_are_recorded(tmp_path):
    imagenet = build_model("mobilenet_v1", width_mult=0.25, bn_eps=1e-3)
    save_weights(
        tmp_path / "v1.pt",
        Record(
            "mobilenet_v1",
            "mobilenet_v1",
            {"width_mult": 0.25, "bn_eps": 1e-3, "num_classes": 1000},
            state_dict=imagenet.state_dict(),
        ),
    )
    config = load_config(None, ["model.name=mobilenet_v1", f"model.backbone_weights={tmp_path / 'v1.pt'}"], task="attr")
    task = AttributesTask(config.to_dict(), ["a", "b"], [])
    for key, value in imagenet.backbone.state_dict().items():
        assert torch.equal(task.model.backbone.state_dict()[key], value), key
    assert task.config.model.options == {"width_mult": 0.25, "bn_eps": 1e-3}  # what the checkpoint's config keeps
    assert task.model.backbone.layers[0][1].eps == 1e-3


def test_model_mistakes_are_errors():
    with pytest.raises(MbtasksError, match="must be a backbone"):
        AttributesTask(
            load_config(None, ["model.name=ssdlite320_mobilenet_v3_large"], task="attr").to_dict(), ["a"], []
        )
    with pytest.raises(MbtasksError, match="unknown option.*embeding_dim"):
        EmbeddingsTask(
            load_config(None, ["model.name=mobilenet_v1", "model.options={embeding_dim: 8}"], task="embed").to_dict(),
            [],
            [],
        )
    with pytest.raises(MbtasksError, match="model.options.loss must be one of"):
        EmbeddingsTask(
            load_config(
                None, ["model.name=mobilenet_v1", "model.options={loss: {name: cosface}}"], task="embed"
            ).to_dict(),
            [],
            [],
        )


def test_synthetic_set_is_written_once_and_empty_leftovers_are_replaced(tmp_path):
    config = load_config(
        None,
        [
            f"data.synth_dir={tmp_path / 'shapes'}",
            "data.synth={num_classes: 2, train_per_class: 1, val_per_class: 1, size: 16}",
        ],
        task="cls",
    )
    (tmp_path / "shapes/train/circle").mkdir(parents=True)  # folders without files: nothing to lose
    data = ClassificationDataModule(config)
    data.prepare_data()
    marker = tmp_path / "shapes" / SYNTH_MARKER
    assert marker.is_file() and len(list((tmp_path / "shapes").rglob("*.png"))) == 4
    stamp = marker.stat().st_mtime_ns
    data.prepare_data()
    assert marker.stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == ["shapes"]  # no staging folders left behind
    data.setup("validate")
    assert data.class_names == ["circle", "square"] and data.category_ids == []
    write_synthetic_once(
        tmp_path / "shapes",
        data.format.write_synthetic,
        {"num_classes": 3, "train_per_class": 1, "val_per_class": 1, "size": 16},
    )
    assert len(list((tmp_path / "shapes/train").iterdir())) == 3  # other options: rewritten


CONFIG_FILES = (
    sorted((CONFIGS / "face").glob("*.yaml"))
    + sorted((CONFIGS / "cls").glob("*.yaml"))
    + [CONFIGS / "demo" / f"{name}.yaml" for name in ("attr_faces", "embed_faces", "cls_shapes")]
)
TASKS = {
    "attr": (AttributesDataModule, AttributesTask),
    "embed": (EmbeddingsDataModule, EmbeddingsTask),
    "cls": (ClassificationDataModule, ClassificationTask),
}


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.name)
def test_configs_build_their_models(path):
    config = load_config(path, ["model.backbone_weights=null"])
    data_class, task_class = TASKS[config.task]
    names = {"attr": [str(i) for i in range(40)], "embed": [], "cls": [str(i) for i in range(8)]}[config.task]
    task = task_class(config.to_dict(), names, []).eval()
    size = data_class(config).size
    with torch.no_grad():
        out = task(torch.zeros(1, 3, *size))
    assert out.shape == (1, {"attr": 40, "embed": 128, "cls": 8}[config.task])
