"""The detector as exported: an SSD end to end in one graph (a Faster R-CNN: torchvision's own, traced whole).

One [0, 1] image `images` (1, 3, H, W) of any size -> `boxes` (xyxy in its pixels), `scores`, `labels`: torchvision's
resize to the detector's size and normalisation, the network, softmax and box decoding, torchvision SSD's selection
(scores above the threshold, top-k per class, NMS per class by ONNX's NonMaxSuppression, the best N), the boxes scaled
back. In one graph ONNX Runtime runs it all on one thread pool: with the selection in Python beside it, the two
runtimes' threads contended and the end-to-end time doubled.
"""

import torch
from torch import nn
from torch.nn import functional as F
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.ssd import SSD
from torchvision.ops import batched_nms

# The detection graph's box decoding and softmax, and its selection: their nodes are named /decode/..., /select/...
# (int8 leaves every node of a detector outside /backbone/ and /head/ float).
DECODER, SELECT = "decode", "select"


class BoxDecoder(nn.Module):
    """SSD's box decoding (torchvision's BoxCoder, weights 10, 10, 5, 5), clipping and softmax, over a batch."""

    def __init__(self, anchors: torch.Tensor, weights: tuple[float, ...], clip: float, size: tuple[int, int]):
        super().__init__()
        sizes = anchors[:, 2:] - anchors[:, :2]
        self.register_buffer("centres", (anchors[:, :2] + 0.5 * sizes)[None])
        self.register_buffer("sizes", sizes[None])
        self.register_buffer("weights", torch.tensor(weights, dtype=torch.float32))
        self.register_buffer("upper", torch.tensor([size[1], size[0]] * 2, dtype=torch.float32))
        self.clip = clip

    def forward(self, deltas: torch.Tensor, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        deltas = deltas / self.weights
        centres = deltas[..., :2] * self.sizes + self.centres
        halves = 0.5 * (torch.exp(deltas[..., 2:].clamp(max=self.clip)) * self.sizes)
        boxes = torch.cat([centres - halves, centres + halves], dim=-1)
        boxes = torch.minimum(boxes.clamp(min=0), self.upper)
        return boxes, torch.softmax(logits, dim=-1)


class ClassNMS(torch.autograd.Function):
    """NMS within each class: ONNX's NonMaxSuppression in the graph, torchvision's batched_nms when run in PyTorch.
    boxes (1, anchors, 4), scores (1, classes, anchors) -> (kept, 3) rows of (0, class, anchor)."""

    @staticmethod
    def forward(ctx, boxes: torch.Tensor, scores: torch.Tensor, iou: float, score_thresh: float) -> torch.Tensor:
        classes, anchors = (scores[0] > score_thresh).nonzero(as_tuple=True)
        keep = batched_nms(boxes[0][anchors], scores[0][classes, anchors], classes, iou)
        return torch.stack([torch.zeros_like(keep), classes[keep], anchors[keep]], 1)

    @staticmethod
    def symbolic(g, boxes, scores, iou: float, score_thresh: float):
        def constant(value, dtype):
            return g.op("Constant", value_t=torch.tensor([value], dtype=dtype))

        return g.op(
            "NonMaxSuppression",
            boxes,
            scores,
            constant(1 << 30, torch.int64),
            constant(iou, torch.float32),
            constant(score_thresh, torch.float32),
        )


class SelectDetections(nn.Module):
    """torchvision SSD's postprocess_detections for one image, vectorised over classes: scores above score_thresh, at
    most topk_candidates per class, NMS per class, the best detections_per_img."""

    def __init__(self, score_thresh: float, nms_thresh: float, detections_per_img: int, topk_candidates: int):
        super().__init__()
        self.score_thresh, self.nms_thresh = score_thresh, nms_thresh
        self.detections_per_img, self.topk_candidates = detections_per_img, topk_candidates

    def forward(self, boxes: torch.Tensor, probabilities: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """boxes (1, anchors, 4), probabilities (1, anchors, classes), class 0 the background -> boxes, scores,
        labels."""
        scores = probabilities[0, :, 1:].t()  # (classes - 1, anchors)
        k = min(self.topk_candidates, scores.shape[1])
        # torchvision runs NMS on each class's top k candidates. Greedy NMS over all of them keeps the same boxes
        # among those k (a box is only suppressed by a better one, which is among them too), so the top-k rule can
        # wait until after NMS, on the few survivors (masking the whole score matrix measured slower). Only a class
        # with more than k candidates has a k-th score to meet (TopK over every class measured slower). Counted in
        # float (exact up to 2^24 anchors): ONNX Runtime's int64 ReduceSum measured slower. bench/deploy.py
        crowded = ((scores > self.score_thresh).to(scores.dtype).sum(1) > k).nonzero()[:, 0]
        kth = torch.zeros_like(scores[:, 0]).index_put((crowded,), scores[crowded].topk(k, dim=1).values[:, -1])
        kept = ClassNMS.apply(boxes, scores[None], self.nms_thresh, self.score_thresh)
        classes, anchors = kept[:, 1], kept[:, 2]
        survivor_scores = scores[classes, anchors]
        among_top_k = (survivor_scores >= kth[classes]).nonzero()[:, 0]
        classes, anchors = classes[among_top_k], anchors[among_top_k]
        best, order = survivor_scores[among_top_k].sort(descending=True)
        order = order[: self.detections_per_img]
        return boxes[0][anchors[order]], best[: self.detections_per_img], classes[order] + 1


class DetectionGraph(nn.Module):
    """An SSD end to end, as exported: one [0, 1] image (1, 3, H, W) of any size -> its detections (boxes xyxy in its
    pixels, scores, labels), as torchvision's SSD returns them."""

    def __init__(self, ssd: SSD):
        super().__init__()
        width, height = ssd.transform.fixed_size
        self.size = (height, width)
        self.register_buffer("mean", torch.tensor(ssd.transform.image_mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(ssd.transform.image_std).view(1, -1, 1, 1))
        self.backbone, self.head = ssd.backbone, ssd.head
        coder = ssd.box_coder
        setattr(self, DECODER, BoxDecoder(_anchors(ssd, self.size), coder.weights, coder.bbox_xform_clip, self.size))
        self.postprocess = {
            "score_thresh": ssd.score_thresh,
            "nms_thresh": ssd.nms_thresh,
            "detections_per_img": ssd.detections_per_img,
            "topk_candidates": ssd.topk_candidates,
        }
        setattr(self, SELECT, SelectDetections(**self.postprocess))

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        # As torchvision's GeneralizedRCNNTransform: bilinear resize to the fixed size, normalise; boxes scaled back.
        x = F.interpolate(image, size=self.size, mode="bilinear", align_corners=False)
        features = list(self.backbone((x - self.mean) / self.std).values())
        outputs = self.head(features)
        boxes, scores, labels = getattr(self, SELECT)(
            *getattr(self, DECODER)(outputs["bbox_regression"], outputs["cls_logits"])
        )
        image_size = torch._shape_as_tensor(image)[2:].to(boxes.dtype)  # a Shape node: any input size
        scale = (image_size / torch.tensor(self.size, dtype=boxes.dtype)).flip(0).repeat(2)
        return boxes * scale, scores, labels


def _anchors(ssd: SSD, size: tuple[int, int]) -> torch.Tensor:
    """The default boxes of an image of `size`, in its pixels (they depend on the size alone)."""
    images = torch.zeros(1, 3, *size)
    with torch.no_grad():
        features = list(ssd.backbone(images).values())
        return ssd.anchor_generator(ImageList(images, [size]), features)[0]


class RCNNGraph(nn.Module):
    """A torchvision Faster R-CNN end to end, as exported (ONNX opset 11 or later, which torchvision's export needs):
    one [0, 1] image (1, 3, H, W) of any size -> its detections. The detector is traced whole: its resize and
    normalisation, RPN (NMS by ONNX's NonMaxSuppression), RoIAlign, box head and selection, the boxes scaled back."""

    def __init__(self, detector: GeneralizedRCNN):
        super().__init__()
        self.detector = detector
        heads = detector.roi_heads
        self.postprocess = {
            "score_thresh": heads.score_thresh,
            "nms_thresh": heads.nms_thresh,
            "detections_per_img": heads.detections_per_img,
        }
        self.train(detector.training)  # the exporter restores the mode it finds, the detector's included

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        # GeneralizedRCNN.forward in eval mode, with one zero-size proposal added: ONNX Runtime cannot reshape the
        # box head's empty output when the RPN keeps none (torchvision's (0, -1) reshape), and a zero-size proposal
        # decodes to a zero-size box, which the selection removes (remove_small_boxes) before anything else sees it.
        # The box head treats each proposal alone, so the others' detections are unchanged.
        detector = self.detector
        images, _ = detector.transform([image[0]])
        features = detector.backbone(images.tensors)
        proposals, _ = detector.rpn(images, features)
        proposals = [torch.cat([boxes, boxes.new_zeros(1, 4)]) for boxes in proposals]
        found, _ = detector.roi_heads(features, proposals, images.image_sizes)
        (found,) = detector.transform.postprocess(found, images.image_sizes, [image.shape[-2:]])
        return found["boxes"], found["scores"], found["labels"]


def detection_graph(detector: nn.Module) -> nn.Module:
    """The exported graph of a detector: DetectionGraph for an SSD, RCNNGraph for a Faster R-CNN."""
    return RCNNGraph(detector) if isinstance(detector, GeneralizedRCNN) else DetectionGraph(detector)
