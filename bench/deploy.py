"""Deployment speed, one run: torchvision's eager models against mbtasks' PyTorch, ONNX Runtime and ExecuTorch paths.

    python bench/deploy.py [--runs 20] [--threads 2] [--calibration 8] [--seg-size 1024x2048]

Two models, each torchvision's with random weights and mbtasks' holding the same weights (the same setup as
bench/detection.py and bench/segmentation.py), timed at batch 1 in rotating order: each repeat runs every path once,
so that the machine's noise falls on all alike; medians, minima and maxima over the repeats, and ratios taken within
each repeat (int8 / fp32 and each path / torchvision) reported the same way:

- ssdlite320_mobilenet_v3_large end to end, a 480x640 image in and detections out: torchvision's model (resize,
  network, post-processing); mbtasks eager; mbtasks' inference copy (batch norm folded, channels-last, what evaluate
  and predict run); `mbtasks export` fp32 and int8 in ONNX Runtime (one graph: resize, network, selection, NMS); and
  `mbtasks export --format executorch` fp32 and int8 in ExecuTorch with XNNPACK (one program: resize, network,
  selection, NMS in fixed-size operators). The weights are made to act like trained ones (trained_like): with plain
  random weights all 291,000 class scores pass the 0.001 threshold and post-processing would be all that is timed.
- lraspp_mobilenet_v3_large at 1024x2048 (--seg-size), a normalised batch in and logits at full resolution out.

ExecuTorch runs on the same threads as torch and ONNX Runtime (--threads), in the same process and the same rotation;
without the mobile extra (`pip install 'mbtasks[mobile]'`) its rows are left out, with a line saying so.

int8 models are calibrated on embedded images (shapes for the detector, street scenes for the segmenter) and quantised
the way `mbtasks export --int8` chose by timing its candidates here (its line is printed); what int8 costs in accuracy
is held by tests/test_export.py on the demo recipes. Targets, on medians: ONNX Runtime fp32 at
most 0.30x torchvision for SSDLite end to end (0.35x for LR-ASPP), mbtasks' PyTorch inference copy at most 0.75x;
int8 at most 0.70x of ONNX Runtime fp32 for SSDLite, 0.65x for LR-ASPP at 1024x2048; ExecuTorch int8 at most 0.45x of
ONNX Runtime fp32 and 0.65x of ExecuTorch fp32 for SSDLite end to end, 0.60x of ONNX Runtime fp32 for LR-ASPP at
1024x2048.

Toy size, as tests/test_bench.py runs it: --runs 7 --threads 1 --calibration 1 --seg-size 128x256 --no-executorch
(lowering the four ExecuTorch programs, the same export that tests/test_executorch.py runs on every task, would take
five minutes of the suite's fifteen).
"""

import collections
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

import torch
import torchvision

from mbtasks.config import load_config
from mbtasks.errors import MbtasksError
from mbtasks.export import export_onnx
from mbtasks.export.int8 import rotating_times as int8_rotating_times
from mbtasks.io.records import Record
from mbtasks.layers.fusion import for_inference
from mbtasks.tasks.detection import DetectionDataModule
from mbtasks.tasks.runtime import load_executorch_model, load_onnx_model
from mbtasks.tasks.segmentation import SegmentationDataModule

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1] / "tests"))
from arguments import BenchParser, at_least, height_by_width  # bench/arguments.py, beside this script
from detection import NAME as DETECTOR  # noqa: E402  (the same setup as those benches)
from detection import models as detection_models
from helpers import randomised  # noqa: E402  (the tests' batch-norm randomiser)
from segmentation import models as segmentation_models  # noqa: E402

