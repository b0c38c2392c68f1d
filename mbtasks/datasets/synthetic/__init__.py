"""Embedded data sets, written in the real formats from a seed."""
import importlib
from pathlib import Path

# task -> module.function writing that task's embedded set
WRITERS = {
    "det": "shapes_coco.write_shapes_coco",
    "seg": "streets_cityscapes.write_streets_cityscapes",
    "attr": "faces.write_celeba_faces",
    "embed": "faces.write_lfw_identities",
    "cls": "faces.write_shape_imagefolder",
}


def write_synthetic(task: str, out_dir: str | Path, **options) -> dict:
    """Write the embedded data set of `task` under out_dir."""
    module_name, function = WRITERS[task].rsplit(".", 1)
    module = importlib.import_module(f"{__name__}.{module_name}")
    return getattr(module, function)(out_dir, **options)
