"""Every example in the README and the docs site (docs/**/*.md) runs, read from the Markdown at test time (not copied
here) and run as a user would paste it, in an empty folder:

- each ```python block, executed;
- each ```console block: its `$ mbtasks ...` lines run in-process through `mbtasks.cli.main` (a subprocess would
  spend seconds importing), one after the other in the same folder; the lines a page shows after a command are
  checked against what it printed, in order (`...` in a line stands for anything, a line `...` for any lines); a
  command whose shown output starts `mbtasks: error:` must exit 2, any other 0;
- each ```bash block is one of the two set-up commands, which .ci/run itself runs.

```text blocks are recordings, not examples: each `$` line in one must be a command listed in RECORDED, with why it
cannot run in a test. What a block takes from the page's text around it is made here the way that text says: the
weights file the shell lines before it write, the pretrained weights placed in torchvision's and timm's caches (no
network), the demo's checkpoint (a tiny untrained one) and photos."""

import re
import shlex
from pathlib import Path

import pytest
import timm
import torch
import torchvision
from helpers import place_timm, place_torchvision, randomised, write_checkpoint, write_coco_folder
from PIL import Image
from skimage import data
from torchvision.models import MobileNet_V3_Large_Weights

from mbtasks.cli import main
from mbtasks.datasets.cityscapes import CLASS_NAMES as CITYSCAPES
from mbtasks.datasets.synthetic.shapes_coco import CATEGORIES as SHAPES_COCO

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").rglob("*.md"))]
SHAPES = ["__background__", *(c["name"] for c in SHAPES_COCO)]  # a detector's labels: 0 is the background
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.M | re.S)

# Commands shown as recorded runs (```text), each with why no test runs it.
RECORDED = {
    "python bench/": "a benchmark: minutes each, quoted with its machine; tests/test_bench.py runs each at toy size",
    "mbtasks profile": "the whole family with latencies (a minute); its figures are held by tests/test_backbones.py",
    "mbtasks ablate ": "trains or profiles dozens of networks; tests/test_ablation.py runs small grids",
    'grep " 224 " family/results.md': "reads the recorded ablation's table",
    "mbtasks train --config det_shapes --set train.progress_bar=false": "the full demo (3 min), one run",
    "mbtasks evaluate --checkpoint runs/det_shapes/checkpoints/best.ckpt": "the full demo's evaluation, one run",
    "mbtasks train --config seg_cityscapes_synth": "the full seg demo (4 minutes), its figures one run",
    "mbtasks evaluate --checkpoint runs/seg_cityscapes_synth/checkpoints/best.ckpt": "the full seg demo, one run",
    "mbtasks export --checkpoint runs/det_shapes/checkpoints/best.ckpt --out det_fp32.onnx": "the full demo's export, "
    "one run (its toy-size twin runs)",
    "mbtasks export --checkpoint runs/det_shapes/checkpoints/best.ckpt --out det_int8.onnx --int8": "the full demo's "
    "int8 export (times 7 candidates), one run; tests/test_export.py runs it on tiny models",
    "mbtasks evaluate --runtime onnxruntime --model det_int8.onnx": "the full demo's int8 figures, one run",
    "mbtasks info det_int8.onnx": "the full demo's int8 file, one run",
    "mbtasks export --format executorch": "lowering to XNNPACK takes minutes; tests/test_executorch.py runs it",
    "mbtasks evaluate --runtime executorch": "needs the program above; tests/test_executorch.py runs it",
    "mbtasks predict --checkpoint det_int8.pte": "needs the program above; tests/test_executorch.py runs it",
    "mbtasks info det_int8.pte": "needs the program above; tests/test_executorch.py runs it",
    "mbtasks evaluate --task det --set model.weights=torchvision:": "COCO val2017 (not here); tests/test_pretrained.py",
    "mbtasks train --config ssdlite320_mobilenet_v3_large_coco --set train.num_nodes=2 --launcher slurm": "a SLURM "
    "cluster (not here); tests/test_launch.py checks the sbatch script of this run and runs the local launcher",
    "torchrun --nnodes 2": "two machines (not here); tests/test_launch.py runs torchrun with two local processes",
}