# As training leaves a detector: the background logit high, the others spread out. With random weights every one of
# the 291,000 class scores would pass the 0.001 threshold; with these about 3,000 do and 300 detections are kept.
CLASS_LOGIT_SCALE, BACKGROUND_BIAS = 10.0, 10.0
TARGETS = {
    "det": {"mbtasks inference": 0.75, "onnxruntime fp32": 0.30},
    "seg": {"mbtasks inference": 0.75, "onnxruntime fp32": 0.35},
}
INT8_TARGETS = {"det": 0.70, "seg": 0.65}
# ExecuTorch int8 against (the path named): the targets on medians.
EXECUTORCH_TARGETS = {
    "det": {"onnxruntime fp32": 0.45, "executorch fp32": 0.65},
    "seg": {"onnxruntime fp32": 0.60},
}


def trained_like(detector: torch.nn.Module) -> None:
    """Random batch-norm statistics (features that differ from anchor to anchor), class logits spread out and the
    background's raised, as a trained detector's are."""
    randomised(detector)
    num_classes = detector.head.classification_head.num_columns
    for block in detector.head.classification_head.module_list:
        block[-1].weight.data *= CLASS_LOGIT_SCALE
        block[-1].bias.data[0::num_classes] += BACKGROUND_BIAS


def rotating_times(calls: dict, runs: int) -> dict[str, list[float]]:
    """ms of each call in each of `runs` repeats in rotating order: the export's own timing (mbtasks.export.int8),
    with a longer pause for torch's OpenMP threads, under inference mode."""
    with torch.inference_mode():
        return int8_rotating_times(calls, runs, pause=0.05)


def executorch_export(wanted: bool):
    """mbtasks.export.executorch's export, or None without the mobile extra or with --no-executorch (the ExecuTorch
    rows are left out)."""
    if not wanted:
        print("  ExecuTorch rows left out: --no-executorch")
        return None
    try:
        from mbtasks.export.executorch import executorch_modules, export_executorch

        executorch_modules()
    except (ImportError, MbtasksError) as error:
        print(f"  ExecuTorch rows left out: {error}")
        return None
    return export_executorch


def exported(
    model: torch.nn.Module, task: str, data, tmp: str, calibration: int, runtime: str = "onnxruntime", wanted=True
):
    """ONNX Runtime (or ExecuTorch) wrappers of `mbtasks export`'s (`--format executorch`'s) fp32 and int8 files of
    `model`."""
    record = Record("bench", "bench", task=task, config=data.config.to_dict())
    export, load, suffix = export_onnx, load_onnx_model, "onnx"
    if runtime == "executorch":
        export, load, suffix = executorch_export(wanted), load_executorch_model, "pte"
        if export is None:
            return None
    wrappers = []
    for int8 in (False, True):
        path = os.path.join(tmp, f"{task}_{'int8' if int8 else 'fp32'}.{suffix}")
        try:
            report = export(for_inference(model), record, data, path, int8=int8, calibration=calibration, samples=1)
        except MbtasksError as error:
            # The bench times the file, which export keeps. Its random "trained-like" detector has thousands of
            # near-tied scores: on some CPUs the last bit flips which of two NMS keeps, and the fp32 1e-4 check
            # (held on trained models by tests/test_export.py) refuses it.
            if "fails the check against pytorch" not in str(error):
                raise
            summary = str(error).split("): ", 1)[1].removesuffix("; the file is kept for inspection")
            print(
                f"  exported {Path(path).name}: {os.path.getsize(path) / 1e6:.1f} MB, {summary}, above export's "
                "1e-4 check on these random weights (timed all the same)"
            )
        else:
            print(f"  exported {Path(path).name}: {report.size_bytes / 1e6:.1f} MB, {report.summary()}")
            if int8 and runtime == "onnxruntime":
                print(f"  {report.choice_summary()}")
            if runtime == "executorch":
                print(f"  {report.delegation()}")
        wrappers.append(load(path)[0])
    return tuple(wrappers)


