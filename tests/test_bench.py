"""Every bench at toy size (issue 27): each script under bench/ runs with its own arguments set small (a few runs, a
few images, one repeat), exits 0 and prints the lines the README quotes: their labels, the numbers being the
machine's. The labels are checked against the README's quoted runs too, and the harness against a bench broken on
purpose. The toy runs run each script as `__main__` in the test's process, as `python bench/SCRIPT` runs it (runpy;
the processes a bench starts itself are real ones): a process of its own would spend 5 s on imports the test's
process has done; the harness test runs its bench as a process, through `python`."""

import os
import re
import runpy
import subprocess
import sys
import traceback
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
HELPERS = {"arguments.py"}  # imported by the benches, not run
# a figure as Python prints it; inf where export's check finds another count of detections (graph_differences),
# which random-weights int8 detectors in deploy.py's toy run may give
NUMBER = r"(?:-?\d+(?:\.\d+)?(?:e[-+]?\d+)?|inf)"
# Two evaluators' 12 figures: the same, or within 1e-12 (faster-coco-eval against pycocotools)
AGREE = r"figures (?:identical|max abs difference \d\.\de-(?:1[2-9]|[2-9]\d))"
SPREAD = "# (#-#)"  # median (min-max)

# bench/deploy.py's ExecuTorch rows: the README quotes them from a full run; its toy run gives --no-executorch
# (lowering the four programs would take five minutes of the suite; tests/test_executorch.py runs the same export on
# every task).
EXECUTORCH_ROWS = [
    *(
        f"  exported {name}.pte: # MB, largest |executorch - pytorch| difference: "
        for name in ("det_fp32", "det_int8", "seg_fp32", "seg_int8")
    ),
    "  XNNPACK: # delegated subgraph",
    *(f"{name} # # # #x (#-#)" for name in ("executorch fp32", "executorch int8")),
    "executorch int8 / onnxruntime fp32, within each repeat: #x (#-#), median ",
    "executorch int8 / executorch fp32, within each repeat: #x (#-#), median ",
]
# Lines the README quotes from a full run that the toy run does not print.
FULL_RUN_ONLY = {"deploy.py": EXECUTORCH_ROWS}

