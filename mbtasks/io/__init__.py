"""Files in and out: the one image reader, and the record of a trained model (checkpoints, weights files)."""
