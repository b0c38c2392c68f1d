"""`mbtasks predict`: a checkpoint or an exported ONNX file applied to photos, for every task.

inputs.py finds the photos (files, folders, globs) and reads them one by one; runner.py loads the model and runs
Lightning's predict loop; what each task writes (drawn boxes, overlays and label PNGs, attribute and class JSON,
embeddings) is the task's own (`BaseTask.write_prediction`).
"""

from .runner import load_predictor, predict

__all__ = ["load_predictor", "predict"]
