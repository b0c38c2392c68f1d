"""The one error type for user mistakes: bad files, bad annotations, bad configs, wrong checkpoints, a package that
is not installed."""

# What to install for a module that is missing: the extra that brings it, or its name on PyPI.
INSTALL = {
    "onnx": "'mbtasks[export]'",
    "onnxruntime": "'mbtasks[export]'",
    "onnxscript": "'mbtasks[export]'",
    "faster_coco_eval": "faster-coco-eval",
    "cv2": "opencv-python-headless",
    "yaml": "pyyaml",
    "PIL": "pillow",
    "sklearn": "scikit-learn",
    "skimage": "scikit-image",
}


class MbtasksError(Exception):
    """A user-facing problem; the CLI prints its message on one line and exits 2."""

    def __init__(self, problem: str, path: object = None):
        self.path = path
        super().__init__(f"{path}: {problem}" if path is not None else problem)


def missing_package(module: str) -> MbtasksError:
    """The error for a module that cannot be imported because its package is not installed: what to install."""
    top = module.split(".")[0]
    return MbtasksError(
        f"this needs the Python package {top!r}, which is not installed here: pip install {INSTALL.get(top, top)}"
    )
