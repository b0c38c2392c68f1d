"""One image's detections against its ground truth: matches at an IoU threshold, and the image's F1 (how a report
finds the worst images)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ImageMatches:
    """Detections found (matched to a box of their class), false (matched to none), and boxes missed."""

    found: int
    false: int
    missed: int

    @property
    def f1(self) -> float:
        """2 found / (2 found + false + missed); 1 for an image with neither boxes nor detections."""
        errors = self.false + self.missed
        return 1.0 if self.found + errors == 0 else 2 * self.found / (2 * self.found + errors)


def box_iou(a: np.ndarray, b: np.ndarray, crowd: bool = False) -> np.ndarray:
    """IoU of every box of `a` (N x 4, xyxy) with every box of `b` (M x 4); `crowd`: over the area of `a`'s box
    alone, as COCOeval measures a detection against a crowd region."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(bottom_right - top_left, 0, None).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).clip(0).prod(-1)[:, None]
    area_b = (b[:, 2:] - b[:, :2]).clip(0).prod(-1)[None, :]
    union = area_a if crowd else area_a + area_b - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def match_image(
    boxes: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    truth_boxes: np.ndarray,
    truth_labels: np.ndarray,
    truth_crowd: np.ndarray | None = None,
    iou: float = 0.5,
) -> ImageMatches:
    """COCO's greedy matching at one IoU threshold: per class, detections highest score first each take the unmatched
    box of their class they overlap most (IoU >= `iou`); one left unmatched that covers a crowd region of its class
    (IoU over its own area >= `iou`) is neither found nor false, as COCOeval ignores it. Crowd regions are never
    missed."""
    labels, truth_labels = np.asarray(labels).reshape(-1), np.asarray(truth_labels).reshape(-1)
    crowd = np.zeros(len(truth_labels), bool) if truth_crowd is None else np.asarray(truth_crowd, bool).reshape(-1)
    boxes, truth_boxes = np.asarray(boxes).reshape(-1, 4), np.asarray(truth_boxes).reshape(-1, 4)
    found = false = 0
    for label in np.union1d(labels, truth_labels[~crowd]):
        mine = np.flatnonzero(labels == label)
        mine = mine[np.argsort(-np.asarray(scores).reshape(-1)[mine], kind="stable")]
        targets = np.flatnonzero((truth_labels == label) & ~crowd)
        regions = np.flatnonzero((truth_labels == label) & crowd)
        overlaps = box_iou(boxes[mine], truth_boxes[targets])
        covers = box_iou(boxes[mine], truth_boxes[regions], crowd=True).max(1, initial=0.0)
        taken = np.zeros(len(targets), bool)
        for row in range(len(mine)):
            candidates = np.where(taken, -1.0, overlaps[row])
            best = int(np.argmax(candidates)) if len(targets) else -1
            if best >= 0 and candidates[best] >= iou:
                taken[best] = True
                found += 1
            elif covers[row] < iou:
                false += 1
    return ImageMatches(found, false, int((~crowd).sum()) - found)
