"""Predictions of a trained checkpoint on image files: drawn PNGs and a JSON of the detections."""
import json
from pathlib import Path

import torch
from PIL import Image
from torchvision.utils import draw_bounding_boxes

from .errors import MbtasksError
from .io.images import read_rgb_image
from .io.outputs import output_folder, replaced_atomically, write_text_atomically
from .io.records import Record, read_checkpoint
from .layers.fusion import for_inference
from .models import build_from_record


def load_detector(checkpoint: str | Path) -> tuple[torch.nn.Module, Record]:
    """The checkpoint's detector as inference runs it (for_inference) and its record (class names, category ids)."""
    record = read_checkpoint(checkpoint, "det")
    return for_inference(build_from_record(record, checkpoint)), record


def predict_detection(checkpoint: str | Path, images: list[str], out_dir: str | Path,
                      score_threshold: float = 0.3) -> list[str]:
    """Draw each image's detections scoring at least the threshold into OUT/<name>.png; all into detections.json.

    Photos are turned upright by their EXIF orientation first, so boxes refer to the image as it is displayed.
    """
    out_dir = output_folder(out_dir)
    targets = _targets(images, out_dir)
    model, record = load_detector(checkpoint)
    names, category_ids = record.class_names, record.category_ids
    report, lines = [], []
    pixels = [read_rgb_image(path, exif_upright=True) for path in images]  # every file checked before any work is done
    for path, image, target in zip(images, pixels, targets):
        tensor = torch.from_numpy(image).permute(2, 0, 1).contiguous()
        with torch.inference_mode():
            output = model([tensor.float() / 255])[0]
        keep = output["scores"] >= score_threshold
        boxes, scores, labels = output["boxes"][keep], output["scores"][keep], output["labels"][keep]
        captions = [f"{names[label]} {score:.2f}" for label, score in zip(labels.tolist(), scores.tolist())]
        drawn = draw_bounding_boxes(tensor, boxes, captions, colors="red", width=2)
        with replaced_atomically(target) as temporary:
            Image.fromarray(drawn.permute(1, 2, 0).numpy()).save(temporary)
        report.append({"file": str(path), "detections": [
            {"box_xyxy": [round(v, 2) for v in box], "score": round(score, 4), "label": names[label],
             "category_id": category_ids[label]}
            for box, score, label in zip(boxes.tolist(), scores.tolist(), labels.tolist())]})
        lines.append(f"{path}: {len(captions)} detections -> {target}")
    write_text_atomically(out_dir / "detections.json", json.dumps(report, indent=1))
    return lines


def _targets(images: list[str], out_dir: Path) -> list[Path]:
    """OUT/<name>.png for each image; one error if two images share a name or a drawing would replace an input."""
    targets = [out_dir / f"{Path(path).stem}.png" for path in images]
    inputs = {Path(path).resolve() for path in images}
    for path, target in zip(images, targets):
        if target.resolve() in inputs:
            raise MbtasksError(f"its drawing would replace an input image ({target}): choose another --out", path)
    if len(set(targets)) < len(targets):
        same = next(t for t in targets if targets.count(t) > 1)
        raise MbtasksError(f"two images would both be drawn to {same}: give them different names", out_dir)
    return targets