def executorch_calls(programs: tuple | None, *inputs) -> dict:
    """The ExecuTorch rows of a rotation (none without the mobile extra)."""
    if programs is None:
        return {}
    fp32, int8 = programs
    return {"executorch fp32": lambda: fp32(*inputs), "executorch int8": lambda: int8(*inputs)}


def kernel_times(path: str, feed: dict, runs: int = 10) -> collections.Counter:
    """ms per run spent in each ONNX operator type, from ONNX Runtime's own profiler (2 threads)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads, options.inter_op_num_threads = torch.get_num_threads(), 1
    options.enable_profiling, options.profile_file_prefix = True, os.path.join(os.path.dirname(path), "profile")
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    for _ in range(runs):
        session.run(None, feed)
    with open(session.end_profiling()) as f:
        events = json.load(f)
    times = collections.Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            times[event["args"]["op_name"]] += event["dur"] / 1000 / runs
    return times


def where_the_time_goes(tmp: str, task: str, feed: dict) -> None:
    """The five costliest operator types of the fp32 and the int8 graph: why int8 gains what it gains."""
    for kind in ("fp32", "int8"):
        times = kernel_times(os.path.join(tmp, f"{task}_{kind}.onnx"), feed)
        top = ", ".join(f"{name} {ms:.1f}" for name, ms in times.most_common(5))
        print(f"  ONNX Runtime {kind} kernels, ms per run: {sum(times.values()):.1f} in all; {top}")


def detection(
    tmp: str, runs: int, calibration: int, executorch: bool
) -> tuple[dict[str, list[float]], tuple[int, int]]:
    reference, ours = detection_models(tmp, prepare=trained_like)
    reference.eval()
    ours.eval()
    config = load_config(
        None,
        [
            f"data.synth_dir={tmp}/shapes",
            "data.synth={seed: 0, num_train: 16, num_val: 2}",
            "model.options={size: [320, 320]}",
            "data.num_workers=0",
        ],
        task="det",
    )
    fp32, int8 = exported(ours, "det", DetectionDataModule(config), tmp, calibration)
    programs = exported(ours, "det", DetectionDataModule(config), tmp, calibration, "executorch", executorch)
    image = [torch.rand(3, 480, 640, generator=torch.Generator().manual_seed(1))]
    fast = for_inference(ours)
    where_the_time_goes(tmp, "det", {"images": image[0][None].numpy()})
    with torch.inference_mode():
        detections = len(reference(image)[0]["scores"])
        resized = torch.nn.functional.interpolate(image[0][None], size=(320, 320), mode="bilinear")
        scores = reference.head(list(reference.backbone(resized).values()))
        candidates = int((scores["cls_logits"].softmax(-1)[..., 1:] > reference.score_thresh).sum())
    return rotating_times(
        {
            "torchvision": lambda: reference(image),
            "mbtasks eager": lambda: ours(image),
            "mbtasks inference": lambda: fast(image),
            "onnxruntime fp32": lambda: fp32(image),
            "onnxruntime int8": lambda: int8(image),
            **executorch_calls(programs, image),
        },
        runs,
    ), (candidates, detections)


def segmentation(
    tmp: str, runs: int, calibration: int, size: tuple[int, int], executorch: bool
) -> dict[str, list[float]]:
    reference, ours = segmentation_models(tmp)
    config = load_config(
        None,
        [
            f"data.synth_dir={tmp}/streets",
            "data.num_workers=0",
            f"data.synth={{seed: 0, num_train: {calibration}, num_val: 1, size: [{size[0]}, {size[1]}]}}",
        ],
        task="seg",
    )
    fp32, int8 = exported(ours, "seg", SegmentationDataModule(config), tmp, calibration)
    programs = exported(ours, "seg", SegmentationDataModule(config), tmp, calibration, "executorch", executorch)
    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(1))
    where_the_time_goes(tmp, "seg", {"images": x.numpy()})
    fast = for_inference(ours)
    return rotating_times(
        {
            "torchvision": lambda: reference(x)["out"],
            "mbtasks eager": lambda: ours(x)["out"],
            "mbtasks inference": lambda: fast(x)["out"],
            "onnxruntime fp32": lambda: fp32(x)["out"],
            "onnxruntime int8": lambda: int8(x)["out"],
            **executorch_calls(programs, x),
        },
        runs,
    )


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.3f}x ({min(values):.3f}-{max(values):.3f})"


def report(title: str, task: str, times: dict[str, list[float]]) -> None:
    """ms (median, min, max) of each path; its ratio to torchvision's and int8's to fp32's, taken within each repeat."""
    print(f"\n{title}")
    print(f"{'':<20}{'median ms':>10}{'min':>9}{'max':>9}   x torchvision (min-max)   target")
    for name, values in times.items():
        ratios = [value / reference for value, reference in zip(values, times["torchvision"])]
        target = TARGETS[task].get(name)
        verdict = "" if target is None else f"{'<=' if statistics.median(ratios) <= target else '> '} {target:.2f}"
        print(
            f"{name:<20}{statistics.median(values):>10.1f}{min(values):>9.1f}{max(values):>9.1f}   "
            f"{spread(ratios):<26}{verdict}"
        )
    int8 = [a / b for a, b in zip(times["onnxruntime int8"], times["onnxruntime fp32"])]
    target, median = INT8_TARGETS[task], statistics.median(int8)
    print(
        f"int8 / fp32 in ONNX Runtime, within each repeat: {spread(int8)}, median {'<=' if median <= target else '>'} "
        f"{target} target{'' if median <= target else ': not met here'}"
    )
    if "executorch int8" not in times:
        return
    for name, target in EXECUTORCH_TARGETS[task].items():
        ratios = [a / b for a, b in zip(times["executorch int8"], times[name])]
        median = statistics.median(ratios)
        print(
            f"executorch int8 / {name}, within each repeat: {spread(ratios)}, median "
            f"{'<=' if median <= target else '>'} {target} target{'' if median <= target else ': not met here'}"
        )


