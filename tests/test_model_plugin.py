"""A model added as a plugin: one file outside mbtasks and an installed distribution's `mbtasks.models` entry point,
trained one step and profiled through the console script; a broken model plugin is one warning line naming it."""

import json
import subprocess
from pathlib import Path

from helpers import MBTASKS, TINY_IMAGE_DATA, install_plugin

from mbtasks.io.records import read_record

DEMO = Path(__file__).resolve().parents[1] / "mbtasks/recipes/demo/cls_shapes.yaml"
PLUGIN = '''\
"""A third-party classifier: MobileNetV3-Small with a two-layer MLP head (mbtasks has none)."""
from torch import nn

from mbtasks.backbones import BACKBONES
from mbtasks.models import register_model
from mbtasks.models.classifiers import ImageClassifier


@register_model("mlp_mobilenet_v3_small", backbone="mobilenet_v3_small", kind="classifier", size=64, head="mlp")
def mlp_mobilenet_v3_small(*, num_classes: int = 10, hidden: int = 32, width_mult: float = 1.0) -> nn.Module:
    """MobileNetV3-Small (arXiv:1905.02244) with an MLP head.

    Args:
        num_classes: classes of the last layer.
        hidden: width of the hidden layer.
        width_mult: width multiplier of the backbone.
    """
    backbone = BACKBONES.get("mobilenet_v3_small")(width_mult=width_mult)
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(backbone.num_features, hidden), nn.ReLU(),
                         nn.Linear(hidden, num_classes))
    return ImageClassifier(backbone, head)
'''


def _mbtasks(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([MBTASKS, *args], capture_output=True, text=True, timeout=600, env=env)


def test_a_plugin_model_trains_one_step_and_profiles_through_the_console_script(tmp_path):
    env = install_plugin(
        tmp_path / "site",
        "mbtasks_mlp_plugin",
        {"mlp_models": PLUGIN},
        """\
        [mbtasks.models]
        mlp_mobilenet_v3_small = mlp_models:mlp_mobilenet_v3_small
        """,
        threads=2,
    )
    settings = [
        "model.name=mlp_mobilenet_v3_small",
        "model.options={width_mult: 0.25, hidden: 16}",
        *TINY_IMAGE_DATA["cls"],
        f"data.synth_dir={tmp_path / 'data'}",
        "data.num_workers=0",
        f"train.out_dir={tmp_path / 'run'}",
        "train.epochs=1",
        "train.limit_train_batches=1",
        "train.limit_val_batches=1",
        "train.progress_bar=false",
    ]
    train = _mbtasks(env, "train", "--config", str(DEMO), *[a for s in settings for a in ("--set", s)])
    assert train.returncode == 0, train.stderr[-3000:]
    record, _ = read_record(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert (record.task, record.model, record.backbone) == ("cls", "mlp_mobilenet_v3_small", "mobilenet_v3_small")
    assert record.options == {"width_mult": 0.25, "hidden": 16, "num_classes": 3}

    profile = _mbtasks(env, "profile", "--model", "mlp_mobilenet_v3_small", "--runs", "1", "--json")
    assert profile.returncode == 0 and profile.stderr == "", profile.stderr[-3000:]
    assert json.loads(profile.stdout)["params"] > 0


def test_a_broken_model_plugin_is_one_line_naming_it_and_the_built_in_models_work(tmp_path):
    env = install_plugin(
        tmp_path / "site",
        "mbtasks_broken_plugin",
        {"broken_models": 'raise ImportError("needs a library that is not installed")\n'},
        """\
        [mbtasks.models]
        broken_model = broken_models
        """,
        threads=2,
    )
    help_text = _mbtasks(env, "--help")
    assert help_text.returncode == 0 and help_text.stderr == ""  # plugins load on the first lookup, not before

    profile = _mbtasks(env, "profile", "--model", "mobilenet_v1", "--runs", "1", "--json")
    assert profile.returncode == 0, profile.stderr[-3000:]
    assert json.loads(profile.stdout)["params"] == 4_231_976
    assert profile.stderr.splitlines() == [
        "mbtasks: warning: model plugin 'broken_model' (broken_models) failed to load and is left out: ImportError: "
        "needs a library that is not installed"
    ]

    named = _mbtasks(env, "profile", "--model", "broken_model")
    assert named.returncode == 2
    assert named.stderr.splitlines()[-1].endswith(
        "model 'broken_model' is a plugin that failed to load: ImportError: needs a library that is not installed"
    )