def blocks(language: str) -> list[tuple[Path, str]]:
    return [(page, code) for page in PAGES for lang, code in FENCE.findall(page.read_text()) if lang == language]


def python_examples() -> list[str]:
    return [code for _, code in blocks("python")]


def _label(code: str) -> str:
    """The block's first line that is not an import: the test's id."""
    return next(line for line in code.splitlines() if line and not line.startswith(("import ", "from ")))[:60]


def test_the_readme_and_docs_have_examples():
    assert len(python_examples()) >= 3
    assert len(blocks("console")) >= 8


def prepare(code: str, tmp_path: Path, monkeypatch) -> None:
    """What the block takes from the text around it, made in the empty folder it runs in."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    if "v3l.pth" in code and "weights import" not in code:  # the shell lines before it: torchvision's state dict
        torch.save(torchvision.models.mobilenet_v3_large().state_dict(), "tv_v3l.pth")
        args = ["weights", "import", "--from", "torchvision", "tv_v3l.pth", "--model", "mobilenet_v3_large"]
        assert main([*args, "--out", "v3l.pth"]) == 0
    if "tv_v3l.pth" in code:  # made by the page's `python -c` line before the block
        torch.save(torchvision.models.mobilenet_v3_large().state_dict(), "tv_v3l.pth")
    if "torchvision:MobileNet_V3_Large_Weights.IMAGENET1K_V1" in code and "weights import" not in code:
        state = randomised(torchvision.models.mobilenet_v3_large()).state_dict()
        place_torchvision(tmp_path / "torch/hub/checkpoints", MobileNet_V3_Large_Weights.IMAGENET1K_V1, state)
    if "timm:mobilenetv3_large_100.ra_in1k" in code and "weights import" not in code:
        state = randomised(timm.create_model("mobilenetv3_large_100")).state_dict()
        place_timm(tmp_path / "hf", "timm/mobilenetv3_large_100.ra_in1k", state)
    for task, run, names, small in (  # the demo's recipe with a toy-size embedded set: 8 or 2 validation images
        ("det", "det_shapes", SHAPES, "{seed: 0, num_train: 16, num_val: 8, image_size: 128}"),
        ("seg", "seg_cityscapes_synth", CITYSCAPES, "{seed: 0, num_train: 4, num_val: 2, size: [64, 128]}"),
    ):
        checkpoint = Path(f"runs/{run}/checkpoints/best.ckpt")
        if str(checkpoint) in code and f"train --config {run}" not in code:  # what the demo trains, here untrained
            checkpoint.parent.mkdir(parents=True)
            ids = [0, *(c["id"] for c in SHAPES_COCO)] if task == "det" else []
            write_checkpoint(checkpoint, task, names, ids, settings=[f"data.synth={small}"])
    if "data/my_coco" in code:  # your own COCO folder: real photos in COCO's layout, COCO's category ids
        write_coco_folder(Path("data/my_coco"))
    if "photo.jpg" in code:
        Image.fromarray(data.astronaut()).save("photo.jpg")
    if "photos" in code:  # the page's photos: scikit-image's, one in a folder of its own
        Path("photos/cats").mkdir(parents=True)
        Image.fromarray(data.astronaut()).save("photos/astronaut.jpg")
        Image.fromarray(data.chelsea()).save("photos/cats/chelsea.jpg")


@pytest.mark.parametrize("code", python_examples(), ids=_label)
def test_python_example_runs(code, tmp_path, monkeypatch):
    prepare(code, tmp_path, monkeypatch)
    exec(compile(code, "<docs example>", "exec"), {"__name__": "__main__"})


@pytest.fixture(autouse=True)
def one_torch_thread():
    """The examples' networks are small: on a shared machine a second thread only spins (a training example measured
    79 s on two threads, 17 s on one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def commands(code: str) -> list[tuple[str, list[str]]]:
    """A console block's `$ ` commands (`\\` continuations joined), each with the output lines shown after it."""
    found: list[tuple[str, list[str]]] = []
    for line in code.replace("\\\n", " ").splitlines():
        if line.startswith("$ "):
            found.append((" ".join(line[2:].split()), []))
        elif found:
            found[-1][1].append(line.rstrip())
    return found