def main() -> None:
    parser = BenchParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=at_least(7), default=20, help="timed repeats (at least 7)")
    parser.add_argument("--threads", type=at_least(1), default=2, help="torch and ONNX Runtime intra-op threads")
    parser.add_argument("--calibration", type=at_least(1), default=8, help="int8 calibration images")
    parser.add_argument(
        "--seg-size",
        type=height_by_width,
        default=(1024, 2048),
        help="LR-ASPP's input, HEIGHTxWIDTH (default 1024x2048)",
    )
    parser.add_argument(
        "--no-executorch",
        dest="executorch",
        action="store_false",
        help="leave out the ExecuTorch rows (lowering their four programs takes minutes)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)  # ONNX Runtime sessions take torch's thread count
    import onnxruntime

    try:
        from importlib.metadata import version

        executorch = f", executorch {version('executorch')}"
    except ImportError:
        executorch = ""
    print(
        f"torch {torch.__version__}, torchvision {torchvision.__version__}, onnxruntime {onnxruntime.__version__}, "
        f"{os.cpu_count()} CPUs, {args.threads} threads, load average {os.getloadavg()[0]:.1f}{executorch}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        print(f"\n{DETECTOR}: exporting")
        ms, (candidates, detections) = detection(tmp, args.runs, args.calibration, args.executorch)
        report(
            f"{DETECTOR}, 480x640 image -> detections ({candidates} scores above the threshold, {detections} "
            f"kept), batch 1, {args.runs} repeats",
            "det",
            ms,
        )
        print("\nlraspp_mobilenet_v3_large: exporting")
        height, width = args.seg_size
        report(
            f"lraspp_mobilenet_v3_large, {height}x{width} -> logits, batch 1, {args.runs} repeats",
            "seg",
            segmentation(tmp, args.runs, args.calibration, args.seg_size, args.executorch),
        )
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
