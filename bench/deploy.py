"""Deployment speed, one run: torchvision's eager models against mbtasks' PyTorch and ONNX Runtime paths.

    python bench/deploy.py [--runs 20] [--threads 2] [--calibration 8]

Two models, each torchvision's with random weights and mbtasks' holding the same weights (the same setup as
bench/detection.py and bench/segmentation.py), timed at batch 1 in rotating order (the median of each):

- ssdlite320_mobilenet_v3_large end to end, a 480x640 image in and detections out: torchvision's model (resize,
  network, post-processing); mbtasks eager; mbtasks' inference copy (batch norm folded, channels-last, what evaluate
  and predict run); `mbtasks export` fp32 and int8 in ONNX Runtime (one graph: resize, network, selection, NMS). The weights are made to act like trained ones (trained_like): with plain random weights all
  291,000 class scores pass the 0.001 threshold and post-processing would be all that is timed.
- lraspp_mobilenet_v3_large at 1024x2048, a normalised batch in and logits at full resolution out.

int8 models are calibrated on embedded images (shapes for the detector, street scenes for the segmenter); what int8
costs in accuracy is measured on the trained demo models with `mbtasks evaluate --runtime onnxruntime` (README).
Targets (the deployment issue): ONNX Runtime fp32 at most 0.35x torchvision, mbtasks' PyTorch inference copy at most
0.75x, int8 at most 0.8x of fp32.
"""
import argparse
import collections
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torchvision

from mbtasks.config import load_config
from mbtasks.export import export_onnx
from mbtasks.io.onnx_runtime import load_onnx_model
from mbtasks.layers.fusion import for_inference
from mbtasks.tasks.detection import DetectionDataModule
from mbtasks.tasks.segmentation import SegmentationDataModule

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1] / "tests"))
from detection import NAME as DETECTOR, models as detection_models  # noqa: E402  (the same setup as those benches)
from helpers import randomised  # noqa: E402  (the tests' batch-norm randomiser)
from segmentation import models as segmentation_models  # noqa: E402

# As training leaves a detector: the background logit high, the others spread out. With random weights every one of
# the 291,000 class scores would pass the 0.001 threshold; with these about 3,000 do and 300 detections are kept.
CLASS_LOGIT_SCALE, BACKGROUND_BIAS = 10.0, 10.0
TARGETS = {"mbtasks inference": 0.75, "onnxruntime fp32": 0.35}
INT8_TARGET = 0.8


def trained_like(detector: torch.nn.Module) -> None:
    """Random batch-norm statistics (features that differ from anchor to anchor), class logits spread out and the
    background's raised, as a trained detector's are."""
    randomised(detector)
    num_classes = detector.head.classification_head.num_columns
    for block in detector.head.classification_head.module_list:
        block[-1].weight.data *= CLASS_LOGIT_SCALE
        block[-1].bias.data[0::num_classes] += BACKGROUND_BIAS


def rotating_medians(calls: dict, runs: int, pause: float = 0.05) -> dict[str, float]:
    """Median ms of each call, taken in rotating order after one warm-up round. A pause before each call lets the
    previous call's worker threads (ONNX Runtime's and OpenMP's spin after a run) go idle: without it the call after
    ONNX Runtime ran up to 2x slower."""
    names, times = list(calls), {name: [] for name in calls}
    with torch.inference_mode():
        for index in range(runs + 1):
            shift = index % len(names)
            for name in names[shift:] + names[:shift]:
                time.sleep(pause)
                start = time.perf_counter()
                calls[name]()
                if index:
                    times[name].append(1000 * (time.perf_counter() - start))
    return {name: statistics.median(values) for name, values in times.items()}


def exported(model: torch.nn.Module, task: str, data, tmp: str, calibration: int) -> tuple:
    """ONNX Runtime wrappers of `mbtasks export`'s fp32 and int8 files of `model`."""
    record = {"task": task, "model": "bench", "options": {}, "class_names": [], "category_ids": [],
              "config": data.config.to_dict()}
    wrappers = []
    for int8 in (False, True):
        path = os.path.join(tmp, f"{task}_{'int8' if int8 else 'fp32'}.onnx")
        report = export_onnx(for_inference(model), record, data, path, int8=int8, calibration=calibration, samples=1)
        print(f"  exported {Path(path).name}: {report.size_bytes / 1e6:.1f} MB, {report.summary()}")
        wrappers.append(load_onnx_model(path)[0])
    return tuple(wrappers)


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


