"""int8 quantisation of an exported fp32 graph, chosen by measurement: a few ways to quantise (CANDIDATES: QDQ or
QOperator, per-channel or per-tensor int8 weights, depthwise convolutions int8 or fp32, expansions padded to 16
channels or not) are each timed in ONNX Runtime on this machine and the fastest is kept (`choose`). All of them:
uint8 activations calibrated (MinMax) on training images pre-processed as at evaluation; in QDQ, h-swish rewritten
to int8 arithmetic (int8_hard_sigmoid); a detector's image quantised itself, its normalisation taken into the
quantisation (normalisation_in_the_quantiser); all of a detector but its network, and the segmentation logits' final
upsampling, stay float.
"""

import logging
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..io.onnx_runtime import create_session
from ..models.detection_graph import DECODER


@dataclass(frozen=True)
class Candidate:
    """One way to quantise: ONNX Runtime's graph format, int8 weight scales per output channel or per tensor,
    depthwise convolutions in int8 or left fp32, and the graph of the network as it is or with its expansions padded
    with zero channels to a multiple of 16 (channel_padding.py: the same function)."""

    name: str
    quant_format: str = "QDQ"  # "QDQ" or "QOperator"
    per_channel: bool = True
    float_depthwise: bool = False
    padded: bool = False

    @property
    def disabled_optimizers(self) -> list[str]:
        """ONNX Runtime's graph passes the file must run without. Its WeightBiasQuantization quantises a float-weight
        Conv that reads a DequantizeLinear and feeds a QuantizeLinear: a depthwise conv left fp32 stays fp32 only
        without it (an ONNX Runtime without that pass ignores the name)."""
        return ["WeightBiasQuantization"] if self.float_depthwise else []


# Few on purpose, and few timed runs: each is quantised and timed at every int8 export.
CANDIDATES = (
    Candidate("QDQ per-channel"),
    Candidate("QDQ per-tensor", per_channel=False),
    Candidate("QOperator per-channel", quant_format="QOperator"),
    Candidate("QDQ per-channel, depthwise fp32", float_depthwise=True),
    Candidate("QDQ per-channel, padded to 16", padded=True),
    Candidate("QDQ per-tensor, padded to 16", per_channel=False, padded=True),
)
CHOICE_RUNS = 5


def calibration_reader(images: Dataset, count: int):
    """`count` of `images` (each one CHW graph input), spread over the whole set (which may be sorted by class), read
    one at a time."""
    from onnxruntime.quantization import CalibrationDataReader

    indices = np.unique(np.linspace(0, len(images) - 1, min(count, len(images))).round().astype(int)).tolist()

    class Reader(CalibrationDataReader):
        # __len__ and set_range: ONNX Runtime's strided MinMax calibrates a slice at a time (CalibStridedMinMax).
        def __init__(self):
            self.items = iter(indices)

        def __len__(self) -> int:
            return len(indices)

        def set_range(self, start_index: int, end_index: int) -> None:
            self.items = iter(indices[start_index:end_index])

        def get_next(self) -> dict | None:
            index = next(self.items, None)
            return None if index is None else {"images": images[index][None].float().contiguous().numpy()}

    return Reader()


def prepare(fp32: Path) -> Path:
    """`fp32` through ONNX Runtime's pre-processing for quantisation (shape inference, basic fusions), beside it."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = fp32.with_name(f"{fp32.stem}_prepared.onnx")
    quant_pre_process(str(fp32), str(prepared))
    return prepared


def saturating_int8_kernels() -> bool:
    """Whether ONNX Runtime's uint8 x int8 kernels can saturate on this CPU: x86 without VNNI sums pairs of
    products in int16 (vpmaddubsw), which overflows with full 8-bit weights (a tiny MobileNet block was off by 30% of
    its range on an AVX2 AMD EPYC, 2% with 7-bit weights); ONNX Runtime's documented remedy is `reduce_range` (7-bit
    weights). ARM and x86 with VNNI (AVX512-VNNI, AVX-VNNI) multiply in int32 and keep 8-bit weights."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i686", "x86"):
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return True  # unknown x86: 7-bit weights are right everywhere, 8-bit only with VNNI
    return "vnni" not in flags