# script: (its toy-size arguments, the labels of the lines the README quotes from it). In a label "#" is a number,
# "*" a word without commas (a version), "{agree}" AGREE, and a run of spaces any run of spaces; a line starting
# with the label matches it.
TOY = {
    "backbones.py": (
        ["--runs", "1", "--resolution", "32", "--threads", "1"],
        [
            "batch #, #x#, # threads, # runs in alternation: median ms (min-max), ratio of medians to torchvision",
            "model torchvision ms mbtasks ms ratio inference ms ratio",
            *(
                f"{name} {SPREAD} {SPREAD} # {SPREAD} #"
                for name in ("mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small")
            ),
        ],
    ),
    "coco_eval.py": (
        ["--images", "8", "--detections", "5", "--repeats", "1"],
        [
            "# images (# without annotations), # ground-truth boxes (# crowd regions, compressed RLE), # categories, "
            "# detections",
            "seconds over # repeats in turn, min / median / max; speed-up = pycocotools' time / this one's, per repeat",
            "  pycocotools (loadRes + COCOeval) # s / # s / # s speed-up #x / #x / #x figures identical",
            "  coco_metrics, faster-coco-eval # s / # s / # s speed-up #x / #x / #x {agree}",
            "  AP # AP50 # AP75 # APs # APm # APl # AR1 # AR10 # AR100 # ARs # ARm # ARl #",
            "peak memory above the data (peak RSS, one run each in a fresh process):",
            "  pycocotools (loadRes + COCOeval) # MB (that run # s)",
            "  coco_metrics, faster-coco-eval # MB (that run # s)",
        ],
    ),
    "detection.py": (
        [
            "--runs",
            "2",
            "--train-steps",
            "1",
            "--train-batch",
            "2",
            "--threads",
            "1",
            "--eval-images",
            "8",
            "--eval-detections",
            "5",
            "--eval-repeats",
            "1",
        ],
        [
            "ssdlite320_mobilenet_v3_large, # threads",
            "inference, batch 1, # runs in alternation, ms min / median / max (ratio of medians):",
            *(f"  {name} # ms / # ms / # ms (#)" for name in ("torchvision", "mbtasks", "mbtasks inference")),
            "training, batch #, # steps, images/s min / median / max: torchvision # / # / #, mbtasks # / # / # "
            "(ratio of medians #); peak memory torchvision # MB, mbtasks # MB (ratio #)",
            "scoring one validation epoch, # images x # detections (# results), seconds over # repeats in turn, "
            "min / median / max:",
            "  pycocotools alone (file, loadRes, COCOeval) # s / # s / # s speed-up #x / #x / #x figures identical",
            "  mbtasks validation epoch scoring # s / # s / # s speed-up #x / #x / #x {agree}",
            "  peak memory above the data (peak RSS, one run each in a fresh process):",
            "  pycocotools alone (file, loadRes, COCOeval) # MB (that run # s",
            "  mbtasks validation epoch scoring # MB (that run # s",
        ],
    ),
    "segmentation.py": (
        ["--runs", "1", "--images", "1", "--repeats", "1", "--threads", "1", "--sizes", "64x128"],
        [
            "torch *, torchvision *, # CPUs, # torch threads, load average #",
            "latency, lraspp_mobilenet_v3_large, batch 1, CPU, # runs in rotating order: median ms (min-max), ratio of "
            "medians to torchvision",
            "  torchvision mbtasks eager mbtasks inference",
            f"#x# wall-clock {SPREAD} #x {SPREAD} #x {SPREAD} #x",
            f"#x# CPU {SPREAD} #x {SPREAD} #x {SPREAD} #x",
            "evaluation, # images #x#, the same prediction PNGs, # runs in turn: median s (min-max)",
            f"cityscapesscripts {SPREAD}",
            f"mbtasks {SPREAD}",
            "cityscapesscripts / mbtasks per run: # (#-#)x; same four means: True",
        ],
    ),
    "segmentation_eval.py": (
        ["--images", "1", "--repeats", "1"],
        [  # the README quotes none of its lines
            "# images #x#, # instances per image, written in # s; # CPUs, # threads",
            "seconds over # runs: min / median / max, and the median per image",
            *(
                f"{name} # / # / # s # ms/image"
                for name in (
                    "decode, PIL, 1 thread",
                    "decode, cv2, 1 thread",
                    "mbtasks, 1 thread",
                    "cityscapesscripts, 1 thread",
                )
            ),
            "same four means as cityscapesscripts: True",
        ],
    ),
    "train_step.py": (
        [
            "--repeats",
            "1",
            "--steps",
            "1",
            "--det-batch",
            "2",
            "--seg-batch",
            "1",
            "--crop",
            "64x128",
            "--threads",
            "1",
        ],
        [
            "torch *, torchvision *, device *, # threads, precision *, channels-last *, compile *",
            "training step images/s over # repeats of # steps: median (min-max); peak memory (peak RSS) in a fresh "
            "process each",
            "model batch torchvision mbtasks mbtasks/torchvision peak MB torchvision mbtasks",
            *(
                f"{name} #x#x# {SPREAD} {SPREAD} #x (#-#) # #"
                for name in ("ssdlite320_mobilenet_v3_large", "lraspp_mobilenet_v3_large")
            ),
        ],
    ),
    "data.py": (
        ["--repeats", "1", "--workers", "1", "--det-images", "24", "--seg-images", "4"],
        [
            "torch *, torchvision *, opencv *, # CPUs, load average #",
            "det: COCO JPEG 640x480 -> SSDLite input 320x320 + boxes, batch #",
            "seg: Cityscapes PNG 2048x1024 + labelIds -> 512x1024 crop + train ids, batch #",
            "images/s, one thread best min / median / max over # repeats",
            *(f"{name} # # / # / #" for name in ("decode", "torchvision", "mbtasks")),
            *(
                f"{name} #x per repeat # / # / #"
                for name in ("mbtasks / torchvision", "mbtasks / decode", "torchvision / decode")
            ),
            "mbtasks training loader, # images after the first batch:",
            "  # workers # images/s",
            "cores to feed one training step every # s, at the median one-thread rates above",
            *(
                f"{task}: # x # = # images per step -> # images/s: decode #, torchvision #, mbtasks #"
                for task in ("det", "seg")
            ),
            "load average at the end #",
        ],
    ),
    "deploy.py": (
        ["--runs", "7", "--threads", "1", "--calibration", "1", "--seg-size", "128x256", "--no-executorch"],
        [
            "torch *, torchvision *, onnxruntime *, # CPUs, # threads, load average #",
            "ssdlite320_mobilenet_v3_large: exporting",
            "lraspp_mobilenet_v3_large: exporting",
            *(
                f"  exported {name}.onnx: # MB, largest |onnxruntime - pytorch| difference: #"
                for name in ("det_fp32", "det_int8", "seg_fp32", "seg_int8")
            ),
            "  int8 chosen by measurement: ",
            "  ONNX Runtime fp32 kernels, ms per run: # in all; ",
            "  ONNX Runtime int8 kernels, ms per run: # in all; ",
            "ssdlite320_mobilenet_v3_large, 480x640 image -> detections "
            "(# scores above the threshold, # kept), batch 1, "
            "# repeats",
            "lraspp_mobilenet_v3_large, #x# -> logits, batch 1, # repeats",
            "  median ms min max x torchvision (min-max) target",
            *(
                f"{name} # # # #x (#-#)"
                for name in (
                    "torchvision",
                    "mbtasks eager",
                    "mbtasks inference",
                    "onnxruntime fp32",
                    "onnxruntime int8",
                )
            ),
            "int8 / fp32 in ONNX Runtime, within each repeat: #x (#-#), median ",
            *EXECUTORCH_ROWS,
            "load average at the end #",
        ],
    ),
}