def detection(tmp: str, runs: int, calibration: int) -> tuple[dict, tuple[int, int]]:
    reference, ours = detection_models(tmp, prepare=trained_like)
    reference.eval()
    ours.eval()
    config = load_config(None, [f"data.synth_dir={tmp}/shapes", "data.synth={seed: 0, num_train: 16, num_val: 2}",
                                "model.options={size: [320, 320]}", "data.num_workers=0"], task="det")
    fp32, int8 = exported(ours, "det", DetectionDataModule(config), tmp, calibration)
    image = [torch.rand(3, 480, 640, generator=torch.Generator().manual_seed(1))]
    fast = for_inference(ours)
    where_the_time_goes(tmp, "det", {"images": image[0][None].numpy()})
    with torch.inference_mode():
        detections = len(reference(image)[0]["scores"])
        resized = torch.nn.functional.interpolate(image[0][None], size=(320, 320), mode="bilinear")
        scores = reference.head(list(reference.backbone(resized).values()))
        candidates = int((scores["cls_logits"].softmax(-1)[..., 1:] > reference.score_thresh).sum())
    return rotating_medians({"torchvision": lambda: reference(image), "mbtasks eager": lambda: ours(image),
                             "mbtasks inference": lambda: fast(image), "onnxruntime fp32": lambda: fp32(image),
                             "onnxruntime int8": lambda: int8(image)}, runs), (candidates, detections)


def segmentation(tmp: str, runs: int, calibration: int) -> dict:
    reference, ours = segmentation_models(tmp)
    config = load_config(None, [f"data.synth_dir={tmp}/streets", "data.num_workers=0",
                                f"data.synth={{seed: 0, num_train: {calibration}, num_val: 1, size: [1024, 2048]}}"],
                         task="seg")
    fp32, int8 = exported(ours, "seg", SegmentationDataModule(config), tmp, calibration)
    x = torch.randn(1, 3, 1024, 2048, generator=torch.Generator().manual_seed(1))
    where_the_time_goes(tmp, "seg", {"images": x.numpy()})
    fast = for_inference(ours)
    return rotating_medians({"torchvision": lambda: reference(x)["out"], "mbtasks eager": lambda: ours(x),
                             "mbtasks inference": lambda: fast(x), "onnxruntime fp32": lambda: fp32(x),
                             "onnxruntime int8": lambda: int8(x)}, runs)


def report(title: str, ms: dict[str, float]) -> None:
    print(f"\n{title}")
    print(f"{'':<20}{'ms':>9}{'x torchvision':>15}{'target':>9}")
    for name, value in ms.items():
        ratio = value / ms["torchvision"]
        target = TARGETS.get(name)
        verdict = "" if target is None else f"{'<=' if ratio <= target else '> '} {target:.2f}"
        print(f"{name:<20}{value:>9.1f}{ratio:>14.3f}x{verdict:>10}")
    int8 = ms["onnxruntime int8"] / ms["onnxruntime fp32"]
    verdict = ("" if int8 <= INT8_TARGET else "; not met on this CPU: see the kernels above" if int8 < 1
               else "; int8 is not faster than fp32 on this CPU: see the kernels above")
    print(f"int8 / fp32 in ONNX Runtime: {int8:.3f}x ({'<=' if int8 <= INT8_TARGET else '>'} {INT8_TARGET} target{verdict})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="timed runs per model")
    parser.add_argument("--threads", type=int, default=2, help="torch and ONNX Runtime intra-op threads")
    parser.add_argument("--calibration", type=int, default=8, help="int8 calibration images")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)  # ONNX Runtime sessions take torch's thread count
    import onnxruntime

    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, onnxruntime {onnxruntime.__version__}, "
          f"{os.cpu_count()} CPUs, {args.threads} threads, load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        print(f"\n{DETECTOR}: exporting")
        ms, (candidates, detections) = detection(tmp, args.runs, args.calibration)
        report(f"{DETECTOR}, 480x640 image -> detections ({candidates} scores above the threshold, {detections} "
               f"kept), batch 1, median of {args.runs}", ms)
        print("\nlraspp_mobilenet_v3_large: exporting")
        report(f"lraspp_mobilenet_v3_large, 1024x2048 -> logits, batch 1, median of {args.runs}",
               segmentation(tmp, args.runs, args.calibration))
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
