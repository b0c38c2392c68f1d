"""The model registry: every entry carries its facts (kind, default size, head family, defaults), every builder is
named, signed and documented, list_models takes a shell pattern, and unknown options and class counts are one error
each."""

import importlib
import inspect

import pytest
import torch

import mbtasks
from mbtasks import MbtasksError, build_backbone, build_model, list_models
from mbtasks.backbones import BACKBONES
from mbtasks.io.records import Record, save_weights
from mbtasks.models import KINDS, MODELS, check_num_classes

PAPERS = ("arXiv:1704.04861", "arXiv:1801.04381", "arXiv:1905.02244")
BUILT_IN = (
    "mbtasks.models.classifiers",
    "mbtasks.models.detectors",
    "mbtasks.models.faster_rcnn",
    "mbtasks.models.segmenters",
)


def test_list_models_takes_a_shell_pattern_and_a_kind():
    assert mbtasks.list_models("*ssdlite*") == [
        "ssdlite320_mobilenet_v3_large",
        "ssdlite320_mobilenet_v3_small",
        "ssdlite320_mobilenet_v2",
        "ssdlite320_mobilenet_v1",
    ]
    assert list_models() == MODELS.names() and len(list_models()) == 38
    assert list_models("mobilenet_v?") == ["mobilenet_v1", "mobilenet_v2"]
    assert list_models("*v1", kind="segmenter") == ["deeplabv3_mobilenet_v1"]
    assert list_models(kind="detector") == [
        *list_models("ssdlite*"),
        *list_models("ssd300*"),
        *list_models("fasterrcnn*"),
    ]
    assert list_models("ssd300*")[-1] == "ssd300_mobilenet_v1" and len(list_models("ssd300*")) == 4
    assert list_models("fasterrcnn*v3_large*") == [
        "fasterrcnn_mobilenet_v3_large_fpn",
        "fasterrcnn_mobilenet_v3_large_320_fpn",
        "fasterrcnn_mobilenet_v3_large",
    ]
    assert list_models("nothing*") == []
    assert sorted(n for kind in KINDS for n in list_models(kind=kind)) == sorted(list_models())
    with pytest.raises(MbtasksError, match="unknown model kind 'detectors'.*did you mean 'detector'"):
        list_models(kind="detectors")


@pytest.mark.parametrize("name", list_models())
def test_every_builder_is_named_signed_documented_and_found_by_its_name(name):
    entry = MODELS.get(name)
    builder = entry.build
    assert builder.__name__ == name and entry.backbone in BACKBONES
    parameters = inspect.signature(builder).parameters
    assert all(p.kind is p.KEYWORD_ONLY for p in parameters.values())
    assert entry.defaults == {k: p.default for k, p in parameters.items() if p.default is not p.empty}
    if builder.__module__ in BUILT_IN:
        assert getattr(importlib.import_module(builder.__module__), name) is builder  # grep and IDEs find it
        assert entry.kind in KINDS and parameters and len(entry.defaults) == len(parameters)
        doc = inspect.getdoc(builder)
        assert any(paper in doc for paper in PAPERS) and "Args:" in doc
        assert all(f"\n    {option}: " in doc for option in parameters)


def test_entries_carry_sizes_heads_and_visible_defaults():
    facts = {name: (e.kind, e.size, e.head) for name, e in MODELS.items()}
    assert facts["ssdlite320_mobilenet_v3_large"] == ("detector", 320, "ssdlite")
    assert facts["ssd300_mobilenet_v1"] == ("detector", 300, "ssd")
    assert facts["fasterrcnn_mobilenet_v3_large_fpn"] == ("detector", 800, "fasterrcnn")
    assert facts["fasterrcnn_mobilenet_v1"] == ("detector", 600, "fasterrcnn")
    assert facts["lraspp_mobilenet_v3_small"] == ("segmenter", 520, "lraspp")
    assert facts["deeplabv3_mobilenet_v1"] == ("segmenter", 520, "deeplabv3")
    assert facts["mobilenet_v2"] == ("classifier", 224, "classifier")
    assert facts["attributes_mobilenet_v1"] == ("attributes", 224, "attributes")
    assert facts["embedding_mobilenet_v3_small"] == ("embedding", 224, "embedding")
    for name in list_models(kind="detector"):
        assert MODELS.get(name).defaults["size"] == MODELS.get(name).size
    v3, v2 = MODELS.get("ssdlite320_mobilenet_v3_large").defaults, MODELS.get("ssdlite320_mobilenet_v2").defaults
    assert v3["reduced_tail"] is True and v2["reduced_tail"] is False
    assert v3["bn_eps"] == 1e-3 and v2["bn_eps"] == 1e-5  # each version's own, shown
    assert "head_kernel" not in v3 and MODELS.get("ssd300_mobilenet_v1").defaults["head_kernel"] == 3
    assert "output_stride" not in v3 and MODELS.get("lraspp_mobilenet_v2").defaults["output_stride"] == 16


def test_unknown_options_and_class_counts_are_one_error_each():
    with pytest.raises(
        MbtasksError,
        match=r"unknown option\(s\) for mobilenet_v1: num_clases \(did you mean "
        r"'num_classes'\?\)",
    ):
        build_model("mobilenet_v1", num_clases=3)
    with pytest.raises(MbtasksError, match=r"unknown option\(s\) for lraspp_mobilenet_v2: colour, size$"):
        build_model("lraspp_mobilenet_v2", colour="red", size=3)
    check_num_classes({}, 5)
    check_num_classes({"num_classes": 5}, 5)
    with pytest.raises(MbtasksError, match="model.options.num_classes is 4 but the data set has 5 labels"):
        check_num_classes({"num_classes": 4}, 5, "labels")


def test_a_backbone_loads_from_a_detector_with_its_default_tail(tmp_path):
    torch.manual_seed(0)
    options = {"num_classes": 3, "width_mult": 0.5}
    model = build_model("ssdlite320_mobilenet_v3_small", **options)
    save_weights(
        tmp_path / "det.pt",
        Record("ssdlite320_mobilenet_v3_small", "mobilenet_v3_small", options, state_dict=model.state_dict()),
    )
    backbone = build_backbone("mobilenet_v3_small", weights=tmp_path / "det.pt")  # reduced_tail from the entry
    assert torch.equal(
        backbone.state_dict()["layers.0.0.weight"], model.backbone.body.state_dict()["layers.0.0.weight"]
    )