def pattern(label: str) -> re.Pattern:
    """A label as a regular expression matching the start of a line."""
    parts = re.split(r"(#|\*|\{agree\}| +)", label)
    return re.compile(
        "^"
        + "".join(
            NUMBER
            if part == "#"
            else r"[^\s,]+"
            if part == "*"
            else AGREE
            if part == "{agree}"
            else " +"
            if part and not part.strip()
            else re.escape(part)
            for part in parts
        )
    )


def missing_labels(output: str, labels: list[str]) -> list[str]:
    """The labels no line of `output` starts with."""
    lines = output.splitlines()
    return [label for label in labels if not any(pattern(label).match(line) for line in lines)]


def run_here(script: str, args: list[str], capfd, monkeypatch) -> subprocess.CompletedProcess:
    """bench/<script> ARGS run as `__main__` in this process, as `python bench/SCRIPT ARGS` would run it: its exit
    status (an uncaught exception's 1 and traceback, as Python's), and what it and the processes it starts printed.
    torch's thread count, which the benches set, is restored after."""
    import torch

    monkeypatch.syspath_prepend(str(BENCH))  # where `python bench/SCRIPT` finds the benches' own modules
    monkeypatch.setattr(sys, "argv", [str(BENCH / script), *args])
    monkeypatch.chdir(ROOT)
    threads, error, code = torch.get_num_threads(), "", 0
    capfd.readouterr()
    try:
        runpy.run_path(str(BENCH / script), run_name="__main__")
    except SystemExit as exit:
        code = exit.code if isinstance(exit.code, int) else (exit.code is not None)
    except Exception:
        code, error = 1, traceback.format_exc()
    finally:
        torch.set_num_threads(threads)
    sys.stdout.flush()
    printed = capfd.readouterr()
    return subprocess.CompletedProcess([script, *args], code, printed.out, printed.err + error)