def quantize(prepared: Path, out: Path, reader, candidate: Candidate = CANDIDATES[0]) -> None:
    """`prepared` (see `prepare`) quantised to int8 as `candidate` says into `out`, its activation ranges set on what
    `reader` gives."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    graph = onnx.load(str(prepared)).graph
    outputs = {output.name for output in graph.output}
    # Left float: everything of a detector but its network (resizing, normalisation, box decoding, softmax, selection,
    # scaling), and the upsampling of segmentation logits to the input size (in uint8 it needs a dequantisation at
    # full resolution: LR-ASPP v3-Large at 1024x2048 took 0.69x of fp32's time instead of 0.86x).
    detector = any(node.name.startswith(f"/{DECODER}/") for node in graph.node)
    excluded = [
        node.name
        for node in graph.node
        if (detector and node.name.startswith("/") and not node.name.startswith(("/backbone/", "/head/")))
        or (node.op_type == "Resize" and node.output[0] in outputs)
        or (candidate.float_depthwise and _depthwise(node))
    ]
    # uint8 activations, int8 weights: ONNX Runtime's fast path on x86 (int8 activations measured slower,
    # bench/deploy.py); MinMax ranges cost the demos little (tests/test_export.py holds the loss).
    # ONNX Runtime warns of each integer tensor it leaves alone (shapes, in QOperator): expected, not news.
    logging.disable(logging.WARNING)
    try:
        quantize_static(
            str(prepared),
            str(out),
            reader,
            quant_format=getattr(QuantFormat, candidate.quant_format),
            per_channel=candidate.per_channel,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=excluded,
            reduce_range=saturating_int8_kernels(),
            # One image at a time, ranges merged: a whole set's intermediate tensors would not fit in
            # memory.
            extra_options={"CalibStridedMinMax": 1},
        )
    finally:
        logging.disable(logging.NOTSET)
    model = onnx.load(str(out))
    int8_hard_sigmoid(model)
    shapes_of_quantised_tensors(model)
    normalisation_in_the_quantiser(model)
    onnx.save(model, str(out))


def choose(
    fp32: Path,
    prepared: Path,
    example: torch.Tensor,
    scratch: Path,
    candidates=CANDIDATES,
    runs: int = CHOICE_RUNS,
    padded: Path | None = None,
) -> tuple[Candidate, dict[str, float]]:
    """The fastest of `candidates` in ONNX Runtime here, and the median ms of each tried and of `fp32` over `runs`
    rounds on `example` (one CHW graph input). `prepared` is `fp32` prepared, `padded` the padded network's graph
    prepared (None: nothing to pad, and the padded candidates are not tried). Each is calibrated on `example` alone
    (the ranges do not change the speed) and the graphs are timed in rotating order, so that the machine's noise
    falls on all alike, with ONNX Runtime's threads not spinning. Candidate i is written to
    `scratch`/candidate{i}.onnx."""
    candidates = [c for c in candidates if padded is not None or not c.padded]
    # Timed without spinning threads: with several sessions in turn, spinning made runs slower at random on a small
    # machine, and the choice with them; without, repeated trials ranked the candidates alike.
    sessions = {"fp32": create_session(fp32, spinning=False)}
    for index, candidate in enumerate(candidates):
        path = scratch / f"candidate{index}.onnx"
        quantize(padded if candidate.padded else prepared, path, calibration_reader([example], 1), candidate)
        sessions[candidate.name] = create_session(
            path, disabled_optimizers=candidate.disabled_optimizers, spinning=False
        )
    feed = {"images": example[None].float().contiguous().numpy()}
    runs_ms = rotating_times({name: (lambda s=session: s.run(None, feed)) for name, session in sessions.items()}, runs)
    times = {name: statistics.median(values) for name, values in runs_ms.items()}
    best = min(candidates, key=lambda candidate: times[candidate.name])
    return best, times


def rotating_times(calls: dict, runs: int, pause: float = 0.02) -> dict[str, list[float]]:
    """ms of each call in each of `runs` rounds, the calls taken in rotating order after one warm-up round. The pause
    before each call lets the previous call's worker threads (ONNX Runtime's and OpenMP's spin after a run) go idle:
    without it the call after ONNX Runtime ran slower (bench/deploy.py)."""
    names, times = list(calls), {name: [] for name in calls}
    for index in range(runs + 1):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            time.sleep(pause)
            start = time.perf_counter()
            calls[name]()
            if index:
                times[name].append(1000 * (time.perf_counter() - start))
    return times


def _depthwise(node) -> bool:
    from onnx import helper

    group = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "group"), 1)
    return node.op_type == "Conv" and group > 1


def _consumers(graph) -> dict[str, list]:
    """Tensor name -> the nodes that read it."""
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    return consumers


def _uint8_quantise(node, initializers: dict) -> bool:
    """A QuantizeLinear to uint8 whose zero point is an initializer (one the graph passes may change)."""
    import onnx

    zero_point = initializers.get(node.input[2]) if len(node.input) > 2 else None
    return (
        node.op_type == "QuantizeLinear" and zero_point is not None and zero_point.data_type == onnx.TensorProto.UINT8
    )


def _drop_unused_initializers(graph) -> None:
    """Remove the initializers no node reads any more (ONNX Runtime warns of each)."""
    used = {name for node in graph.node for name in node.input}
    for init in [init for init in graph.initializer if init.name not in used]:
        graph.initializer.remove(init)


def shapes_of_quantised_tensors(model) -> int:
    """Let each Shape node that reads a dequantised tensor read the quantised one (the same shape); returns how many.
    Otherwise ONNX Runtime keeps a float copy of the tensor for the Shape alone: a segmenter's Resize to the input
    size asks the input's shape, and that copy of a full-size image costs a copy per run (bench/deploy.py)."""
    producers = {output: node for node in model.graph.node for output in node.output}
    rewired = 0
    for node in model.graph.node:
        producer = producers.get(node.input[0]) if node.op_type == "Shape" else None
        if producer is not None and producer.op_type == "DequantizeLinear":
            node.input[0] = producer.input[0]
            rewired += 1
    return rewired


