"""The command line: profile output, one-line errors, the COCO backend option."""

import json
import subprocess
import sys

import pytest
from helpers import spy_on_coco_backends

from mbtasks.cli import main
from mbtasks.datasets.synthetic.shapes_coco import write_shapes_coco


def test_profile_json(capsys):
    assert main(["profile", "--model", "mobilenet_v3_small", "--width", "0.75", "--json", "--runs", "2"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert set(figures) == {"params", "madds", "latency_ms"}
    assert figures["params"] == 2_041_872 and abs(figures["madds"] - 43.4e6) < 0.1e6
    assert figures["latency_ms"] > 0


def test_profile_non_square_resolution(capsys):
    assert main(["profile", "--model", "mobilenet_v1", "--resolution", "160x224", "--json", "--runs", "1"]) == 0
    square = 568_740_352
    assert json.loads(capsys.readouterr().out)["madds"] < square


def test_version_is_the_package_version(capsys):
    import mbtasks

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == f"mbtasks {mbtasks.__version__}"


def test_console_script_prints_one_line_error():
    result = subprocess.run(
        [sys.executable, "-m", "mbtasks.cli", "profile", "--model", "resnet50"], capture_output=True, text=True
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mbtasks: error: unknown model 'resnet50'; known: ")
    assert "mobilenet_v1" in lines[0] and "ssdlite320_mobilenet_v3_large" in lines[0]


@pytest.mark.parametrize("option, used", [([], "faster-coco-eval"), (["--coco-backend", "pycocotools"], "pycocotools")])
def test_evaluate_scores_a_results_file_with_the_chosen_coco_backend(tmp_path, monkeypatch, capsys, option, used):
    paths = write_shapes_coco(tmp_path / "data", seed=1, num_train=0, num_val=6, image_size=64)
    gt = json.loads(paths["val_annotations"].read_text())
    results = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
        for a in gt["annotations"]
        if not a["iscrowd"]
    ]
    (tmp_path / "results.json").write_text(json.dumps(results))
    calls = spy_on_coco_backends(monkeypatch)
    assert (
        main(
            [
                "evaluate",
                "--task",
                "det",
                "--annotations",
                str(paths["val_annotations"]),
                "--detections",
                str(tmp_path / "results.json"),
                "--json",
                str(tmp_path / "m.json"),
            ]
            + option
        )
        == 0
    )
    assert calls == [used]
    assert json.loads((tmp_path / "m.json").read_text())["AP"] == 1.0


def test_evaluate_json_replaces_an_existing_file_only_with_overwrite(tmp_path, capsys):
    paths = write_shapes_coco(tmp_path / "data", seed=1, num_train=0, num_val=3, image_size=64)
    gt = json.loads(paths["val_annotations"].read_text())
    (tmp_path / "results.json").write_text(
        json.dumps(
            [
                {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
                for a in gt["annotations"]
                if not a["iscrowd"]
            ]
        )
    )
    out = tmp_path / "figures"
    out.mkdir()
    (out / "m.json").write_text("figures of an earlier run\n")
    command = [
        "evaluate",
        "--task",
        "det",
        "--annotations",
        str(paths["val_annotations"]),
        "--detections",
        str(tmp_path / "results.json"),
        "--json",
        str(out / "m.json"),
    ]
    assert main(command) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"mbtasks: error: {out / 'm.json'}: exists: pass --overwrite to replace it, or choose another path"
    ]
    assert (out / "m.json").read_text() == "figures of an earlier run\n"
    assert main([*command, "--overwrite"]) == 0
    assert json.loads((out / "m.json").read_text())["AP"] == 1.0
    assert [p.name for p in out.iterdir()] == ["m.json"]  # no temporary left beside it