def run_process(script: str, args: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    """`python bench/<script> ARGS` in a process of its own, `env` added to this process's environment."""
    environment = {**os.environ, **(env or {})}
    # The benches import this checkout's mbtasks (and whatever env puts before it).
    environment["PYTHONPATH"] = os.pathsep.join(
        p for p in ((env or {}).get("PYTHONPATH", ""), str(ROOT), os.environ.get("PYTHONPATH", "")) if p
    )
    return subprocess.run(
        [sys.executable, str(BENCH / script), *args],
        capture_output=True,
        text=True,
        timeout=1200,
        env=environment,
        cwd=ROOT,
    )


def bench_problems(result: subprocess.CompletedProcess, labels: list[str]) -> list[str]:
    """What is wrong with a run of a bench (empty: it exited 0 and printed every label)."""
    script, *args = result.args[1:] if result.args[0] == sys.executable else result.args  # the bench, its arguments
    script = Path(script).name
    if result.returncode != 0:
        return [f"{script} {' '.join(args)} exited {result.returncode}", result.stdout[-2000:], result.stderr[-4000:]]
    missing = [f"{script} printed no line starting {label!r}" for label in missing_labels(result.stdout, labels)]
    return [*missing, result.stdout[-6000:]] if missing else []


def readme_runs() -> dict[str, str]:
    """The docs' quoted runs of each bench (docs/measurements.md, README.md): script -> the output lines of every
    `$ python bench/<script>` block."""
    runs: dict[str, str] = {}
    text = "".join((ROOT / page).read_text() for page in ("docs/measurements.md", "README.md"))
    for script, output in re.findall(r"```(?:text)?\n\$ python bench/(\S+)[^\n]*\n(.*?)```", text, re.S):
        runs[script] = runs.get(script, "") + output
    return runs


def test_every_bench_script_has_a_toy_run():
    assert set(TOY) == {p.name for p in BENCH.glob("*.py")} - HELPERS


@pytest.mark.parametrize("script", sorted(set(readme_runs())))
def test_the_labels_are_those_of_the_readmes_quoted_run(script):
    """Every line the README quotes from a bench's run is one the toy run is checked for, and every label checked is
    one the README quotes (or, for a bench the README quotes nothing of, none)."""
    quoted = readme_runs()[script]
    labels = TOY[script][1]
    assert missing_labels(quoted, labels) == []
    unchecked = [
        line for line in quoted.splitlines() if line.strip() and not any(pattern(label).match(line) for label in labels)
    ]
    assert unchecked == []


@pytest.mark.parametrize("script", sorted(TOY))
def test_bench_at_toy_size_runs_and_prints_what_the_readme_quotes(script, capfd, monkeypatch):
    args, labels = TOY[script]
    printed = [label for label in labels if label not in FULL_RUN_ONLY.get(script, [])]
    assert bench_problems(run_here(script, args, capfd, monkeypatch), printed) == []


def test_a_bench_whose_timed_function_raises_is_caught(tmp_path):
    """The harness itself: coco_eval.py with mbtasks' coco_metrics (what it times) made to raise fails the check."""
    (tmp_path / "sitecustomize.py").write_text(
        "import mbtasks.evaluation.coco as coco\n\n"
        "def broken(*args, **kwargs):\n"
        "    raise RuntimeError('coco_metrics broken on purpose')\n\n"
        "coco.coco_metrics = broken\n"
    )
    args, labels = TOY["coco_eval.py"]
    problems = bench_problems(run_process("coco_eval.py", args, env={"PYTHONPATH": str(tmp_path)}), labels)
    assert problems and problems[0].startswith("coco_eval.py --images 8 ") and "exited 1" in problems[0]
    assert "RuntimeError: coco_metrics broken on purpose" in problems[2]


def test_a_missing_or_wrong_line_is_caught():
    """The label check: the README's coco_eval.py run passes it; without its coco_metrics line, or with figures far
    from pycocotools', it does not."""
    quoted, labels = readme_runs()["coco_eval.py"], TOY["coco_eval.py"][1]
    assert missing_labels(quoted, labels) == []
    without = "\n".join(line for line in quoted.splitlines() if not ("faster-coco-eval" in line and "speed-up" in line))
    assert missing_labels(without, labels) == [
        "  coco_metrics, faster-coco-eval # s / # s / # s speed-up #x / #x / #x {agree}"
    ]
    wrong = quoted.replace("9.22x   figures identical", "9.22x   figures max abs difference 3.0e-02")
    assert wrong != quoted and len(missing_labels(wrong, labels)) == 1
