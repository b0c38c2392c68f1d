"""Weight import from torchvision and timm gives the same network."""

import pytest
import timm
import torch
import torchvision
from helpers import randomised

from mbtasks import MbtasksError, build_backbone, build_model
from mbtasks.cli import main
from mbtasks.models.importers import import_weights

ORIGINALS = [
    ("torchvision", "mobilenet_v2", lambda: torchvision.models.mobilenet_v2()),
    ("torchvision", "mobilenet_v3_large", lambda: torchvision.models.mobilenet_v3_large()),
    ("torchvision", "mobilenet_v3_small", lambda: torchvision.models.mobilenet_v3_small()),
    ("timm", "mobilenet_v1", lambda: timm.create_model("mobilenetv1_100")),
    ("timm", "mobilenet_v2", lambda: timm.create_model("mobilenetv2_100")),
    ("timm", "mobilenet_v3_large", lambda: timm.create_model("mobilenetv3_large_100")),
    ("timm", "mobilenet_v3_small", lambda: timm.create_model("mobilenetv3_small_100")),
]


@pytest.mark.parametrize("source,name,make", ORIGINALS, ids=[f"{s}-{n}" for s, n, _ in ORIGINALS])
def test_imported_weights_give_the_same_outputs(tmp_path, source, name, make):
    reference = randomised(make())
    torch.save(reference.state_dict(), tmp_path / "src.pth")
    assert (
        main(
            [
                "weights",
                "import",
                "--from",
                source,
                str(tmp_path / "src.pth"),
                "--model",
                name,
                "--out",
                str(tmp_path / "mb.pth"),
            ]
        )
        == 0
    )
    model = build_model(name, weights=tmp_path / "mb.pth").eval()
    x = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        assert (model(x) - reference(x)).abs().max().item() < 1e-5

    backbone = build_backbone(name, weights=tmp_path / "mb.pth").eval()
    with torch.no_grad():
        assert torch.equal(backbone(x)["C5"], model.backbone(x)["C5"])


def test_non_imagenet_class_count_is_carried(tmp_path):
    reference = randomised(torchvision.models.mobilenet_v3_small(num_classes=7))
    torch.save(reference.state_dict(), tmp_path / "src.pth")
    import_weights("torchvision", tmp_path / "src.pth", "mobilenet_v3_small", tmp_path / "mb.pth")
    assert build_model("mobilenet_v3_small", weights=tmp_path / "mb.pth").head.fc.out_features == 7


def test_file_of_the_wrong_model_names_keys_or_shapes(tmp_path):
    torch.save(torchvision.models.mobilenet_v3_small().state_dict(), tmp_path / "small.pth")
    with pytest.raises(MbtasksError, match=r"small\.pth.*(tensors|shape|counterpart)"):
        import_weights("torchvision", tmp_path / "small.pth", "mobilenet_v3_large", tmp_path / "out.pth")
    torch.save(torchvision.models.mobilenet_v2(width_mult=0.5).state_dict(), tmp_path / "half.pth")
    with pytest.raises(MbtasksError, match=r"half\.pth.*\(16, 3, 3, 3\)"):
        import_weights("torchvision", tmp_path / "half.pth", "mobilenet_v2", tmp_path / "out.pth")


def test_weights_of_another_model_or_width_are_refused(tmp_path, capsys):
    torch.save(torchvision.models.mobilenet_v2().state_dict(), tmp_path / "v2.pth")
    import_weights("torchvision", tmp_path / "v2.pth", "mobilenet_v2", tmp_path / "mb.pth")
    with pytest.raises(MbtasksError, match="mb.pth: holds weights of mobilenet_v2"):
        build_model("mobilenet_v3_large", weights=tmp_path / "mb.pth")
    with pytest.raises(MbtasksError, match=r"mb.pth: does not fit the model: shapes"):
        build_model("mobilenet_v2", weights=tmp_path / "mb.pth", width_mult=0.5)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    assert (
        main(
            [
                "weights",
                "import",
                "--from",
                "torchvision",
                str(tmp_path / "junk.pth"),
                "--model",
                "mobilenet_v2",
                "--out",
                str(tmp_path / "x.pth"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert "junk.pth" in err and len(err.splitlines()) == 1
