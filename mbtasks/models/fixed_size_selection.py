"""torchvision SSD's selection (scores above a threshold, NMS per class, the best N) in operators a mobile runtime
runs: fixed sizes up to the final gather, no loops, no NonMaxSuppression operator. ExecuTorch has no NMS kernel and
no while loop, so greedy NMS is written as a matrix over a fixed number of candidates (`greedy_keep`).

Exact, not approximate, within its candidates: greedy NMS keeps box i when no kept box before it (in score order)
overlaps it by more than the threshold. With S[j, i] = 1 where j precedes i and suppresses it, the kept set K is the
fixed point of K = valid and not (K S) (Cluster-NMS, Zheng et al., "Enhancing Geometric Factors in Model Learning and
Inference for Object Detection and Instance Segmentation", 2021): iterated from K = valid, it reaches greedy NMS's set
once it stops changing, after as many steps as the longest chain of boxes each suppressing the next (`iterations`;
the detector test measures the chains of a trained detector). The overlaps are computed as torchvision's CPU kernel
computes them, on boxes moved apart by class as batched_nms moves them, so the same float comparisons decide.
"""

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torchvision.models.detection.ssd import SSD

from .detection_graph import DECODER, SELECT, DetectionGraph

# Chains of boxes each suppressing the next, iterated through; the demo detector's longest is measured by its test.
ITERATIONS = 12
SMALLEST_NORMAL = float(np.finfo(np.float32).tiny)


def float_below(threshold: float) -> float:
    """The largest float32 at most `threshold`: a float32 x is above `threshold` (a double, as torchvision's kernel
    compares) exactly when it is above this float32."""
    value = np.float32(threshold)
    return float(np.nextafter(value, np.float32(-np.inf)) if float(value) > threshold else value)


def greedy_keep(
    boxes: torch.Tensor, classes: torch.Tensor, valid: torch.Tensor, iou_threshold: float, iterations: int = ITERATIONS
) -> torch.Tensor:
    """Greedy NMS per class over candidates in greedy order (best first): boxes (M, 4) xyxy, classes (M,) and valid
    (M,) as floats (0 or 1) -> kept (M,) as 0 or 1. Invalid candidates neither are kept nor suppress."""
    threshold = float_below(iou_threshold)
    # batched_nms's coordinate trick: each class moved past the largest coordinate of the valid boxes.
    largest = torch.where(valid > 0, boxes.amax(1), torch.zeros_like(valid)).amax()
    moved = boxes + (classes * (largest + 1.0)).reshape(-1, 1)
    # Columns (M, 1) and rows (1, M) by slicing and reshaping, operators XNNPACK takes (not unsqueeze or unbind).
    x1, y1, x2, y2 = (moved[:, i : i + 1] for i in range(4))
    x1_, y1_, x2_, y2_ = (c.reshape(1, -1) for c in (x1, y1, x2, y2))
    areas = (x2 - x1) * (y2 - y1)
    # As torchvision's CPU kernel, in float32: overlap = inter / ((area_i + area_j) - inter); 0 / 0 would be NaN
    # (never above the threshold): the union is held off zero, which gives 0 instead.
    width = (torch.minimum(x2, x2_) - torch.maximum(x1, x1_)).clamp(min=0.0)
    height = (torch.minimum(y2, y2_) - torch.maximum(y1, y1_)).clamp(min=0.0)
    inter = width * height
    overlap = inter / ((areas + areas.reshape(1, -1)) - inter).clamp(min=SMALLEST_NORMAL)
    position = torch.arange(boxes.shape[0], dtype=boxes.dtype, device=boxes.device)
    before = (position.reshape(1, -1) - position.reshape(-1, 1)).clamp(0.0, 1.0)  # [j, i] = 1 where j precedes i
    suppresses = torch.ceil((overlap - threshold).clamp(0.0, 1.0)) * before  # 0 or 1, in float operations
    # Kept as a (1, 1, M) row and multiplied by bmm throughout: no reshapes between the steps, which would each cut
    # the loop out of XNNPACK's delegate.
    valid_row, suppresses = valid.reshape(1, 1, -1), suppresses.reshape(1, *suppresses.shape)
    kept = valid_row
    for _ in range(iterations):
        kept = valid_row * torch.relu(1.0 - torch.bmm(kept, suppresses))
    return kept.reshape(-1)