def normalisation_in_the_quantiser(model) -> int:
    """Quantise a [0, 1] image itself where the graph normalised it, (x - m) / s with one m and one s for every
    channel, and then quantised the result (a detector's resized image); returns how many such inputs.

    The normalised tensor's quantisation is set to scale 1 / (k s) and zero point k m, for the largest k <= 255
    that makes k m a whole number (254 for SSDLite's m = s = 0.5): its uint8 values are then round(k x) (the
    zero point absorbs m, the scale s), what QuantizeLinear gives with scale 1 / k on the image itself, and the
    Sub and Div go. The image's 0..1 range keeps its 8 bits (k/255 of a step). The Sub and Div took 0.3 ms of
    SSDLite's 11 in int8 (2 threads)."""
    from onnx import numpy_helper

    graph = model.graph
    producers = {output: node for node in graph.node for output in node.output}
    consumers, initializers = _consumers(graph), {init.name: init for init in graph.initializer}

    def uniform(name: str) -> float | None:
        values = numpy_helper.to_array(initializers[name]).ravel() if name in initializers else np.empty(0)
        return float(values[0]) if values.size and np.all(values == values[0]) else None

    rewritten = 0
    for quantise in [node for node in graph.node if _uint8_quantise(node, initializers)]:
        divide = producers.get(quantise.input[0])
        subtract = producers.get(divide.input[0]) if divide is not None and divide.op_type == "Div" else None
        if subtract is None or subtract.op_type != "Sub":
            continue
        mean, std = uniform(subtract.input[1]), uniform(divide.input[1])
        if (
            mean is None
            or not std
            or not 0 <= mean <= 1
            or len(consumers[divide.output[0]]) != 1
            or len(consumers[subtract.output[0]]) != 1
        ):
            continue
        k = next((k for k in range(255, 127, -1) if abs(k * mean - round(k * mean)) < 1e-6), None)
        if k is None:
            continue
        scale, zero_point, name = (initializers[quantise.input[1]], initializers[quantise.input[2]], quantise.input[0])
        scale.CopyFrom(numpy_helper.from_array(np.array(1 / (k * std), np.float32), scale.name))
        zero_point.CopyFrom(numpy_helper.from_array(np.array(round(k * mean), np.uint8), zero_point.name))
        graph.initializer.extend(
            [
                numpy_helper.from_array(np.array(1 / k, np.float32), f"{name}_image_scale"),
                numpy_helper.from_array(np.array(0, np.uint8), f"{name}_image_zero_point"),
            ]
        )
        quantise.input[:] = [subtract.input[0], f"{name}_image_scale", f"{name}_image_zero_point"]
        graph.node.remove(divide)
        graph.node.remove(subtract)
        rewritten += 1
    _drop_unused_initializers(graph)
    return rewritten


