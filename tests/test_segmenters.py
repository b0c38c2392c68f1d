"""Segmentation models: torchvision's networks layer for layer, the papers' costs, shapes, options, a training step."""

import pytest
import torch
import torchvision
from helpers import randomised

from mbtasks import MbtasksError, build_model, list_models
from mbtasks.cli import main
from mbtasks.heads.lraspp import paper_pool_geometry
from mbtasks.io.records import read_weights
from mbtasks.models.importers import import_weights
from mbtasks.profiling import count_madds, count_parameters
from mbtasks.reference import SEGMENTER_PAPER_FIGURES

TORCHVISION = [
    (
        "lraspp_mobilenet_v3_large",
        lambda: torchvision.models.segmentation.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None),
        {"num_classes": 21, "channels": 128},
    ),
    (
        "deeplabv3_mobilenet_v3_large",
        lambda: torchvision.models.segmentation.deeplabv3_mobilenet_v3_large(
            weights=None, weights_backbone=None, aux_loss=True, num_classes=5
        ),
        {"num_classes": 5, "aux": True},
    ),
]


@pytest.mark.parametrize("name,make,options", TORCHVISION, ids=[name for name, _, _ in TORCHVISION])
def test_torchvision_weights_give_the_same_logits(tmp_path, name, make, options):
    reference = randomised(make())
    torch.save(reference.state_dict(), tmp_path / "src.pth")
    assert (
        main(
            [
                "weights",
                "import",
                "--from",
                "torchvision",
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
    assert read_weights(tmp_path / "mb.pth").options == options
    torch.manual_seed(1)
    for shape in [(1, 3, 128, 160), (2, 3, 100, 132)]:  # the second is no multiple of 32
        x = torch.randn(shape)
        with torch.no_grad():
            expected, outputs = reference(x), model(x)
        assert outputs.keys() == expected.keys() == ({"out", "aux"} if options.get("aux") else {"out"})
        assert outputs["out"].shape == (shape[0], options["num_classes"], *shape[2:])
        for key in expected:  # "out", and "aux" where there is one: torchvision's outputs, in eval as in training
            assert (outputs[key] - expected[key]).abs().max().item() < 1e-4


def test_torchvision_options_are_read_from_the_file(tmp_path):
    plain = torchvision.models.segmentation.deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None)
    torch.save(plain.state_dict(), tmp_path / "deeplab.pth")
    saved = import_weights("torchvision", tmp_path / "deeplab.pth", "deeplabv3_mobilenet_v3_large", tmp_path / "a.pth")
    assert saved.options == {"num_classes": 21, "aux": False} and saved.backbone == "mobilenet_v3_large"
    with pytest.raises(MbtasksError, match=r"deeplab\.pth"):
        import_weights("torchvision", tmp_path / "deeplab.pth", "lraspp_mobilenet_v3_large", tmp_path / "b.pth")


@pytest.mark.parametrize("name", ["lraspp_mobilenet_v3_large", "lraspp_mobilenet_v3_small"])
def test_paper_setting_costs_the_papers_multiply_adds(name):
    (options, resolution), (paper_params, paper_madds) = next(
        ((options, res), figures)
        for (model, options, res), figures in SEGMENTER_PAPER_FIGURES.items()
        if model == name and res == (1024, 2048)
    )
    # Counting reads shapes only, so it runs on the meta device (checked equal to a real forward below).
    with torch.device("meta"):
        model = build_model(name, **dict(options))
    madds = count_madds(model, torch.empty(1, 3, *resolution, device="meta"))
    assert abs(madds / paper_madds - 1) < 0.05, f"{madds / 1e9:.3f}B vs {paper_madds / 1e9}B"
    # torchvision's reduced tail keeps the first stride-32 block's expansion, which the paper's (TF) halves.
    assert 1.0 < count_parameters(model) / paper_params < 1.2
    small = torch.rand(1, 3, 96, 160)
    assert count_madds(build_model(name, **dict(options)), small) == count_madds(model, small.to("meta"))


def test_mobile_deeplabv3_matches_the_v2_paper():
    for (name, options, resolution), (paper_params, paper_madds) in SEGMENTER_PAPER_FIGURES.items():
        if name != "deeplabv3_mobilenet_v2":
            continue
        with torch.device("meta"):
            model = build_model(name, **dict(options))
        assert abs(count_parameters(model) / paper_params - 1) < 0.01
        madds = count_madds(model, torch.empty(1, 3, *resolution, device="meta"))
        assert abs(madds / paper_madds - 1) < (0.01 if not dict(options)["aspp"] else 0.1)


@pytest.mark.parametrize("name", list_models(kind="segmenter"))
def test_every_model_gives_logits_at_the_input_resolution(name):
    x = torch.rand(1, 3, 72, 100)
    for output_stride in (8, 16, 32):
        model = build_model(name, num_classes=3, output_stride=output_stride, aux=True).eval()
        assert model.backbone.strides["C5"] == output_stride
        with torch.no_grad():
            outputs = model(x)
            assert outputs["out"].shape == outputs["aux"].shape == (1, 3, 72, 100)
    with pytest.raises(MbtasksError, match="output_stride"):
        build_model(name, output_stride=4)
    with pytest.raises(MbtasksError, match="unknown option"):
        build_model(name, colour="red")


@pytest.mark.parametrize("name", ["lraspp_mobilenet_v3_small", "deeplabv3_mobilenet_v2"])
def test_training_step_with_aux_loss(name):
    torch.manual_seed(0)
    model = build_model(name, num_classes=4, aux=True, aux_loss_weight=0.4, reduced_tail=True).train()
    assert model.aux_loss_weight == 0.4
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, target = torch.randn(2, 3, 64, 80), torch.randint(0, 4, (2, 64, 80))
    target[:, :4] = 255  # ignored
    outputs = model(x)
    loss = model.loss(outputs, target)
    main_only = torch.nn.functional.cross_entropy(outputs["out"], target, ignore_index=255)
    aux_only = torch.nn.functional.cross_entropy(outputs["aux"], target, ignore_index=255)
    assert torch.allclose(loss, main_only + 0.4 * aux_only)
    before = model.aux_head[-1].weight.detach().clone()
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    optimizer.step()
    assert not torch.equal(before, model.aux_head[-1].weight)


def test_paper_pooling_scales_with_the_input():
    assert paper_pool_geometry(64, 128) == ((49, 49), (16, 20))
    assert paper_pool_geometry(32, 64) == ((25, 25), (8, 10))
    pooled = []
    with torch.device("meta"):
        model = build_model("lraspp_mobilenet_v3_small", pooling="paper").eval()
    model.head.scale[0].register_forward_hook(lambda _m, _i, out: pooled.append(tuple(out.shape[-2:])))
    for size in [(1024, 2048), (512, 1024)]:
        with torch.no_grad():
            model(torch.empty(1, 3, *size, device="meta"))
    assert pooled == [(1, 4), (1, 4)]

    torch.manual_seed(0)
    global_head = build_model("lraspp_mobilenet_v3_small", pooling="global").head.eval()
    paper_head = build_model("lraspp_mobilenet_v3_small", pooling="paper").head.eval()
    paper_head.load_state_dict(global_head.state_dict())  # the same weights: only the pooling differs
    low, high = torch.randn(1, 24, 32, 64), torch.randn(1, 576, 16, 32)
    high[..., :8] += 3  # a left half unlike the right: local pooling sees it, global pooling averages it away
    with torch.no_grad():
        assert (global_head(low, high) - paper_head(low, high)).abs().max() > 1e-2
    with pytest.raises(MbtasksError, match="pooling"):
        build_model("lraspp_mobilenet_v3_small", pooling="max")