def greedy_nms(
    boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float, iterations: int = ITERATIONS
) -> torch.Tensor:
    """torchvision.ops.batched_nms's answer (indices of the kept boxes, best first) by `greedy_keep`: equal scores are
    taken in index order."""
    if scores.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=scores.device)
    order = torch.sort(scores, descending=True, stable=True).indices
    valid = torch.ones_like(scores)
    kept = greedy_keep(boxes[order], idxs[order].to(boxes.dtype), valid, iou_threshold, iterations)
    return order[kept > 0]


class FixedSizeSelection(nn.Module):
    """torchvision SSD's postprocess_detections for one image with fixed-size candidates: the best
    `candidates` (at most topk_candidates) over all classes, greedy NMS per class
    among them, at most detections_per_img kept.

    Equal to torchvision's when fewer candidates pass score_thresh, or when detections_per_img of the best ones
    survive NMS: NMS decides in score order, so the best candidates' fate never depends on worse ones. With
    candidates <= topk_candidates, torchvision's per-class top-k never drops one of them (each is within its class's
    top `candidates`)."""

    def __init__(
        self,
        score_thresh: float,
        nms_thresh: float,
        detections_per_img: int,
        topk_candidates: int,
        candidates: int | None = None,
        iterations: int = ITERATIONS,
    ):
        super().__init__()
        self.score_thresh, self.nms_thresh, self.iterations = float_below(score_thresh), nms_thresh, iterations
        self.detections_per_img = detections_per_img
        self.candidates = min(candidates or topk_candidates, topk_candidates)

    def forward(self, boxes: torch.Tensor, probabilities: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """boxes (1, anchors, 4), probabilities (1, anchors, classes), class 0 the background -> boxes, scores,
        labels of the kept detections, best first."""
        anchors, classes = probabilities.shape[1], probabilities.shape[2] - 1
        scores = probabilities.reshape(anchors, classes + 1)[:, 1:]
        count = min(self.candidates, anchors * classes)
        # The best `count` (anchor, class) scores lie among the `count` anchors of best scores: an anchor outside
        # them has `count` better anchors, each with a better score.
        best_anchors = scores.amax(1).topk(min(count, anchors)).indices
        values, flat = scores.index_select(0, best_anchors).reshape(-1).topk(count)
        labels = torch.remainder(flat, classes)
        anchor = best_anchors.index_select(0, torch.div(flat, classes, rounding_mode="floor"))
        candidate_boxes = boxes.reshape(anchors, 4).index_select(0, anchor)
        valid = (values > self.score_thresh).to(values.dtype)
        kept = greedy_keep(candidate_boxes, labels.to(values.dtype), valid, self.nms_thresh, self.iterations)
        if count > self.detections_per_img:
            kept = kept * (kept.cumsum(0) <= self.detections_per_img).to(kept.dtype)
        chosen = kept.nonzero().reshape(-1)  # a (n, 1) column: its reshape, not [:, 0], runs in ExecuTorch
        return (
            candidate_boxes.index_select(0, chosen),
            values.index_select(0, chosen),
            # Labels from 1 by a table, not `+ 1`: XNNPACK's int8 quantiser makes every constant of an addition a
            # float tensor, and the labels would come out as floats.
            torch.arange(1, classes + 1, device=flat.device).index_select(0, labels.index_select(0, chosen)),
        )


class FixedSizeDetectionGraph(DetectionGraph):
    """DetectionGraph with `FixedSizeSelection`, exportable by torch.export: one [0, 1] image (1, 3, H, W) -> its
    detections (boxes xyxy in its pixels, scores, labels)."""

    def __init__(self, ssd: SSD, candidates: int | None = None, iterations: int = ITERATIONS):
        super().__init__(ssd)
        selection = FixedSizeSelection(**self.postprocess, candidates=candidates, iterations=iterations)
        setattr(self, SELECT, selection)
        self.selection = {"candidates": selection.candidates, "nms_iterations": iterations}

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = F.interpolate(image, size=self.size, mode="bilinear", align_corners=False)
        features = list(self.backbone((x - self.mean) / self.std).values())
        outputs = self.head(features)
        boxes, scores, labels = getattr(self, SELECT)(
            *getattr(self, DECODER)(outputs["bbox_regression"], outputs["cls_logits"])
        )
        # The image's height and width as tensors, by counting: sizes in the graph would be symbolic integers.
        height, width = torch.ones_like(image[0, 0, :, 0]).sum(), torch.ones_like(image[0, 0, 0, :]).sum()
        scale_x, scale_y = width / self.size[1], height / self.size[0]
        return boxes * torch.stack([scale_x, scale_y, scale_x, scale_y]), scores, labels