def int8_hard_sigmoid(model) -> int:
    """Rewrite each quantised HardSigmoid (h-swish and squeeze-excitation gates) as int8 arithmetic; returns how many.

    ONNX Runtime has no int8 HardSigmoid: it runs it in float between a dequantise and a quantise, which made int8
    MobileNetV3 no faster than fp32. hardsigmoid(x) = clip(x + 3, 0, 6) / 6: an Add quantised to [0, 6] (uint8 scale
    6/255, so saturation is the clip) read back with scale 1/255 (the / 6) is the same function at the same 1/255
    resolution, and ONNX Runtime fuses it into QLinearAdd.
    """
    from onnx import helper, numpy_helper

    graph = model.graph
    consumers, initializers = _consumers(graph), {init.name: init for init in graph.initializer}

    rewritten = 0
    for node in graph.node:
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if (
            node.op_type != "HardSigmoid"
            or abs(attributes.get("alpha", 0.2) - 1 / 6) > 1e-6
            or abs(attributes.get("beta", 0.5) - 0.5) > 1e-6
        ):
            continue
        quantise = consumers.get(node.output[0], [])
        if len(quantise) != 1 or not _uint8_quantise(quantise[0], initializers):
            continue
        dequantise = consumers.get(quantise[0].output[0], [])
        if not dequantise or any(d.op_type != "DequantizeLinear" for d in dequantise):
            continue
        node.op_type = "Add"
        del node.attribute[:]
        node.input.append("hardsigmoid_three")
        quantise[0].input[1:] = ["hardsigmoid_six_scale", "hardsigmoid_zero"]
        for d in dequantise:
            d.input[1:] = ["hardsigmoid_one_scale", "hardsigmoid_zero"]
        rewritten += 1
    if rewritten:
        constants = {
            "hardsigmoid_three_q": np.array(255, np.uint8),
            "hardsigmoid_three_scale": np.float32(3 / 255),
            "hardsigmoid_six_scale": np.float32(6 / 255),
            "hardsigmoid_one_scale": np.float32(1 / 255),
            "hardsigmoid_zero": np.array(0, np.uint8),
        }
        graph.initializer.extend(numpy_helper.from_array(np.asarray(v), k) for k, v in constants.items())
        graph.node.insert(
            0,
            helper.make_node(
                "DequantizeLinear",
                ["hardsigmoid_three_q", "hardsigmoid_three_scale", "hardsigmoid_zero"],
                ["hardsigmoid_three"],
            ),
        )
        _drop_unused_initializers(graph)
    return rewritten