def missing_lines(shown: list[str], printed: list[str]) -> list[str]:
    """The shown lines not found, in order, among the printed ones (`...` in a shown line matches anything)."""
    at, missing = 0, []
    for line in shown:
        if line.strip() in ("", "..."):
            continue
        pattern = re.compile(".*".join(re.escape(part) for part in line.split("...")) + r"\s*$")
        found = next((i for i in range(at, len(printed)) if pattern.match(printed[i].rstrip())), None)
        if found is None:
            missing.append(line)
        else:
            at = found + 1
    return missing


def console_blocks() -> list[tuple[Path, str]]:
    return blocks("console")


@pytest.mark.parametrize(
    "page,code", console_blocks(), ids=[f"{p.relative_to(ROOT)}:{commands(c)[0][0][:50]}" for p, c in console_blocks()]
)
def test_console_example_runs_and_prints_what_the_page_shows(page, code, tmp_path, monkeypatch, capsys):
    prepare(code, tmp_path, monkeypatch)
    for command, shown in commands(code):
        line, _, pipe = command.partition(" | ")
        words = shlex.split(line)
        assert words[0] == "mbtasks", f"{page}: only `mbtasks` commands run in a console block: {command}"
        capsys.readouterr()
        try:
            status = main(words[1:])
        except SystemExit as exit:  # argparse's own exits (--help, --version, its one-line mistakes)
            status = exit.code
        out, err = capsys.readouterr()
        printed = (out + err).splitlines()
        if pipe:
            assert re.fullmatch(r"head -\d+", pipe), f"{page}: only `| head -N` pipes: {command}"
            printed = out.splitlines()[: int(pipe.split("-")[1])]
        wanted = 2 if any(s.startswith("mbtasks: error:") for s in shown) else 0
        assert status == wanted, f"{page}: `{command}` exited {status}\n{out[-3000:]}\n{err[-3000:]}"
        assert missing_lines(shown, printed) == [], f"{page}: `{command}` printed:\n" + "\n".join(printed[-60:])


def test_bash_blocks_are_the_set_up_commands_ci_runs():
    ci = (ROOT / ".ci/run").read_text()
    for page, code in blocks("bash"):
        for line in code.strip().splitlines():
            assert line in ci, f"{page}: a bash block that .ci/run does not run: {line}"


def test_recorded_runs_are_those_listed():
    for page, code in blocks("text"):
        for command, _ in commands(code):
            assert any(command.startswith(c) for c in RECORDED), f"{page}: `{command}` is neither run nor listed"


def test_the_matching_of_shown_lines():
    printed = ["wrote x.onnx: 4.01 MB, det", "noise", "largest difference: 1e-07"]
    assert missing_lines(["wrote x.onnx: ... MB, det", "...", "largest difference: ..."], printed) == []
    assert missing_lines(["largest difference: ...", "wrote x.onnx: ..."], printed) == ["wrote x.onnx: ..."]


def test_the_readme_is_a_front_page_with_the_set_up_commands():
    text = README.read_text()
    assert len(text.splitlines()) <= 150
    setup = [line for line in (ROOT / ".ci/run").read_text().splitlines() if line.startswith("python3 -m venv")]
    assert len(setup) == 2
    for line in setup:
        assert f"```bash\n{line}\n```" in text
